"""AwsSigner against the fake Bedrock and fake STS on loopback: every credential
source signs requests the fake accepts (botocore recomputing the signature), an
assumed role is shared, renewed and never replaced by the base keys, and every
failure to get credentials is a CredentialFailure that names no secret.

The AWS environment is emptied for each test (instance metadata off, no shared
files), so no credential lookup leaves 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from gateway.config.schema import AssumeRole, Upstream, UpstreamAuth
from gateway.upstreams.aws_credentials import AwsSigner
from gateway.upstreams.outbound import Ask, CredentialFailure, Endpoint, Outbound
from gateway.upstreams.sigv4 import role_session_name
from protocol_spec.fakes.aws_auth import AwsKeyring
from protocol_spec.fakes.bedrock import FakeBedrock
from protocol_spec.fakes.sts import FakeSts
from tests.harness import Clock

REGION = "us-east-1"
BASE_KEY, BASE_SECRET = "AKIABASEKEY000000001", "base/secret+0001"
ROLE_ARN = "arn:aws:iam::123456789012:role/gatehouse-bedrock"
MODEL = "us.anthropic.claude-sonnet-4-6"
BODY = msgspec.json.encode(
    {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
    }
)
SECRET_LOOKING = (BASE_SECRET, "env/secret+0002", "container/secret+A", "container/secret+B")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> pytest.MonkeyPatch:
    """An AWS environment with nothing in it: no keys, no files, no instance metadata, no proxy."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.lower() in ("https_proxy", "http_proxy", "all_proxy", "no_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    return monkeypatch


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keyring() -> AwsKeyring:
    ring = AwsKeyring()
    ring.add(BASE_KEY, BASE_SECRET)
    return ring


@pytest.fixture
async def bedrock(keyring: AwsKeyring, clock: Clock):
    async with FakeBedrock(keyring, region=REGION, bearer_tokens=["bedrock-api-key-1"], clock=clock) as fake:
        yield fake


@pytest.fixture
async def sts(keyring: AwsKeyring, clock: Clock, aws_env: pytest.MonkeyPatch):
    async with FakeSts(keyring, region=REGION, clock=clock, delay=0.05) as fake:
        aws_env.setenv("AWS_ENDPOINT_URL_STS", fake.url)
        yield fake


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def _upstream(auth: UpstreamAuth | None = None, role: AssumeRole | None = None) -> Upstream:
    return Upstream(
        provider="bedrock", name="bedrock-main", region=REGION, auth=auth or UpstreamAuth(), assume_role=role
    )


def _keys(**extra: Any) -> UpstreamAuth:
    return UpstreamAuth(aws_access_key_id=BASE_KEY, aws_secret_access_key=BASE_SECRET, **extra)


def _ask(email: str | None = "alice@example.com", sub: str | None = "sub-alice") -> Ask:
    return Ask(Endpoint.MESSAGES, "/v1/messages", b"{}", "claude-sonnet-4-6", False, {}, (), email, sub)


def _out(bedrock: FakeBedrock) -> Outbound:
    return Outbound(
        f"{bedrock.url}/model/{MODEL}/invoke",
        {"content-type": "application/json", "accept": "application/json"},
        BODY,
    )


async def _send(http: aiohttp.ClientSession, out: Outbound) -> tuple[int, Any]:
    async with http.post(out.url, headers=out.headers, data=out.body) as resp:
        return resp.status, await resp.json()


async def _signer(upstream: Upstream, clock: Clock, **kw: Any) -> AwsSigner:
    signer = AwsSigner(upstream, clock=clock, **kw)
    await signer.start()
    return signer


def _assert_no_secret(failure: CredentialFailure) -> None:
    for secret in SECRET_LOOKING:
        assert secret not in str(failure)


# -- fixed keys, the default chain, Bedrock API keys ------------------------


async def test_static_keys_sign_what_the_fake_accepts(bedrock, clock, http):
    signer = await _signer(_upstream(_keys()), clock)
    assert signer.serves(_ask(email=None, sub=None))
    status, reply = await _send(http, await signer.authorize(_out(bedrock), _ask()))
    assert status == 200 and reply["model"] == MODEL
    assert bedrock.received[0].principal == BASE_KEY
    await signer.close()


async def test_static_session_token_is_sent(bedrock, keyring, clock, http):
    keyring.add("ASIASTATICTEMP000001", "temp/secret", "static-session-token")
    auth = UpstreamAuth(
        aws_access_key_id="ASIASTATICTEMP000001",
        aws_secret_access_key="temp/secret",
        aws_session_token="static-session-token",
    )
    signer = await _signer(_upstream(auth), clock)
    status, _ = await _send(http, await signer.authorize(_out(bedrock), _ask()))
    assert status == 200
    assert bedrock.received[0].header("x-amz-security-token") == "static-session-token"
    assert bedrock.received[0].principal == "ASIASTATICTEMP000001"


