"""The relay against real loopback collectors: verbatim forwarding, opt-in,
outages with backoff on an injected sleep, rejections, independence, drain
and the memory bound under many concurrent exporters."""

from __future__ import annotations

import asyncio
import gzip
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from gateway.config.addresses import is_forbidden_address
from gateway.config.schema import ForwardTo
from gateway.telemetry.queue import Backoff
from gateway.telemetry.relay import Relay
from gateway.upstreams.egress import Egress, parse_proxy
from gateway.upstreams.transport import Transport
from tests.harness import free_port
from tests.telemetry.collector import Collector


class Sleeps:
    """The relay's backoff sleep: records each wait and returns at once, or once
    :attr:`gate` is set when the test holds the outage open."""

    def __init__(self, gate: bool = False) -> None:
        self.waits: list[float] = []
        self.gate = asyncio.Event()
        if not gate:
            self.gate.set()

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await self.gate.wait()
        await asyncio.sleep(0.001)


async def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


@pytest.fixture
async def collectors() -> AsyncIterator[Callable[..., Awaitable[Collector]]]:
    made: list[Collector] = []

    async def make(port: int = 0) -> Collector:
        c = await Collector(port).start()
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


async def stop(*relays: Relay) -> None:
    for relay in relays:
        await relay.drain(0)


def numbered(n: int, size: int = 0) -> bytes:
    return f"export-{n:05d}|".encode() + b"x" * size


# ------------------------------------------------------------ verbatim forwarding


async def test_exports_arrive_byte_identical_with_their_type_and_encoding(transport, collectors, relays):
    c = await collectors()
    relay = relays([ForwardTo(url=c.url, logs=True, headers={"Authorization": "Bearer collector-key", "DD-API-KEY": "dd"})], transport)
    protobuf = os.urandom(4096)
    json_gz = gzip.compress(b'{"resourceLogs":[]}')
    relay.submit("metrics", protobuf, "application/x-protobuf", None)
    relay.submit("logs", json_gz, "application/json; charset=utf-8", "gzip")
    relay.submit("metrics", b"not otlp at all", None, None)
    relay.submit("metrics", b"", "application/x-protobuf", None)
    await until(lambda: len(c.received) == 4)
    first, second, third, fourth = c.received
    assert [r.path for r in c.received] == ["/v1/metrics", "/v1/logs", "/v1/metrics", "/v1/metrics"]
    assert first.body == protobuf and first.header("Content-Type") == "application/x-protobuf"
    assert first.header("Content-Encoding") is None
    # gzip stays compressed: the collector sees the client's bytes and encoding.
    assert second.body == json_gz and second.header("Content-Encoding") == "gzip"
    assert second.header("Content-Type") == "application/json; charset=utf-8"
    assert third.body == b"not otlp at all" and third.header("Content-Type") == "application/x-protobuf"
    assert fourth.body == b""
    for r in c.received:
        assert r.header("Authorization") == "Bearer collector-key" and r.header("DD-API-KEY") == "dd"
        assert r.query == ""
    assert relay.counters()[f"forward_to[0] {c.url}"]["sent"] == 4
    await stop(relay)


async def test_a_destination_without_headers_gets_no_authorization(transport, collectors, relays):
    c = await collectors()
    relay = relays([ForwardTo(url=c.url + "/otlp/")], transport)
    relay.submit("metrics", b"m", "application/x-protobuf", None)
    await until(lambda: len(c.received) == 1)
    assert c.received[0].path == "/otlp/v1/metrics"
    assert c.received[0].header("Authorization") is None
    await stop(relay)


async def test_each_destination_gets_only_the_signals_it_opted_into(transport, collectors, relays):
    a, b, t = await collectors(), await collectors(), await collectors()
    relay = relays(
        [ForwardTo(url=a.url, logs=True), ForwardTo(url=b.url), ForwardTo(url=t.url, metrics=False, traces=True)],
        transport,
    )
    for signal in ("metrics", "logs", "traces"):
        relay.submit(signal, signal.encode(), "application/x-protobuf", None)
    await until(lambda: len(a.received) == 2 and len(b.received) == 1 and len(t.received) == 1)
    await asyncio.sleep(0.05)
    assert [(r.path, r.body) for r in a.received] == [("/v1/metrics", b"metrics"), ("/v1/logs", b"logs")]
    assert [(r.path, r.body) for r in b.received] == [("/v1/metrics", b"metrics")]
    assert [(r.path, r.body) for r in t.received] == [("/v1/traces", b"traces")]
    assert relay.wants("traces") and relay.wants("logs")
    await stop(relay)


