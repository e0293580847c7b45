"""Start a real Gatehouse app on a loopback port, in this process.

Tests drive it over HTTP with real clients. In-process (rather than a
subprocess) so a test can inject what production never allows, such as a
short idle-read timeout, and mint tokens with the app's own key; tests of
process behaviour (workers, signals, boot errors) use the ``gatehouse``
command instead.
"""

from __future__ import annotations

import os
import socket
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.app.build import build, parser_limits
from gateway.app.connections import Deadlines, GuardedAppRunner
from gateway.config.load import loads
from gateway.http.keys import RUNTIME

JWT_SECRET = "test-secret-0123456789abcdef0123456789abcdef"
UPSTREAM_KEY = "sk-ant-test-upstream-key"

BASE_CONFIG = """
listen:
  host: 127.0.0.1
  port: {port}
  public_url: http://127.0.0.1:{port}
oidc:
  issuer: {issuer}
  client_id: gatehouse-tests
  client_secret: gatehouse-tests-secret
session:
  jwt_secret: {jwt_secret}
store:
  postgres_url: {pg_url}
upstreams:
{upstreams}
{extra}
"""


def upstream_block(url: str, name: str | None = None, key: str = UPSTREAM_KEY, extra: str = "") -> str:
    lines = ["  - provider: anthropic"]
    if name:
        lines.append(f"    name: {name}")
    lines += [f"    base_url: {url}", "    auth:", f"      api_key: {key}"]
    if extra:
        lines.append(textwrap.indent(textwrap.dedent(extra).strip("\n"), "    "))
    return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(
    pg_url: str,
    upstreams: list[str],
    extra: str = "",
    *,
    issuer: str = "http://127.0.0.1:9",
    port: int | None = None,
    base: str = BASE_CONFIG,
) -> Any:
    text = base.format(
        jwt_secret=JWT_SECRET,
        pg_url=pg_url,
        upstreams="\n".join(upstreams),
        extra=textwrap.dedent(extra),
        issuer=issuer,
        port=port or free_port(),
    )
    env = dict(os.environ, CLAUDE_GATEWAY_ALLOW_LOOPBACK="1")
    return loads(text, env, source="<test>")


@dataclass
class RunningGateway:
    url: str
    app: web.Application
    runner: web.AppRunner

    def token(self, email: str = "dev@example.com", sub: str = "user-dev", **kw: Any) -> str:
        import time

        return self.app[RUNTIME].tokens.mint(sub=sub, email=email, now=int(time.time()), **kw)

    def auth(self, **kw: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(**kw)}"}

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_gateway(
    cfg: Any,
    *,
    bind_port: int | None = None,
    before_start: Callable[[web.Application], None] | None = None,
    **build_kwargs: Any,
) -> RunningGateway:
    """Serve ``cfg``. ``bind_port`` puts a second replica of the same config on another port;
    ``before_start`` may add a route of the test's own before the app is frozen."""
    app = build(cfg, **build_kwargs)
    if before_start is not None:
        before_start(app)
    # The runner `gatehouse serve` uses, so its connection protocol (parse errors in
    # our envelope, read deadlines) is what tests talk to.
    runner = GuardedAppRunner(
        app,
        deadlines=Deadlines.from_config(cfg),
        handler_cancellation=True,
        shutdown_timeout=5,
        access_log=None,
        auto_decompress=False,
        **parser_limits(cfg),
    )
    await runner.setup()
    # The port was chosen before the config was made, so that public_url (the
    # token issuer and the sign-in page's origin) names where we really listen.
    port = bind_port or cfg.listen.port
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return RunningGateway(f"http://127.0.0.1:{port}", app, runner)


class Clock:
    """A wall clock (seconds) a test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def self_signed_cert(ip: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM): a throwaway CA certificate for ``ip``, valid for an hour."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scripted idp")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
