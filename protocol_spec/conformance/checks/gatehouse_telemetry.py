"""SPEC §21, Gatehouse's telemetry extensions (TEL-9 to TEL-12), judged from outside.

All four are Gatehouse's own (source ``gatehouse``): the protocol profile
leaves them out. What they judge comes from the fixtures' ``gatehouse:``
section (:mod:`protocol_spec.conformance.fixtures`), which the state file
reports; a run whose fixtures left it out (``--no-gatehouse-section``, and for
the gRPC collector and stamping also ``--no-telemetry``) SKIPs them:

* a third ``forward_to`` destination with ``gatehouse: {protocol: grpc}``, the
  ``grpc`` sink of the fake OTLP/gRPC collector
  (:mod:`protocol_spec.fakes.otlp_grpc_collector`), taking metrics and logs with
  a header and an ``Authorization`` of its own (TEL-9);
* ``stamp_identity: true`` (TEL-10): every relayed export is rewritten, which
  is why the relay checks match exports by marker and judge TEL-2 on content
  (:mod:`.telemetry`);
* ``metrics.prometheus.enabled``: ``GET /metrics`` on the main listener, for an
  admin key (TEL-11);
* ``traces.otlp`` on the collector's ``spans`` sink with ``sample_ratio: 0``, so
  only a client's sampled ``traceparent`` makes a span (TEL-12).

As in :mod:`.telemetry`, every wait is on a collector and bounded, ended by an
export or span the check can count on (a sentinel), never by sleeping out a
gateway's timer. Not judged from outside: of TEL-9 the 64 MiB bound, the
partial-success log, DEADLINE_EXCEEDED and the other retried codes but
UNAVAILABLE and RESOURCE_EXHAUSTED; of TEL-10 the 4 MiB bound and the lists below
the resource other than data points and log records; of TEL-11 the listener
of its own, ``metrics.otlp`` and most metric families (the requests counter
and its latency histogram are); of TEL-12 a ``sample_ratio`` above 0 (a draw of
chance).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.parser import text_string_to_metric_families

from protocol_spec.conformance import otlp
from protocol_spec.conformance.checks import telemetry
from protocol_spec.conformance.checks.telemetry import (
    Export,
    accepted,
    collector,
    delivered,
    metrics,
    new_marker,
    send,
    with_marker,
)
from protocol_spec.conformance.context import Ctx, header_value, small_request
from protocol_spec.conformance.fixtures import (
    ADMIN_GROUP,
    CUSTOM_MODEL,
    DEFAULTS_SINK,
    FULL_SINK,
    GRPC_COLLECTOR_HEADER,
    GRPC_SINK,
    PRIMARY,
    SPANS_SINK,
)
from protocol_spec.conformance.verdicts import Skip, check
from protocol_spec.fakes.otlp_collector import Answer as SinkAnswer
from protocol_spec.fakes.otlp_collector import RemoteCollector
from protocol_spec.fakes.otlp_grpc_collector import OK, code

# A header of the exporting client's that must not travel (TEL-9: metadata is the destination's only).
CLIENT_HEADER = ("x-conformance-client", "private")
OUTAGE_EXPORTS = 3
# The RetryInfo delay a collector asks for (TEL-9 honours it; short, so the check stays quick).
RETRY_INFO_S = "0.2"
STAMPED_BY = "gateway-oidc"
# What a modified client might claim, on the resource and on points and records (TEL-10).
FORGED = (("user.id", "conf-someone-else"), ("user.email", "mallory@evil.test"), ("user.groups", ADMIN_GROUP),
          ("identity.source", "client"))
# The real client's installation hash, which a point's user.id may keep (TEL-10).
INSTALLATION_ID = "0123456789abcdef" * 4
METRICS_PATH = "/metrics"
REQUESTS_TOTAL = "gatehouse_requests_total"
REQUEST_DURATION_COUNT = "gatehouse_request_duration_seconds_count"
RELAY_EXPORTS_TOTAL = "gatehouse_relay_exports_total"
COUNTED_REQUESTS = 3
# How long a scrape may lag the answer of the request it counts, and how often to look meanwhile.
COUNTED_WITHIN_S = 5.0
SCRAPE_AGAIN_S = 0.05


def grpc_collector(c: Ctx, sink: str) -> RemoteCollector:
    if sink not in c.state.grpc_sinks or not c.state.grpc_collector_url:
        raise Skip("the fixtures run no OTLP/gRPC collector (started with --no-gatehouse-section or --no-telemetry)")
    return RemoteCollector(c.state.grpc_collector_url, c.suite.session)


# -- TEL-9 -----------------------------------------------------------------------------


def _as_received(c: Ctx, record: dict[str, Any], expected: Any, request: bytes | None) -> bool:
    """Whether a gRPC call carried the request ``expected`` (a document): the very bytes
    ``request`` when given (a protobuf body, decompressed, is the request), else the same
    message; with stamping on, the same message apart from the identity attributes."""
    if not c.state.stamp_identity:
        return record["body"] == request if request is not None else otlp.record_document(record) == expected
    got = otlp.record_document(record)
    return got is not None and otlp.without_identity(got) == otlp.without_identity(expected)


async def _send_with_client_header(c: Ctx, export: Export, token: str) -> None:
    headers = {**export.headers, CLIENT_HEADER[0]: CLIENT_HEADER[1]}
    answer = await c.t.post(f"/v1/{export.signal}", body=export.body, headers=headers, bearer=token)
    accepted(c, "TEL-9", answer, f"a {export.signal} export ({export.content_type}, {export.content_encoding or 'identity'})")


def _json_logs(label: str, *, deflate: bool) -> tuple[Export, Any]:
    """An OTLP/JSON logs export (ids in hex, as OTLP/JSON writes them) and the request it stands for."""
    marker = new_marker(label)
    body, twin = otlp.logs_export(marker, record=[("conformance.kind", label)], trace_id=secrets.token_hex(16),
                                  span_id=secrets.token_hex(8))
    export = Export("logs", otlp.deflated(body), otlp.JSON, marker, "deflate") if deflate else Export("logs", body, otlp.JSON, marker)
    return export, json_format.MessageToDict(twin, preserving_proto_field_name=True)


@check("telemetry: a gRPC destination gets each export as an Export call", "TEL-9", timeout_s=40)
async def grpc_destination(c: Ctx) -> None:
    col = grpc_collector(c, GRPC_SINK)
    token = await c.bearer()
    await col.reset()
    plain, packed = metrics("grpc-protobuf"), metrics("grpc-gzip", gzip=True)
    (as_json, json_twin), (as_deflate, deflate_twin) = _json_logs("grpc-json", deflate=False), _json_logs("grpc-deflate", deflate=True)
    expected = {
        plain.marker: (otlp.document("metrics", plain.body, otlp.PROTOBUF, None), plain.body),
        packed.marker: (otlp.document("metrics", packed.body, otlp.PROTOBUF, "gzip"), otlp.unpacked(packed.body, "gzip")),
        as_json.marker: (json_twin, None),
        as_deflate.marker: (deflate_twin, None),
    }
    exports = (plain, packed, as_json, as_deflate)
    for export in exports:
        await _send_with_client_header(c, export, token)
    deadline = time.monotonic() + telemetry.ARRIVAL_S
    for export in exports:
        what = f"the {export.signal} export ({export.content_type}, {export.content_encoding or 'identity'})"
        if not c.expect("TEL-9", await delivered(col, GRPC_SINK, export.marker, _left(deadline), ok=OK), f"{what} reaches the gRPC collector"):
            continue
        calls = with_marker(await col.received(GRPC_SINK), export.marker)
        c.equal("TEL-9", [r["status"] for r in calls], [OK], f"{what}: one Export call")
        call = calls[0]
        c.equal("TEL-9", call["path"], otlp.METHODS[export.signal], f"{what}: on its signal's collector service")
        document, raw = expected[export.marker]
        if c.state.stamp_identity:
            how = "the request it stands for, apart from the identity stamped (TEL-10)"
        else:
            how = "the bytes of its protobuf" if raw is not None else "the equivalent request message"
        c.expect("TEL-9", _as_received(c, call, document, raw), f"{what}: {how}", observed=otlp.record_document(call), expected=document)
        _metadata(c, call, token, what)
    await _rejections(c, col, token)
    await _outage(c, col, token)


def _left(deadline: float) -> float:
    """What is left of ``deadline``: one wait for a batch of exports, not one per export."""
    return max(deadline - time.monotonic(), 0.0)


def _metadata(c: Ctx, call: dict[str, Any], token: str, what: str) -> None:
    headers = call["headers"]
    c.equal("TEL-9", header_value(headers, GRPC_COLLECTOR_HEADER[0]), GRPC_COLLECTOR_HEADER[1], f"{what}: the destination's header as metadata")
    c.equal("TEL-9", header_value(headers, "authorization"), f"Bearer {c.state.collector_key}", f"{what}: the destination's Authorization")
    leaks = [name for name, value in headers if token in value or name.lower() == CLIENT_HEADER[0]]
    c.equal("TEL-9", leaks, [], f"{what}: neither the client's bearer nor its headers in the metadata")


async def _rejections(c: Ctx, col: RemoteCollector, token: str) -> None:
    """INVALID_ARGUMENT and RESOURCE_EXHAUSTED without RetryInfo reject; with one it is retried."""
    await col.script(GRPC_SINK, SinkAnswer(status=code("INVALID_ARGUMENT")), SinkAnswer(status=code("RESOURCE_EXHAUSTED")),
                     SinkAnswer(status=code("RESOURCE_EXHAUSTED"), retry_after=RETRY_INFO_S))
    rejected, exhausted, retried = metrics("grpc-invalid"), metrics("grpc-exhausted"), metrics("grpc-retry-info")
    for export in (rejected, exhausted, retried):
        accepted(c, "TEL-9", await send(c, export, token), "an export the gRPC collector will answer with an error")
    sentinel = metrics("grpc-after-errors")
    accepted(c, "TEL-9", await send(c, sentinel, token), "a later export")
    c.expect("TEL-9", await delivered(col, GRPC_SINK, sentinel.marker, ok=OK), "a later export reaches the gRPC collector")
    records = await col.received(GRPC_SINK)
    for export, statuses, what in (
        (rejected, [code("INVALID_ARGUMENT")], "INVALID_ARGUMENT rejects the export: it is not sent again"),
        (exhausted, [code("RESOURCE_EXHAUSTED")], "RESOURCE_EXHAUSTED without a RetryInfo rejects it: not sent again"),
        (retried, [code("RESOURCE_EXHAUSTED"), OK], "RESOURCE_EXHAUSTED with a RetryInfo is retried, and delivered"),
    ):
        c.equal("TEL-9", [r["status"] for r in with_marker(records, export.marker)], statuses, what)


async def _outage(c: Ctx, col: RemoteCollector, token: str) -> None:
    """UNAVAILABLE while the collector is down; once it is back, everything arrives, in order."""
    await col.reset()
    await col.down(GRPC_SINK, code("UNAVAILABLE"))
    sent = [metrics(f"grpc-outage-{i}") for i in range(OUTAGE_EXPORTS)]
    for export in sent:
        accepted(c, "TEL-9", await send(c, export, token), "an export while the gRPC collector answers UNAVAILABLE")
    failed, _ = await col.wait(GRPC_SINK, 2, telemetry.ARRIVAL_S, status=code("UNAVAILABLE"))
    c.expect("TEL-9", failed, "the gRPC collector was tried while down", observed="fewer than 2 tries", expected="2 UNAVAILABLE")
    await col.up(GRPC_SINK)
    deadline = time.monotonic() + telemetry.ARRIVAL_S
    for export in sent:
        await delivered(col, GRPC_SINK, export.marker, _left(deadline), ok=OK)
    markers = [e.marker for e in sent]
    arrived = [otlp.marker_of(r) for r in await col.received(GRPC_SINK) if r["status"] == OK]
    c.equal("TEL-9", [markers.index(m) for m in arrived if m in markers], list(range(OUTAGE_EXPORTS)),
            "after UNAVAILABLE, every export delivered once it is back, once each, in order")


# -- TEL-10 ----------------------------------------------------------------------------


def _stamped_message(signal: str, record: dict[str, Any]) -> Message | None:
    headers = {k.lower(): v for k, v in record["headers"]}
    if record["path"] == otlp.METHODS[signal]:
        return otlp.message(signal, record["body"])
    data = otlp.unpacked(record["body"], headers.get("content-encoding"))
    if data is None:
        return None
    if (headers.get("content-type") or "").split(";")[0].strip() == otlp.JSON:
        return otlp.json_message(signal, data)
    return otlp.message(signal, data)


def _keys(pairs: Iterable[Any]) -> list[tuple[str, Any]]:
    return [(kv.key, otlp.plain_value(kv.value)) for kv in pairs]


def _judge_stamps(c: Ctx, request: Message, person: dict[str, Any], where: str) -> None:
    (entries,) = request.DESCRIPTOR.fields  # an export request's one field: its resources
    resources = getattr(request, entries.name)
    wanted = [("user.id", person["sub"]), ("user.email", person["email"]), ("user.groups", ",".join(person["groups"])),
              ("identity.source", STAMPED_BY)]
    for entry in resources:
        on_resource = sorted(kv for kv in _keys(entry.resource.attributes) if kv[0] in otlp.IDENTITY_KEYS)
        c.equal("TEL-10", on_resource, sorted(wanted), f"{where}: the resource names the bearer, once each, whatever the client sent")
    below = [attributes for kind, attributes in otlp.attribute_sets(request) if kind != "resource"]
    first_id = {"user.id": person["sub"], "user.email": person["email"], "kept": "a"}
    c.equal("TEL-10", below[:1], [first_id],
            f"{where}: a forged user.email and user.id below the resource replaced, user.groups and identity.source removed")
    if len(below) == 3:
        c.equal("TEL-10", below[1], {"user.id": INSTALLATION_ID}, f"{where}: a point's installation hash as user.id is kept")
        c.equal("TEL-10", below[2], {"kept": "c"}, f"{where}: nothing added where the client sent no identity")


@check("telemetry: the bearer's identity stamped over the client's", "TEL-10", timeout_s=30)
async def stamped_identity(c: Ctx) -> None:
    if not c.state.stamp_identity:
        raise Skip("the fixtures do not switch identity stamping on (started with --no-gatehouse-section or --no-telemetry)")
    col = collector(c)
    person = c.suite.user("normal")
    token = await c.bearer()
    await col.reset()
    points = (FORGED + (("kept", "a"),), (("user.id", INSTALLATION_ID),), (("kept", "c"),))
    pb_marker, json_marker = new_marker("forged-protobuf"), new_marker("forged-json")
    forged = Export("metrics", otlp.metrics_protobuf(pb_marker, resource=FORGED, points=points), otlp.PROTOBUF, pb_marker)
    body, _ = otlp.logs_export(json_marker, resource=FORGED, record=FORGED + (("kept", "a"),))
    forged_json = Export("logs", otlp.gzipped(body), otlp.JSON, json_marker, "gzip")
    for export in (forged, forged_json):
        accepted(c, "TEL-10", await send(c, export, token), f"a {export.signal} export claiming someone else ({export.content_type})")
    grpc = _grpc_if_any(c)
    arrivals = [(col, FULL_SINK, forged), (col, FULL_SINK, forged_json)] + ([(grpc, GRPC_SINK, forged)] if grpc else [])
    deadline = time.monotonic() + telemetry.ARRIVAL_S
    for sink_col, sink, export in arrivals:
        where = f"{sink} destination, the {export.signal} export ({export.content_type})"
        ok = OK if sink == GRPC_SINK else 200
        if not c.expect("TEL-10", await delivered(sink_col, sink, export.marker, _left(deadline), ok=ok), f"{where} arrives"):
            continue
        record = with_marker(await sink_col.received(sink), export.marker, ok)[0]
        if sink != GRPC_SINK:
            c.equal("TEL-10", (header_value(record["headers"], "content-type"), header_value(record["headers"], "content-encoding")),
                    (export.content_type, export.content_encoding), f"{where}: in the content type and encoding it came in")
        request = _stamped_message(export.signal, record)
        if c.expect("TEL-10", request is not None, f"{where}: readable", observed=f"{len(record['body'])} bytes that do not decode"):
            assert request is not None
            _judge_stamps(c, request, person, where)
    await _unstampable(c, col, grpc, token)


def _grpc_if_any(c: Ctx) -> RemoteCollector | None:
    """The gRPC collector when the fixtures configure a gRPC destination (it gets stamped exports too)."""
    return RemoteCollector(c.state.grpc_collector_url, c.suite.session) if GRPC_SINK in c.state.grpc_sinks else None


async def _unstampable(c: Ctx, col: RemoteCollector, grpc: RemoteCollector | None, token: str) -> None:
    """An export that cannot be read is answered 200 and never forwarded (and counted, when /metrics says)."""
    takers = 3 if grpc else 2
    before = await _relay_count(c, "unstampable")
    broken = Export("metrics", b"\x0a\xff\x01broken", otlp.PROTOBUF, "")
    accepted(c, "TEL-10", await send(c, broken, token), "an export that cannot be read")
    after = await _relay_count(c, "unstampable")
    sentinel = metrics("after-unstampable")
    accepted(c, "TEL-10", await send(c, sentinel, token), "a later export")
    for sink in (FULL_SINK, DEFAULTS_SINK):
        c.expect("TEL-10", await delivered(col, sink, sentinel.marker), f"a later export reaches the {sink} destination")
    if grpc is not None:
        c.expect("TEL-10", await delivered(grpc, GRPC_SINK, sentinel.marker, ok=OK), "a later export reaches the grpc destination")
    records = await col.received() + (await grpc.received(GRPC_SINK) if grpc else [])
    relayed = [r["sink"] for r in records if r["body"] == broken.body]
    c.equal("TEL-10", relayed, [], "an export that cannot be stamped is never forwarded")
    if before is not None and after is not None:
        c.equal("TEL-10", after - before, takers, f"it is counted as unstampable once per destination that takes metrics ({RELAY_EXPORTS_TOTAL})")


async def _relay_count(c: Ctx, outcome: str) -> float | None:
    """The relay's count of ``outcome`` over every destination, when /metrics can be read."""
    families = await _scrape(c) if c.state.prometheus else None
    if families is None:
        return None
    return _total(families, RELAY_EXPORTS_TOTAL, {"outcome": outcome})


