"""Identity stamping of relayed exports: every resource gets the caller's identity,
whatever the client wrote there; everything else survives; what cannot be read
is refused, never passed through."""

from __future__ import annotations

import gzip
import json
import os
import random
import zlib

import pytest
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench.stamp import as_otlp_json, claude_code_logs, claude_code_metrics
from gateway.auth.tokens import Principal
from gateway.telemetry.otlp_body import MAX_DECOMPRESSED_BYTES, BodyRejected
from gateway.telemetry.stamp import IDENTITY_KEYS, stamp

ADA = Principal("00u-ada", "ada@example.com", "Ada", ("eng", "ml-platform"), None, 0)
ADA_STAMP = [
    ("user.id", "00u-ada"), ("user.email", "ada@example.com"), ("user.groups", "eng,ml-platform"),
    ("identity.source", "gateway-oidc"),
]
FORGED = [("user.email", "ceo@example.com"), ("user.id", "someone-else"), ("identity.source", "trust-me"),
          ("user.groups", "admins"), ("user.email", "second-copy@example.com")]
PROTOBUF = "application/x-protobuf"


def resource_attrs(entry) -> list[tuple[str, str]]:
    return [(kv.key, kv.value.string_value) for kv in entry.resource.attributes]


def add_attrs(entry, pairs: list[tuple[str, str]]) -> None:
    for key, value in pairs:
        entry.resource.attributes.add(key=key).value.string_value = value


def without_identity(message: Message, field: str) -> Message:
    """A copy with the identity attributes taken off every resource."""
    copy = type(message)()
    copy.CopyFrom(message)
    for entry in getattr(copy, field):
        kept = [kv for kv in entry.resource.attributes if kv.key not in IDENTITY_KEYS]
        del entry.resource.attributes[:]
        entry.resource.attributes.extend(kept)
    return copy


# ------------------------------------------------------------ protobuf


def test_every_resource_of_a_protobuf_export_gets_the_callers_identity_and_nothing_forged_survives():
    request = claude_code_metrics(resources=3)
    add_attrs(request.resource_metrics[1], FORGED)
    request.resource_metrics.add()  # a resource the client left out entirely
    out = ExportMetricsServiceRequest.FromString(stamp("metrics", request.SerializeToString(), PROTOBUF, None, ADA))
    assert len(out.resource_metrics) == 4
    client_attrs = ["host.arch", "os.type", "os.version", "service.name", "service.version"]
    for entry in out.resource_metrics[:3]:
        assert [k for k, _ in resource_attrs(entry)] == client_attrs + [k for k, _ in ADA_STAMP]
        assert resource_attrs(entry)[5:] == ADA_STAMP
    assert resource_attrs(out.resource_metrics[3]) == ADA_STAMP
    # Only the resource changed: data points (and the client's own per-point user.id) are as sent.
    assert without_identity(out, "resource_metrics") == without_identity(request, "resource_metrics")
    point = out.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
    assert {kv.key: kv.value.string_value for kv in point.attributes}["user.id"] == "9f2c" * 16


@pytest.mark.parametrize("signal, message, field", [
    ("logs", claude_code_logs(), "resource_logs"),
    ("traces", ExportTraceServiceRequest(), "resource_spans"),
])
def test_logs_and_traces_are_stamped_too(signal, message, field):
    if signal == "traces":
        spans = message.resource_spans.add()
        add_attrs(spans, [("service.name", "claude-code"), ("user.email", "ceo@example.com")])
        spans.scope_spans.add().spans.add(name="claude_code.request", trace_id=os.urandom(16), span_id=os.urandom(8))
    out = type(message).FromString(stamp(signal, message.SerializeToString(), PROTOBUF, None, ADA))
    entry = getattr(out, field)[0]
    assert [a for a in resource_attrs(entry) if a[0] in IDENTITY_KEYS] == ADA_STAMP
    assert without_identity(out, field) == without_identity(message, field)


def test_a_missing_content_type_is_read_as_protobuf_and_parameters_and_case_do_not_matter():
    body = claude_code_metrics().SerializeToString()
    assert stamp("metrics", body, None, None, ADA) == stamp("metrics", body, "Application/X-Protobuf; q=1", None, ADA)


def test_fields_this_proto_version_does_not_know_survive_the_round_trip():
    # Field 99 of the request, length-delimited (a newer OTLP's addition): tag 99 << 3 | 2, length 3.
    unknown = b"\x9a\x06\x03new"
    body = claude_code_metrics().SerializeToString() + unknown
    assert stamp("metrics", body, PROTOBUF, None, ADA).endswith(unknown)


def test_an_empty_protobuf_export_has_no_resource_to_stamp():
    assert stamp("metrics", b"", PROTOBUF, None, ADA) == b""


# ------------------------------------------------------------ the identity


