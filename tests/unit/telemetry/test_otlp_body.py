"""Client exports made into OTLP/gRPC requests: protobuf as it came, gzip undone
under a bound, OTLP/JSON read with its own rules (opentelemetry-proto
docs/specification.md, "JSON Protobuf Encoding"), and a collector's partial success."""

from __future__ import annotations

import base64
import gzip
import json
import os
import zlib

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bench.stamp import as_otlp_json
from gateway.telemetry.otlp_body import (
    MAX_DECOMPRESSED_BYTES,
    REQUEST_TYPES,
    BodyRejected,
    export_request,
    gunzip,
    parse,
    partial_success,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

TRACE_ID = "5B8EFFF798038103D269B633813FC60C"
SPAN_ID = "eee19b7ec3c1b174"  # case-insensitive hex
PARENT_ID = "EEE19B7EC3C1B173"

# A server span as OTLP/JSON writes it: hex ids, an integer enum, 64-bit integers
# as a number and as a string, and a field this version does not know.
TRACE_JSON = {
    "resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "claude-code"}}]},
        "scopeSpans": [{
            "scope": {"name": "com.anthropic.claude_code", "version": "2.1.0"},
            "spans": [{
                "traceId": TRACE_ID,
                "spanId": SPAN_ID,
                "parentSpanId": PARENT_ID,
                "name": "claude_code.interaction",
                "kind": 2,
                "startTimeUnixNano": 1544712660000000000,
                "endTimeUnixNano": "1544712661000000000",
                "attributes": [{"key": "nested", "value": {"kvlistValue": {"values": [
                    {"key": "traceId", "value": {"stringValue": "an attribute, not an id"}},
                ]}}}],
                "links": [{"traceId": "00" * 16, "spanId": "01" * 8}],
                "status": {"code": 1},
                "aFieldFromTheFuture": {"x": 1},
            }],
        }],
    }],
}


def trace_request_json() -> bytes:
    return json.dumps(TRACE_JSON).encode()


# ------------------------------------------------------------ protobuf


def test_a_protobuf_body_is_the_request_as_it_came():
    body = os.urandom(2048)  # not even a valid message: it is never decoded
    assert export_request("metrics", body, PROTOBUF, None) is body
    assert export_request("metrics", body, "application/x-protobuf; charset=binary", "identity") is body
    assert export_request("logs", body, None, None) is body  # no type: protobuf, as the relay assumes
    assert export_request("traces", b"", PROTOBUF, None) == b""


def test_a_gzip_protobuf_body_is_decompressed_and_sent_unchanged():
    message = ExportMetricsServiceRequest()
    message.resource_metrics.add().resource.attributes.add(key="service.name").value.string_value = "cc"
    raw = message.SerializeToString()
    assert export_request("metrics", gzip.compress(raw), PROTOBUF, "gzip") == raw
    assert export_request("metrics", gzip.compress(raw), PROTOBUF, " GZIP ") == raw


def test_a_deflate_body_is_decompressed_too_and_application_protobuf_is_protobuf():
    raw = ExportMetricsServiceRequest().SerializeToString() + b"\x0a\x00"  # one empty ResourceMetrics
    assert export_request("metrics", zlib.compress(raw), "application/protobuf", "deflate") == raw
    with pytest.raises(BodyRejected, match="bytes after the end of the deflate stream"):
        export_request("metrics", zlib.compress(raw) * 2, PROTOBUF, "deflate")
    with pytest.raises(BodyRejected, match="not valid deflate"):
        export_request("metrics", gzip.compress(raw), PROTOBUF, "deflate")


def test_parse_decodes_protobuf_and_refuses_what_is_not():
    message = ExportLogsServiceRequest()
    message.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "hello"
    assert parse("logs", message.SerializeToString(), PROTOBUF, None) == message
    with pytest.raises(BodyRejected, match="not a protobuf ExportLogsServiceRequest"):
        parse("logs", b"\xff\xff\xff", PROTOBUF, None)


# ------------------------------------------------------------ gzip


