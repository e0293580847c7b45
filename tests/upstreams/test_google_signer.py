"""gateway.upstreams.google_credentials against real loopback fakes: Google's token
endpoint verifying the service account's signed assertion, a GCE metadata server,
and Vertex checking the bearer that comes of it."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.config.schema import Upstream, UpstreamAuth
from gateway.upstreams.google_credentials import CLOUD_PLATFORM, GoogleSigner
from gateway.upstreams.outbound import Ask, CredentialFailure, Endpoint, Outbound
from protocol_spec.fakes.google import FakeGceMetadata, FakeGoogleToken, FakeVertex

ASK = Ask(Endpoint.MESSAGES, "/v1/messages", b"{}", "claude-opus-4-7", False, {}, (), None, None)
OUT = Outbound("http://127.0.0.1:9/unused", {"Content-Type": "application/json"}, b"{}")


class Clock:
    """Seconds since the epoch, moved by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def vertex(key_file: Path | None = None) -> Upstream:
    auth = UpstreamAuth(service_account_json=str(key_file)) if key_file is not None else UpstreamAuth()
    return Upstream(provider="vertex", name="vertex", region="us-east5", project_id="lab-proj", auth=auth)


# Every address a test here connects to or looks up (in any thread), while one runs.
_seen: list[tuple[str, object]] | None = None


def _watch(event: str, args: tuple) -> None:
    if _seen is not None and event in ("socket.connect", "socket.getaddrinfo"):
        _seen.append((event, args[1][0] if event == "socket.connect" else args[0]))


sys.addaudithook(_watch)


def _is_loopback(host: object) -> bool:
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.fixture(autouse=True)
def no_cloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    # Nothing here may reach 169.254.169.254 or read the developer's own gcloud login.
    global _seen
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    seen: list[tuple[str, object]] = []
    _seen = seen
    try:
        yield
    finally:
        _seen = None
    # Unix sockets and the like carry no host; every network address must be loopback.
    outside = [
        (event, host)
        for event, host in seen
        if isinstance(host, str | bytes)
        and not _is_loopback(host.decode() if isinstance(host, bytes) else host)
    ]
    assert not outside, f"left loopback: {outside}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def google(clock: Clock):
    async with FakeGoogleToken(clock=clock) as fake:
        yield fake


async def bearer(signer: GoogleSigner) -> str:
    out = await signer.authorize(OUT, ASK)
    scheme, _, token = out.headers["Authorization"].partition(" ")
    assert scheme == "Bearer" and token
    return token


async def started(upstream: Upstream, clock: Clock, **kwargs) -> GoogleSigner:
    signer = GoogleSigner(upstream, clock=clock, **kwargs)
    await signer.start()
    return signer


# ---------------------------------------------------------------- service account key file


