"""gateway.upstreams.azure_credentials with the real azure-identity (and MSAL) against a
fake Entra ID over HTTPS on loopback, trusted through a throwaway CA.

The authority is loopback, so MSAL's instance discovery is switched off
(``disable_instance_discovery``): for Microsoft's own hosts MSAL skips it anyway,
so the requests on the wire are the ones a real tenant gets (tenant discovery,
then the token POST). ``AZURE_TOKEN_CREDENTIALS`` narrows DefaultAzureCredential
to the credential under test, so nothing probes the managed-identity address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from pathlib import Path

import pytest

from gateway.config.schema import Upstream, UpstreamAuth
from gateway.upstreams.azure_credentials import MISSING_EXTRA, SCOPE, AzureSigner
from gateway.upstreams.outbound import Ask, CredentialFailure, Endpoint, Outbound
from protocol_spec.fakes.azure import FakeEntra, FederatedIssuer, TestCa

pytest.importorskip("azure.identity")

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
SECRET = "not-a-real-secret-0123456789"
UPSTREAM = Upstream(provider="foundry", name="foundry", resource="corp", auth=UpstreamAuth(use_azure_ad=True))
ASK = Ask(Endpoint.MESSAGES, "/v1/messages", b"{}", "claude-sonnet-4-6", False, {}, (), None, None)
OUT = Outbound("https://corp.services.ai.azure.com/anthropic/v1/messages", {"x": "y"}, b"{}")
LOOPBACK_AUTHORITY = {"disable_instance_discovery": True}

_seen: list[object] | None = None


def _watch(event: str, args: tuple) -> None:
    if _seen is not None and event in ("socket.connect", "socket.getaddrinfo"):
        _seen.append(args[1][0] if event == "socket.connect" else args[0])


sys.addaudithook(_watch)


def _outside_loopback(hosts: list[object]) -> list[object]:
    outside: list[object] = []
    for host in hosts:
        if not isinstance(host, str | bytes):
            continue
        text = host.decode() if isinstance(host, bytes) else host
        try:
            if not ipaddress.ip_address(text).is_loopback:
                outside.append(text)
        except ValueError:
            if text != "localhost":
                outside.append(text)
    return outside


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    return TestCa(tmp_path)


@pytest.fixture
async def entra(ca: TestCa, monkeypatch: pytest.MonkeyPatch):
    global _seen
    for name in (
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_CLIENT_CERTIFICATE_PATH",
        "AZURE_USERNAME",
    ):
        monkeypatch.delenv(name, raising=False)
    async with FakeEntra(ca) as fake:
        fake.add_secret_client(CLIENT, SECRET)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.bundle))
        monkeypatch.setenv("AZURE_AUTHORITY_HOST", fake.url)
        monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
        monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT)
        monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential")
        seen: list[object] = []
        _seen = seen
        try:
            yield fake
        finally:
            _seen = None
    assert not _outside_loopback(seen), f"left loopback: {_outside_loopback(seen)}"


async def started(**options) -> AzureSigner:
    signer = AzureSigner(UPSTREAM, credential_options={**LOOPBACK_AUTHORITY, **options})
    await signer.start()
    return signer


async def bearer(signer: AzureSigner) -> str:
    out = await signer.authorize(OUT, ASK)
    scheme, _, token = out.headers["Authorization"].partition(" ")
    assert scheme == "Bearer" and out.headers["x"] == "y" and out.url == OUT.url
    return token


async def test_a_service_principal_gets_a_token_for_the_foundry_scope(entra, monkeypatch):
    monkeypatch.setenv("AZURE_CLIENT_SECRET", SECRET)
    signer = await started()
    assert signer.problem() is None and signer.serves(ASK)
    token = await bearer(signer)
    assert entra.is_live(token) and entra.client_of(token) == CLIENT and entra.scopes == [SCOPE]
    # What a real tenant sees: tenant discovery, then one client-credentials POST.
    assert entra.requests == [
        f"GET /{TENANT}/v2.0/.well-known/openid-configuration",
        f"POST /{TENANT}/oauth2/v2.0/token",
    ]
    await signer.close()


async def test_twenty_concurrent_requests_share_one_grant(entra, monkeypatch):
    monkeypatch.setenv("AZURE_CLIENT_SECRET", SECRET)
    signer = await started()
    tokens = await asyncio.gather(*(bearer(signer) for _ in range(20)))
    assert len(set(tokens)) == 1 and entra.grants == 1
    assert await bearer(signer) == tokens[0] and entra.grants == 1
    await signer.close()


async def test_aks_workload_identity_exchanges_the_projected_token(entra, monkeypatch, tmp_path):
    issuer = FederatedIssuer.generate()
    entra.add_federated_client(CLIENT, issuer, "system:serviceaccount:gatehouse:gateway")
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(issuer.service_account_token("system:serviceaccount:gatehouse:gateway"))
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "WorkloadIdentityCredential")
    signer = await started()
    assert entra.is_live(await bearer(signer)) and entra.refusals == []
    await signer.close()


async def test_a_projected_token_from_another_issuer_is_refused(entra, monkeypatch, tmp_path):
    entra.add_federated_client(CLIENT, FederatedIssuer.generate(), "system:serviceaccount:gatehouse:gateway")
    impostor = FederatedIssuer.generate()  # same URL, another key
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(impostor.service_account_token("system:serviceaccount:gatehouse:gateway"))
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "WorkloadIdentityCredential")
    signer = await started()
    with pytest.raises(CredentialFailure) as caught:
        await signer.authorize(OUT, ASK)
    assert "AADSTS700211" in caught.value.detail and entra.grants == 0
    await signer.close()


async def test_a_wrong_secret_is_a_credential_failure_that_does_not_quote_it(entra, monkeypatch):
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "wrong-secret-9876543210")
    signer = await started()
    with pytest.raises(CredentialFailure) as caught:
        await signer.authorize(OUT, ASK)
    assert caught.value.upstream == "foundry" and "AADSTS7000215" in caught.value.detail
    assert "wrong-secret" not in str(caught.value) and SECRET not in str(caught.value)
    await signer.close()


async def test_entra_down_is_a_credential_failure_and_recovers(entra, monkeypatch):
    monkeypatch.setenv("AZURE_CLIENT_SECRET", SECRET)
    # MSAL holds back a token request that got a 5xx for its Retry-After (60 s without one).
    entra.down, entra.retry_after = True, 0
    signer = await started(retry_total=0)  # azure-core's own retries would only slow the test
    with pytest.raises(CredentialFailure):
        await signer.authorize(OUT, ASK)
    entra.down = False
    assert entra.is_live(await bearer(signer))
    await signer.close()


async def test_no_identity_in_the_environment_is_a_credential_failure(entra):
    signer = await started()
    assert signer.problem() is None  # DefaultAzureCredential finds out only when asked
    with pytest.raises(CredentialFailure) as caught:
        await signer.authorize(OUT, ASK)
    assert "EnvironmentCredential" in caught.value.detail and entra.attempts == 0


async def test_without_the_azure_extra_boot_says_what_to_install(monkeypatch):
    # As if azure-identity were not installed: importing it fails.
    monkeypatch.setitem(sys.modules, "azure.identity", None)
    logged: list[tuple[str, str]] = []
    signer = AzureSigner(UPSTREAM, log=lambda level, text: logged.append((level, text)))
    await signer.start()
    assert signer.problem() == MISSING_EXTRA and logged[0][0] == "warn" and MISSING_EXTRA in logged[0][1]
    with pytest.raises(CredentialFailure) as caught:
        await signer.authorize(OUT, ASK)
    assert caught.value.detail == MISSING_EXTRA


async def test_the_token_request_goes_through_the_proxy(entra, monkeypatch, tmp_path):
    from tests.upstreams.test_egress_proxy import ProxyProcess

    monkeypatch.setenv("AZURE_CLIENT_SECRET", SECRET)
    proxy = ProxyProcess(tmp_path)
    try:
        signer = AzureSigner(UPSTREAM, proxy=proxy.url(), credential_options=LOOPBACK_AUTHORITY)
        await signer.start()
        assert entra.is_live(await bearer(signer))
        await signer.close()
        lines = await proxy.wait_access(1)
        assert lines and all(line == f"CONNECT 127.0.0.1:{entra.port}" for line in lines)
    finally:
        proxy.stop()