def test_gunzip_reads_every_member():
    assert gunzip(gzip.compress(b"one ") + gzip.compress(b"two"), 100) == b"one two"


def test_gunzip_holds_its_bound_exactly():
    body = gzip.compress(b"x" * 1000)
    assert gunzip(body, 1000) == b"x" * 1000
    with pytest.raises(BodyRejected, match="more than 999 bytes"):
        gunzip(body, 999)


def test_a_gzip_bomb_is_a_rejection_not_a_crash():
    bomb = gzip.compress(b"\0" * (MAX_DECOMPRESSED_BYTES + 1), compresslevel=9)
    assert len(bomb) < 100_000
    with pytest.raises(BodyRejected, match="decompresses to more than"):
        export_request("metrics", bomb, PROTOBUF, "gzip")


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"plain bytes", "not valid gzip"),
        (gzip.compress(b"x" * 100)[:-12], "cut short"),
        (b"", "cut short"),
        (gzip.compress(b"x") + b"trailing junk", "not valid gzip"),
        (zlib.compress(b"deflate, not gzip"), "not valid gzip"),
    ],
)
def test_broken_gzip_is_rejected(body, reason):
    with pytest.raises(BodyRejected, match=reason):
        export_request("metrics", body, PROTOBUF, "gzip")


def test_unknown_encodings_and_types_are_rejected():
    with pytest.raises(BodyRejected, match="content encoding 'br' is not supported"):
        export_request("metrics", b"x", PROTOBUF, "br")
    with pytest.raises(BodyRejected, match="neither application/x-protobuf nor application/json"):
        export_request("metrics", b"x", "text/plain", None)
    with pytest.raises(BodyRejected, match="no OTLP signal"):
        export_request("profiles", b"{}", JSON, None)


# ------------------------------------------------------------ OTLP/JSON


def test_json_ids_are_hex_and_enums_integers():
    request = ExportTraceServiceRequest.FromString(export_request("traces", trace_request_json(), JSON, None))
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id == bytes.fromhex(TRACE_ID) and len(span.trace_id) == 16
    assert span.span_id == bytes.fromhex(SPAN_ID) and span.parent_span_id == bytes.fromhex(PARENT_ID)
    assert span.links[0].trace_id == bytes(16) and span.links[0].span_id == b"\x01" * 8
    assert span.kind == Span.SPAN_KIND_SERVER and span.status.code == 1
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (1544712660000000000, 1544712661000000000)
    # An attribute's key is a value, never mistaken for an id field.
    assert span.attributes[0].value.kvlist_value.values[0].key == "traceId"
    assert request.resource_spans[0].resource.attributes[0].value.string_value == "claude-code"


