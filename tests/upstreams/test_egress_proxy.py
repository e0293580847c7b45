"""Egress through a real HTTP proxy: the ``proxy.py`` process on a loopback port
between the transport (or the OIDC client) and loopback fakes.

The proxy's access log is the witness: it writes one line per proxied request
(``POST 127.0.0.1:N/v1/messages``, absolute form, for http:// targets) or per
tunnel (``CONNECT host:N``, for https:// ones) when the connection closes, so each
test closes its client before reading it.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.auth.oidc import IdpUnavailable, OidcClient
from gateway.config.load import is_forbidden_address
from gateway.config.schema import Oidc
from gateway.errors import Kind
from gateway.upstreams.egress import BOUNDARY_ENV, Egress
from gateway.upstreams.transport import (
    GuardedResolver,
    RefusedAddress,
    TargetGuard,
    Transport,
    UpstreamFailure,
)
from protocol_spec.fakes.upstream import FakeUpstream
from tests.harness import free_port
from tests.scripted_idp import ScriptedIdp

PROXY_BIN = Path(sys.executable).with_name("proxy")
BODY = b'{"model":"claude-opus-4-7","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
PASSWORD = "hunter2-not-for-logs"


class ProxyProcess:
    """One ``proxy.py`` process, started on a free loopback port and killed after."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        self.log = tmp / f"proxy-{id(self)}.log"
        port_file = tmp / f"proxy-{id(self)}.port"
        args = [
            str(PROXY_BIN),
            "--hostname", "127.0.0.1",
            "--port", "0",
            "--port-file", str(port_file),
            "--num-workers", "1",
            "--num-acceptors", "1",
            "--log-file", str(self.log),
            *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"proxy.py did not start: {self.log.read_text() if self.log.exists() else ''}")
            time.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])

    def url(self, userinfo: str = "", host: str = "127.0.0.1") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}{host}:{self.port}"

    def access(self) -> list[str]:
        """The access-log lines so far: ``METHOD target`` each."""
        text = self.log.read_text() if self.log.exists() else ""
        return re.findall(r"server\.access_log:\d+ - [\d.:]+ - (\S+ \S+)", text)

    async def wait_access(self, count: int, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(lines := self.access()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"proxy logged {lines}, wanted {count} line(s)")
            await asyncio.sleep(0.02)
        return lines

    def stop(self) -> None:
        # The process group holds proxy.py and the acceptor it forked; both are ours.
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ProxyProcess]:
    p = ProxyProcess(tmp_path)
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def auth_proxy(tmp_path: Path) -> Iterator[ProxyProcess]:
    p = ProxyProcess(tmp_path, "--basic-auth", f"gate:{PASSWORD}")
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


@pytest.fixture
async def transports() -> AsyncIterator[Any]:
    started: list[Transport] = []

    async def make(egress: Egress, *, allow_loopback: bool = True, ssl_context: ssl.SSLContext | None = None) -> Transport:
        t = Transport(
            max_connections=8,
            connect_timeout_s=2.0,
            idle_read_timeout_s=10.0,
            is_forbidden=lambda ip: is_forbidden_address(ip, allow_loopback),
            egress=egress,
            ssl_context=ssl_context,
        )
        await t.start()
        started.append(t)
        return t

    yield make
    for t in started:
        await t.close()


async def call(t: Transport, egress: Egress, url: str) -> tuple[int, bytes]:
    """POST the messages body to ``url`` through whatever proxy ``egress`` picks for it."""
    resp = await t.open("POST", url, {"content-type": "application/json"}, BODY, 5.0, egress.proxy_for(url))
    try:
        return resp.status, await resp.read()
    finally:
        resp.release()


async def failure(t: Transport, egress: Egress, url: str, proxy: str | None = None) -> UpstreamFailure:
    with pytest.raises(UpstreamFailure) as info:
        await t.open("POST", url, {}, BODY, 5.0, proxy or egress.proxy_for(url))
    return info.value


def loopback_alias() -> str | None:
    """A name /etc/hosts maps to 127.0.0.1 that is not localhost-style (resolved from
    the file, so no DNS query leaves the machine)."""
    try:
        lines = Path("/etc/hosts").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split("#")[0].split()
        if fields and fields[0] == "127.0.0.1":
            for name in fields[1:]:
                if "localhost" not in name.lower() and "." not in name:
                    return name
    return None