# -- TEL-11 ----------------------------------------------------------------------------

Samples = list[tuple[str, dict[str, str], float]]


async def _scrape(c: Ctx) -> Samples | None:
    """Every sample of GET /metrics with the admin read key; None when it is not 200 Prometheus text."""
    answer = await c.t.get(METRICS_PATH, headers={"x-api-key": c.state.admin_read_key})
    if answer.status != 200:
        return None
    try:
        return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(answer.body.decode()) for s in f.samples]
    except (ValueError, UnicodeDecodeError):
        return None


def _total(samples: Samples, name: str, labels: dict[str, str]) -> float:
    return sum(value for sample, have, value in samples if sample == name and labels.items() <= have.items())


@check("own metrics: Prometheus text at GET /metrics, for an admin key", "TEL-11")
async def prometheus_metrics(c: Ctx) -> None:
    if not c.state.prometheus:
        raise Skip("the fixtures do not switch the gateway's Prometheus metrics on (started with --no-gatehouse-section)")
    token = await c.bearer()
    for what, headers in (
        ("without a key", {}),
        ("with a key that is no admin key", {"x-api-key": "k" + secrets.token_urlsafe(32)}),
        ("with a developer's bearer", {"Authorization": f"Bearer {token}"}),
    ):
        answer = await c.t.get(METRICS_PATH, headers=headers)
        c.expect("TEL-11", answer.status == 401 and b"gatehouse_" not in answer.body, f"GET /metrics {what}: 401, no metrics",
                 observed=answer.summary(), expected=401)
    answer = await c.t.get(METRICS_PATH, headers={"x-api-key": c.state.admin_read_key})
    c.status("TEL-11", answer, 200, "GET /metrics with the admin read key")
    c.expect("TEL-11", answer.content_type == "text/plain", "Prometheus text", observed=answer.content_type, expected="text/plain")
    before = await _scrape(c)
    if not c.expect("TEL-11", before is not None, "the text parses as Prometheus text (prometheus_client.parser)", observed=answer.body[:200]):
        return
    assert before is not None
    series = {"route": "/v1/messages", "model": CUSTOM_MODEL, "status": "200"}
    await c.fake.reset()
    for _ in range(COUNTED_REQUESTS):
        c.status("TEL-11", await c.messages(small_request(CUSTOM_MODEL)), 200, f"a {CUSTOM_MODEL} request")
    after = await _counted(c, before, series)
    grew = _total(after, REQUESTS_TOTAL, series) - _total(before, REQUESTS_TOTAL, series)
    c.equal("TEL-11", grew, COUNTED_REQUESTS, f"{REQUESTS_TOTAL}{series} grew by the requests sent")
    labelled = [have for name, have, _ in after if name == REQUESTS_TOTAL and series.items() <= have.items()]
    c.expect("TEL-11", bool(labelled) and all({"route", "status", "model", "upstream"} <= have.keys() for have in labelled),
             "requests are counted by route, status, model and upstream", observed=labelled[:2])
    timed = {k: v for k, v in series.items() if k != "status"}
    observed = _total(after, REQUEST_DURATION_COUNT, timed) - _total(before, REQUEST_DURATION_COUNT, timed)
    c.equal("TEL-11", observed, COUNTED_REQUESTS, f"the total latency histogram ({REQUEST_DURATION_COUNT}) took one value per request")