async def test_fake_refuses_a_wrong_secret(bedrock, clock, http):
    auth = UpstreamAuth(aws_access_key_id=BASE_KEY, aws_secret_access_key="not-the-secret")
    signer = await _signer(_upstream(auth), clock)
    status, reply = await _send(http, await signer.authorize(_out(bedrock), _ask()))
    assert status == 403 and "signature we calculated does not match" in reply["message"]
    assert bedrock.received[0].refused == "InvalidSignatureException"


async def test_fake_refuses_an_expired_session_token(bedrock, keyring, clock, http):
    keyring.add("ASIAEXPIRING00000001", "temp/secret", "tok", datetime.fromtimestamp(clock() + 60, UTC))
    auth = UpstreamAuth(
        aws_access_key_id="ASIAEXPIRING00000001", aws_secret_access_key="temp/secret", aws_session_token="tok"
    )
    signer = await _signer(_upstream(auth), clock)
    assert (await _send(http, await signer.authorize(_out(bedrock), _ask())))[0] == 200
    clock.advance(61)
    status, reply = await _send(http, await signer.authorize(_out(bedrock), _ask()))
    assert status == 403 and reply["message"] == "The security token included in the request is expired"
    assert bedrock.received[-1].refused == "ExpiredTokenException"


async def test_default_chain_reads_environment_keys(aws_env, bedrock, keyring, clock, http):
    keyring.add("AKIAFROMENVIRONMENT1", "env/secret+0002")
    aws_env.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENVIRONMENT1")
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "env/secret+0002")
    signer = await _signer(_upstream(), clock)
    status, _ = await _send(http, await signer.authorize(_out(bedrock), _ask()))
    assert status == 200 and bedrock.received[0].principal == "AKIAFROMENVIRONMENT1"
    await signer.close()


async def test_default_chain_with_nothing_configured_is_a_credential_failure(aws_env, bedrock, clock):
    signer = await _signer(_upstream(), clock)
    with pytest.raises(CredentialFailure) as caught:
        await signer.authorize(_out(bedrock), _ask())
    assert caught.value.upstream == "bedrock-main"
    assert "no AWS credentials found" in caught.value.detail
    assert bedrock.received == []
    # Credentials that appear later are found on a later look.
    aws_env.setenv("AWS_ACCESS_KEY_ID", BASE_KEY)
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", BASE_SECRET)
    with pytest.raises(CredentialFailure):
        await signer.authorize(_out(bedrock), _ask())  # looked moments ago: not again yet
    clock.advance(11)
    out = await signer.authorize(_out(bedrock), _ask())
    assert BASE_KEY in out.headers["authorization"]
    await signer.close()


async def test_refresh_that_fails_is_a_credential_failure(aws_env, bedrock, keyring, clock):
    # Environment credentials with an expiry are refreshable: botocore re-reads
    # the environment once they are within its 10-minute mandatory window.
    keyring.add("ASIAENVTEMPORARY0001", "env/secret+0002", "env-token")
    aws_env.setenv("AWS_ACCESS_KEY_ID", "ASIAENVTEMPORARY0001")
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "env/secret+0002")
    aws_env.setenv("AWS_SESSION_TOKEN", "env-token")
    aws_env.setenv("AWS_CREDENTIAL_EXPIRATION", _iso(time.time() + 300))
    signer = await _signer(_upstream(), clock)
    aws_env.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(CredentialFailure) as caught:
        await signer.authorize(_out(bedrock), _ask())
    assert "refreshing credentials from the AWS default chain failed" in caught.value.detail
    _assert_no_secret(caught.value)
    assert bedrock.received == []


async def test_bearer_token_is_sent_without_signing(bedrock, clock, http):
    signer = await _signer(_upstream(UpstreamAuth(aws_bearer_token="bedrock-api-key-1")), clock)
    out = await signer.authorize(_out(bedrock)._replace(headers={"Authorization": "stale"}), _ask())
    assert out.headers == {"authorization": "Bearer bedrock-api-key-1"}
    status, _ = await _send(http, out._replace(headers={**out.headers, "content-type": "application/json"}))
    assert status == 200 and bedrock.received[0].principal == "bearer:bedrock-api-key-1"


# -- credentials the container endpoint rotates ------------------------------


