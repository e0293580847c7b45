"""The OpenTelemetry SDK's own OTLP/HTTP exporters as clients of a real gateway
relaying to a loopback collector: verbatim without stamping, the server's identity
with it (on the resources, and in place of forged claims on points, records and
spans), per-signal opt-in; and a thousand exporters at once against a stalled
collector (every client answered, the queue within its bound, drops counted, the
gateway serving /v1/messages meanwhile)."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
import requests
from google.protobuf.message import Message
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from bench.stamp import claude_code_metrics
from gateway.http.keys import RUNTIME
from gateway.telemetry.stamp import IDENTITY_KEYS, INSTALLATION_ID, MAX_STAMPED_BYTES
from tests.harness import free_port
from tests.telemetry.collector import Collector
from tests.telemetry.otlp_attributes import claims_below, padded_to, without_identity

MESSAGES = {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
# What a modified client might claim on its resource.
FORGED = {"service.name": "claude-code", "service.version": "2.1.328", "user.email": "ceo@example.com",
          "user.id": "someone-else", "identity.source": "trust-me"}
MESSAGE_CLASSES: dict[str, type[Message]] = {
    "/v1/metrics": ExportMetricsServiceRequest, "/v1/logs": ExportLogsServiceRequest,
    "/v1/traces": ExportTraceServiceRequest,
}
FIELDS = {"/v1/metrics": "resource_metrics", "/v1/logs": "resource_logs", "/v1/traces": "resource_spans"}


async def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def collectors() -> AsyncIterator[Callable[[], Awaitable[Collector]]]:
    made: list[Collector] = []

    async def make() -> Collector:
        made.append(await Collector().start())
        return made[-1]

    yield make
    for c in made:
        await c.close()


def config(*destinations: str, stamp: bool = False, queue_max_bytes: int | None = None) -> str:
    lines = ["telemetry:", "  forward_to:"]
    for d in destinations:
        lines.append(f"    - {d}")
    lines += ["gatehouse:", "  telemetry:", f"    stamp_identity: {'true' if stamp else 'false'}"]
    if queue_max_bytes:
        lines.append(f"    queue_max_bytes: {queue_max_bytes}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------ the SDK's exporters, in a thread


@dataclass
class Sent:
    """What the SDK's exporters put on the wire, and what the gateway answered."""

    bodies: dict[str, list[bytes]] = field(default_factory=dict)
    statuses: list[int] = field(default_factory=list)

    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False  # loopback only, whatever proxy the environment names

        def record(response: requests.Response, *args: object, **kwargs: object) -> None:
            path = response.request.path_url
            self.bodies.setdefault(path, []).append(response.request.body)  # type: ignore[arg-type]
            self.statuses.append(response.status_code)

        s.hooks["response"].append(record)
        return s


def export_with_the_sdk(base: str, bearer: str, sent: Sent, *, compression: Compression = Compression.NoCompression) -> None:
    """One export per signal through the SDK's OTLP/HTTP exporters (blocking: run in a thread)."""
    headers = {"Authorization": f"Bearer {bearer}"}
    resource = Resource(FORGED)

    metrics = OTLPMetricExporter(
        endpoint=f"{base}/v1/metrics", headers=headers, compression=compression, session=sent.session(), timeout=10)
    reader = PeriodicExportingMetricReader(metrics, export_interval_millis=math.inf)  # no timer: flushed by hand
    meters = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
    meter = meters.get_meter("com.anthropic.claude_code", "2.1.328")
    meter.create_counter("claude_code.session.count").add(
        1, {"session.id": "s-1", "user.id": "9f2c" * 16, "user.email": "ceo@example.com"})
    meter.create_counter("claude_code.token.usage", unit="tokens").add(1834, {"type": "input", "model": "claude-sonnet-4-6"})
    meters.force_flush()
    meters.shutdown()

    loggers = LoggerProvider(resource=resource, shutdown_on_exit=False)
    loggers.add_log_record_processor(SimpleLogRecordProcessor(
        OTLPLogExporter(endpoint=f"{base}/v1/logs", headers=headers, compression=compression, session=sent.session(), timeout=10)))
    loggers.get_logger("com.anthropic.claude_code.events").emit(
        body="claude_code.api_request", event_name="claude_code.api_request",
        attributes={"model": "claude-sonnet-4-6", "input_tokens": 1834, "user.email": "point-level@example.com"},
    )
    loggers.shutdown()

    tracers = TracerProvider(resource=resource, shutdown_on_exit=False)
    tracers.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=f"{base}/v1/traces", headers=headers, compression=compression, session=sent.session(), timeout=10)))
    tracers.get_tracer("com.anthropic.claude_code").start_span(
        "claude_code.request", attributes={"model": "x", "user.id": "someone-else", "user.groups": "admins"}).end()
    tracers.shutdown()