# ====================================================================== http:// targets


async def test_http_target_goes_through_the_proxy_in_absolute_form(proxy, fake, transports):
    egress = Egress.from_env({"HTTP_PROXY": proxy.url()}, allow_loopback=True)
    t = await transports(egress)
    status, body = await call(t, egress, fake.url + "/v1/messages")
    assert status == 200 and b'"type":"message"' in body
    await t.close()
    assert await proxy.wait_access(1) == [f"POST 127.0.0.1:{fake.port}/v1/messages"]
    [received] = fake.received
    assert (received.header("Via") or "").startswith("1.1 proxy.py")


async def test_no_proxy_goes_direct_while_others_use_the_proxy(proxy, fake, transports):
    other = FakeUpstream()
    await other.start()
    try:
        egress = Egress.from_env(
            {"HTTP_PROXY": proxy.url(), "NO_PROXY": f"127.0.0.1:{fake.port}"}, allow_loopback=True
        )
        assert egress.proxy_for(fake.url) is None and egress.proxy_for(other.url) is not None
        t = await transports(egress)
        assert (await call(t, egress, fake.url + "/v1/messages"))[0] == 200
        assert (await call(t, egress, other.url + "/v1/messages"))[0] == 200
        await t.close()
        await proxy.wait_access(1)
        await asyncio.sleep(0.2)  # a line for the direct call would have landed by now
        assert proxy.access() == [f"POST 127.0.0.1:{other.port}/v1/messages"]
        assert len(fake.received) == 1 and len(other.received) == 1
    finally:
        await other.close()


async def test_the_environment_is_not_read_per_request(proxy, fake, transports, monkeypatch):
    """Only the Egress built at boot decides; aiohttp's trust_env stays off."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    egress = Egress()
    t = await transports(egress)
    assert (await call(t, egress, fake.url + "/v1/messages"))[0] == 200
    assert proxy.access() == []


async def test_dead_proxy_is_a_connect_failure_naming_the_proxy(fake, transports):
    dead = f"http://gate:{PASSWORD}@127.0.0.1:{free_port()}"
    for variable, url in (("HTTP_PROXY", fake.url), ("HTTPS_PROXY", f"https://127.0.0.1:{fake.port}")):
        egress = Egress.from_env({variable: dead}, allow_loopback=True)
        t = await transports(egress)
        err = await failure(t, egress, url + "/v1/messages")
        assert err.kind is Kind.UPSTREAM_CONNECT
        assert err.detail.startswith(f"proxy http://127.0.0.1:{dead.rsplit(':', 1)[1]} unreachable (")
        assert PASSWORD not in err.detail
    assert fake.received == []


async def test_proxy_that_cannot_reach_the_target_fails_over(proxy, transports):
    """A refused CONNECT (proxy.py answers 502) is the proxy's failure, not an answer."""
    egress = Egress.from_env({"HTTPS_PROXY": proxy.url()}, allow_loopback=True)
    t = await transports(egress)
    err = await failure(t, egress, f"https://127.0.0.1:{free_port()}/v1/messages")
    assert err.kind is Kind.UPSTREAM_CONNECT
    assert err.detail == f"proxy {proxy.url()} refused the tunnel: CONNECT answered 502 Bad Gateway"


async def test_proxy_credentials_from_the_url(auth_proxy, fake, transports):
    egress = Egress.from_env({"HTTP_PROXY": auth_proxy.url(f"gate:{PASSWORD}")}, allow_loopback=True)
    t = await transports(egress)
    assert (await call(t, egress, fake.url + "/v1/messages"))[0] == 200
    # The credentials are for the proxy: the upstream never sees them.
    assert fake.received[0].header("Proxy-Authorization") is None


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_missing_or_wrong_proxy_credentials_are_a_connect_failure(auth_proxy, fake, transports, scheme):
    target = f"{scheme}://127.0.0.1:{fake.port}/v1/messages"
    variable = f"{scheme.upper()}_PROXY"
    for userinfo in ("", "gate:wrong-password"):
        egress = Egress.from_env({variable: auth_proxy.url(userinfo)}, allow_loopback=True)
        t = await transports(egress)
        err = await failure(t, egress, target)
        assert err.kind is Kind.UPSTREAM_CONNECT
        assert f"proxy {auth_proxy.url()}" in err.detail and "407" in err.detail
        assert "wrong-password" not in err.detail
    assert fake.received == []


