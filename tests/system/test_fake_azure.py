"""The fake Entra ID refuses what Entra refuses: client secrets and federated
assertions are checked, over TLS from a throwaway CA that clients must trust."""

from __future__ import annotations

import ssl
import time

import aiohttp
import pytest

from protocol_spec.fakes.azure import (
    CLIENT_ASSERTION_TYPE,
    EXCHANGE_AUDIENCE,
    FakeEntra,
    FederatedIssuer,
    TestCa,
)

SUBJECT = "system:serviceaccount:gatehouse:gateway"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def entra(tmp_path):
    async with FakeEntra(TestCa(tmp_path), clock=Clock()) as fake:
        yield fake


async def post(entra: FakeEntra, form: dict[str, str]) -> tuple[int, dict]:
    context = ssl.create_default_context(cafile=str(entra.ca.bundle))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{entra.url}/t/oauth2/v2.0/token", data=form, ssl=context) as resp:
            return resp.status, await resp.json()


def secret_form(secret: str = "s3cret", scope: str = "https://ai.azure.com/.default") -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": "c1", "client_secret": secret, "scope": scope}


async def test_only_a_client_that_trusts_the_test_ca_gets_through(entra):
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(f"{entra.url}/t/v2.0/.well-known/openid-configuration")


async def test_secrets_scopes_and_lifetimes(entra):
    entra.add_secret_client("c1", "s3cret")
    status, body = await post(entra, secret_form())
    assert status == 200 and entra.is_live(body["access_token"]) and body["expires_in"] == 3599
    entra.clock.now += 3600
    assert not entra.is_live(body["access_token"])
    assert (await post(entra, secret_form("wrong")))[1]["error"] == "invalid_client"
    assert "scope" in (await post(entra, secret_form(scope="https://ai.azure.com")))[1]["error_description"]
    assert entra.grants == 1 and len(entra.refusals) == 2


@pytest.mark.parametrize(
    ("subject", "audience", "lifetime", "code"),
    [
        ("system:serviceaccount:other:sa", EXCHANGE_AUDIENCE, 3600, "AADSTS70021"),
        (SUBJECT, "api://elsewhere", 3600, "AADSTS70021"),
        (SUBJECT, EXCHANGE_AUDIENCE, -10, "AADSTS700024"),
    ],
)
async def test_federated_assertions_must_match_the_federated_credential(
    entra, subject, audience, lifetime, code
):
    issuer = FederatedIssuer.generate()
    entra.add_federated_client("c1", issuer, SUBJECT)
    form = {
        "grant_type": "client_credentials",
        "client_id": "c1",
        "scope": "https://ai.azure.com/.default",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": issuer.service_account_token(subject, lifetime, audience),
    }
    status, body = await post(entra, form)
    assert status == 401 and body["error_description"].startswith(code) and entra.grants == 0