async def _counted(c: Ctx, before: Samples, series: dict[str, str]) -> Samples:
    """A scrape once it counts the requests just sent (a gateway may count a request after its answer), or the last one."""
    deadline = time.monotonic() + COUNTED_WITHIN_S
    while True:
        after = await _scrape(c) or []
        if _total(after, REQUESTS_TOTAL, series) - _total(before, REQUESTS_TOTAL, series) >= COUNTED_REQUESTS or time.monotonic() > deadline:
            return after
        await asyncio.sleep(SCRAPE_AGAIN_S)


# -- TEL-12 ----------------------------------------------------------------------------


def _spans(records: list[dict[str, Any]]) -> list[Span]:
    found = []
    for record in records:
        request = otlp.message("traces", record["body"])
        if isinstance(request, ExportTraceServiceRequest):
            found += [span for entry in request.resource_spans for scope in entry.scope_spans for span in scope.spans]
    return found


async def _trace(col: RemoteCollector, trace_id: str) -> tuple[list[Span], list[dict[str, Any]]]:
    """The spans of ``trace_id`` once one has arrived (or the wait ran out), and every record so far."""
    deadline = time.monotonic() + telemetry.ARRIVAL_S
    while True:
        records = await col.received(SPANS_SINK)
        spans = [s for s in _spans(records) if s.trace_id.hex() == trace_id]
        left = deadline - time.monotonic()
        if spans or left <= 0:
            return spans, records
        await col.wait(SPANS_SINK, len(records) + 1, left)