def decoded(path: str, body: bytes, encoding: str | None = None) -> Message:
    return MESSAGE_CLASSES[path].FromString(gzip.decompress(body) if encoding == "gzip" else body)


def identity_of(message: Message, path: str) -> list[dict[str, str]]:
    """Per resource: its identity attributes."""
    return [
        {kv.key: kv.value.string_value for kv in entry.resource.attributes if kv.key in IDENTITY_KEYS}
        for entry in getattr(message, FIELDS[path])
    ]


def corrected_claims(message: Message, email: str, sub: str) -> list[tuple[str, str, str]]:
    """The claims below the resources of a sent export, as stamping must leave them."""
    kept = {"user.email": lambda v: email, "user.id": lambda v: v if INSTALLATION_ID.fullmatch(v) else sub}
    return [(where, key, kept[key](value)) for where, key, value in claims_below(message) if key in kept]


# ------------------------------------------------------------ stamping off: verbatim


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
async def test_without_stamping_the_sdks_exports_arrive_byte_identical(gateway_factory, fake_upstream, collectors, compression):
    c = await collectors()
    gw = await gateway_factory([fake_upstream.url], config(f"{{url: {c.url}, logs: true, traces: true}}"))
    sent = Sent()
    await asyncio.to_thread(export_with_the_sdk, gw.url, gw.token(), sent, compression=compression)
    assert sent.statuses == [200, 200, 200]
    await until(lambda: len(c.received) == 3)
    for r in c.received:
        assert [r.body] == sent.bodies[r.path]
        assert r.header("Content-Type") == "application/x-protobuf"
        assert r.header("Content-Encoding") == ("gzip" if compression is Compression.Gzip else None)
        assert r.header("Authorization") is None  # the developer's bearer never travels
    # The client's claims went through as it sent them: stamping is off.
    metrics = decoded("/v1/metrics", c.bodies("/v1/metrics")[0], c.received[0].header("Content-Encoding"))
    assert identity_of(metrics, "/v1/metrics") == [{"user.email": "ceo@example.com", "user.id": "someone-else",
                                                    "identity.source": "trust-me"}]


