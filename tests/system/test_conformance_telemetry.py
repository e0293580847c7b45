"""The telemetry checks against two small relays on loopback, judged at the real fake collector.

Gatehouse's own run (test_conformance.py) shows the checks pass a relay that
buffers and retries. Here two relays written for the test show the rest: one
that forwards each export once in the background and never retries (what
Anthropic's gateway does) passes TEL-2, TEL-3 and TEL-4 and fails only TEL-8;
one that gets the protocol wrong (it hands the client's bearer on, drops the
base URL's path, answers only once every destination has, and sends a
rejected export again) fails TEL-2, TEL-3 and TEL-4. With no collector in the
fixtures, every telemetry check reports SKIP.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from protocol_spec.conformance import checks, runner  # noqa: F401  (registers the checks)
from protocol_spec.conformance.context import Suite
from protocol_spec.conformance.fixtures import (
    COLLECTOR_HEADER,
    COLLECTOR_SINKS,
    DEFAULTS_SINK,
    FULL_SINK,
    USERS,
    FixtureState,
    collector_destinations,
)
from protocol_spec.conformance.target import Target
from protocol_spec.conformance.verdicts import REGISTRY, Outcome
from protocol_spec.fakes.otlp_collector import OtlpCollector

TOKEN = "client-token-for-the-relay"
COLLECTOR_KEY = "collector-key"
RELAY_CHECKS = ("TEL-2", "TEL-3", "TEL-4", "TEL-8")


@dataclass
class Destination:
    url: str
    signals: tuple[str, ...]
    headers: dict[str, str]


class Relay:
    """``POST /v1/{signal}`` with a bearer, relayed to each destination that takes the signal.

    ``sloppy=False``: answered at once, each destination tried once in the background.
    ``sloppy=True``: the client's headers go along (bearer included), the base URL's
    path is dropped, the client waits for every destination, and a rejected export is
    sent once more.
    """

    def __init__(self, destinations: list[Destination], *, sloppy: bool) -> None:
        self.destinations = destinations
        self.sloppy = sloppy
        self.tasks: set[asyncio.Task[None]] = set()
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> Relay:
        self.session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/v1/{signal}", self.ingest)
        # The client's bytes as sent: a gzip body is relayed compressed.
        self.runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await self.runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self.runner, sock).start()
        return self

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()

    async def ingest(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.Response(status=401)
        signal, body = request.match_info["signal"], await request.read()
        wanted = [d for d in self.destinations if signal in d.signals]
        if self.sloppy:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            await asyncio.gather(*(self.deliver(d, signal, body, headers) for d in wanted))
        else:
            headers = {"Content-Type": request.headers.get("Content-Type", "application/x-protobuf")}
            if "Content-Encoding" in request.headers:
                headers["Content-Encoding"] = request.headers["Content-Encoding"]
            for destination in wanted:
                task = asyncio.create_task(self.deliver(destination, signal, body, headers))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        return web.Response(status=200)

    async def deliver(self, destination: Destination, signal: str, body: bytes, headers: dict[str, str]) -> None:
        assert self.session is not None
        base = destination.url
        if self.sloppy:
            parts = urlsplit(base)
            base = f"{parts.scheme}://{parts.netloc}"
        for _ in range(2 if self.sloppy else 1):
            try:
                async with self.session.post(f"{base}/v1/{signal}", data=body, headers={**headers, **destination.headers}) as resp:
                    await resp.read()
                    if not (self.sloppy and resp.status == 400):
                        return
            except aiohttp.ClientError:
                return


def _state(relay_port: int, collector: OtlpCollector | None) -> FixtureState:
    sinks = collector_destinations({name: collector.url(name) for name in COLLECTOR_SINKS}) if collector else {}
    return FixtureState(
        pid=0, config_path="", env_path="", public_url=f"http://127.0.0.1:{relay_port}", gateway_port=relay_port,
        fake_url="http://127.0.0.1:9", idp_url="http://127.0.0.1:9", users=USERS, env={}, jwt_secret="unused",
        primary_key="k", secondary_key="k2", admin_write_key="", admin_read_key="",
        collector_url=collector.control_url if collector else "", collector_sinks=sinks,
        collector_key=COLLECTOR_KEY if collector else "",
    )


@pytest.fixture
async def collector() -> AsyncIterator[OtlpCollector]:
    async with OtlpCollector(COLLECTOR_SINKS) as running:
        yield running


async def _outcomes(collector: OtlpCollector | None, *, sloppy: bool) -> tuple[dict[str, Outcome], dict[str, list[str]]]:
    """Each relay check's outcome per ID, and the findings behind it."""
    placeholder = {name: f"http://127.0.0.1:9/{name}" for name in COLLECTOR_SINKS}
    sinks = collector_destinations({name: collector.url(name) for name in COLLECTOR_SINKS}) if collector else placeholder
    relay = await Relay(
        [
            Destination(sinks[FULL_SINK], ("metrics", "logs"), {"Authorization": f"Bearer {COLLECTOR_KEY}", COLLECTOR_HEADER[0]: COLLECTOR_HEADER[1]}),
            Destination(sinks[DEFAULTS_SINK], ("metrics",), {}),
        ],
        sloppy=sloppy,
    ).start()
    state = _state(relay.port, collector)
    telemetry = [item for item in REGISTRY.checks if set(item.ids) & set(RELAY_CHECKS)]
    try:
        async with aiohttp.ClientSession() as session:
            suite = Suite(Target(state.public_url, session), state, session, signin="token", token=TOKEN, admin_key=None)
            results = [await runner.run_check(suite, item) for item in telemetry]
    finally:
        await relay.close()
    outcomes = {rid: result.verdicts.outcome(rid) for result in results for rid in result.ids}
    findings = {rid: [f.what for r in results if rid in r.ids for f in r.verdicts.reasons(rid)] for rid in outcomes}
    return outcomes, findings


