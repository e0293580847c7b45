"""Upstream concurrency (SPEC MSG-37, MSG-48): the boot log states the limit, and while
requests queue for a free upstream connection a warning says so, at most once a minute.
A real transport against a loopback server that holds its replies open; the minute is
an injected clock."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from gateway.upstreams.transport import Saturation, Transport
from tests.harness import Clock

OPEN = "client requests are open"


def test_no_warning_within_the_limit_then_one_a_minute_while_queueing() -> None:
    clock = Clock()
    s = Saturation(2, clock=clock)
    assert [s.opening(), s.opening()] == [None, None]
    first = s.opening()
    assert first is not None and OPEN in first and "2 are open" in first and "1 more wait" in first
    assert s.opening() is None  # still saturated, same minute
    clock.advance(59.9)
    assert s.opening() is None
    clock.advance(0.2)
    again = s.opening()
    assert again is not None and "4 more wait" in again
    for _ in range(6):
        s.closed()
    assert s.open == 0 and s.opening() is None  # within the limit again: nothing to say
    assert s.startup_line().startswith("upstream requests: at most 2 at once")


class HeldReplies:
    """A loopback server whose replies send their headers, then wait for ``release``."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.served = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.served += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await self.release.wait()
        await resp.write(b"done")
        return resp


@pytest.fixture
async def held():
    server = HeldReplies()
    app = web.Application()
    app.router.add_post("/", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"  # type: ignore[attr-defined,union-attr]
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()


async def test_a_transport_at_its_limit_warns_once_a_minute_and_counts_until_release(held, capfd) -> None:
    clock = Clock()
    t = Transport(max_connections=1, connect_timeout_s=2.0, idle_read_timeout_s=10.0, clock=clock)
    await t.start()
    try:
        assert "upstream requests: at most 1 at once" in capfd.readouterr().err

        async def episode() -> list[str]:
            """One request holds the only connection while a second queues behind it."""
            held.release.clear()
            first = await t.open("POST", held.url, {}, b"", 5.0)
            second = asyncio.create_task(t.open("POST", held.url, {}, b"", 5.0))
            await asyncio.sleep(0.05)
            assert not second.done() and t.saturation.open == 2
            held.release.set()
            assert await first.read() == b"done"
            first.close()
            reply = await second
            assert await reply.read() == b"done"
            reply.close()
            assert t.saturation.open == 0  # each counted until its connection went back
            return [line for line in capfd.readouterr().err.splitlines() if OPEN in line]

        warned = await episode()
        assert len(warned) == 1 and " warn " in warned[0]
        assert await episode() == []  # saturated again within the minute: quiet
        clock.advance(61)
        assert len(await episode()) == 1
    finally:
        await t.close()


async def test_a_failed_request_is_not_counted_as_open(capfd) -> None:
    from gateway.upstreams.transport import UpstreamFailure
    from tests.harness import free_port

    t = Transport(max_connections=1, connect_timeout_s=1.0, idle_read_timeout_s=10.0)
    await t.start()
    try:
        for _ in range(3):
            with pytest.raises(UpstreamFailure):
                await t.open("POST", f"http://127.0.0.1:{free_port()}/", {}, b"", 2.0)
        assert t.saturation.open == 0
        assert OPEN not in capfd.readouterr().err
    finally:
        await t.close()
