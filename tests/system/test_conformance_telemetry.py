"""The telemetry checks against small relays on loopback, judged at the real fake collectors.

Gatehouse's own run (test_conformance.py) shows the checks pass a relay that
buffers, retries and stamps. Here relays written for the test show the rest:

* one that forwards each export once in the background and never retries
  (what Anthropic's gateway does over HTTP, here with a gRPC destination too)
  passes TEL-2, TEL-3 and TEL-4, and fails TEL-8 and, of TEL-9, only what
  takes a retry;
* one that gets the protocol wrong (it hands the client's bearer and headers
  on, drops the base URL's path, answers only once every destination has,
  sends a rejected export again, and converts OTLP/JSON with protobuf's own
  JSON mapping, which reads hex ids as base64) fails TEL-2, TEL-3, TEL-4 and
  TEL-9;
* where the fixtures declare identity stamping, one that stamps (with
  Gatehouse's stamping module) passes TEL-2 and TEL-10, one that relays the
  bytes as sent still passes TEL-2 and fails TEL-10, and one that changes
  more than the identity fails TEL-2.

With no collector in the fixtures, or no ``gatehouse:`` section, the checks
that need them report SKIP.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
import grpc
import pytest
from aiohttp import web
from google.protobuf import json_format

from gateway.telemetry.otlp_body import BodyRejected, export_request
from gateway.telemetry.stamp import stamp
from protocol_spec.conformance import checks, otlp, runner  # noqa: F401  (registers the checks)
from protocol_spec.conformance.checks import telemetry as telemetry_checks
from protocol_spec.conformance.context import Suite
from protocol_spec.conformance.fixtures import (
    COLLECTOR_HEADER,
    COLLECTOR_SINKS,
    DEFAULTS_SINK,
    FULL_SINK,
    GRPC_COLLECTOR_HEADER,
    GRPC_SINK,
    GRPC_SINKS,
    USERS,
    FixtureState,
    collector_destinations,
)
from protocol_spec.conformance.target import Target
from protocol_spec.conformance.verdicts import REGISTRY, Outcome
from protocol_spec.fakes.otlp_collector import OtlpCollector
from protocol_spec.fakes.otlp_grpc_collector import METHODS, OtlpGrpcCollector

TOKEN = "client-token-for-the-relay"
COLLECTOR_KEY = "collector-key"
RELAY_CHECKS = ("TEL-2", "TEL-3", "TEL-4", "TEL-8", "TEL-9")
# Not sent on by even the sloppy relay: what the HTTP stack or gRPC sets itself.
HOP_HEADERS = frozenset({"host", "content-length", "content-type", "content-encoding", "user-agent", "accept", "accept-encoding"})
Stamping = Literal["no", "yes", "badly"]


@dataclass
class Destination:
    url: str
    signals: tuple[str, ...]
    headers: dict[str, str]
    grpc: bool = False


@dataclass(frozen=True)
class Caller:
    """The fixtures' normal user, as a stamping relay knows the bearer's owner."""

    sub: str
    email: str | None
    groups: tuple[str, ...]


CALLER = Caller(USERS["normal"]["sub"], USERS["normal"]["email"], tuple(USERS["normal"]["groups"]))


class Relay:
    """``POST /v1/{signal}`` with a bearer, relayed to each destination that takes the signal.

    ``sloppy=False``: answered at once, each destination tried once in the background;
    a gRPC destination gets the export made into its request by Gatehouse's own
    conversion, with the destination's headers as metadata.
    ``sloppy=True``: the client's headers go along (bearer included), the base URL's
    path is dropped, the client waits for every destination, a rejected export is
    sent once more, and OTLP/JSON is read with protobuf's JSON mapping.
    ``stamping``: "yes" stamps every export with :data:`CALLER` (Gatehouse's stamping
    module) and drops one it cannot read; "badly" also takes ``service.name`` off
    every resource of a protobuf export.
    """

    def __init__(self, destinations: list[Destination], *, sloppy: bool, stamping: Stamping = "no") -> None:
        self.destinations = destinations
        self.sloppy = sloppy
        self.stamping = stamping
        self.channels: dict[str, grpc.aio.Channel] = {}
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
        for channel in self.channels.values():
            await channel.close()

    async def ingest(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.Response(status=401)
        signal, body = request.match_info["signal"], await request.read()
        content_type = request.headers.get("Content-Type", "application/x-protobuf")
        encoding = request.headers.get("Content-Encoding")
        if self.stamping != "no":
            try:
                body = self.stamped(signal, body, content_type, encoding)
            except BodyRejected:
                return web.Response(status=200)
        wanted = [d for d in self.destinations if signal in d.signals]
        if self.sloppy:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            await asyncio.gather(*(self.deliver(d, signal, body, headers) for d in wanted))
        else:
            headers = {"Content-Type": content_type}
            if encoding:
                headers["Content-Encoding"] = encoding
            for destination in wanted:
                task = asyncio.create_task(self.deliver(destination, signal, body, headers))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        return web.Response(status=200)

    def stamped(self, signal: str, body: bytes, content_type: str, encoding: str | None) -> bytes:
        body = stamp(signal, body, content_type, encoding, CALLER)
        if self.stamping == "badly" and content_type == otlp.PROTOBUF and not encoding:
            request = otlp.REQUESTS[signal].FromString(body)
            (entries,) = request.DESCRIPTOR.fields
            for entry in getattr(request, entries.name):
                kept = [kv for kv in entry.resource.attributes if kv.key != "service.name"]
                del entry.resource.attributes[:]
                entry.resource.attributes.extend(kept)
            body = request.SerializeToString()
        return body

    async def deliver(self, destination: Destination, signal: str, body: bytes, headers: dict[str, str]) -> None:
        if destination.grpc:
            return await self.deliver_grpc(destination, signal, body, headers)
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

    async def deliver_grpc(self, destination: Destination, signal: str, body: bytes, headers: dict[str, str]) -> None:
        content_type, encoding = headers.get("Content-Type"), headers.get("Content-Encoding")
        metadata = [(k.lower(), v) for k, v in destination.headers.items()]
        try:
            if self.sloppy:
                metadata += [(k.lower(), v) for k, v in headers.items() if k.lower() not in HOP_HEADERS]
                data = otlp.unpacked(body, encoding) or b""
                request = data if content_type == otlp.PROTOBUF else json_format.Parse(data, otlp.REQUESTS[signal]()).SerializeToString()
            else:
                request = export_request(signal, body, content_type, encoding)
        except (BodyRejected, json_format.ParseError):
            return
        channel = self.channels.get(destination.url)
        if channel is None:
            channel = self.channels[destination.url] = grpc.aio.insecure_channel(urlsplit(destination.url).netloc)
        export = channel.unary_unary(METHODS[signal], request_serializer=None, response_deserializer=None)
        for _ in range(2 if self.sloppy else 1):
            try:
                await export(request, metadata=tuple(metadata), timeout=5)
                return
            except grpc.aio.AioRpcError:
                continue


def _state(
    relay_port: int, collector: OtlpCollector | None, grpc_collector: OtlpGrpcCollector | None = None, *, stamp_identity: bool = False
) -> FixtureState:
    sinks = collector_destinations({name: collector.url(name) for name in COLLECTOR_SINKS}) if collector else {}
    return FixtureState(
        pid=0, config_path="", env_path="", public_url=f"http://127.0.0.1:{relay_port}", gateway_port=relay_port,
        fake_url="http://127.0.0.1:9", idp_url="http://127.0.0.1:9", users=USERS, env={}, jwt_secret="unused",
        primary_key="k", secondary_key="k2", admin_write_key="", admin_read_key="",
        collector_url=collector.control_url if collector else "", collector_sinks=sinks,
        collector_key=COLLECTOR_KEY if collector else "",
        grpc_collector_url=grpc_collector.control_url if grpc_collector else "",
        grpc_sinks={name: grpc_collector.url(name) for name in GRPC_SINKS} if grpc_collector else {},
        stamp_identity=stamp_identity,
    )


@pytest.fixture(autouse=True)
def quick_arrivals(monkeypatch: pytest.MonkeyPatch) -> None:
    # These relays deliver on loopback within milliseconds or never; the checks' own wait is
    # sized for a gateway's backoff, and a check here would sit it out for what never comes.
    monkeypatch.setattr(telemetry_checks, "ARRIVAL_S", 3.0)


@pytest.fixture
async def collector() -> AsyncIterator[OtlpCollector]:
    async with OtlpCollector(COLLECTOR_SINKS) as running:
        yield running


@pytest.fixture
async def grpc_collector() -> AsyncIterator[OtlpGrpcCollector]:
    async with OtlpGrpcCollector(GRPC_SINKS) as running:
        yield running


async def _outcomes(
    collector: OtlpCollector | None,
    grpc_collector: OtlpGrpcCollector | None = None,
    *,
    sloppy: bool,
    stamping: Stamping = "no",
    stamp_identity: bool = False,
    ids: tuple[str, ...] = RELAY_CHECKS,
) -> tuple[dict[str, Outcome], dict[str, list[str]]]:
    """Each check's outcome per ID (for the checks covering ``ids``), and the findings behind it."""
    placeholder = {name: f"http://127.0.0.1:9/{name}" for name in COLLECTOR_SINKS}
    sinks = collector_destinations({name: collector.url(name) for name in COLLECTOR_SINKS}) if collector else placeholder
    destinations = [
        Destination(sinks[FULL_SINK], ("metrics", "logs"), {"Authorization": f"Bearer {COLLECTOR_KEY}", COLLECTOR_HEADER[0]: COLLECTOR_HEADER[1]}),
        Destination(sinks[DEFAULTS_SINK], ("metrics",), {}),
    ]
    if grpc_collector is not None:
        headers = {"Authorization": f"Bearer {COLLECTOR_KEY}", GRPC_COLLECTOR_HEADER[0]: GRPC_COLLECTOR_HEADER[1]}
        destinations.append(Destination(grpc_collector.url(GRPC_SINK), ("metrics", "logs"), headers, grpc=True))
    relay = await Relay(destinations, sloppy=sloppy, stamping=stamping).start()
    state = _state(relay.port, collector, grpc_collector, stamp_identity=stamp_identity)
    chosen = [item for item in REGISTRY.checks if set(item.ids) & set(ids)]
    try:
        async with aiohttp.ClientSession() as session:
            suite = Suite(Target(state.public_url, session), state, session, signin="token", token=TOKEN, admin_key=None)
            results = [await runner.run_check(suite, item) for item in chosen]
    finally:
        await relay.close()
    outcomes = {rid: result.verdicts.outcome(rid) for result in results for rid in result.ids}
    findings = {rid: [f.what for r in results if rid in r.ids for f in r.verdicts.reasons(rid)] for rid in outcomes}
    return outcomes, findings