async def test_a_signal_nobody_wants_is_discarded(transport, collectors, relays):
    c = await collectors()
    relay = relays([ForwardTo(url=c.url)], transport)
    assert not relay.wants("logs") and not relay.wants("traces")
    relay.submit("logs", b"l", "application/x-protobuf", None)
    relay.submit("metrics", b"m", "application/x-protobuf", None)
    await until(lambda: len(c.received) == 1)
    assert await relay.drain(1.0) == 0
    assert c.bodies() == [b"m"]


async def test_an_export_refused_before_queueing_is_counted_per_destination_and_logged_sparingly(transport, collectors, relays):
    a, b = await collectors(), await collectors()
    logs: list[tuple[str, str]] = []
    relay = relays([ForwardTo(url=a.url, logs=True), ForwardTo(url=b.url)], transport,
                   log=lambda level, msg: logs.append((level, msg)))
    for i in range(250):
        relay.refused("logs" if i % 2 else "metrics", 100 + i, "it cannot be stamped (a reason)")
    counts = relay.counters()
    assert [c["unstampable"] for c in counts.values()] == [250, 125]  # b takes metrics only
    assert all(c["queued"] == c["dropped"] == c["sent"] == 0 for c in counts.values())
    assert all(isinstance(v, int) for c in counts.values() for v in c.values())  # flat: name -> int
    assert len(logs) == 3  # the first, the 100th, the 200th
    assert logs[0] == ("warn", f"telemetry relay: dropped a metrics export (100 bytes) meant for forward_to[0] {a.url}, "
                               f"forward_to[1] {b.url}: it cannot be stamped (a reason); 1 dropped so far")
    assert logs[1][1].startswith(f"telemetry relay: dropped a logs export (199 bytes) meant for forward_to[0] {a.url}:")
    assert a.received == [] and b.received == []
    await stop(relay)


# ------------------------------------------------------------ outages


async def test_a_destination_down_then_back_loses_nothing_and_keeps_order(transport, collectors, relays):
    port = free_port()  # nobody listens yet: connections are refused
    sleeps = Sleeps(gate=True)
    logs: list[tuple[str, str]] = []
    relay = relays(
        [ForwardTo(url=f"http://127.0.0.1:{port}", logs=True)], transport,
        sleep=sleeps, rng=lambda: 1.0, log=lambda level, msg: logs.append((level, msg)),
    )
    sent = [numbered(i) for i in range(20)]
    for i, body in enumerate(sent):
        relay.submit("logs" if i % 3 == 0 else "metrics", body, "application/x-protobuf", None)
    # Hold the outage through three backoffs: 0.5 s, 1 s, 2 s on the injected sleep.
    for n in (1, 2, 3):
        await until(lambda n=n: len(sleeps.waits) == n)
        if n < 3:
            sleeps.gate.set()
            sleeps.gate = asyncio.Event()
    assert sleeps.waits == [0.5, 1.0, 2.0]
    counts = relay.counters()[f"forward_to[0] http://127.0.0.1:{port}"]
    assert counts["retried"] == 3 and counts["queued"] == 20 and counts["sent"] == 0
    c = await collectors(port)  # the collector comes back
    sleeps.gate.set()
    await until(lambda: len(c.received) == 20)
    assert c.bodies() == sent
    assert [r.path for r in c.received] == ["/v1/logs" if i % 3 == 0 else "/v1/metrics" for i in range(20)]
    counts = relay.counters()[f"forward_to[0] http://127.0.0.1:{port}"]
    assert (counts["sent"], counts["dropped"], counts["queued"], counts["queued_bytes"]) == (20, 0, 0, 0)
    assert [level for level, _ in logs] == ["warn", "info"]  # the outage's first failure, then the recovery
    assert "delivers again after 3 failed tries" in logs[1][1]
    await stop(relay)


async def test_server_errors_are_retried_after_the_collectors_retry_after(transport, collectors, relays):
    c = await collectors()
    c.answers = [503, 429, 500, 408]
    c.retry_after = "3"
    sleeps = Sleeps()
    relay = relays([ForwardTo(url=c.url)], transport, sleep=sleeps, rng=lambda: 0.0)
    relay.submit("metrics", b"one", "application/x-protobuf", None)
    relay.submit("metrics", b"two", "application/x-protobuf", None)
    await until(lambda: len(c.received) == 2)
    assert c.bodies() == [b"one", b"two"]
    assert c.attempts == 6
    assert sleeps.waits == [3.0, 3.0, 3.0, 3.0]
    await stop(relay)


async def test_backoff_without_retry_after_grows_to_its_cap(transport, collectors, relays):
    c = await collectors()
    c.answers = [502] * 6
    sleeps = Sleeps()
    relay = relays([ForwardTo(url=c.url)], transport, sleep=sleeps, rng=lambda: 1.0, backoff=Backoff(0.5, 4.0))
    relay.submit("metrics", b"m", "application/x-protobuf", None)
    await until(lambda: len(c.received) == 1)
    assert sleeps.waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    await stop(relay)


