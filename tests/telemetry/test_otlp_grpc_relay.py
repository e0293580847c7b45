"""OTLP/gRPC destinations (``gatehouse.protocol: grpc``) against a real grpcio
collector on loopback: requests as the client's bytes or their converted
equivalent, metadata, outcomes per gRPC code, outages on an injected sleep,
egress (address guard, proxy, TLS), and the same exports through a running
gateway next to an OTLP/HTTP destination."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import grpc
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.config.addresses import is_forbidden_address
from gateway.config.schema import ForwardTo, ForwardToGatehouse
from gateway.http.keys import RUNTIME
from gateway.telemetry.otlp_body import MAX_DECOMPRESSED_BYTES
from gateway.telemetry.relay import Relay
from gateway.upstreams.egress import Egress, parse_proxy
from gateway.upstreams.transport import Transport
from tests.harness import free_port, self_signed_cert
from tests.telemetry.collector import Collector
from tests.telemetry.grpc_collector import GrpcCollector, Partial, Retry
from tests.telemetry.test_otlp_relay import Sleeps, numbered, stop, until

GRPC = ForwardToGatehouse(protocol="grpc")
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TRACE_ID = "5b8efff798038103d269b633813fc60c"


def grpc_dest(url: str, **kw) -> ForwardTo:
    return ForwardTo(url=url, gatehouse=GRPC, **kw)


def metrics_request(name: str = "claude_code.token.usage", value: float = 1.0) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    metric = request.resource_metrics.add().scope_metrics.add().metrics.add(name=name)
    metric.sum.data_points.add(as_double=value)
    return request


def logs_request(text: str = "user_prompt") -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.add().body.string_value = text
    return request


TRACE_JSON = {"resourceSpans": [{"scopeSpans": [{"spans": [
    {"traceId": TRACE_ID, "spanId": "eee19b7ec3c1b174", "name": "claude_code.interaction", "kind": 1,
     "startTimeUnixNano": "1544712660000000000"},
]}]}]}


@pytest.fixture
async def collectors() -> AsyncIterator[Callable[..., Awaitable[GrpcCollector]]]:
    made: list[GrpcCollector] = []

    async def make(port: int = 0, tls: tuple[bytes, bytes] | None = None) -> GrpcCollector:
        c = await GrpcCollector(port=port, tls=tls).start()
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


def counts(relay: Relay, url: str, index: int = 0) -> dict[str, int]:
    return relay.counters()[f"forward_to[{index}] {url}"]


# ------------------------------------------------------------ what arrives


async def test_protobuf_exports_arrive_as_the_request_byte_for_byte(transport, collectors, relays):
    c = await collectors()
    relay = relays([grpc_dest(c.url, logs=True, traces=True)], transport)
    metrics, logs = metrics_request().SerializeToString(), logs_request().SerializeToString()
    not_otlp = b"\x0a\xffnot a message at all"  # never decoded, so sent all the same
    relay.submit("metrics", metrics, PROTOBUF, None)
    relay.submit("logs", logs, None, None)
    relay.submit("traces", not_otlp, PROTOBUF, None)
    relay.submit("metrics", b"", PROTOBUF, None)
    await until(lambda: counts(relay, c.url)["sent"] == 4)
    assert [(r.signal, r.body) for r in c.received] == [
        ("metrics", metrics), ("logs", logs), ("traces", not_otlp), ("metrics", b"")
    ]
    assert [r.method for r in c.received][:3] == [
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    ]
    assert counts(relay, c.url)["sent"] == 4


async def test_gzip_and_json_exports_arrive_as_the_equivalent_message(transport, collectors, relays):
    c = await collectors()
    relay = relays([grpc_dest(c.url, logs=True, traces=True)], transport)
    metrics = metrics_request()
    relay.submit("metrics", gzip.compress(metrics.SerializeToString()), PROTOBUF, "gzip")
    relay.submit("logs", json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"body": {"stringValue": "user_prompt"}}]}]}]}).encode(), "application/json; charset=utf-8", None)
    relay.submit("traces", gzip.compress(json.dumps(TRACE_JSON).encode()), JSON, "gzip")
    await until(lambda: len(c.received) == 3)
    got_metrics, got_logs, got_traces = (r.message() for r in c.received)
    assert got_metrics == metrics
    assert got_logs == logs_request()
    span = got_traces.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id == bytes.fromhex(TRACE_ID) and span.kind == 1 and span.name == "claude_code.interaction"
    assert span.start_time_unix_nano == 1544712660000000000


async def test_headers_reach_the_collector_as_lower_case_metadata(transport, collectors, relays):
    c = await collectors()
    logs: list[tuple[str, str]] = []
    headers = {"Authorization": "Bearer collector-key", "X-Scope-OrgID": "tenant-1", "TE": "trailers"}
    relay = relays([grpc_dest(c.url, headers=headers), grpc_dest(c.url)], transport,
                   log=lambda level, msg: logs.append((level, msg)))
    relay.submit("metrics", b"m", PROTOBUF, None)
    await until(lambda: len(c.received) == 2)
    with_headers = next(r for r in c.received if r.header("x-scope-orgid"))
    without = next(r for r in c.received if r is not with_headers)
    assert with_headers.header("authorization") == "Bearer collector-key"
    assert with_headers.header("x-scope-orgid") == "tenant-1"
    assert without.header("authorization") is None and without.header("x-scope-orgid") is None
    # A name gRPC keeps for itself is left out, said once at start.
    assert [msg for _, msg in logs if "cannot be sent as gRPC metadata" in msg] and "TE" in logs[0][1]


# ------------------------------------------------------------ rejections


async def test_a_body_that_cannot_become_a_request_is_rejected_and_counted_not_retried(transport, collectors, relays):
    c = await collectors()
    sleeps = Sleeps()
    logs: list[tuple[str, str]] = []
    relay = relays([grpc_dest(c.url)], transport, sleep=sleeps, log=lambda level, msg: logs.append((level, msg)))
    bomb = gzip.compress(b"\0" * (MAX_DECOMPRESSED_BYTES + 1), compresslevel=9)
    relay.submit("metrics", b'{"resourceMetrics": [', JSON, None)
    relay.submit("metrics", bomb, PROTOBUF, "gzip")
    relay.submit("metrics", b"x", PROTOBUF, "br")
    relay.submit("metrics", b"fine", PROTOBUF, None)
    await until(lambda: counts(relay, c.url)["sent"] == 1)
    assert c.attempts == 1 and c.bodies() == [b"fine"]  # the three never reached the collector
    n = counts(relay, c.url)
    assert (n["rejected"], n["retried"], n["sent"], n["dropped"]) == (3, 0, 1, 0)
    assert sleeps.waits == []
    rejections = [msg for _, msg in logs if "rejected" in msg]
    assert len(rejections) == 1 and "not an OTLP export: not JSON" in rejections[0]  # the first, not each


async def test_rejecting_codes_are_not_retried(transport, collectors, relays):
    c = await collectors()
    c.answers = [
        grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # without RetryInfo: over the collector's size limit
    ]
    sleeps = Sleeps()
    logs: list[tuple[str, str]] = []
    relay = relays([grpc_dest(c.url)], transport, sleep=sleeps, log=lambda level, msg: logs.append((level, msg)))
    for i in range(5):
        relay.submit("metrics", numbered(i), PROTOBUF, None)
    await until(lambda: counts(relay, c.url)["sent"] == 1)
    assert c.attempts == 5 and c.bodies() == [numbered(4)] and sleeps.waits == []
    n = counts(relay, c.url)
    assert (n["rejected"], n["retried"], n["sent"]) == (4, 0, 1)
    assert "gRPC INVALID_ARGUMENT" in next(msg for _, msg in logs if "rejected" in msg)


async def test_a_partial_success_is_delivered_not_retried_and_logged(transport, collectors, relays):
    c = await collectors()
    c.answers = [Partial(2, "data points too old"), Partial(0, "a warning only")]
    logs: list[tuple[str, str]] = []
    sleeps = Sleeps()
    relay = relays([grpc_dest(c.url)], transport, sleep=sleeps, log=lambda level, msg: logs.append((level, msg)))
    for i in range(3):
        relay.submit("metrics", numbered(i), PROTOBUF, None)
    await until(lambda: counts(relay, c.url)["sent"] == 3)
    assert c.attempts == 3 and sleeps.waits == []
    assert counts(relay, c.url)["partial"] == 2
    partial = [msg for _, msg in logs if "only in part" in msg]
    assert len(partial) == 1 and "2 item(s) refused" in partial[0] and "data points too old" in partial[0]


# ------------------------------------------------------------ outages


async def test_a_collector_down_then_back_loses_nothing_and_keeps_order(transport, collectors, relays):
    port = free_port()  # nobody listens yet: every call is UNAVAILABLE
    url = f"http://127.0.0.1:{port}"
    sleeps = Sleeps(gate=True)
    logs: list[tuple[str, str]] = []
    relay = relays([grpc_dest(url, logs=True)], transport, sleep=sleeps, rng=lambda: 1.0,
                   log=lambda level, msg: logs.append((level, msg)))
    sent = [numbered(i) for i in range(20)]
    for i, body in enumerate(sent):
        relay.submit("logs" if i % 3 == 0 else "metrics", body, PROTOBUF, None)
    for n in (1, 2, 3):  # three backoffs on the injected sleep: 0.5 s, 1 s, 2 s
        await until(lambda n=n: len(sleeps.waits) == n)
        if n < 3:
            sleeps.gate.set()
            sleeps.gate = asyncio.Event()
    assert sleeps.waits == [0.5, 1.0, 2.0]
    assert (counts(relay, url)["retried"], counts(relay, url)["queued"]) == (3, 20)
    assert "gRPC UNAVAILABLE" in logs[0][1]
    c = await collectors(port)  # back
    sleeps.gate.set()
    await until(lambda: counts(relay, url)["sent"] == 20)
    assert c.bodies() == sent
    assert [r.signal for r in c.received] == ["logs" if i % 3 == 0 else "metrics" for i in range(20)]
    after = counts(relay, url)
    assert (after["sent"], after["dropped"], after["queued"], after["retried"]) == (20, 0, 0, 3)
    assert "delivers again after 3 failed tries" in logs[-1][1]


async def test_retryable_codes_are_retried_after_the_collectors_retry_info(transport, collectors, relays):
    c = await collectors()
    c.answers = [
        grpc.StatusCode.UNAVAILABLE,
        Retry(grpc.StatusCode.UNAVAILABLE, 3.0),
        Retry(grpc.StatusCode.RESOURCE_EXHAUSTED, 2.5, in_trailer=True),  # a throttle, with its delay
        grpc.StatusCode.ABORTED, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.CANCELLED,
    ]
    sleeps = Sleeps()
    relay = relays([grpc_dest(c.url)], transport, sleep=sleeps, rng=lambda: 0.0)
    relay.submit("metrics", b"one", PROTOBUF, None)
    relay.submit("metrics", b"two", PROTOBUF, None)
    await until(lambda: counts(relay, c.url)["sent"] == 2)
    assert c.bodies() == [b"one", b"two"] and c.attempts == 9
    # Exponential backoff (half of 0.5 s · 2ⁿ with rng 0), except where the collector said when.
    assert sleeps.waits == [0.25, 3.0, 2.5, 2.0, 4.0, 8.0, 15.0]  # the 30 s cap, halved
    assert counts(relay, c.url)["retried"] == 7


async def test_a_stalled_collector_hits_the_deadline_and_the_export_is_retried(transport, collectors, relays):
    c = await collectors()
    c.answers = ["stall"]
    relay = relays([grpc_dest(c.url)], transport, sleep=Sleeps(), send_timeout_s=0.3)
    relay.submit("metrics", b"m", PROTOBUF, None)
    await until(lambda: counts(relay, c.url)["sent"] == 1)
    assert counts(relay, c.url)["retried"] == 1 and c.attempts == 2


async def test_http_and_grpc_destinations_fail_independently(transport, collectors, relays):
    good_grpc = await collectors()
    http = await Collector().start()
    try:
        dead_port = free_port()
        sleeps = Sleeps(gate=True)  # the failing destinations stay in their first backoff
        dead_http, dead_grpc = f"http://127.0.0.1:{dead_port}", f"http://127.0.0.1:{free_port()}"
        relay = relays(
            [ForwardTo(url=http.url), grpc_dest(dead_grpc), ForwardTo(url=dead_http), grpc_dest(good_grpc.url)],
            transport, sleep=sleeps,
        )
        sent = [numbered(i) for i in range(30)]
        for body in sent:
            relay.submit("metrics", body, PROTOBUF, None)
        await until(lambda: len(http.received) == 30 and len(good_grpc.received) == 30)
        assert http.bodies() == sent and good_grpc.bodies() == sent
        assert counts(relay, dead_grpc, 1)["queued"] == 30 and counts(relay, dead_http, 2)["queued"] == 30
        assert await relay.drain(0.05) == 60
    finally:
        await http.close()


# ------------------------------------------------------------ drain


async def test_drain_flushes_the_queue_then_closes_the_channel(transport, collectors, relays):
    c = await collectors()
    c.answers = ["stall"]
    relay = relays([grpc_dest(c.url)], transport)
    for i in range(10):
        relay.submit("metrics", numbered(i), PROTOBUF, None)
    asyncio.get_running_loop().call_later(0.1, c.release.set)
    assert await relay.drain(5.0) == 0
    assert c.bodies() == [numbered(i) for i in range(10)]
    relay.submit("metrics", b"late", PROTOBUF, None)
    assert counts(relay, c.url)["dropped"] == 1 and c.attempts == 10


async def test_drain_cuts_a_long_retry_info_short(transport, collectors, relays):
    c = await collectors()
    c.answers = [Retry(grpc.StatusCode.UNAVAILABLE, 50.0)]
    relay = relays([grpc_dest(c.url)], transport, sleep=asyncio.sleep)  # a real sleep: only drain ends it
    relay.submit("metrics", b"m", PROTOBUF, None)
    await until(lambda: c.attempts == 1)
    assert await relay.drain(5.0) == 0
    assert c.bodies() == [b"m"]


# ------------------------------------------------------------ egress


async def test_the_address_guard_applies_before_connecting(collectors, relays):
    c = await collectors()
    strict = Transport(max_connections=5, connect_timeout_s=2.0, idle_read_timeout_s=5.0,
                       is_forbidden=lambda ip: is_forbidden_address(ip, False))
    await strict.start()
    logs: list[tuple[str, str]] = []
    try:
        url = f"http://localhost:{c.port}"
        relay = relays([grpc_dest(url)], strict, sleep=Sleeps(gate=True), log=lambda level, msg: logs.append((level, msg)))
        relay.submit("metrics", b"m", PROTOBUF, None)
        await until(lambda: counts(relay, url)["retried"] == 1)
        assert c.attempts == 0
        assert "the address guard refused it" in logs[0][1]
        await stop(relay)
    finally:
        await strict.close()


async def test_grpc_goes_through_the_proxy_egress_chose(collectors, relays, monkeypatch):
    monkeypatch.delenv("no_proxy", raising=False)  # grpcio reads it itself
    monkeypatch.delenv("no_grpc_proxy", raising=False)
    c = await collectors()
    proxy = await ConnectProxy(c.port).start()
    try:
        egress = Egress(http=parse_proxy("HTTP_PROXY", f"http://relay:s%3Acret@127.0.0.1:{proxy.port}"))
        t = Transport(max_connections=5, connect_timeout_s=2.0, idle_read_timeout_s=5.0, egress=egress)
        await t.start()
        target = f"http://collector.invalid:{c.port}"  # only the proxy can reach this name
        relay = relays([grpc_dest(target)], t, egress=egress)
        relay.submit("metrics", b"via proxy", PROTOBUF, None)
        await until(lambda: len(c.received) == 1)
        assert c.bodies() == [b"via proxy"]
        connect = proxy.requests[0]
        assert connect.startswith(f"CONNECT collector.invalid:{c.port} HTTP/1.1\r\n")
        assert f"Proxy-Authorization: Basic {base64.b64encode(b'relay:s:cret').decode()}" in connect
        await stop(relay)
        await t.close()
    finally:
        await proxy.close()


async def test_without_a_proxy_from_egress_grpcio_ignores_the_proxy_variables(transport, collectors, relays, monkeypatch):
    dead = free_port()
    for name in ("grpc_proxy", "https_proxy", "http_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{dead}")
    c = await collectors()
    relay = relays([grpc_dest(c.url)], transport, egress=Egress(), sleep=Sleeps(gate=True))
    relay.submit("metrics", b"direct", PROTOBUF, None)
    await until(lambda: counts(relay, c.url)["sent"] == 1)
    assert counts(relay, c.url)["retried"] == 0


async def test_an_https_destination_gets_a_verified_tls_channel(transport, collectors, relays):
    cert, key = self_signed_cert("127.0.0.1")
    c = await collectors(tls=(cert, key))
    assert c.url.startswith("https://")
    relay = relays([grpc_dest(c.url)], transport, grpc_roots=cert)
    relay.submit("metrics", b"over tls", PROTOBUF, None)
    await until(lambda: len(c.received) == 1)
    # Trusting other roots, the same collector is refused in the handshake: retried, never reached.
    other, _ = self_signed_cert("127.0.0.1")
    sleeps = Sleeps(gate=True)
    distrusting = relays([grpc_dest(c.url)], transport, grpc_roots=other, sleep=sleeps)
    distrusting.submit("metrics", b"untrusted", PROTOBUF, None)
    await until(lambda: counts(distrusting, c.url)["retried"] == 1)
    assert c.bodies() == [b"over tls"] and counts(distrusting, c.url)["retried"] == 1


# ------------------------------------------------------------ through the gateway


async def post(gw, path: str, body: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.post(gw.url + path, data=body, headers=headers) as r:
            await r.read()
            return r.status


async def test_exports_through_the_gateway_reach_grpc_and_http_collectors(gateway_factory, fake_upstream):
    grpc_collector = await GrpcCollector().start()
    http_collector = await Collector().start()
    try:
        grpc_collector.answers = [grpc.StatusCode.UNAVAILABLE]  # a restart: the first export comes back later
        extra = (
            "telemetry:\n  forward_to:\n"
            f"    - url: {grpc_collector.url}\n      logs: true\n      traces: true\n"
            "      headers: {X-Scope-OrgID: tenant-1}\n      gatehouse: {protocol: grpc}\n"
            f"    - url: {http_collector.url}\n      logs: true\n"
        )
        gw = await gateway_factory([fake_upstream.url], extra)
        developer = gw.auth()
        metrics = metrics_request().SerializeToString()
        logs_json = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [
            {"body": {"stringValue": "user_prompt"}, "traceId": TRACE_ID}]}]}]}).encode()
        assert await post(gw, "/v1/metrics", metrics, {**developer, "Content-Type": PROTOBUF}) == 200
        assert await post(gw, "/v1/logs", gzip.compress(logs_json),
                          {**developer, "Content-Type": JSON, "Content-Encoding": "gzip"}) == 200
        assert await post(gw, "/v1/traces", json.dumps(TRACE_JSON).encode(), {**developer, "Content-Type": JSON}) == 200
        assert await post(gw, "/v1/logs", b"{broken", {**developer, "Content-Type": JSON}) == 200
        relay = gw.app[RUNTIME].relay
        grpc_name = f"forward_to[0] {grpc_collector.url}"
        # The broken export comes last and is judged (in a worker thread) after the third delivery.
        settled = relay.counters
        await until(lambda: settled()[grpc_name]["sent"] == 3 and settled()[grpc_name]["rejected"] == 1
                    and len(http_collector.received) == 3, 15)
        # gRPC: in order, protobuf as sent, JSON and gzip as the same messages.
        got_metrics, got_logs, got_traces = grpc_collector.received
        assert got_metrics.body == metrics
        record = got_logs.message().resource_logs[0].scope_logs[0].log_records[0]
        assert record.body.string_value == "user_prompt" and record.trace_id == bytes.fromhex(TRACE_ID)
        assert got_traces.message() == ExportTraceServiceRequest.FromString(got_traces.body)
        assert got_traces.message().resource_spans[0].scope_spans[0].spans[0].span_id == bytes.fromhex("eee19b7ec3c1b174")
        for call in grpc_collector.received:
            assert call.header("x-scope-orgid") == "tenant-1"
            assert call.header("authorization") is None  # the developer's bearer stays at the gateway
            assert not any(developer["Authorization"].split()[1] in str(v) for _, v in call.metadata)
        # HTTP: verbatim, the broken body too (the collector there is the judge).
        assert [r.path for r in http_collector.received] == ["/v1/metrics", "/v1/logs", "/v1/logs"]
        assert http_collector.received[2].body == b"{broken"
        grpc_counts = relay.counters()[grpc_name]
        assert (grpc_counts["sent"], grpc_counts["rejected"], grpc_counts["retried"]) == (3, 1, 1)
    finally:
        await grpc_collector.close()
        await http_collector.close()


async def test_a_google_grpc_destination_gets_the_gateways_bearer_as_metadata(
    gateway_factory, fake_upstream, monkeypatch, tmp_path
):
    from protocol_spec.fakes.google import FakeGoogleToken

    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    async with FakeGoogleToken() as google:
        google.new_service_account(tmp_path / "adc.json")
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "adc.json"))
        c = await GrpcCollector().start()
        try:
            extra = (
                f"telemetry:\n  forward_to:\n    - url: {c.url}\n      auth: {{google: {{}}}}\n"
                "      gatehouse: {protocol: grpc}\n"
            )
            gw = await gateway_factory([fake_upstream.url], extra)
            body = metrics_request().SerializeToString()
            assert await post(gw, "/v1/metrics", body, {**gw.auth(), "Content-Type": PROTOBUF}) == 200
            async with asyncio.timeout(10):
                while not c.received:
                    await asyncio.sleep(0.02)
            scheme, _, token = str(c.received[0].header("authorization") or "").partition(" ")
            assert scheme == "Bearer" and google.is_live(token)
            assert c.received[0].body == body
        finally:
            await c.close()


# ------------------------------------------------------------ helpers


class ConnectProxy:
    """An HTTP CONNECT proxy on loopback that records each request head and tunnels
    every target to the collector's port (the target name need not resolve)."""

    def __init__(self, to_port: int) -> None:
        self.to_port = to_port
        self.requests: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._tunnel, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests.append((await reader.readuntil(b"\r\n\r\n")).decode())
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.to_port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