# ====================================================================== the gateway's own check


async def test_default_mode_checks_the_target_before_the_proxy_sees_it(proxy, fake, transports):
    egress = Egress.from_env({"HTTP_PROXY": proxy.url(host="localhost")}, allow_loopback=False)
    t = await transports(egress, allow_loopback=False)
    for host in ("127.0.0.1", "localhost", "[::1]") + ((loopback_alias() or "localhost"),):
        err = await failure(t, egress, f"http://{host}:{fake.port}/v1/messages")
        assert err.kind is Kind.UNSAFE_UPSTREAM_ADDRESS, err.detail
        assert "refuses to call" in err.detail
    await t.close()
    await asyncio.sleep(0.2)
    assert proxy.access() == [] and fake.received == []


async def test_default_mode_without_local_dns_says_how_to_hand_names_to_the_proxy(proxy, transports):
    # A name in the reserved .invalid domain fails in the local resolver (RFC 6761).
    egress = Egress.from_env({"HTTPS_PROXY": proxy.url()}, allow_loopback=True)
    t = await transports(egress)
    err = await failure(t, egress, "https://upstream.invalid/v1/messages")
    assert err.kind is Kind.UPSTREAM_CONNECT
    assert err.detail.startswith("cannot resolve upstream.invalid to check its address before asking the proxy")
    assert BOUNDARY_ENV in err.detail
    assert proxy.access() == []


async def test_target_check_is_cached_per_host_for_a_minute():
    now = [1000.0]
    seen: list[Any] = []

    def is_forbidden(ip: Any) -> bool:
        seen.append(ip)
        return False

    egress = Egress.from_env({"HTTPS_PROXY": "http://127.0.0.1:9"}, allow_loopback=True)
    guard = TargetGuard(egress, GuardedResolver(is_forbidden), clock=lambda: now[0])
    await guard.check("https://localhost:8443/a")
    looked = len(seen)
    assert looked >= 1
    await guard.check("https://localhost:443/b")
    assert len(seen) == looked
    now[0] += 61
    await guard.check("https://localhost/")
    assert len(seen) == 2 * looked


async def test_a_refusal_is_cached_too_and_raised_afresh():
    now = [0.0]
    egress = Egress.from_env({"HTTPS_PROXY": "http://127.0.0.1:9"}, allow_loopback=False)
    guard = TargetGuard(egress, GuardedResolver(lambda ip: is_forbidden_address(ip, False)), clock=lambda: now[0])
    errors = []
    for _ in range(2):
        with pytest.raises(OSError) as info:
            await guard.check("https://localhost/")
        errors.append(info.value)
    assert errors[0] is not errors[1] and str(errors[0]) == str(errors[1])


# ====================================================================== proxy-only egress


async def test_boundary_hands_names_to_the_proxy_unresolved(proxy, fake, transports):
    alias = loopback_alias()
    if alias is None:
        pytest.skip("no non-localhost loopback name in /etc/hosts")
    # The proxy itself sits on loopback under a name the resolver would refuse:
    # it is the operator's choice, so the guard lets it through.
    env = {"HTTP_PROXY": proxy.url(host="localhost"), BOUNDARY_ENV: "1"}
    egress = Egress.from_env(env, allow_loopback=False)
    assert egress.boundary and not any(BOUNDARY_ENV in n for n in egress.notices())
    t = await transports(egress, allow_loopback=False)
    # In default mode this name is refused (it resolves to loopback, see above);
    # here the gateway does not resolve it and the proxy, the boundary, decides.
    status, _ = await call(t, egress, f"http://{alias}:{fake.port}/v1/messages")
    assert status == 200
    await t.close()
    assert await proxy.wait_access(1) == [f"POST {alias}:{fake.port}/v1/messages"]


async def test_boundary_refuses_local_names_without_asking_anyone(proxy, fake, transports):
    env = {"HTTPS_PROXY": proxy.url(), "HTTP_PROXY": proxy.url(), BOUNDARY_ENV: "1"}
    egress = Egress.from_env(env, allow_loopback=False)
    t = await transports(egress, allow_loopback=False)
    for url in (
        f"http://localhost:{fake.port}",
        f"https://api.localhost:{fake.port}",
        f"http://127.0.0.1:{fake.port}",
        f"http://[::1]:{fake.port}",
        "http://169.254.169.254",
        "http://metadata.google.internal",
    ):
        err = await failure(t, egress, url + "/v1/messages")
        assert err.kind is Kind.UNSAFE_UPSTREAM_ADDRESS
        assert err.detail.startswith("refused in proxy-only egress"), err.detail
    await t.close()
    await asyncio.sleep(0.2)
    assert proxy.access() == [] and fake.received == []