class ContainerCredentials:
    """An ECS/EKS container-credentials endpoint on loopback serving what the test queues."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, str, float] | int] = []
        self.calls = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/creds", self._creds)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/creds"

    async def close(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _creds(self, request: web.Request) -> web.Response:
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, int):
            return web.Response(status=answer)
        key, secret, expires = answer
        return web.json_response(
            {
                "AccessKeyId": key,
                "SecretAccessKey": secret,
                "Token": "tok-" + key,
                "Expiration": _iso(expires),
            }
        )


@pytest.fixture
async def container(aws_env):
    endpoint = ContainerCredentials()
    await endpoint.start()
    aws_env.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url)
    yield endpoint
    await endpoint.close()


async def test_rotated_container_credentials_sign_later_requests(container, bedrock, keyring, clock, http):
    keyring.add("ASIACONTAINERA000001", "container/secret+A", "tok-ASIACONTAINERA000001")
    keyring.add("ASIACONTAINERB000001", "container/secret+B", "tok-ASIACONTAINERB000001")
    # A expires within botocore's 10-minute mandatory window: the next use fetches again.
    container.answers = [
        ("ASIACONTAINERA000001", "container/secret+A", time.time() + 300),
        ("ASIACONTAINERB000001", "container/secret+B", time.time() + 3600),
    ]
    signer = await _signer(_upstream(), clock)
    assert container.calls == 1
    outs = await asyncio.gather(*(signer.authorize(_out(bedrock), _ask()) for _ in range(20)))
    assert container.calls == 2  # one refresh for twenty concurrent requests
    for out in outs:
        assert (await _send(http, out))[0] == 200
    assert {r.principal for r in bedrock.received} == {"ASIACONTAINERB000001"}
    await signer.close()


# -- assume_role -----------------------------------------------------------


async def test_concurrent_first_requests_share_one_sts_call(sts, bedrock, clock, http):
    role = AssumeRole(role_arn=ROLE_ARN, external_id="0123456789")
    signer = await _signer(_upstream(_keys(), role), clock)
    outs = await asyncio.gather(*(signer.authorize(_out(bedrock), _ask()) for _ in range(20)))
    assert sts.count == 1
    call = sts.calls[0]
    assert (call.role_arn, call.session_name, call.external_id, call.duration) == (
        ROLE_ARN,
        "claude-apps-gateway",
        "0123456789",
        3600,
    )
    assert call.principal == BASE_KEY  # STS was called with the base keys...
    for out in outs:
        assert (await _send(http, out))[0] == 200
    # ...and Bedrock only ever saw the role's credentials.
    assert {r.principal for r in bedrock.received} == {call.access_key_id}
    assert call.access_key_id is not None and call.access_key_id.startswith("ASIA")
    await signer.close()


async def test_each_developer_gets_a_session_named_after_a_claim(sts, bedrock, clock):
    signer = await _signer(_upstream(_keys(), AssumeRole(role_arn=ROLE_ARN, session_name="email")), clock)
    alice, bob = _ask("alice@example.com"), _ask("bob o'neil@example.com")
    first = await signer.authorize(_out(bedrock), alice)
    await signer.authorize(_out(bedrock), bob)
    again = await signer.authorize(_out(bedrock), alice)
    assert [c.session_name for c in sts.calls] == [
        "alice@example.com",
        role_session_name("bob o'neil@example.com"),
    ]
    assert sts.calls[1].session_name == "bob=20o=27neil@example.com"
    assert first.headers["authorization"].split("/")[0] == again.headers["authorization"].split("/")[0]
    await signer.close()

    by_sub = await _signer(_upstream(_keys(), AssumeRole(role_arn=ROLE_ARN, session_name="sub")), clock)
    await by_sub.authorize(_out(bedrock), _ask(sub="auth0|12345"))
    assert sts.calls[-1].session_name == "auth0=7C12345"
    await by_sub.close()


async def test_developer_without_the_claim_gets_no_sts_call(sts, bedrock, clock):
    signer = await _signer(_upstream(_keys(), AssumeRole(role_arn=ROLE_ARN, session_name="email")), clock)
    assert signer.serves(_ask()) and not signer.serves(_ask(email=None))
    with pytest.raises(CredentialFailure) as caught:
        await signer.authorize(_out(bedrock), _ask(email=None))
    assert "has no email" in caught.value.detail
    assert sts.count == 0
    await signer.close()


async def test_role_session_is_renewed_before_it_expires(sts, bedrock, clock, http):
    signer = await _signer(_upstream(_keys(), AssumeRole(role_arn=ROLE_ARN)), clock)
    await signer.authorize(_out(bedrock), _ask())
    clock.advance(54 * 60)
    await signer.authorize(_out(bedrock), _ask())
    assert sts.count == 1
    clock.advance(2 * 60)  # 56 minutes: within five minutes of the hour
    out = await signer.authorize(_out(bedrock), _ask())
    assert sts.count == 2
    assert sts.calls[1].access_key_id in out.headers["authorization"]
    assert (await _send(http, out))[0] == 200
    clock.advance(10 * 60)  # the first session has expired at the fake too; the second has not
    assert (await _send(http, await signer.authorize(_out(bedrock), _ask())))[0] == 200
    await signer.close()


async def test_sts_down_fails_without_touching_bedrock_and_is_not_remembered(sts, bedrock, clock, http):
    signer = await _signer(_upstream(_keys(), AssumeRole(role_arn=ROLE_ARN)), clock)
    sts.script("down")
    with pytest.raises(CredentialFailure) as caught:
        await signer.authorize(_out(bedrock), _ask())
    assert "ServiceUnavailable" in caught.value.detail and "503" in caught.value.detail
    _assert_no_secret(caught.value)
    assert sts.count == 1  # no retries: the relay fails over at once
    assert bedrock.received == []  # never the base keys instead
    status, _ = await _send(http, await signer.authorize(_out(bedrock), _ask()))
    assert status == 200 and sts.count == 2
    assert bedrock.received[0].principal == sts.calls[1].access_key_id
    await signer.close()


async def test_sts_unreachable_is_a_credential_failure(aws_env, bedrock, clock):
    aws_env.setenv("AWS_ENDPOINT_URL_STS", f"http://127.0.0.1:{_unused_port()}")
    signer = await _signer(_upstream(_keys(), AssumeRole(role_arn=ROLE_ARN)), clock)
    with pytest.raises(CredentialFailure) as caught:
        await signer.authorize(_out(bedrock), _ask())
    assert "STS AssumeRole failed" in caught.value.detail
    assert bedrock.received == []
    await signer.close()


async def test_sts_access_denied_is_a_credential_failure(sts, bedrock, clock):
    signer = await _signer(_upstream(_keys(), AssumeRole(role_arn=ROLE_ARN)), clock)
    sts.script("access_denied")
    with pytest.raises(CredentialFailure) as caught:
        await signer.authorize(_out(bedrock), _ask())
    assert "AccessDenied" in caught.value.detail and "403" in caught.value.detail
    _assert_no_secret(caught.value)
    assert bedrock.received == []
    await signer.close()


async def test_sts_refuses_bad_base_keys(sts, bedrock, clock):
    auth = UpstreamAuth(aws_access_key_id=BASE_KEY, aws_secret_access_key="not-the-secret")
    signer = await _signer(_upstream(auth, AssumeRole(role_arn=ROLE_ARN)), clock)
    with pytest.raises(CredentialFailure) as caught:
        await signer.authorize(_out(bedrock), _ask())
    assert "SignatureDoesNotMatch" in caught.value.detail
    assert "not-the-secret" not in str(caught.value)
    assert sts.calls[0].outcome == "refused:SignatureDoesNotMatch"
    await signer.close()


async def test_failed_renewal_keeps_the_session_while_it_lasts(sts, bedrock, clock, http):
    signer = await _signer(_upstream(_keys(), AssumeRole(role_arn=ROLE_ARN)), clock)
    first = sts
    await signer.authorize(_out(bedrock), _ask())
    clock.advance(57 * 60)
    first.script("down")
    out = await signer.authorize(_out(bedrock), _ask())  # renewal failed; 3 minutes left
    assert first.calls[0].access_key_id in out.headers["authorization"]
    assert (await _send(http, out))[0] == 200
    clock.advance(2 * 60 + 40)  # 20 seconds left: too little to sign with
    first.script("down")
    with pytest.raises(CredentialFailure):
        await signer.authorize(_out(bedrock), _ask())
    await signer.close()


async def test_assume_role_with_the_default_chain_as_base(aws_env, sts, bedrock, clock):
    aws_env.setenv("AWS_ACCESS_KEY_ID", BASE_KEY)
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", BASE_SECRET)
    signer = await _signer(_upstream(role=AssumeRole(role_arn=ROLE_ARN)), clock)
    out = await signer.authorize(_out(bedrock), _ask())
    assert sts.calls[0].principal == BASE_KEY
    assert sts.calls[0].access_key_id in out.headers["authorization"]
    await signer.close()


async def test_assume_role_without_any_base_credentials(sts, bedrock, clock):
    signer = await _signer(_upstream(role=AssumeRole(role_arn=ROLE_ARN)), clock)
    with pytest.raises(CredentialFailure) as caught:
        await signer.authorize(_out(bedrock), _ask())
    assert "no AWS credentials found" in caught.value.detail
    assert sts.count == 0
    await signer.close()


async def test_regional_and_fips_sts_endpoints(aws_env, clock):
    signer = await _signer(_upstream(_keys(), AssumeRole(role_arn=ROLE_ARN)), clock)
    assert signer.sts_endpoint == "https://sts.us-east-1.amazonaws.com"
    await signer.close()
    aws_env.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    fips = await _signer(_upstream(_keys(), AssumeRole(role_arn=ROLE_ARN)), clock)
    assert fips.sts_endpoint == "https://sts-fips.us-east-1.amazonaws.com"
    await fips.close()


# -- helpers ---------------------------------------------------------------


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
