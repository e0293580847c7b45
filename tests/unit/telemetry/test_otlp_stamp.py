"""Identity stamping of relayed exports: every resource gets the caller's identity,
whatever the client wrote there; below the resources, every attribute list of
every kind names the caller or no one; everything else survives; what cannot be
read is refused, never passed through."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import zlib

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench.stamp import INSTALLATION, as_otlp_json, claude_code_logs, claude_code_metrics
from gateway.auth.tokens import Principal
from gateway.telemetry.otlp_body import MAX_DECOMPRESSED_BYTES, BodyRejected, parse
from gateway.telemetry.stamp import IDENTITY_KEYS, MAX_STAMPED_BYTES, stamp
from tests.telemetry.otlp_attributes import attribute_lists, claims_below, padded_to, without_identity

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
    assert without_identity(out) == without_identity(request)
    point = out.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
    assert {kv.key: kv.value.string_value for kv in point.attributes}["user.id"] == INSTALLATION


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
    assert without_identity(out) == without_identity(message)


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


# ------------------------------------------------------------ below the resource

NOW_NS = 1_765_100_060_000_000_000
_METRIC_KINDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")
# What a modified client might write on any attribute list; the real client's own
# keys around it must survive in place.
FORGED_BELOW = [("model", "claude-sonnet-4-6"), ("user.email", "ceo@example.com"), ("user.groups", "admins"),
                ("identity.source", "trust-me"), ("user.id", "00u-ceo"), ("type", "input")]


def forge(attributes, user_id: str = "00u-ceo") -> None:
    for key, value in FORGED_BELOW:
        attributes.add(key=key).value.string_value = user_id if key == "user.id" else value


def corrected(user_id: str = "00u-ada", email: str | None = "ada@example.com") -> list[tuple[str, str]]:
    """What a forged list reads after stamping: the email and id in place, the rest gone."""
    mine = [("user.email", email)] if email else []
    return [("model", "claude-sonnet-4-6"), *mine, ("user.id", user_id), ("type", "input")]


def pairs(attributes) -> list[tuple[str, str]]:
    return [(kv.key, kv.value.string_value) for kv in attributes]


def every_kind_of_metric() -> ExportMetricsServiceRequest:
    """Each metric kind with a forged point and one carrying the installation hash,
    exemplars, metadata and scope attributes, all forged."""
    request = ExportMetricsServiceRequest()
    scope = request.resource_metrics.add().scope_metrics.add()
    scope.scope.name = "com.anthropic.claude_code"
    forge(scope.scope.attributes)
    for kind in _METRIC_KINDS:
        metric = scope.metrics.add(name=f"claude_code.{kind}")
        forge(metric.metadata)
        for user_id in ("00u-ceo", INSTALLATION):
            point = getattr(metric, kind).data_points.add(time_unix_nano=NOW_NS)
            forge(point.attributes, user_id)
            if kind != "summary":
                exemplar = point.exemplars.add(as_double=1.0, trace_id=bytes(range(16)), span_id=bytes(range(8)))
                forge(exemplar.filtered_attributes)
    return request


def forged_logs() -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    scope = request.resource_logs.add().scope_logs.add()
    forge(scope.scope.attributes)
    for user_id in ("00u-ceo", INSTALLATION):
        record = scope.log_records.add(time_unix_nano=NOW_NS, trace_id=bytes(range(16)), span_id=bytes(range(8)))
        record.body.string_value = "claude_code.api_request"
        forge(record.attributes, user_id)
    return request


def forged_spans() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    forge(scope.scope.attributes)
    for user_id in ("00u-ceo", INSTALLATION):
        span = scope.spans.add(name="claude_code.request", trace_id=os.urandom(16), span_id=os.urandom(8),
                               parent_span_id=os.urandom(8), start_time_unix_nano=NOW_NS)
        forge(span.attributes, user_id)
        forge(span.events.add(name="tool", time_unix_nano=NOW_NS).attributes)
        forge(span.links.add(trace_id=os.urandom(16), span_id=os.urandom(8)).attributes)
    return request


LISTS_OF = {
    "metrics": {"scope", *(f"claude_code.{k} metadata" for k in _METRIC_KINDS), *(f"{k} point" for k in _METRIC_KINDS),
                *(f"{k} exemplar" for k in _METRIC_KINDS[:-1])},
    "logs": {"scope", "log record"},
    "traces": {"scope", "span", "span event", "span link"},
}
FORGED_EXPORTS = [("metrics", every_kind_of_metric), ("logs", forged_logs), ("traces", forged_spans)]


def expected_lists(request) -> list[tuple[str, list[tuple[str, str]]]]:
    """Per attribute list of the sent request: what it must read after stamping."""
    return [
        (where, corrected(INSTALLATION if ("user.id", INSTALLATION) in pairs(attrs) else "00u-ada"))
        for where, attrs in attribute_lists(request)
    ]


@pytest.mark.parametrize("signal, make", FORGED_EXPORTS)
def test_every_attribute_list_below_the_resource_names_the_caller_or_no_one(signal, make):
    request = make()
    out = type(request).FromString(stamp(signal, request.SerializeToString(), PROTOBUF, None, ADA))
    got = [(where, pairs(attrs)) for where, attrs in attribute_lists(out)]
    assert got == expected_lists(request)
    assert {where for where, _ in got} == LISTS_OF[signal]  # every kind was there to be stamped
    assert resource_attrs(getattr(out, type(out).DESCRIPTOR.fields[0].name)[0]) == ADA_STAMP
    assert without_identity(out) == without_identity(request)  # nothing else changed


@pytest.mark.parametrize("proto_names", [False, True], ids=["lowerCamelCase", "proto names"])
@pytest.mark.parametrize("signal, make", FORGED_EXPORTS)
def test_otlp_json_below_the_resource_reads_as_the_protobuf_stamp(signal, make, proto_names):
    request = make()
    stamped_json = stamp(signal, as_otlp_json(request, proto_names=proto_names), "application/json", None, ADA)
    stamped_protobuf = stamp(signal, request.SerializeToString(), PROTOBUF, None, ADA)
    assert parse(signal, stamped_json, "application/json", None) == type(request).FromString(stamped_protobuf)


@pytest.mark.parametrize("content_type", [PROTOBUF, "application/json"])
def test_without_an_email_the_clients_point_level_email_is_removed(content_type):
    request = forged_logs()
    body = request.SerializeToString() if content_type == PROTOBUF else as_otlp_json(request)
    bare = Principal("00u-bob", None, None, (), None, 0)
    out = parse("logs", stamp("logs", body, content_type, None, bare), content_type, None)
    assert [pairs(a) for _, a in attribute_lists(out)] == [
        corrected("00u-bob", None), corrected("00u-bob", None), corrected(INSTALLATION, None)]


@pytest.mark.parametrize("content_type", [PROTOBUF, "application/json"])
def test_desktops_enduser_attributes_name_the_caller_wherever_sent_and_are_never_added(content_type):
    # Claude Desktop's bootstrap gives it enduser.id (the email) and enduser.sub; a modified
    # Desktop must not report as someone else through them either.
    request = ExportLogsServiceRequest()
    forged = request.resource_logs.add()
    add_attrs(forged, [("service.name", "claude-desktop"), ("enduser.id", "ceo@example.com"), ("enduser.sub", "00u-ceo")])
    record = forged.scope_logs.add().log_records.add()
    for key, value in (("enduser.sub", "00u-ceo"), ("enduser.id", "ceo@example.com"), ("event.name", "x")):
        record.attributes.add(key=key).value.string_value = value
    request.resource_logs.add().scope_logs.add().log_records.add()  # the CLI's shape: no enduser.* anywhere
    body = request.SerializeToString() if content_type == PROTOBUF else as_otlp_json(request)
    out = parse("logs", stamp("logs", body, content_type, None, ADA), content_type, None)
    first, second = out.resource_logs
    assert resource_attrs(first) == [
        ("service.name", "claude-desktop"), ("enduser.id", "ada@example.com"), ("enduser.sub", "00u-ada"), *ADA_STAMP]
    assert pairs(first.scope_logs[0].log_records[0].attributes) == [
        ("enduser.sub", "00u-ada"), ("enduser.id", "ada@example.com"), ("event.name", "x")]
    assert resource_attrs(second) == ADA_STAMP
    assert pairs(second.scope_logs[0].log_records[0].attributes) == []
    # Without an email, enduser.id goes, as user.email does.
    bare = Principal("00u-bob", None, None, (), None, 0)
    out = parse("logs", stamp("logs", body, content_type, None, bare), content_type, None)
    assert [k for k, _ in resource_attrs(out.resource_logs[0]) if k.startswith("enduser.")] == ["enduser.sub"]


@pytest.mark.parametrize("content_type", [PROTOBUF, "application/json"])
@pytest.mark.parametrize("sent, kept", [
    (INSTALLATION, True),
    ("0" * 64, True),
    (INSTALLATION.upper(), False),  # the client writes lower-case hex
    (INSTALLATION[:-1], False),
    (INSTALLATION + "0", False),
    ("", False),
    (7, False),  # an int value: not a hash whatever its digits
    (None, False),  # a key with no value
])
def test_a_point_level_user_id_is_kept_only_as_an_installation_hash(content_type, sent, kept):
    request = ExportLogsServiceRequest()
    kv = request.resource_logs.add().scope_logs.add().log_records.add().attributes.add(key="user.id")
    if isinstance(sent, int):
        kv.value.int_value = sent
    elif sent is not None:
        kv.value.string_value = sent
    body = request.SerializeToString() if content_type == PROTOBUF else as_otlp_json(request)
    out = parse("logs", stamp("logs", body, content_type, None, ADA), content_type, None)
    attributes = out.resource_logs[0].scope_logs[0].log_records[0].attributes
    assert pairs(attributes) == [("user.id", sent if kept else "00u-ada")]
    assert attributes[0].value.WhichOneof("value") == "string_value"


def test_a_replaced_value_keeps_nothing_of_the_old_one():
    # A forged email whose value also holds field 99, a variant of a newer AnyValue:
    # protobuf keeps it as an unknown field, and a newer reader would take it.
    request = ExportLogsServiceRequest()
    kv = request.resource_logs.add().scope_logs.add().log_records.add().attributes.add(key="user.email")
    kv.value.MergeFromString(b"\x0a\x0fceo@example.com" + b"\x9a\x06\x08ceo-too!")
    body = request.SerializeToString()
    assert b"ceo-too!" in body
    out = stamp("logs", body, PROTOBUF, None, ADA)
    assert b"ceo" not in out
    record = ExportLogsServiceRequest.FromString(out).resource_logs[0].scope_logs[0].log_records[0]
    assert pairs(record.attributes) == [("user.email", "ada@example.com")]


def test_key_value_lists_inside_values_and_log_bodies_are_data_and_left_alone():
    request = ExportLogsServiceRequest()
    record = request.resource_logs.add().scope_logs.add().log_records.add()
    record.body.kvlist_value.values.add(key="user.email").value.string_value = "quoted@example.com"
    nested = record.attributes.add(key="request").value.kvlist_value.values.add(key="user.id")
    nested.value.string_value = "as-sent"
    out = ExportLogsServiceRequest.FromString(stamp("logs", request.SerializeToString(), PROTOBUF, None, ADA))
    assert claims_below(out) == [] and without_identity(out) == without_identity(request)


def test_an_export_without_identity_keys_below_the_resource_is_not_walked_and_still_right():
    request = claude_code_logs()
    for _, attributes in attribute_lists(request):
        kept = [kv for kv in attributes if kv.key != "user.id"]
        del attributes[:]
        attributes.extend(kept)
    out = ExportLogsServiceRequest.FromString(stamp("logs", request.SerializeToString(), PROTOBUF, None, ADA))
    assert claims_below(out) == [] and without_identity(out) == without_identity(request)


def json_record(**fields) -> bytes:
    return json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [fields]}]}]}).encode()


@pytest.mark.parametrize("body, why", [
    (json_record(attributes={"user.email": "ceo@example.com"}), "attributes that are not key/value objects"),
    (json_record(attributes=[{"key": 1}]), "attributes that are not key/value objects"),
    (json_record(attributes=["user.email"]), "attributes that are not key/value objects"),
    (json.dumps({"resourceLogs": [{"scopeLogs": {"logRecords": []}}]}).encode(), "scopeLogs is not a list"),
    (json.dumps({"resourceLogs": [{"scope_logs": [{"log_records": ["x"]}]}]}).encode(), "log_records holds something"),
    (json.dumps({"resourceLogs": [{"scopeLogs": [{"scope": []}]}]}).encode(), "scope holds something"),
])
def test_otlp_json_of_the_wrong_shape_where_attributes_may_lie_is_refused(body, why):
    with pytest.raises(BodyRejected, match=why):
        stamp("logs", body, "application/json", None, ADA)


def test_otlp_json_nulls_are_defaults_and_pass():
    body = json.dumps({"resourceLogs": [{"scopeLogs": None}, {"scopeLogs": [{"scope": None, "logRecords": [
        {"attributes": None}]}]}]}).encode()
    out = json.loads(stamp("logs", body, "application/json", None, ADA))
    assert out["resourceLogs"][1]["scopeLogs"] == [{"scope": None, "logRecords": [{"attributes": None}]}]


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
    # The record's forged email now names the caller, where it stood.
    record = out["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    assert record["attributes"][0] == {"key": "user.email", "value": {"stringValue": "ada@example.com"}}
    # The rest is the client's document: hex ids stay hex, other attributes stay, unknown keys stay.
    for doc in (out, sent):
        for entry in doc["resourceLogs"]:
            entry.pop("resource", None)
        doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["attributes"].pop(0)
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
    bomb = gzip.compress(b"\x00" * (MAX_STAMPED_BYTES + 1), compresslevel=1)
    assert len(bomb) < 100 * 1024
    with pytest.raises(BodyRejected, match=f"decompresses to more than {MAX_STAMPED_BYTES} bytes"):
        stamp("metrics", bomb, PROTOBUF, "gzip", ADA)


def test_an_export_is_stamped_up_to_the_bound_and_refused_past_it():
    at_bound = padded_to(claude_code_metrics(), MAX_STAMPED_BYTES)
    out = ExportMetricsServiceRequest.FromString(stamp("metrics", at_bound, PROTOBUF, None, ADA))
    assert resource_attrs(out.resource_metrics[0])[-4:] == ADA_STAMP
    past = padded_to(claude_code_metrics(), MAX_STAMPED_BYTES + 1)
    with pytest.raises(BodyRejected, match=f"larger than {MAX_STAMPED_BYTES} bytes"):
        stamp("metrics", past, PROTOBUF, None, ADA)
    with pytest.raises(BodyRejected, match=f"decompresses to more than {MAX_STAMPED_BYTES} bytes"):
        stamp("metrics", gzip.compress(past), PROTOBUF, "gzip", ADA)
    with pytest.raises(BodyRejected, match="larger than"):
        stamp("logs", json.dumps({"resourceLogs": [], "pad": "x" * MAX_STAMPED_BYTES}).encode(), "application/json", None, ADA)
    assert MAX_STAMPED_BYTES < MAX_DECOMPRESSED_BYTES  # tighter than what the relay itself would convert


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
        for _, key, value in claims_below(out):  # a damaged hash may still be 64 hex digits: kept
            assert (key, value) in {("user.id", "00u-ada"), ("user.email", "ada@example.com")} or (
                key == "user.id" and re.fullmatch("[0-9a-f]{64}", value))
    assert outcomes["stamped"] > 0 and outcomes["refused"] > 0
