"""The fixtures' front door for fixed cloud host names: TLS under a throwaway CA, to the fakes, on loopback only."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest

from protocol_spec.fakes.front_door import GOOGLE_TOKEN_HOST, FrontDoor, sts_host
from protocol_spec.fakes.google import FakeGoogleToken
from protocol_spec.fakes.sts import FakeSts


@pytest.fixture
async def front():
    async with FakeGoogleToken() as token, FakeSts() as sts, FrontDoor({GOOGLE_TOKEN_HOST: token.port, sts_host("us-east-1"): sts.port}) as door:
        yield token, door


async def test_a_client_trusting_the_ca_reaches_the_fake_token_endpoint_by_googles_name(front) -> None:
    token, door = front
    trust = ssl.create_default_context(cadata=door.ca_pem.decode())
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # a kept-alive tunnel carries the second request too
            async with session.post(
                f"https://{GOOGLE_TOKEN_HOST}/token", data={"grant_type": "password"}, proxy=door.url, ssl=trust
            ) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"] == "unsupported_grant_type"
    assert token.attempts == 2
    assert token.headers_seen[-1]["Host"] == GOOGLE_TOKEN_HOST
    assert door.tunnels[0] == f"{GOOGLE_TOKEN_HOST}:443"


async def test_the_certificate_is_not_trusted_without_the_ca(front) -> None:
    token, door = front
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.post(f"https://{GOOGLE_TOKEN_HOST}/token", data={}, proxy=door.url)
    assert token.attempts == 0


async def test_each_name_reaches_its_own_fake(front) -> None:
    _, door = front
    trust = ssl.create_default_context(cadata=door.ca_pem.decode())
    async with aiohttp.ClientSession() as session:
        async with session.post(f"https://{sts_host('us-east-1')}/", data=b"Action=AssumeRole", proxy=door.url, ssl=trust) as resp:
            # The fake STS's own refusal of an unsigned call: it was the one that answered.
            assert resp.status in (400, 403) and b"ErrorResponse" in await resp.read()


@pytest.mark.parametrize("target", ["example.com:443", f"{GOOGLE_TOKEN_HOST}:8443", "127.0.0.1:443", "sts.eu-west-1.amazonaws.com:443"])
async def test_any_other_tunnel_is_refused(front, target: str) -> None:
    _, door = front
    reader, writer = await asyncio.open_connection(door.host, door.port)
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    await writer.drain()
    status = await reader.readline()
    writer.close()
    assert status.startswith(b"HTTP/1.1 403")
    assert door.tunnels == [target]


async def test_a_plain_proxy_request_is_refused(front) -> None:
    token, door = front
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{token.port}/token", proxy=door.url) as resp:
            assert resp.status == 403
    assert token.attempts == 0