async def test_a_relay_that_forwards_once_passes_everything_but_gatehouses_retries(
    collector: OtlpCollector, grpc_collector: OtlpGrpcCollector
) -> None:
    outcomes, findings = await _outcomes(collector, grpc_collector, sloppy=False)
    assert outcomes == {
        "TEL-2": Outcome.PASS, "TEL-3": Outcome.PASS, "TEL-4": Outcome.PASS, "TEL-8": Outcome.FAIL, "TEL-9": Outcome.FAIL,
    }, findings
    assert "in order" in findings["TEL-8"][0]
    assert findings["TEL-9"] == [
        "RESOURCE_EXHAUSTED with a RetryInfo is retried, and delivered",
        "after UNAVAILABLE, every export delivered once it is back, once each, in order",
    ], "the conversions, the metadata and the rejections pass"


async def test_a_relay_that_leaks_waits_and_retries_rejections_fails(
    collector: OtlpCollector, grpc_collector: OtlpGrpcCollector
) -> None:
    outcomes, findings = await _outcomes(collector, grpc_collector, sloppy=True)
    assert all(outcomes[rid] is Outcome.FAIL for rid in ("TEL-2", "TEL-3", "TEL-4", "TEL-9")), findings
    assert "the client's bearer never reaches a destination" in findings["TEL-2"]
    assert any("at <url>/v1/" in what for what in findings["TEL-2"]), "the base URL's path was dropped"
    assert findings["TEL-3"] == ["an export while one destination holds its answer"], "the client waited on the stall"
    assert "a rejected export is sent once" in findings["TEL-4"]
    tel9 = set(findings["TEL-9"])
    assert "the logs export (application/json, identity): the equivalent request message" in tel9, "hex ids read as base64"
    assert "the metrics export (application/x-protobuf, identity): neither the client's bearer nor its headers in the metadata" in tel9
    assert "INVALID_ARGUMENT rejects the export: it is not sent again" in tel9


