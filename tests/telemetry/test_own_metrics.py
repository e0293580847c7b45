"""The gateway's own metrics and traces, end to end: a real gateway with fake upstreams,
a scripted run, then what Prometheus scrapes (parsed with prometheus_client's parser)
and what real OTLP receivers on loopback get (parsed with opentelemetry-proto)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.load import ConfigError
from gateway.http.keys import RUNTIME
from protocol_spec.fakes import error_reply
from protocol_spec.fakes.upstream import FakeUpstream
from tests.admin.test_api import ADMIN_GROUP, READ_KEY, WRITE_KEY, admin_yaml
from tests.harness import RunningGateway, free_port, make_config, start_gateway, upstream_block
from tests.telemetry.collector import Collector

MODEL = "claude-sonnet-4-6"
DENIED_MODEL = "claude-opus-4-7"
PROMPT = "the secret prompt text 7f3a"
POLICY = f"""
managed:
  policies:
    - match: {{}}
      cli:
        availableModels: [{MODEL}]
"""


def body(stream: bool = False, model: str = MODEL) -> bytes:
    doc: dict[str, Any] = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        doc["stream"] = True
    return json.dumps(doc).encode()


async def call(gw: RunningGateway, method: str, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, gw.url + path, **kw) as r:
            return r.status, dict(r.headers), await r.read()


async def message(gw: RunningGateway, stream: bool = False, model: str = MODEL, headers: dict[str, str] | None = None) -> int:
    hdrs = {"content-type": "application/json", **gw.auth(), **(headers or {})}
    status, _, _ = await call(gw, "POST", "/v1/messages", data=body(stream, model), headers=hdrs)
    return status


def families(text: bytes) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def sample(fams: dict[str, Any], family: str, name: str | None = None, **labels: str) -> float:
    """The one sample of ``family`` whose labels include ``labels`` (0 when there is none)."""
    found = [
        s.value for s in fams[family].samples
        if (name is None or s.name == name) and all(s.labels.get(k) == v for k, v in labels.items())
    ] if family in fams else []
    assert len(found) <= 1, (family, labels, found)
    return found[0] if found else 0.0


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[FakeUpstream, FakeUpstream]]:
    primary, backup = await FakeUpstream().start(), await FakeUpstream().start()
    try:
        yield primary, backup
    finally:
        await primary.close()
        await backup.close()


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    c = await Collector().start()
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def gateways(pg_url: str) -> AsyncIterator[Any]:
    """``await gateways(primary, backup, extra_yaml)``: a gateway over two named upstreams."""
    started: list[RunningGateway] = []

    async def make(primary: FakeUpstream, backup: FakeUpstream, extra: str) -> RunningGateway:
        blocks = [upstream_block(primary.url, name="primary"), upstream_block(backup.url, name="backup")]
        gw = await start_gateway(make_config(pg_url, blocks, extra))
        started.append(gw)
        return gw

    yield make
    for gw in started:
        await gw.close()


def metrics_yaml(prometheus: str = "{enabled: true}", more: str = "") -> str:
    return f"gatehouse:\n  telemetry:\n    metrics:\n      prometheus: {prometheus}\n{more}"


async def until(check: Any, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.01)


# ------------------------------------------------------------------ Prometheus on the main listener


async def test_metrics_after_a_scripted_run_count_what_was_sent(gateways, upstreams, collector):
    primary, backup = upstreams
    relay = f"telemetry:\n  forward_to:\n    - url: {collector.url}\n"
    gw = await gateways(primary, backup, admin_yaml() + POLICY + relay + metrics_yaml())
    json_requests, streams = 3, 2
    for _ in range(json_requests):
        assert await message(gw) == 200
    for _ in range(streams):
        assert await message(gw, stream=True) == 200
    assert await message(gw, model=DENIED_MODEL) == 400  # refused by the policy's allowlist
    primary.script(error_reply(529, "overloaded_error", "Overloaded"))
    assert await message(gw) == 200  # the primary fails, the backup serves
    status, _, _ = await call(gw, "POST", "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": "nope"})
    assert status == 401
    export = {**gw.auth(), "Content-Type": "application/x-protobuf"}
    assert (await call(gw, "POST", "/v1/metrics", data=b"\x0a\x00", headers=export))[0] == 200
    await until(lambda: len(collector.received) == 1)

    status, headers, text = await call(gw, "GET", "/metrics", headers={"x-api-key": READ_KEY})
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    fams = families(text)
    route = {"route": "/v1/messages"}
    assert sample(fams, "gatehouse_requests", status="200", model=MODEL, upstream="primary", **route) == 5
    assert sample(fams, "gatehouse_requests", status="200", model=MODEL, upstream="backup", **route) == 1
    assert sample(fams, "gatehouse_requests", status="400", model=DENIED_MODEL, upstream="", **route) == 1
    assert sum(s.value for s in fams["gatehouse_requests"].samples) == 7
    assert sample(fams, "gatehouse_upstream_errors", upstream="primary", kind="status_529") == 1
    assert sample(fams, "gatehouse_failovers", **route) == 1
    # The fake answers 12 input and 8 output tokens per reply; six replies.
    assert sample(fams, "gatehouse_tokens", model=MODEL, group="", type="input") == 6 * 12
    assert sample(fams, "gatehouse_tokens", model=MODEL, group="", type="output") == 6 * 8
    assert sample(fams, "gatehouse_cost_usd", model=MODEL, group="") > 0
    count = "gatehouse_request_duration_seconds_count"
    assert sum(s.value for s in fams["gatehouse_request_duration_seconds"].samples if s.name == count) == 7
    assert sample(fams, "gatehouse_stream_first_byte_duration_seconds",
                  "gatehouse_stream_first_byte_duration_seconds_count", model=MODEL, upstream="primary") == streams
    assert sample(fams, "gatehouse_upstream_headers_duration_seconds",
                  "gatehouse_upstream_headers_duration_seconds_count", model=MODEL, upstream="backup", **route) == 1
    # With admin: every request reaching the spend gate is admitted; no cap is set, so uncapped.
    assert sample(fams, "gatehouse_spend_admissions", via="uncapped") == 6
    assert sample(fams, "gatehouse_signin_tokens", grant="refresh_token", result="invalid_grant") == 1
    assert sample(fams, "gatehouse_inflight_requests") == 0 and sample(fams, "gatehouse_inflight_streams") == 0
    destination = f"forward_to[0] {collector.url}"
    assert sample(fams, "gatehouse_relay_exports", destination=destination, outcome="sent") == 1
    assert sample(fams, "gatehouse_relay_queue_exports", destination=destination) == 0
    assert sample(fams, "gatehouse_upstream_cooling", upstream="primary") == 0
    assert sample(fams, "gatehouse_db_connections_max") == gw.app[RUNTIME].store.pool.get_max_size()
    statements = {s.labels["statement"] for s in fams["gatehouse_db_statement_duration_seconds"].samples}
    assert "ping" in statements  # the store's first connection proves the database with it
    assert fams["target_info"].samples[0].labels["service_name"] == "gatehouse"
    assert PROMPT not in text.decode()


async def scrape(gw: RunningGateway) -> dict[str, Any]:
    status, _, text = await call(gw, "GET", "/metrics", headers={"x-api-key": READ_KEY})
    assert status == 200
    return families(text)


async def test_spend_admissions_from_the_database_then_from_a_lease_and_a_refusal(gateways, upstreams):
    gw = await gateways(*upstreams, admin_yaml() + metrics_yaml())
    limits = "/v1/organizations/spend_limits"
    org_cap = {"scope": {"type": "organization"}, "amount": "100000000", "period": "monthly"}
    assert (await call(gw, "POST", limits, json=org_cap, headers={"x-api-key": WRITE_KEY}))[0] == 200
    sent = 0
    for _ in range(50):  # the first is admitted by the database; a lease is granted in the background
        assert await message(gw) == 200
        sent += 1
        fams = await scrape(gw)
        if sample(fams, "gatehouse_spend_admissions", via="lease"):
            break
        await asyncio.sleep(0.02)
    assert sample(fams, "gatehouse_spend_admissions", via="database") >= 1
    assert sample(fams, "gatehouse_spend_admissions", via="lease") >= 1
    assert sum(s.value for s in fams["gatehouse_spend_admissions"].samples) == sent
    # One cent a day cannot cover a request's estimate: refused over the limit.
    cap = {"scope": {"type": "user", "user_id": "user-capped"}, "amount": "1", "period": "daily"}
    assert (await call(gw, "POST", limits, json=cap, headers={"x-api-key": WRITE_KEY}))[0] == 200
    hdrs = {"content-type": "application/json", **gw.auth(sub="user-capped", email="capped@example.com")}
    for _ in range(100):  # the new cap reaches the replica's limit cache by NOTIFY, shortly
        if (await call(gw, "POST", "/v1/messages", data=body(), headers=hdrs))[0] == 429:
            break
        await asyncio.sleep(0.02)
    fams = await scrape(gw)
    assert sample(fams, "gatehouse_spend_refusals", reason="over_limit") == 1
    assert sample(fams, "gatehouse_requests", status="429", model=MODEL, upstream="", route="/v1/messages") == 1


async def test_the_scrape_needs_an_admin_key(gateways, upstreams):
    gw = await gateways(*upstreams, admin_yaml() + metrics_yaml())
    for headers in ({}, {"x-api-key": "sk-not-an-admin-key-0123456789"}, gw.auth()):
        status, _, text = await call(gw, "GET", "/metrics", headers=headers)
        assert status == 401, headers
        assert json.loads(text)["error"]["type"] == "authentication_error"
    assert (await call(gw, "GET", "/metrics", headers={"x-api-key": WRITE_KEY}))[0] == 200
    # An admin-group bearer is an admin credential too, as for the admin API.
    assert (await call(gw, "GET", "/metrics", headers=gw.auth(groups=(ADMIN_GROUP,))))[0] == 200


def test_without_an_admin_section_the_main_listener_cannot_serve_metrics():
    # No key could ever be accepted there: refused at boot rather than a 401 on every scrape.
    with pytest.raises(ConfigError) as err:
        make_config("postgres://u@127.0.0.1/db", [upstream_block("http://127.0.0.1:9")], metrics_yaml())
    assert [path for path, _ in err.value.issues] == ["gatehouse.telemetry.metrics.prometheus"]


async def test_metrics_are_off_by_default(gateways, upstreams):
    gw = await gateways(*upstreams, admin_yaml())
    status, _, text = await call(gw, "GET", "/metrics", headers={"x-api-key": READ_KEY})
    assert status == 404 and json.loads(text)["error"]["type"] == "not_found_error"
    assert not gw.app[RUNTIME].metrics.enabled


async def test_a_listener_of_its_own_serves_only_metrics_without_auth(gateways, upstreams):
    port = free_port()
    gw = await gateways(*upstreams, admin_yaml() + metrics_yaml(f"{{enabled: true, listen: '127.0.0.1:{port}'}}"))
    assert await message(gw) == 200
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
            assert r.status == 200
            fams = families(await r.read())
        async with s.get(f"http://127.0.0.1:{port}/v1/messages") as r:
            assert r.status == 404
    assert sample(fams, "gatehouse_requests", status="200", upstream="primary") == 1
    # The main listener no longer serves /metrics at all.
    assert (await call(gw, "GET", "/metrics", headers={"x-api-key": READ_KEY}))[0] == 404
    await gw.close()
    with pytest.raises(aiohttp.ClientConnectionError):  # closed with the gateway
        async with aiohttp.ClientSession() as s:
            await s.get(f"http://127.0.0.1:{port}/metrics")


# ------------------------------------------------------------------ OTLP export of the gateway's own metrics


def _otlp_points(requests: list[metrics_service_pb2.ExportMetricsServiceRequest]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for req in requests:
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    out.setdefault(metric.name, []).extend(getattr(metric, kind).data_points)
    return out


def _resource(req: metrics_service_pb2.ExportMetricsServiceRequest) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in req.resource_metrics[0].resource.attributes}


def _assert_counts(requests: list[metrics_service_pb2.ExportMetricsServiceRequest]) -> None:
    last = requests[-1:]  # cumulative: the last export holds the totals
    points = _otlp_points(last)
    served = [p for p in points["gatehouse.requests"] if {a.key: a.value.string_value for a in p.attributes}.get("status") == "200"]
    assert sum(p.as_int or p.as_double for p in served) == 2
    (duration,) = points["gatehouse.request.duration"]
    assert duration.count == 2 and len(duration.bucket_counts) == len(duration.explicit_bounds) + 1
    assert duration.start_time_unix_nano < duration.time_unix_nano
    resource = _resource(last[0])
    assert resource["service.name"] == "gatehouse" and resource["service.instance.id"]
    assert resource["service.version"]


async def test_own_metrics_reach_an_otlp_http_collector(pg_url, upstreams, collector):
    otlp = f"      otlp: {{endpoint: '{collector.url}', protocol: http/protobuf}}\n"
    gw = await start_gateway(make_config(pg_url, [upstream_block(upstreams[0].url, name="primary")], metrics_yaml("{enabled: false}", otlp)))
    try:
        assert await message(gw) == 200
        assert await message(gw, stream=True) == 200
    finally:
        await gw.close()  # drain: the last export, with everything counted
    exports = [r for r in collector.received if r.path == "/v1/metrics"]
    assert exports and all(r.header("Content-Type") == "application/x-protobuf" for r in exports)
    _assert_counts([metrics_service_pb2.ExportMetricsServiceRequest.FromString(r.body) for r in exports])


class _GrpcMetrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self) -> None:
        self.received: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.metadata: list[dict[str, str]] = []

    async def Export(self, request, context):  # noqa: N802 (the service's method name)
        self.received.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        return metrics_service_pb2.ExportMetricsServiceResponse()


async def test_own_metrics_reach_an_otlp_grpc_collector_with_its_headers(pg_url, upstreams):
    server = grpc.aio.server()
    receiver = _GrpcMetrics()
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        otlp = f"      otlp: {{endpoint: 'http://127.0.0.1:{port}', headers: {{x-collector-key: k1}}}}\n"
        gw = await start_gateway(make_config(pg_url, [upstream_block(upstreams[0].url, name="primary")], metrics_yaml("{enabled: false}", otlp)))
        try:
            assert await message(gw) == 200
            assert await message(gw) == 200
        finally:
            await gw.close()
        assert receiver.received
        assert receiver.metadata[-1].get("x-collector-key") == "k1"
        _assert_counts(receiver.received)
    finally:
        await server.stop(None)


async def test_a_collector_that_is_down_never_holds_the_gateway(pg_url, upstreams, monkeypatch):
    from gateway.app import observability

    monkeypatch.setattr(observability, "FLUSH_TIMEOUT_S", 0.2)  # the last export's bound at shutdown
    dead = f"http://127.0.0.1:{free_port()}"
    otlp = f"      otlp: {{endpoint: '{dead}', protocol: http/protobuf}}\n"
    gw = await start_gateway(make_config(pg_url, [upstream_block(upstreams[0].url, name="primary")], metrics_yaml("{enabled: false}", otlp)))
    try:
        assert await message(gw) == 200
    finally:
        async with asyncio.timeout(30):  # the last export fails; shutdown still ends, bounded
            await gw.close()


# ------------------------------------------------------------------ traces


def _spans(collector: Collector) -> list[Any]:
    spans = []
    for r in collector.received:
        if r.path == "/v1/traces":
            for rs in ExportTraceServiceRequest.FromString(r.body).resource_spans:
                for ss in rs.scope_spans:
                    spans.extend(ss.spans)
    return spans


async def test_a_sampled_traceparent_is_continued_and_nothing_else_is_traced_at_ratio_zero(pg_url, upstreams, collector):
    primary, backup = upstreams
    traces = f"gatehouse:\n  telemetry:\n    traces:\n      sample_ratio: 0\n      otlp: {{endpoint: '{collector.url}', protocol: http/protobuf}}\n"
    blocks = [upstream_block(primary.url, name="primary"), upstream_block(backup.url, name="backup")]
    gw = await start_gateway(make_config(pg_url, blocks, traces))
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    try:
        primary.script(error_reply(529, "overloaded_error", "Overloaded"))
        assert await message(gw, stream=True, headers={"traceparent": f"00-{trace_id}-{parent}-01"}) == 200
        assert await message(gw) == 200  # no traceparent: not sampled at ratio 0
        unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
        assert await message(gw, headers={"traceparent": unsampled}) == 200
    finally:
        await gw.close()  # drain flushes the span queue
    spans = _spans(collector)
    assert {s.trace_id.hex() for s in spans} == {trace_id}
    (server,) = [s for s in spans if s.name == "POST /v1/messages"]
    (call,) = [s for s in spans if s.name.startswith("upstream ")]
    assert server.parent_span_id.hex() == parent and server.kind == server.SPAN_KIND_SERVER
    assert call.parent_span_id == server.span_id and call.name == "upstream backup"
    assert server.start_time_unix_nano <= call.start_time_unix_nano <= call.end_time_unix_nano <= server.end_time_unix_nano
    attrs = {a.key: a.value for a in server.attributes}
    assert attrs["http.response.status_code"].int_value == 200
    assert attrs["gen_ai.request.model"].string_value == MODEL
    assert attrs["gatehouse.upstream"].string_value == "backup"
    assert attrs["gen_ai.usage.output_tokens"].int_value == 8
    assert [e.name for e in server.events] == ["upstream failed"]
    raw = b"".join(r.body for r in collector.received)
    assert PROMPT.encode() not in raw


async def test_without_traces_configured_no_tracer_exists(gateways, upstreams):
    gw = await gateways(*upstreams, "")
    assert await message(gw, headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}) == 200
    rt = gw.app[RUNTIME]
    assert rt.tracer is None and rt.instruments is None and not rt.metrics.enabled