def test_an_identity_without_email_or_groups_still_erases_the_clients_values():
    request = claude_code_metrics()
    add_attrs(request.resource_metrics[0], FORGED)
    bare = Principal("00u-bob", None, None, (), None, 0)
    out = ExportMetricsServiceRequest.FromString(stamp("metrics", request.SerializeToString(), PROTOBUF, None, bare))
    assert resource_attrs(out.resource_metrics[0])[5:] == [("user.id", "00u-bob"), ("identity.source", "gateway-oidc")]


def test_groups_are_left_out_when_a_name_holds_a_comma():
    # "eng,admins" would read as membership of "admins".
    odd = Principal("00u-eve", "eve@example.com", None, ("eng,admins", "ops"), None, 0)
    request = claude_code_metrics()
    add_attrs(request.resource_metrics[0], [("user.groups", "admins")])
    out = ExportMetricsServiceRequest.FromString(stamp("metrics", request.SerializeToString(), PROTOBUF, None, odd))
    assert "user.groups" not in dict(resource_attrs(out.resource_metrics[0]))


# ------------------------------------------------------------ OTLP/JSON


def json_logs() -> dict:
    return {
        "resourceLogs": [
            {"resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "claude-desktop"}},
                {"key": "user.email", "value": {"stringValue": "ceo@example.com"}},
                {"key": "host.cpus", "value": {"intValue": "8"}},
            ], "droppedAttributesCount": 0},
             "scopeLogs": [{"scope": {"name": "desktop"}, "logRecords": [{
                 "timeUnixNano": "1765100060000000000", "severityNumber": 9,
                 "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
                 "body": {"stringValue": "ünïcode ✓ prompt"},
                 "attributes": [{"key": "user.email", "value": {"stringValue": "point-level@example.com"}},
                                {"key": "ratio", "value": {"doubleValue": 0.1}}],
             }]}]},
            {"scopeLogs": []},  # no resource: one is made for the stamp
        ],
        "x-future-field": {"kept": [1, 2.5, None, True]},
    }


def test_an_otlp_json_export_is_stamped_as_json_and_keeps_everything_else():
    sent = json_logs()
    out = json.loads(stamp("logs", json.dumps(sent).encode(), "application/json; charset=utf-8", None, ADA))
    stamp_json = [{"key": k, "value": {"stringValue": v}} for k, v in ADA_STAMP]
    first, second = out["resourceLogs"]
    assert first["resource"]["attributes"] == [
        {"key": "service.name", "value": {"stringValue": "claude-desktop"}},
        {"key": "host.cpus", "value": {"intValue": "8"}},
        *stamp_json,
    ]
    assert second["resource"] == {"attributes": stamp_json}
    # The rest is the client's document: hex ids stay hex, point-level attributes stay, unknown keys stay.
    for doc in (out, sent):
        for entry in doc["resourceLogs"]:
            entry.pop("resource", None)
    assert out == sent


def test_json_with_the_proto_field_names_is_stamped_too():
    # Protobuf JSON parsers accept resource_spans as well as resourceSpans: a stamp must not miss it.
    body = json.dumps({"resource_spans": [{"resource": {"attributes": [
        {"key": "user.id", "value": {"stringValue": "forged"}}]}}]}).encode()
    out = json.loads(stamp("traces", body, "application/json", None, ADA))
    assert out["resource_spans"][0]["resource"]["attributes"][0] == {"key": "user.id", "value": {"stringValue": "00u-ada"}}


def test_json_as_the_exporters_write_it_round_trips_to_the_same_request():
    request = claude_code_metrics(resources=2)
    out = json.loads(stamp("metrics", as_otlp_json(request), "application/json", None, ADA))
    assert [(a["key"], a["value"]["stringValue"]) for a in out["resourceMetrics"][1]["resource"]["attributes"]][5:] == ADA_STAMP
    for entry in out["resourceMetrics"]:
        entry["resource"]["attributes"] = entry["resource"]["attributes"][:5]
    assert out == json.loads(as_otlp_json(request))


# ------------------------------------------------------------ compression


def test_a_gzip_body_is_stamped_and_compressed_again():
    request = claude_code_metrics()
    add_attrs(request.resource_metrics[0], FORGED)
    out = stamp("metrics", gzip.compress(request.SerializeToString()), PROTOBUF, "gzip", ADA)
    assert out[:2] == b"\x1f\x8b"
    stamped = ExportMetricsServiceRequest.FromString(gzip.decompress(out))
    assert resource_attrs(stamped.resource_metrics[0])[5:] == ADA_STAMP
    assert out == stamp("metrics", gzip.compress(request.SerializeToString()), PROTOBUF, " GZIP ", ADA)


def test_gzip_json_and_a_body_of_several_gzip_members():
    body = json.dumps(json_logs()).encode()
    half = len(body) // 2
    two_members = gzip.compress(body[:half]) + gzip.compress(body[half:])
    out = json.loads(gzip.decompress(stamp("logs", two_members, "application/json", "gzip", ADA)))
    assert out["resourceLogs"][0]["resource"]["attributes"][-1]["value"]["stringValue"] == "gateway-oidc"