def test_json_from_real_sdk_spans_equals_their_protobuf_encoding():
    """Spans made by the OpenTelemetry SDK, encoded by its own protobuf encoder, and the
    same request written as OTLP/JSON: both arrive as the same message."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "cc", "user.id": "u-1"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("parent", attributes={"n": 3, "ok": True}):
        with tracer.start_as_current_span("child") as child:
            child.add_event("tool", {"name": "Bash"})
    expected = encode_spans(exporter.get_finished_spans())
    got = ExportTraceServiceRequest.FromString(
        export_request("traces", as_otlp_json(expected), JSON, None)
    )
    assert got == expected
    assert got.resource_spans[0].scope_spans[0].spans[0].parent_span_id  # the child's parent went through hex


def test_json_with_snake_case_keys_is_read_too():
    body = json.dumps({"resource_logs": [{"scope_logs": [{"log_records": [
        {"trace_id": TRACE_ID, "span_id": SPAN_ID, "severity_number": 9, "body": {"string_value": "hi"}},
    ]}]}]}).encode()
    record = ExportLogsServiceRequest.FromString(export_request("logs", body, JSON, None)).resource_logs[0].scope_logs[0].log_records[0]
    assert record.trace_id == bytes.fromhex(TRACE_ID) and record.severity_number == 9 and record.body.string_value == "hi"


def test_exemplar_ids_in_metrics_are_hex_too():
    body = json.dumps({"resourceMetrics": [{"scopeMetrics": [{"metrics": [{
        "name": "claude_code.token.usage", "sum": {"aggregationTemporality": 1, "isMonotonic": True, "dataPoints": [
            {"asDouble": 12.0, "exemplars": [{"asDouble": 1.0, "traceId": TRACE_ID, "spanId": SPAN_ID}]},
        ]},
    }]}]}]}).encode()
    request = ExportMetricsServiceRequest.FromString(export_request("metrics", body, JSON, None))
    exemplar = request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0].exemplars[0]
    assert exemplar.trace_id == bytes.fromhex(TRACE_ID) and exemplar.span_id == bytes.fromhex(SPAN_ID)


def test_gzip_json_is_decompressed_then_converted():
    plain = export_request("traces", trace_request_json(), "application/json; charset=utf-8", None)
    assert export_request("traces", gzip.compress(trace_request_json()), JSON, "gzip") == plain


def test_enum_names_are_accepted_though_otlp_json_writes_integers():
    doc = json.loads(trace_request_json())
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["kind"] = "SPAN_KIND_SERVER"
    request = ExportTraceServiceRequest.FromString(export_request("traces", json.dumps(doc).encode(), JSON, None))
    assert request.resource_spans[0].scope_spans[0].spans[0].kind == Span.SPAN_KIND_SERVER


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"", "not JSON"),
        (b"[]", "not an OTLP/JSON ExportTraceServiceRequest: the body is not a JSON object"),
        (b'{"resourceSpans": 7}', "not an OTLP/JSON ExportTraceServiceRequest"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}', "ExportTraceServiceRequest"),
        # protobuf's own JSON mapping writes ids in base64: OTLP/JSON does not
        (json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
            {"traceId": base64.b64encode(bytes(range(16))).decode()}]}]}]}).encode(), "traceId must be a hex string"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "abc"}]}]}]}', "spanId must be a hex string"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": 12}]}]}]}', "spanId must be a hex string"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "0g"}]}]}]}', "traceId must be a hex string"),
    ],
)
def test_a_body_that_is_not_otlp_json_is_rejected_with_a_short_reason(body, reason):
    with pytest.raises(BodyRejected, match=reason) as caught:
        export_request("traces", body, JSON, None)
    assert len(str(caught.value)) < 250


@pytest.mark.parametrize("depth", [150, 50_000])  # past ParseDict's limit; past the interpreter's
def test_deeply_nested_attributes_are_refused_not_crashing(depth):
    value = '{"arrayValue": {"values": [' * depth + '{"stringValue": "leaf"}' + "]}}" * depth
    span = '{"attributes": [{"key": "k", "value": ' + value + "}]}"
    body = ('{"resourceSpans": [{"scopeSpans": [{"spans": [' + span + "]}]}]}").encode()
    with pytest.raises(BodyRejected):
        export_request("traces", body, JSON, None)


def test_every_signal_has_its_request_type():
    assert REQUEST_TYPES["metrics"] is ExportMetricsServiceRequest
    assert REQUEST_TYPES["logs"] is ExportLogsServiceRequest and REQUEST_TYPES["traces"] is ExportTraceServiceRequest
    for signal, kind in REQUEST_TYPES.items():
        assert parse(signal, b"{}", JSON, None) == kind()


# ------------------------------------------------------------ the collector's answer


def test_partial_success_is_read_per_signal():
    answer = ExportTraceServiceResponse()
    answer.partial_success.rejected_spans = 3
    answer.partial_success.error_message = "spans too old"
    assert partial_success("traces", answer.SerializeToString()) == (3, "spans too old")
    logs = ExportLogsServiceResponse()
    logs.partial_success.error_message = "a warning, nothing refused"
    assert partial_success("logs", logs.SerializeToString()) == (0, "a warning, nothing refused")
    assert partial_success("metrics", ExportMetricsServiceResponse().SerializeToString()) is None
    assert partial_success("metrics", b"") is None
    assert partial_success("metrics", b"\xff\xff") is None
