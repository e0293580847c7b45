"""TLS termination, and the run-time guard against link-local/metadata addresses."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl

import aiohttp
import pytest

from gateway.config.load import is_forbidden_address
from gateway.errors import Kind
from gateway.upstreams.transport import GuardedResolver, Transport, UpstreamFailure
from tests.harness import self_signed_cert


def self_signed(tmp_path):
    cert, key = self_signed_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key)
    return cert_path, key_path


async def test_tls_termination(tmp_path, pg_url, fake_upstream):
    from tests.system.test_process import free_port, spawn, wait_exit, write_config

    cert, key = self_signed(tmp_path)
    port = free_port()
    cfg = write_config(tmp_path, pg_url, fake_upstream.url, port)
    text = cfg.read_text().replace(
        f"  public_url: http://127.0.0.1:{port}\n",
        f"  public_url: https://127.0.0.1:{port}\n  tls:\n    cert: {cert}\n    key: {key}\n",
    )
    cfg.write_text(text)
    proc = spawn("serve", "--config", str(cfg))
    ctx = ssl.create_default_context(cafile=str(cert))
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                try:
                    async with s.get(f"https://127.0.0.1:{port}/healthz", ssl=ctx) as r:
                        assert r.status == 200 and await r.text() == "ok"
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError(proc.stderr.read() if proc.poll() is not None else "no TLS answer")
            with pytest.raises(aiohttp.ClientError):
                async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                    await r.read()
    finally:
        proc.terminate()
        await wait_exit(proc)


@pytest.mark.parametrize(
    "address, allow_loopback, forbidden",
    [
        ("169.254.169.254", True, True),
        ("169.254.10.1", True, True),
        ("fe80::1", True, True),
        ("127.0.0.1", False, True),
        ("127.0.0.1", True, False),
        ("::1", False, True),
        ("10.1.2.3", False, False),
        ("93.184.216.34", False, False),
    ],
)
def test_forbidden_addresses(address, allow_loopback, forbidden):
    assert is_forbidden_address(ipaddress.ip_address(address), allow_loopback) is forbidden


async def test_resolver_drops_names_that_resolve_to_refused_addresses():
    resolver = GuardedResolver(lambda ip: is_forbidden_address(ip, False))
    with pytest.raises(OSError):
        await resolver.resolve("localhost", 80)
    await resolver.close()


async def test_transport_refuses_a_host_name_resolving_to_loopback_when_not_allowed():
    transport = Transport(
        max_connections=4, connect_timeout_s=2, idle_read_timeout_s=300, is_forbidden=lambda ip: is_forbidden_address(ip, False)
    )
    await transport.start()
    try:
        with pytest.raises(UpstreamFailure) as info:
            await transport.open("POST", "http://localhost:9/v1/messages", {}, b"{}", 5)
        assert info.value.kind is Kind.UNSAFE_UPSTREAM_ADDRESS
    finally:
        await transport.close()