# ====================================================================== https:// through CONNECT


def throwaway_ca_and_server(tmp: Path) -> tuple[bytes, Path, Path]:
    """(CA PEM, server cert path, server key path); the server certificate names
    only ``localhost``, so verifying it proves SNI and the check used the name."""
    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, issuer: str, key: Any, signer: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build("gatehouse test CA", "gatehouse test CA", ca_key, ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build("localhost", "gatehouse test CA", key, ca_key, False)
    cert_path, key_path = tmp / "server.pem", tmp / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca.public_bytes(serialization.Encoding.PEM), cert_path, key_path


class TlsEcho:
    """A loopback https server that records the SNI name of each handshake."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.sni: list[str | None] = []
        self.ctx.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)  # type: ignore[assignment,misc,func-returns-value]
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        async def answer(request: web.Request) -> web.Response:
            return web.json_response({"host": request.host, "body": (await request.read()).decode()})

        app = web.Application()
        app.router.add_post("/v1/messages", answer)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=self.ctx).start()

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def test_https_target_through_connect_keeps_the_name_for_tls(proxy, transports, tmp_path):
    ca_pem, cert, key = throwaway_ca_and_server(tmp_path)
    server = TlsEcho(cert, key)
    await server.start()
    try:
        egress = Egress.from_env({"HTTPS_PROXY": proxy.url()}, allow_loopback=True)
        t = await transports(egress, ssl_context=ssl.create_default_context(cadata=ca_pem.decode()))
        url = f"https://localhost:{server.port}/v1/messages"
        status, body = await call(t, egress, url)
        assert status == 200 and f'"host": "localhost:{server.port}"'.encode() in body
        assert server.sni == ["localhost"]
        await t.close()
        assert await proxy.wait_access(1) == [f"CONNECT localhost:{server.port}"]
    finally:
        await server.close()


async def test_https_through_connect_still_verifies_the_certificate(proxy, transports, tmp_path):
    _, cert, key = throwaway_ca_and_server(tmp_path)
    server = TlsEcho(cert, key)
    await server.start()
    try:
        egress = Egress.from_env({"HTTPS_PROXY": proxy.url()}, allow_loopback=True)
        t = await transports(egress)  # the system store: our throwaway CA is not in it
        err = await failure(t, egress, f"https://localhost:{server.port}/v1/messages")
        assert err.kind is Kind.UPSTREAM_CONNECT and "proxy" in err.detail
        assert "certificate" in err.detail.lower()
    finally:
        await server.close()


# ====================================================================== the IdP


async def idp_client(idp: ScriptedIdp, egress: Egress, use_proxy: bool | None, **extra: Any) -> OidcClient:
    cfg = Oidc(
        issuer=idp.issuer, client_id=idp.client_id, client_secret=idp.client_secret, use_proxy=use_proxy, **extra
    )
    client = OidcClient(cfg, allow_loopback=True, log=lambda *_: None, egress=egress)
    await client.start()
    return client


async def test_idp_with_use_proxy_is_discovered_through_the_proxy(proxy):
    """Discovery and then the JWKS, each through the proxy. The JWKS lives on a
    second server so it needs a connection of its own (proxy.py logs and marks
    with ``Via`` only the first request of each connection)."""
    async with ScriptedIdp() as keys, ScriptedIdp() as idp:
        idp.discovery_overrides["jwks_uri"] = f"{keys.issuer}/jwks"
        egress = Egress.from_env({"HTTP_PROXY": proxy.url()}, allow_loopback=True)
        client = await idp_client(idp, egress, True)
        try:
            await client.discover()
            await client._signing_key("rsa-1", "RS256")
        finally:
            await client.close()
        assert sorted(await proxy.wait_access(2)) == sorted(
            [f"GET 127.0.0.1:{idp.port}/.well-known/openid-configuration", f"GET 127.0.0.1:{keys.port}/jwks"]
        )
        [discovery] = idp.requests_to("/.well-known/openid-configuration")
        [jwks] = keys.requests_to("/jwks")
        assert discovery.headers.get("Via", "").startswith("1.1 proxy.py")
        assert jwks.headers.get("Via", "").startswith("1.1 proxy.py")


async def test_https_idp_with_use_proxy_tunnels_with_connect(proxy, tmp_path):
    ca_pem, cert, key = throwaway_ca_and_server(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    async with ScriptedIdp(host="localhost", ssl_context=ctx) as idp:
        egress = Egress.from_env({"HTTPS_PROXY": proxy.url()}, allow_loopback=True)
        client = await idp_client(idp, egress, True, ca_cert_pem=ca_pem.decode())
        try:
            await client.discover()
        finally:
            await client.close()
        assert await proxy.wait_access(1) == [f"CONNECT localhost:{idp.port}"]


@pytest.mark.parametrize("use_proxy", [None, False])
async def test_idp_goes_direct_unless_use_proxy(proxy, use_proxy):
    async with ScriptedIdp() as idp:
        egress = Egress.from_env({"HTTP_PROXY": proxy.url()}, allow_loopback=True)
        client = await idp_client(idp, egress, use_proxy)
        try:
            await client.discover()
        finally:
            await client.close()
        await asyncio.sleep(0.2)
        assert proxy.access() == []
        assert len(idp.requests_to("/.well-known/openid-configuration")) == 1
        assert (egress.idp_notice(use_proxy) is not None) is (use_proxy is None)


async def test_idp_no_proxy_entry_goes_direct(proxy):
    async with ScriptedIdp() as idp:
        egress = Egress.from_env({"HTTP_PROXY": proxy.url(), "NO_PROXY": "127.0.0.0/8"}, allow_loopback=True)
        client = await idp_client(idp, egress, True)
        try:
            await client.discover()
        finally:
            await client.close()
        await asyncio.sleep(0.2)
        assert proxy.access() == []


async def test_idp_behind_a_dead_proxy_is_unavailable_with_the_reason():
    async with ScriptedIdp() as idp:
        dead = f"http://gate:{PASSWORD}@127.0.0.1:{free_port()}"
        client = await idp_client(idp, Egress.from_env({"HTTP_PROXY": dead}, allow_loopback=True), True)
        try:
            with pytest.raises(IdpUnavailable) as info:
                await client.discover()
        finally:
            await client.close()
        assert str(info.value).startswith(f"oidc discovery: proxy http://127.0.0.1:{dead.rsplit(':', 1)[1]} unreachable")
        assert PASSWORD not in str(info.value)
        assert idp.requests == []


async def test_idp_behind_a_proxy_wanting_credentials(auth_proxy):
    async with ScriptedIdp() as idp:
        egress = Egress.from_env({"HTTP_PROXY": auth_proxy.url()}, allow_loopback=True)
        client = await idp_client(idp, egress, True)
        try:
            with pytest.raises(IdpUnavailable) as info:
                await client.discover()
        finally:
            await client.close()
        assert "answered 407" in str(info.value)
        good = Egress.from_env({"HTTP_PROXY": auth_proxy.url(f"gate:{PASSWORD}")}, allow_loopback=True)
        client = await idp_client(idp, good, True)
        try:
            await client.discover()
        finally:
            await client.close()


async def test_idp_in_proxy_only_egress_refuses_local_names(proxy):
    async with ScriptedIdp() as idp:
        env = {"HTTP_PROXY": proxy.url(), BOUNDARY_ENV: "1"}
        egress = Egress.from_env(env, allow_loopback=False)
        assert egress.boundary
        # allow_loopback=True for the client only so the config-time URL check lets
        # the loopback issuer through to the proxy-only rule under test.
        client = await idp_client(idp, egress, True)
        try:
            with pytest.raises(IdpUnavailable) as info:
                await client.discover()
        finally:
            await client.close()
        assert "refused in proxy-only egress" in str(info.value)
        assert idp.requests == [] and proxy.access() == []



async def test_only_the_proxy_endpoint_is_exempt_from_the_address_guard():
    egress = Egress.from_env({"HTTPS_PROXY": "http://localhost:3128"}, allow_loopback=False)
    resolver = GuardedResolver(lambda ip: is_forbidden_address(ip, False), egress.proxy_endpoints)
    try:
        assert await resolver.resolve("localhost", 3128)
        with pytest.raises(RefusedAddress):
            await resolver.resolve("localhost", 3129)
    finally:
        await resolver.close()