async def test_a_stalled_collector_times_out_and_the_export_is_retried(transport, collectors, relays):
    c = await collectors()
    c.answers = ["stall"]
    relay = relays([ForwardTo(url=c.url)], transport, sleep=Sleeps(), send_timeout_s=0.3)
    relay.submit("metrics", b"m", "application/x-protobuf", None)
    await until(lambda: relay.counters()[f"forward_to[0] {c.url}"]["retried"] == 1)
    c.release.set()  # the stalled request now answers 200 too: at-least-once may deliver twice
    await until(lambda: relay.counters()[f"forward_to[0] {c.url}"]["sent"] == 1)
    assert b"m" in c.bodies()
    await stop(relay)


async def test_a_destination_that_never_comes_back_stays_within_its_bound(transport, relays):
    port = free_port()
    relay = relays([ForwardTo(url=f"http://127.0.0.1:{port}")], transport, sleep=Sleeps(), max_queue_bytes=2000)
    name = f"forward_to[0] http://127.0.0.1:{port}"
    for i in range(200):
        relay.submit("metrics", numbered(i, 87), "application/x-protobuf", None)  # 100 bytes each
        if i % 20 == 0:
            await asyncio.sleep(0.01)
    counts = relay.counters()[name]
    assert counts["peak_queued_bytes"] <= 2000 and counts["queued_bytes"] <= 2000
    assert counts["dropped"] >= 180 and counts["retried"] >= 1 and counts["sent"] == 0
    left = await relay.drain(0.1)
    counts = relay.counters()[name]
    # Everything is accounted for: dropped while queued, or left at shutdown.
    assert counts["dropped"] == 200 and counts["dropped_bytes"] == 200 * 100
    assert 1 <= left <= 20 and counts["queued"] == 0


async def test_a_rejected_export_is_not_retried_and_logged_first_and_every_hundredth(transport, collectors, relays):
    c = await collectors()
    c.status = 400
    logs: list[tuple[str, str]] = []
    sleeps = Sleeps()
    relay = relays([ForwardTo(url=c.url)], transport, sleep=sleeps, log=lambda level, msg: logs.append((level, msg)))
    for i in range(100):
        relay.submit("metrics", numbered(i), "application/x-protobuf", None)
    await until(lambda: c.attempts == 100)
    c.answers = [413, 415, 422, 431]
    c.status = 200
    for i in range(100, 105):
        relay.submit("metrics", numbered(i), "application/x-protobuf", None)
    await until(lambda: len(c.received) == 1)
    counts = relay.counters()[f"forward_to[0] {c.url}"]
    assert (counts["rejected"], counts["retried"], counts["sent"]) == (104, 0, 1)
    assert c.attempts == 105 and sleeps.waits == []
    assert c.bodies() == [numbered(104)]
    rejections = [msg for level, msg in logs if "rejected" in msg]
    assert len(rejections) == 2 and "HTTP 400" in rejections[0] and "(1 rejected so far)" in rejections[0]
    assert "(100 rejected so far)" in rejections[1]
    await stop(relay)


async def test_two_destinations_fail_independently(transport, collectors, relays):
    good = await collectors()
    dead_port = free_port()
    sleeps = Sleeps(gate=True)  # the dead destination stays in its first backoff
    relay = relays([ForwardTo(url=f"http://127.0.0.1:{dead_port}"), ForwardTo(url=good.url)], transport, sleep=sleeps)
    sent = [numbered(i) for i in range(30)]
    for body in sent:
        relay.submit("metrics", body, "application/x-protobuf", None)
    await until(lambda: len(good.received) == 30)
    assert good.bodies() == sent
    counts = relay.counters()
    assert counts[f"forward_to[0] http://127.0.0.1:{dead_port}"]["sent"] == 0
    assert counts[f"forward_to[0] http://127.0.0.1:{dead_port}"]["queued"] == 30
    assert counts[f"forward_to[1] {good.url}"]["sent"] == 30
    assert await relay.drain(0.05) == 30


# ------------------------------------------------------------ drain


async def test_drain_flushes_the_queue(transport, collectors, relays):
    c = await collectors()
    c.answers = ["stall"]
    relay = relays([ForwardTo(url=c.url)], transport)
    for i in range(10):
        relay.submit("metrics", numbered(i), "application/x-protobuf", None)
    asyncio.get_running_loop().call_later(0.1, c.release.set)
    assert await relay.drain(5.0) == 0
    assert c.bodies() == [numbered(i) for i in range(10)]