# ------------------------------------------------------------ stamping on


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
async def test_with_stamping_every_export_carries_the_servers_identity(gateway_factory, fake_upstream, collectors, compression):
    everything, metrics_only = await collectors(), await collectors()
    gw = await gateway_factory(
        [fake_upstream.url],
        config(f"{{url: {everything.url}, logs: true, traces: true}}", f"{{url: {metrics_only.url}}}", stamp=True),
    )
    sent = Sent()
    token = gw.token(email="ada@example.com", sub="00u-ada", groups=["eng", "ml-platform"])
    await asyncio.to_thread(export_with_the_sdk, gw.url, token, sent, compression=compression)
    assert sent.statuses == [200, 200, 200]
    await until(lambda: len(everything.received) == 3 and len(metrics_only.received) == 1)
    ada = {"user.id": "00u-ada", "user.email": "ada@example.com", "user.groups": "eng,ml-platform",
           "identity.source": "gateway-oidc"}
    for r in [*everything.received, *metrics_only.received]:
        encoding = r.header("Content-Encoding")
        assert encoding == ("gzip" if compression is Compression.Gzip else None)
        got = decoded(r.path, r.body, encoding)
        assert identity_of(got, r.path) == [ada]  # the forged email, id and source are gone from the resource
        original = decoded(r.path, sent.bodies[r.path][0], encoding)
        # Below the resources: the forged email is the caller's, a forged id the sub, the
        # installation hash kept, groups and source gone.
        assert claims_below(original) and claims_below(got) == corrected_claims(original, "ada@example.com", "00u-ada")
        # Everything else is what the SDK sent.
        assert without_identity(got) == without_identity(original)
    assert [r.path for r in metrics_only.received] == ["/v1/metrics"]  # per-signal opt-in still holds
    claims = {r.path: claims_below(decoded(r.path, r.body, r.header("Content-Encoding"))) for r in everything.received}
    assert claims == {
        "/v1/metrics": [("sum point", "user.id", "9f2c" * 16), ("sum point", "user.email", "ada@example.com")],
        "/v1/logs": [("log record", "user.email", "ada@example.com")],
        "/v1/traces": [("span", "user.id", "00u-ada")],
    }


async def test_an_export_that_cannot_be_stamped_is_answered_200_and_never_relayed(gateway_factory, fake_upstream, collectors):
    c, metrics_only = await collectors(), await collectors()
    gw = await gateway_factory([fake_upstream.url], config(f"{{url: {c.url}, logs: true}}", f"{{url: {metrics_only.url}}}", stamp=True))
    relay = gw.app[RUNTIME].relay
    good = claude_code_metrics().SerializeToString()
    forged_json = json.dumps({"resourceLogs": [{"resource": {"attributes": [
        {"key": "user.email", "value": {"stringValue": "ceo@example.com"}}]}}]}).encode()
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        for path, body, headers in [
            ("/v1/metrics", b"\x0a\xff\xff\xff\xff\x0f", {"Content-Type": "application/x-protobuf"}),
            ("/v1/logs", b"user.email=ceo@example.com", {"Content-Type": "text/plain"}),
            ("/v1/logs", gzip.compress(forged_json)[:-4], {"Content-Type": "application/json", "Content-Encoding": "gzip"}),
            ("/v1/metrics", good, {"Content-Type": "application/x-protobuf"}),
            ("/v1/logs", forged_json, {"Content-Type": "application/json"}),
        ]:
            async with s.post(gw.url + path, data=body, headers={**gw.auth(), **headers}) as r:
                assert (r.status, await r.read()) == (200, b"")
    await until(lambda: len(c.received) == 2 and len(metrics_only.received) == 1)
    assert [r.path for r in c.received] == ["/v1/metrics", "/v1/logs"]  # only the two it could stamp
    stamped_log = json.loads(c.received[1].body)["resourceLogs"][0]["resource"]["attributes"]
    assert {a["key"]: a["value"]["stringValue"] for a in stamped_log}["user.email"] == "dev@example.com"
    # Counted for each destination that would have taken the signal: the second takes metrics only.
    assert [counts["unstampable"] for counts in relay.counters().values()] == [3, 1]
    assert all(counts["dropped"] == 0 for counts in relay.counters().values())  # never queued, so not a queue drop


async def test_large_exports_are_stamped_up_to_the_bound_and_dropped_past_it(gateway_factory, fake_upstream, collectors):
    c = await collectors()
    gw = await gateway_factory([fake_upstream.url], config(f"{{url: {c.url}}}", stamp=True))
    relay = gw.app[RUNTIME].relay
    big = padded_to(claude_code_metrics(), 1024 * 1024)  # stamped in a worker thread, as is anything compressed
    past = padded_to(claude_code_metrics(), MAX_STAMPED_BYTES + 1)
    gzipped = {"Content-Encoding": "gzip"}
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        for body, headers in [(past, {}), (big, {}), (gzip.compress(past), gzipped), (gzip.compress(big), gzipped)]:
            async with s.post(gw.url + "/v1/metrics", data=body, headers={
                    **gw.auth(), "Content-Type": "application/x-protobuf", **headers}) as r:
                assert (r.status, await r.read()) == (200, b"")
    await until(lambda: len(c.received) == 2)
    assert relay.counters()[f"forward_to[0] {c.url}"]["unstampable"] == 2  # both past the bound, never relayed
    for r in c.received:
        got = decoded("/v1/metrics", r.body, r.header("Content-Encoding"))
        attrs = {kv.key: kv.value.string_value for kv in got.resource_metrics[0].resource.attributes}
        assert (attrs["user.email"], attrs["identity.source"]) == ("dev@example.com", "gateway-oidc")
        assert len(attrs["padding"]) > 1024 * 1000
    assert [r.header("Content-Encoding") for r in c.received] == [None, "gzip"]