async def test_a_relay_that_forwards_once_passes_everything_but_gatehouses_retries(collector: OtlpCollector) -> None:
    outcomes, findings = await _outcomes(collector, sloppy=False)
    assert outcomes == {"TEL-2": Outcome.PASS, "TEL-3": Outcome.PASS, "TEL-4": Outcome.PASS, "TEL-8": Outcome.FAIL}, findings
    assert "in order" in findings["TEL-8"][0]


async def test_a_relay_that_leaks_waits_and_retries_rejections_fails(collector: OtlpCollector) -> None:
    outcomes, findings = await _outcomes(collector, sloppy=True)
    assert outcomes["TEL-2"] is Outcome.FAIL and outcomes["TEL-3"] is Outcome.FAIL and outcomes["TEL-4"] is Outcome.FAIL, findings
    assert "the client's bearer never reaches a destination" in findings["TEL-2"]
    assert any("at <url>/v1/" in what for what in findings["TEL-2"]), "the base URL's path was dropped"
    assert findings["TEL-3"] == ["an export while one destination holds its answer"], "the client waited on the stall"
    assert "a rejected export is sent once" in findings["TEL-4"]


async def test_the_telemetry_checks_skip_without_a_collector() -> None:
    outcomes, _ = await _outcomes(None, sloppy=False)
    assert set(outcomes.values()) == {Outcome.SKIP}
    tel6 = next(item for item in REGISTRY.checks if "TEL-6" in item.ids)
    async with aiohttp.ClientSession() as session:
        state = _state(9, None)
        suite = Suite(Target(state.public_url, session), state, session, signin="token", token=TOKEN, admin_key=None)
        result = await runner.run_check(suite, tel6)
    assert result.verdicts.outcome("TEL-6") is Outcome.SKIP
    assert "--no-telemetry" in result.verdicts.reasons("TEL-6")[0].what