async def test_drain_cuts_a_long_backoff_short(transport, collectors, relays):
    c = await collectors()
    c.answers = [503]
    # A real sleep and a one-minute backoff: only drain's wake-up delivers in time.
    relay = relays([ForwardTo(url=c.url)], transport, sleep=asyncio.sleep, backoff=Backoff(60.0, 60.0))
    relay.submit("metrics", b"m", "application/x-protobuf", None)
    await until(lambda: c.attempts == 1)
    started = time.monotonic()
    assert await relay.drain(5.0) == 0
    assert time.monotonic() - started < 2.0
    assert c.bodies() == [b"m"]


async def test_what_drain_cannot_deliver_is_counted_and_later_submits_dropped(transport, collectors, relays):
    c = await collectors()
    c.answers = ["stall"]
    logs: list[tuple[str, str]] = []
    relay = relays([ForwardTo(url=c.url)], transport, log=lambda level, msg: logs.append((level, msg)))
    for i in range(5):
        relay.submit("metrics", numbered(i), "application/x-protobuf", None)
    await until(lambda: c.attempts == 1)
    assert await relay.drain(0.2) == 5  # one in flight, four queued
    relay.submit("metrics", b"late", "application/x-protobuf", None)
    counts = relay.counters()[f"forward_to[0] {c.url}"]
    assert (counts["dropped"], counts["queued"], counts["sent"]) == (6, 0, 0)
    assert any("5 export(s)" in msg and "not delivered at shutdown" in msg for _, msg in logs)


# ------------------------------------------------------------ egress


async def test_the_address_guard_applies_to_destinations(collectors, relays):
    c = await collectors()
    strict = Transport(
        max_connections=5, connect_timeout_s=2.0, idle_read_timeout_s=5.0,
        is_forbidden=lambda ip: is_forbidden_address(ip, False),
    )
    await strict.start()
    logs: list[tuple[str, str]] = []
    try:
        relay = relays([ForwardTo(url=f"http://localhost:{c.port}")], strict, sleep=Sleeps(gate=True),
                       log=lambda level, msg: logs.append((level, msg)))
        relay.submit("metrics", b"m", "application/x-protobuf", None)
        await until(lambda: relay.counters()[f"forward_to[0] http://localhost:{c.port}"]["retried"] == 1)
        assert c.attempts == 0
        assert "the address guard refused it" in logs[0][1]
        await stop(relay)
    finally:
        await strict.close()


async def test_exports_go_through_the_proxy_egress_chose(collectors, relays):
    proxy = await collectors()  # an HTTP proxy sees http:// targets in absolute form
    egress = Egress(http=parse_proxy("HTTP_PROXY", proxy.url))
    t = Transport(max_connections=5, connect_timeout_s=2.0, idle_read_timeout_s=5.0, egress=egress)
    await t.start()
    try:
        target = "http://collector.invalid:4318"
        relay = relays([ForwardTo(url=target)], t, egress=egress)
        relay.submit("metrics", b"via proxy", "application/x-protobuf", None)
        await until(lambda: len(proxy.received) == 1)
        assert proxy.received[0].body == b"via proxy"
        assert proxy.received[0].header("Host") == "collector.invalid:4318"
        await stop(relay)
    finally:
        await t.close()


# ------------------------------------------------------------ many exporters


async def test_many_concurrent_exporters_hold_the_memory_bound(transport, collectors, relays):
    c = await collectors()
    c.answers = ["stall"]
    relay = relays([ForwardTo(url=c.url)], transport, max_queue_bytes=64 * 1024)

    accepted: list[bytes] = []

    async def ingest(request: web.Request) -> web.Response:
        body = await request.read()
        accepted.append(body)
        relay.submit("metrics", body, request.headers.get("Content-Type"), None)
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/metrics", ingest)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as client:
            async def export(i: int) -> int:
                async with client.post(f"http://127.0.0.1:{port}/v1/metrics", data=numbered(i, 1000),
                                       headers={"Content-Type": "application/x-protobuf"}) as resp:
                    return resp.status

            statuses = await asyncio.gather(*(export(i) for i in range(1000)))
        assert statuses == [200] * 1000  # every exporter answered while the collector stalled
        counts = relay.counters()[f"forward_to[0] {c.url}"]
        assert counts["peak_queued_bytes"] <= 64 * 1024
        assert counts["dropped"] > 900
        c.release.set()
        assert await relay.drain(5.0) == 0
        counts = relay.counters()[f"forward_to[0] {c.url}"]
        assert counts["sent"] + counts["dropped"] == 1000
        # What survived arrived in the order it was accepted, ending with the newest.
        got = c.bodies()
        assert len(got) == counts["sent"]
        assert got == [body for body in accepted if body in set(got)]
        assert got[-1] == accepted[-1]
    finally:
        await runner.cleanup()