def test_a_deflate_body_stays_deflate():
    body = claude_code_logs().SerializeToString()
    out = stamp("logs", zlib.compress(body), PROTOBUF, "deflate", ADA)
    assert resource_attrs(ExportLogsServiceRequest.FromString(zlib.decompress(out)).resource_logs[0])[5:] == ADA_STAMP


def test_inflating_stops_at_the_bound():
    body = claude_code_metrics().SerializeToString()
    assert stamp("metrics", gzip.compress(body), PROTOBUF, "gzip", ADA, limit=len(body))
    with pytest.raises(BodyRejected, match=f"more than {len(body) - 1} bytes"):
        stamp("metrics", gzip.compress(body), PROTOBUF, "gzip", ADA, limit=len(body) - 1)
    # The second member is what crosses it.
    with pytest.raises(BodyRejected, match="more than"):
        stamp("metrics", gzip.compress(body) * 2, PROTOBUF, "gzip", ADA, limit=len(body) + 1)
    with pytest.raises(BodyRejected, match=f"more than {len(body) - 1} bytes"):
        stamp("metrics", zlib.compress(body), PROTOBUF, "deflate", ADA, limit=len(body) - 1)


def test_a_zip_bomb_is_refused_at_the_real_bound():
    bomb = gzip.compress(b"\x00" * (MAX_DECOMPRESSED_BYTES + 1), compresslevel=1)
    assert len(bomb) < 1024 * 1024
    with pytest.raises(BodyRejected, match="decompresses to more than"):
        stamp("metrics", bomb, PROTOBUF, "gzip", ADA)


# ------------------------------------------------------------ what cannot be stamped


@pytest.mark.parametrize("signal, body, content_type, encoding, why", [
    ("metrics", b"\x0a\xff\xff\xff\xff\x0f", PROTOBUF, None, "not a protobuf ExportMetricsServiceRequest"),
    ("logs", b"{not json", "application/json", None, "not a JSON document"),
    ("logs", b"\xff\xfe{}", "application/json", None, "not a JSON document"),
    ("logs", b'["resourceLogs"]', "application/json", None, "is a JSON object"),
    ("logs", b'{"resourceLogs": {"resource": {}}}', "application/json", None, "resourceLogs is not a list"),
    ("logs", b'{"resourceLogs": ["x"]}', "application/json", None, "is not an object"),
    ("logs", b'{"resourceLogs": [{"resource": []}]}', "application/json", None, "is not an object"),
    ("logs", b'{"resourceLogs": [{"resource": {"attributes": {"user.id": "x"}}}]}', "application/json", None,
     "not key/value objects"),
    ("logs", b'{"resourceLogs": [{"resource": {"attributes": [{"key": ["user.id"]}]}}]}', "application/json", None,
     "not key/value objects"),
    ("metrics", b"user.id=forged", "text/plain", None, "neither application/x-protobuf nor application/json"),
    ("metrics", b"\x00", "application/octet-stream", None, "neither application/x-protobuf nor application/json"),
    ("metrics", b"\x00", PROTOBUF, "br", "'br' is not supported"),
    ("metrics", b"\x00", PROTOBUF, "gzip, gzip", "'gzip, gzip' is not supported"),
    ("metrics", gzip.compress(b"\x00" * 100)[:-9], PROTOBUF, "gzip", "cut short"),
    ("metrics", b"\x1f\x8b not gzip", PROTOBUF, "gzip", "not valid gzip"),
    ("metrics", gzip.compress(b"") + b"trailing", PROTOBUF, "gzip", "not valid gzip"),
    ("metrics", b"\x78\x9c not zlib", PROTOBUF, "deflate", "not valid deflate"),
    ("metrics", zlib.compress(b"") + b"trailing", PROTOBUF, "deflate", "bytes after the end"),
    ("metrics", b"", PROTOBUF, "gzip", "cut short"),
    ("profiles", b"", PROTOBUF, None, "no OTLP signal named 'profiles'"),
])
def test_what_cannot_be_stamped_is_refused(signal, body, content_type, encoding, why):
    with pytest.raises(BodyRejected, match=why):
        stamp(signal, body, content_type, encoding, ADA)


def test_a_damaged_export_is_either_stamped_or_refused():
    # One byte of a real export changed: whatever protobuf makes of the result, it
    # carries exactly the caller's identity or it is refused.
    request = claude_code_metrics(resources=2)
    add_attrs(request.resource_metrics[0], FORGED)
    body = request.SerializeToString()
    rng = random.Random(15)
    outcomes = {"stamped": 0, "refused": 0}
    for _ in range(300):
        damaged = bytearray(body)
        damaged[rng.randrange(len(body))] = rng.randrange(256)
        try:
            out = ExportMetricsServiceRequest.FromString(stamp("metrics", bytes(damaged), PROTOBUF, None, ADA))
        except BodyRejected:
            outcomes["refused"] += 1
            continue
        outcomes["stamped"] += 1
        for entry in out.resource_metrics:
            assert [a for a in resource_attrs(entry) if a[0] in IDENTITY_KEYS] == ADA_STAMP
    assert outcomes["stamped"] > 0 and outcomes["refused"] > 0