async def test_with_stamping_declared_tel2_is_judged_on_content_and_tel10_on_the_stamps(
    collector: OtlpCollector, grpc_collector: OtlpGrpcCollector
) -> None:
    ids = ("TEL-2", "TEL-10")
    stamped, findings = await _outcomes(collector, grpc_collector, sloppy=False, stamping="yes", stamp_identity=True, ids=ids)
    assert stamped == {"TEL-2": Outcome.PASS, "TEL-10": Outcome.PASS}, findings
    assert any("apart from the identity attributes" in what for what in findings["TEL-2"])
    plain, findings = await _outcomes(collector, grpc_collector, sloppy=False, stamp_identity=True, ids=ids)
    assert plain["TEL-2"] is Outcome.PASS, "bytes relayed as sent are unchanged whatever the fixtures declare"
    assert plain["TEL-10"] is Outcome.FAIL and "an export that cannot be stamped is never forwarded" in findings["TEL-10"]
    assert any("the resource names the bearer" in what for what in findings["TEL-10"])
    badly, findings = await _outcomes(collector, grpc_collector, sloppy=False, stamping="badly", stamp_identity=True, ids=ids)
    assert badly["TEL-2"] is Outcome.FAIL, findings
    assert "full destination: the metrics export (application/x-protobuf, identity): unchanged, apart from the identity " \
           "attributes stamped (TEL-10)" in findings["TEL-2"]