# ------------------------------------------------------------ a thousand exporters at once


@pytest.mark.parametrize("destination", ["stalled", "down"])
async def test_a_thousand_exporters_at_once(gateway_factory, fake_upstream, collectors, destination):
    bound = 1024 * 1024
    if destination == "stalled":
        c = await collectors()
        c.answers = ["stall"]  # the first export is held; nothing is delivered until release
        url = c.url
    else:
        url = f"http://127.0.0.1:{free_port()}"  # nobody listens: every try is refused
    gw = await gateway_factory([fake_upstream.url], config(f"{{url: {url}}}", stamp=True, queue_max_bytes=bound))
    relay = gw.app[RUNTIME].relay
    name = f"forward_to[0] {url}"

    def body(i: int) -> bytes:
        # A realistic export, tagged with its exporter so the stamp can be checked against it.
        request = claude_code_metrics()
        request.resource_metrics[0].resource.attributes.add(key="session.id").value.string_value = f"session-{i:04d}"
        request.resource_metrics[0].resource.attributes.add(key="user.id").value.string_value = "forged"
        return request.SerializeToString()

    exports = [(gw.token(sub=f"user-{i:04d}", email=f"u{i}@example.com"), body(i)) for i in range(1000)]
    assert sum(len(b) for _, b in exports) > 2 * bound  # the queue cannot hold them all

    # One connection per exporter, all at once.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as client:
        async def export(token: str, data: bytes) -> int:
            async with client.post(gw.url + "/v1/metrics", data=data, headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/x-protobuf"}) as r:
                return r.status

        async def inference() -> int:
            async with client.post(gw.url + "/v1/messages", json=MESSAGES, headers=gw.auth()) as r:
                await r.read()
                return r.status

        results = await asyncio.gather(*(export(t, b) for t, b in exports), *(inference() for _ in range(20)))
        assert results == [200] * 1020  # every exporter answered, and inference served alongside
        counts = relay.counters()[name]
        assert counts["peak_queued_bytes"] <= bound and counts["queued_bytes"] <= bound
        assert counts["dropped"] > 0 and counts["sent"] == 0
        # The destination is still stuck and its queue full: the gateway keeps serving.
        assert [await inference() for _ in range(5)] == [200] * 5

    if destination == "down":
        await relay.drain(0.1)  # what shutdown does; nothing can be delivered
        counts = relay.counters()[name]
        assert counts["retried"] >= 1 and (counts["sent"], counts["dropped"], counts["queued"]) == (0, 1000, 0)
        return
    c.release.set()
    await until(lambda: relay.counters()[name]["queued"] == 0 and relay.counters()[name]["sent"] > 0)
    await until(lambda: relay.counters()[name]["sent"] + relay.counters()[name]["dropped"] == 1000)
    assert len(c.received) == relay.counters()[name]["sent"]
    # Each delivered export carries its own exporter's identity, not a neighbour's.
    for r in c.received:
        attrs = {kv.key: kv.value.string_value for kv in
                 ExportMetricsServiceRequest.FromString(r.body).resource_metrics[0].resource.attributes}
        assert attrs["user.id"] == "user-" + attrs["session.id"].removeprefix("session-")
        assert attrs["identity.source"] == "gateway-oidc"