async def test_a_key_file_gets_a_token_the_fake_verified_and_vertex_accepts(google, clock, tmp_path):
    key_file = tmp_path / "sa.json"
    google.new_service_account(key_file)
    signer = await started(vertex(key_file), clock)
    assert signer.problem() is None and signer.serves(ASK)  # one identity for every developer
    out = await signer.authorize(OUT, ASK)
    # The request is otherwise untouched; only the bearer is added.
    assert out.url == OUT.url and out.body == OUT.body
    assert out.headers["Content-Type"] == "application/json" and "Authorization" not in OUT.headers
    token = out.headers["Authorization"].removeprefix("Bearer ")
    assert google.grants == 1 and google.refusals == [] and google.is_live(token)
    assert google.subject_of(token) == "gatehouse@lab-proj.iam.gserviceaccount.com"
    assert CLOUD_PLATFORM in google.scopes_granted[0].split()
    async with FakeVertex(google) as fake_vertex, aiohttp.ClientSession() as http:
        url = (
            fake_vertex.url
            + "/v1/projects/lab-proj/locations/us-east5/publishers/anthropic/models/claude-opus-4-7:rawPredict"
        )
        async with http.post(
            url, headers={"Authorization": f"Bearer {token}"}, json={"max_tokens": 5}
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["type"] == "message"
    await signer.close()


async def test_the_token_is_cached_until_close_to_expiry_then_refreshed(google, clock, tmp_path):
    key_file = tmp_path / "sa.json"
    google.new_service_account(key_file)
    signer = await started(vertex(key_file), clock)
    first = await bearer(signer)
    clock.now += 3600 - 301  # 301 s left: still more than the 5-minute margin
    assert await bearer(signer) == first and google.grants == 1
    clock.now += 2  # 299 s left: refreshed before use
    second = await bearer(signer)
    assert second != first and google.grants == 2 and google.is_live(second)


async def test_twenty_concurrent_requests_share_one_grant(google, clock, tmp_path):
    key_file = tmp_path / "sa.json"
    google.new_service_account(key_file)
    signer = await started(vertex(key_file), clock)
    tokens = await asyncio.gather(*(bearer(signer) for _ in range(20)))
    assert len(set(tokens)) == 1 and google.grants == 1 and google.attempts == 1


async def test_a_cancelled_waiter_does_not_cancel_the_others_refresh(google, clock, tmp_path):
    key_file = tmp_path / "sa.json"
    google.new_service_account(key_file)
    signer = await started(vertex(key_file), clock)
    leaving = asyncio.ensure_future(bearer(signer))
    staying = asyncio.ensure_future(bearer(signer))
    await asyncio.sleep(0)
    leaving.cancel()
    assert google.is_live(await staying) and google.grants == 1
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_a_token_endpoint_that_refuses_raises_credential_failure_without_secrets(
    google, clock, tmp_path
):
    key_file = tmp_path / "sa.json"
    account = google.new_service_account(key_file)
    google.refuse = True
    signer = await started(vertex(key_file), clock)
    with pytest.raises(CredentialFailure) as caught:
        await signer.authorize(OUT, ASK)
    failure = caught.value
    assert failure.upstream == "vertex" and "invalid_grant" in failure.detail
    assert "PRIVATE KEY" not in str(failure) and account.private_key_id not in str(failure)
    # invalid_grant is final: google-auth does not retry it.
    assert google.attempts == 1 and google.grants == 0


async def test_a_signature_from_another_key_is_refused_by_the_fake(google, clock, tmp_path):
    # The fake checks the RS256 signature: a file whose key is not the registered one fails.
    key_file = tmp_path / "sa.json"
    google.new_service_account(key_file)
    impostor = tmp_path / "impostor.json"
    info = json.loads(key_file.read_text())
    info["private_key"] = google.new_service_account(
        email="other@lab-proj.iam.gserviceaccount.com"
    ).private_key_pem
    impostor.write_text(json.dumps(info))
    signer = await started(vertex(impostor), clock)
    with pytest.raises(CredentialFailure):
        await signer.authorize(OUT, ASK)
    assert google.refusals == ["Invalid JWT Signature."]


async def test_a_token_endpoint_that_is_down_raises_credential_failure(google, clock, tmp_path):
    key_file = tmp_path / "sa.json"
    google.new_service_account(key_file)
    google.down = True
    signer = await started(vertex(key_file), clock)
    # google-auth retries a 503 itself (three attempts, about 3 s of its own back-off).
    with pytest.raises(CredentialFailure) as caught:
        await signer.authorize(OUT, ASK)
    assert "refresh failed" in caught.value.detail and google.attempts == 3
    google.down = False
    assert google.is_live(await bearer(signer))


async def test_an_unreachable_token_endpoint_fails_at_once(clock, tmp_path):
    async with FakeGoogleToken(clock=clock) as google:
        key_file = tmp_path / "sa.json"
        google.new_service_account(key_file)
    # The fake is gone: connection refused, no retry inside google-auth.
    signer = await started(vertex(key_file), clock)
    started_at = time.monotonic()
    with pytest.raises(CredentialFailure):
        await signer.authorize(OUT, ASK)
    assert time.monotonic() - started_at < 2


async def test_a_failed_refresh_keeps_serving_the_token_while_it_is_valid(google, clock, tmp_path):
    key_file = tmp_path / "sa.json"
    google.new_service_account(key_file)
    signer = await started(vertex(key_file), clock)
    first = await bearer(signer)
    google.refuse = True
    clock.now += 3600 - 60  # inside the margin, not yet expired
    assert await bearer(signer) == first and google.attempts == 2
    clock.now += 61  # expired, and the endpoint still refuses
    with pytest.raises(CredentialFailure):
        await signer.authorize(OUT, ASK)


@pytest.mark.parametrize(
    "content",
    [None, b"", b"{not json", b'{"type": "service_account", "client_email": "x@y"}', b"\xff\xfe"],
    ids=["missing", "empty", "not-json", "incomplete", "not-utf8"],
)
async def test_an_unusable_key_file_is_reported_at_boot_and_every_request_fails(clock, tmp_path, content):
    key_file = tmp_path / "sa.json"
    if content is not None:
        key_file.write_bytes(content)
    logged: list[tuple[str, str]] = []
    signer = await started(vertex(key_file), clock, log=lambda level, text: logged.append((level, text)))
    problem = signer.problem()
    assert problem is not None and str(key_file) in problem
    assert logged and logged[0][0] == "warn" and problem in logged[0][1]
    for _ in range(2):
        with pytest.raises(CredentialFailure) as caught:
            await signer.authorize(OUT, ASK)
        assert caught.value.upstream == "vertex"


async def test_an_unreadable_key_file_says_so(clock, tmp_path):
    # A directory where the file should be: unreadable whoever runs the tests (root too).
    key_file = tmp_path / "sa.json"
    key_file.mkdir()
    signer = await started(vertex(key_file), clock)
    assert signer.problem() == f"cannot read {key_file}: Is a directory"
    with pytest.raises(CredentialFailure) as caught:
        await signer.authorize(OUT, ASK)
    assert caught.value.detail == signer.problem()


async def test_a_key_file_fixed_after_boot_is_picked_up_after_the_retry_interval(google, clock, tmp_path):
    key_file = tmp_path / "sa.json"
    signer = await started(vertex(key_file), clock)
    assert signer.problem() is not None
    google.new_service_account(key_file)
    with pytest.raises(CredentialFailure):
        await signer.authorize(OUT, ASK)  # looked for again only after 30 s
    clock.now += 31
    assert google.is_live(await bearer(signer)) and signer.problem() is None


# ---------------------------------------------------------------- application default credentials


async def test_adc_from_google_application_credentials(google, clock, tmp_path, monkeypatch):
    key_file = tmp_path / "adc.json"
    google.new_service_account(key_file)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    signer = await started(vertex(), clock)
    assert signer.problem() is None
    assert google.is_live(await bearer(signer)) and google.grants == 1


async def test_adc_from_the_gce_metadata_server(google, clock, monkeypatch):
    async with FakeGceMetadata(google) as metadata:
        monkeypatch.setenv("GCE_METADATA_HOST", metadata.address)
        monkeypatch.setenv("GCE_METADATA_IP", metadata.address)
        # google-auth reads GCE_METADATA_HOST once, when its metadata module is first
        # imported; another test may have imported it already, so set what it read.
        from google.auth.compute_engine import _metadata

        monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", metadata.address)
        signer = await started(vertex(), clock)
        assert signer.problem() is None
        token = await bearer(signer)
        assert google.is_live(token) and google.subject_of(token) == metadata.email
        assert metadata.token_requests == 1 and CLOUD_PLATFORM in metadata.scopes_asked[0]
        # Cached like any other token, refreshed from the metadata server near expiry.
        assert await bearer(signer) == token
        clock.now += 3600 - 100
        assert await bearer(signer) != token and metadata.token_requests == 2


async def test_adc_with_nothing_found_is_a_problem_not_a_crash(google, clock, monkeypatch):
    # A loopback server that is no metadata server: google-auth decides at once it is not on GCE.
    async with FakeGceMetadata(google, present=False) as elsewhere:
        monkeypatch.setenv("GCE_METADATA_IP", elsewhere.address)
        signer = await started(vertex(), clock)
        assert "application default credentials" in (signer.problem() or "")
        with pytest.raises(CredentialFailure):
            await signer.authorize(OUT, ASK)
        assert elsewhere.paths  # it was asked, not 169.254.169.254


# ---------------------------------------------------------------- the fake Vertex's side


async def test_fake_vertex_refuses_forged_expired_and_missing_bearers(google, clock, tmp_path):
    key_file = tmp_path / "sa.json"
    google.new_service_account(key_file)
    signer = await started(vertex(key_file), clock)
    live = await bearer(signer)
    path = "/v1/projects/lab-proj/locations/us-east5/publishers/anthropic/models/claude-opus-4-7:rawPredict"
    async with FakeVertex(google) as fake_vertex, aiohttp.ClientSession() as http:

        async def status(headers: dict[str, str]) -> tuple[int, dict]:
            async with http.post(fake_vertex.url + path, headers=headers, json={"max_tokens": 5}) as resp:
                return resp.status, await resp.json()

        assert (await status({"Authorization": f"Bearer {live}"}))[0] == 200
        code, body = await status({"Authorization": "Bearer ya29.forged"})
        assert code == 401 and body["error"]["status"] == "UNAUTHENTICATED"
        assert (await status({}))[0] == 401
        clock.now += 3601  # the token's hour is over
        assert (await status({"Authorization": f"Bearer {live}"}))[0] == 401
        assert fake_vertex.refused == 3 and len(fake_vertex.received) == 4


# ---------------------------------------------------------------- through an egress proxy


@pytest.fixture
def auth_proxy(tmp_path: Path):
    from tests.upstreams.test_egress_proxy import ProxyProcess

    p = ProxyProcess(tmp_path, "--basic-auth", "gate:s3cret%word")
    try:
        yield p
    finally:
        p.stop()


async def test_the_token_grant_goes_through_the_proxy_with_its_credentials(
    google, clock, tmp_path, auth_proxy
):
    key_file = tmp_path / "sa.json"
    google.new_service_account(key_file)
    # Userinfo in the proxy URL becomes Proxy-Authorization (percent-decoded first).
    signer = await started(vertex(key_file), clock, proxy=auth_proxy.url("gate:s3cret%25word"))
    assert google.is_live(await bearer(signer))
    assert (google.headers_seen[0].get("Via") or "").startswith("1.1 proxy.py")
    await signer.close()  # the proxy logs a request when its connection closes
    assert await auth_proxy.wait_access(1) == [f"POST 127.0.0.1:{google.port}/token"]


async def test_a_proxy_that_refuses_us_is_a_credential_failure(google, clock, tmp_path, auth_proxy):
    key_file = tmp_path / "sa.json"
    google.new_service_account(key_file)
    signer = await started(vertex(key_file), clock, proxy=auth_proxy.url("gate:wrong"))
    with pytest.raises(CredentialFailure) as caught:
        await signer.authorize(OUT, ASK)
    assert "wrong" not in str(caught.value) and google.attempts == 0


async def test_the_metadata_server_is_never_asked_through_the_proxy(google, clock, monkeypatch, auth_proxy):
    async with FakeGceMetadata(google) as metadata:
        monkeypatch.setenv("GCE_METADATA_HOST", metadata.address)
        monkeypatch.setenv("GCE_METADATA_IP", metadata.address)
        from google.auth.compute_engine import _metadata

        monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", metadata.address)
        signer = await started(vertex(), clock, proxy=auth_proxy.url("gate:s3cret%25word"))
        assert google.is_live(await bearer(signer))
        await signer.close()
        assert metadata.headers_seen and not any("Via" in h for h in metadata.headers_seen)
        assert auth_proxy.access() == []


async def test_the_proxy_is_chosen_per_url_so_no_proxy_reaches_a_key_files_own_token_uri(google, clock, tmp_path):
    from gateway.upstreams.egress import Egress

    key_file = tmp_path / "sa.json"
    google.new_service_account(key_file)  # token_uri: the fake, on http://127.0.0.1
    dead = "http://127.0.0.1:9"
    exempt = Egress.from_env({"HTTP_PROXY": dead, "HTTPS_PROXY": dead, "NO_PROXY": "127.0.0.1"}, allow_loopback=True)
    signer = await started(vertex(key_file), clock, proxy_for=exempt.proxy_for)
    assert google.is_live(await bearer(signer))
    proxied = Egress.from_env({"HTTP_PROXY": dead, "HTTPS_PROXY": dead}, allow_loopback=True)
    other = tmp_path / "other.json"
    google.new_service_account(other)
    refused = await started(vertex(other), clock, proxy_for=proxied.proxy_for)
    with pytest.raises(CredentialFailure):
        await bearer(refused)