async def test_the_telemetry_checks_skip_without_a_collector() -> None:
    outcomes, _ = await _outcomes(None, sloppy=False, ids=(*RELAY_CHECKS, "TEL-10", "TEL-12"))
    assert set(outcomes.values()) == {Outcome.SKIP}
    tel6 = next(item for item in REGISTRY.checks if "TEL-6" in item.ids)
    async with aiohttp.ClientSession() as session:
        state = _state(9, None)
        suite = Suite(Target(state.public_url, session), state, session, signin="token", token=TOKEN, admin_key=None)
        result = await runner.run_check(suite, tel6)
    assert result.verdicts.outcome("TEL-6") is Outcome.SKIP
    assert "--no-telemetry" in result.verdicts.reasons("TEL-6")[0].what


async def test_gatehouses_own_telemetry_checks_skip_without_its_section(collector: OtlpCollector) -> None:
    """The fixtures without a ``gatehouse:`` section: an HTTP collector, and nothing of TEL-9 to TEL-12."""
    outcomes, findings = await _outcomes(collector, sloppy=False, ids=("TEL-9", "TEL-10", "TEL-11", "TEL-12"))
    assert outcomes == {rid: Outcome.SKIP for rid in ("TEL-9", "TEL-10", "TEL-11", "TEL-12")}
    assert all("--no-gatehouse-section" in what for found in findings.values() for what in found), findings