@check("own traces: a request continues the client's sampled trace", "TEL-12", timeout_s=30)
async def request_spans(c: Ctx) -> None:
    col = grpc_collector(c, SPANS_SINK)
    await col.reset()
    await c.fake.reset()
    secret = f"conformance-secret-{secrets.token_hex(6)}"
    body = small_request(CUSTOM_MODEL, messages=[{"role": "user", "content": secret}])
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    unsampled = secrets.token_hex(16)
    quiet = await c.messages(body, headers={"traceparent": f"00-{unsampled}-{secrets.token_hex(8)}-00"})
    unasked = await c.messages(body)
    traced = await c.messages(body, headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    for answer, what in ((quiet, "an unsampled traceparent"), (unasked, "no traceparent"), (traced, "a sampled traceparent")):
        c.status("TEL-12", answer, 200, f"a request with {what}")
    spans, records = await _trace(col, trace_id)
    server = [s for s in spans if s.parent_span_id.hex() == parent]
    if not c.equal("TEL-12", len(server), 1, "one span continues the client's sampled trace (the client's span its parent)"):
        return
    values = [otlp.plain_value(kv.value) for kv in server[0].attributes]
    c.expect("TEL-12", all(v in values for v in ("/v1/messages", CUSTOM_MODEL, PRIMARY, 200)),
             "the request's span names its route, model, upstream and status", observed=_keys(server[0].attributes))
    children = [s for s in spans if s.parent_span_id == server[0].span_id]
    c.expect("TEL-12", bool(children), "the upstream call is a child span", observed=[s.name for s in spans])
    # Spans leave in the order they end: ones for the two earlier requests would have come by now.
    others = _spans(records)
    c.equal("TEL-12", [s.name for s in others if s.trace_id.hex() == unsampled], [], "an unsampled traceparent makes no span")
    request_id = unasked.header("request-id")
    stray = [s.name for s in others if request_id and request_id in (otlp.plain_value(kv.value) for kv in s.attributes)]
    c.equal("TEL-12", stray, [], "no traceparent at sample_ratio 0: no span")
    c.equal("TEL-12", [r["seq"] for r in records if secret.encode() in r["body"]], [], "no span carries the prompt")
