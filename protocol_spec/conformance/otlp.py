"""OTLP export bodies: made for the telemetry checks, read back from what collectors received.

The checks send real OTLP/HTTP requests (``opentelemetry-proto``'s message
types, never bytes laid out by hand), each carrying a marker that makes its
bytes unique, so what a collector received can be matched to what was sent
whatever order a gateway delivers in, and whatever a gateway that stamps
identities (SPEC TEL-10) did to the bytes. ``interop`` reads the attributes of
the client's own exports to see who they claim to come from (SPEC TEL-7).

Received exports are compared as *documents*: OTLP/JSON as parsed, protobuf
through protobuf's own dict mapping (field names as in the ``.proto``), so
that two exports in the same content type compare by content, not by how an
encoder laid them out. :func:`without_identity` takes out the four identity
attributes, for comparing what a stamping gateway relayed with what was sent.

Pure: values in, values out.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MARKER = "conformance.export"
SERVICE = "gatehouse-conformance"
# What the client (TEL-7) and a stamping gateway (TEL-10) write on a resource.
IDENTITY_KEYS = ("user.id", "user.email", "user.groups", "identity.source")
REQUESTS: dict[str, type[Message]] = {
    "metrics": ExportMetricsServiceRequest,
    "logs": ExportLogsServiceRequest,
    "traces": ExportTraceServiceRequest,
}


def _export_method(request: type[Message]) -> str:
    """The OTLP/gRPC method that takes ``request``: the Export of the one service its .proto defines."""
    (service,) = request.DESCRIPTOR.file.services_by_name.values()
    return f"/{service.full_name}/Export"


METHODS = {signal: _export_method(kind) for signal, kind in REQUESTS.items()}
Attributes = Iterable[tuple[str, str]]


def _attribute(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def metrics_protobuf(marker: str, *, resource: Attributes = (), points: Iterable[Attributes] = ((),)) -> bytes:
    """An ExportMetricsServiceRequest with one monotonic sum, its resource naming ``marker``
    (then ``resource``), one data point per entry of ``points`` with those attributes."""
    return metrics_message(marker, resource=resource, points=points).SerializeToString()


def metrics_message(marker: str, *, resource: Attributes = (), points: Iterable[Attributes] = ((),)) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    entry = request.resource_metrics.add()
    entry.resource.attributes.extend([_attribute("service.name", SERVICE), _attribute(MARKER, marker)])
    entry.resource.attributes.extend(_attribute(k, v) for k, v in resource)
    metric = entry.scope_metrics.add().metrics.add()
    metric.name = "conformance.exports"
    metric.sum.is_monotonic = True
    metric.sum.aggregation_temporality = 1  # delta, as the real client exports
    for i, attributes in enumerate(points):
        point = metric.sum.data_points.add()
        point.as_int = i + 1
        point.time_unix_nano = 1_700_000_000_000_000_000
        point.attributes.extend(_attribute(k, v) for k, v in attributes)
    return request


def _json_attributes(pairs: Attributes) -> list[dict[str, Any]]:
    return [{"key": k, "value": {"stringValue": v}} for k, v in pairs]


def logs_export(
    marker: str, *, resource: Attributes = (), record: Attributes = (), trace_id: str = "", span_id: str = ""
) -> tuple[bytes, ExportLogsServiceRequest]:
    """One log record as OTLP/JSON, written as OTLP/JSON spells it (ids in hex, 64-bit
    integers as strings, enums as numbers), and the request message it stands for."""
    doc_record: dict[str, Any] = {
        "timeUnixNano": "1700000000000000000",
        "severityNumber": 9,
        "body": {"stringValue": "conformance"},
        "attributes": _json_attributes(record),
    }
    if trace_id:
        doc_record["traceId"] = trace_id
        doc_record["spanId"] = span_id
    doc = {
        "resourceLogs": [{
            "resource": {"attributes": _json_attributes([("service.name", SERVICE), (MARKER, marker), *resource])},
            "scopeLogs": [{"scope": {"name": "conformance"}, "logRecords": [doc_record]}],
        }]
    }
    message = ExportLogsServiceRequest()
    entry = message.resource_logs.add()
    entry.resource.attributes.extend([_attribute("service.name", SERVICE), _attribute(MARKER, marker)])
    entry.resource.attributes.extend(_attribute(k, v) for k, v in resource)
    scope = entry.scope_logs.add()
    scope.scope.name = "conformance"
    log = scope.log_records.add(time_unix_nano=1_700_000_000_000_000_000, severity_number=9)
    log.body.string_value = "conformance"
    log.attributes.extend(_attribute(k, v) for k, v in record)
    if trace_id:
        log.trace_id = bytes.fromhex(trace_id)
        log.span_id = bytes.fromhex(span_id)
    return json.dumps(doc, separators=(",", ":")).encode(), message


def logs_json(marker: str) -> bytes:
    """An OTLP/JSON logs export with one record, its resource naming ``marker``."""
    doc = {
        "resourceLogs": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": SERVICE}},
                {"key": MARKER, "value": {"stringValue": marker}},
            ]},
            "scopeLogs": [{"logRecords": [{"timeUnixNano": "1700000000000000000", "body": {"stringValue": "conformance"}}]}],
        }]
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def traces_json(marker: str) -> bytes:
    doc = {"resourceSpans": [{"resource": {"attributes": [{"key": MARKER, "value": {"stringValue": marker}}]}, "scopeSpans": []}]}
    return json.dumps(doc, separators=(",", ":")).encode()


def gzipped(body: bytes) -> bytes:
    # mtime fixed: the same input always gives the same bytes.
    return gzip.compress(body, mtime=0)


def deflated(body: bytes) -> bytes:
    """HTTP's ``deflate``: the zlib format (RFC 9110 §8.4.1.2)."""
    return zlib.compress(body)


# -- reading exports ---------------------------------------------------------------


def plain_value(value: AnyValue) -> Any:
    """An ``AnyValue`` as a plain Python value (lists and dicts for arrays and key/value lists)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [plain_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: plain_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: plain_value(kv.value) for kv in pairs}


def decode(signal: str, body: bytes, content_encoding: str | None = None) -> ExportMetricsServiceRequest | ExportLogsServiceRequest | None:
    """An OTLP/HTTP protobuf metrics or logs export, or None when it is not one."""
    try:
        raw = gzip.decompress(body) if (content_encoding or "").lower() == "gzip" else body
        message = ExportMetricsServiceRequest() if signal == "metrics" else ExportLogsServiceRequest()
        message.ParseFromString(raw)
    except (DecodeError, OSError, EOFError):
        return None
    return message


def unpacked(body: bytes, content_encoding: str | None) -> bytes | None:
    """``body`` without its gzip or deflate coding; None when it is broken or the coding unknown."""
    encoding = (content_encoding or "").strip().lower()
    try:
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
    except (OSError, EOFError, zlib.error):
        return None
    return body if encoding in ("", "identity") else None


def signal_of(path: str) -> str | None:
    """The signal an OTLP/HTTP path (``.../v1/logs``) or an OTLP/gRPC method is for."""
    for signal, method in METHODS.items():
        if path == method or path.endswith("/v1/" + signal):
            return signal
    return None


def message(signal: str, data: bytes) -> Message | None:
    """Protobuf ``data`` (not compressed) as ``signal``'s request, or None when it is not one."""
    request = REQUESTS[signal]()
    try:
        request.ParseFromString(data)
    except DecodeError:
        return None
    return request


def document(signal: str, body: bytes, content_type: str | None, content_encoding: str | None) -> Any:
    """An export as plain data (see the module docstring); None when it cannot be read."""
    data = unpacked(body, content_encoding)
    if data is None:
        return None
    if (content_type or "").split(";")[0].strip().lower() == JSON:
        try:
            return json.loads(data)
        except ValueError:
            return None
    parsed = message(signal, data)
    return None if parsed is None else json_format.MessageToDict(parsed, preserving_proto_field_name=True)


def record_document(record: dict[str, Any]) -> Any:
    """What a collector's record holds, as :func:`document` reads it (a gRPC call's body
    is the request message itself, whatever its ``content-type`` metadata says)."""
    signal = signal_of(record["path"])
    if signal is None:
        return None
    if record["path"] == METHODS[signal]:
        return document(signal, record["body"], PROTOBUF, None)
    headers = {k.lower(): v for k, v in record["headers"]}
    return document(signal, record["body"], headers.get("content-type"), headers.get("content-encoding"))


def without_identity(doc: Any) -> Any:
    """``doc`` with every identity attribute (:data:`IDENTITY_KEYS`) taken out of every attribute list."""
    if isinstance(doc, list):
        return [without_identity(item) for item in doc]
    if not isinstance(doc, dict):
        return doc
    out = {}
    for key, value in doc.items():
        if key == "attributes" and isinstance(value, list):
            value = [a for a in value if not (isinstance(a, dict) and a.get("key") in IDENTITY_KEYS)]
        out[key] = without_identity(value)
    return out


def resource_attribute(doc: Any, key: str) -> Any:
    """The value of attribute ``key`` on the first resource of a :func:`document` that has it."""
    for entries in (doc.values() if isinstance(doc, dict) else ()):
        for entry in entries if isinstance(entries, list) else ():
            resource = entry.get("resource") if isinstance(entry, dict) else None
            attributes = resource.get("attributes") if isinstance(resource, dict) else None
            for attribute in attributes if isinstance(attributes, list) else ():
                if isinstance(attribute, dict) and attribute.get("key") == key:
                    return _document_value(attribute.get("value"))
    return None


def _document_value(value: Any) -> Any:
    """A plain value of an ``AnyValue`` in either mapping (``stringValue`` or ``string_value``)."""
    if not isinstance(value, dict) or len(value) != 1:
        return value
    return next(iter(value.values()))


def marker_of(record: dict[str, Any]) -> str | None:
    """The marker a received export carries (:data:`MARKER`), or None."""
    value = resource_attribute(record_document(record), MARKER)
    return value if isinstance(value, str) else None


def json_message(signal: str, data: bytes) -> Message | None:
    """An OTLP/JSON export without trace or span ids as ``signal``'s request message
    (protobuf's JSON mapping reads ids as base64, OTLP/JSON writes them in hex)."""
    request = REQUESTS[signal]()
    try:
        json_format.Parse(data, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError):
        return None
    return request


def attribute_sets(request: Message) -> Iterator[tuple[str, dict[str, Any]]]:
    """("resource" | "point" | "record", attributes) for every resource, data point and log record."""
    if isinstance(request, ExportMetricsServiceRequest):
        for resource in request.resource_metrics:
            yield "resource", _attributes(resource.resource.attributes)
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(getattr(metric, kind), "data_points", []) if kind else []:
                        yield "point", _attributes(point.attributes)
        return
    for resource in getattr(request, "resource_logs", ()):
        yield "resource", _attributes(resource.resource.attributes)
        for scope in resource.scope_logs:
            for record in scope.log_records:
                yield "record", _attributes(record.attributes)


def identity_of(request: Message, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per data point or log record: ``names`` as the export states them, the record's own
    attribute over its resource's (how a backend reads an attribute set on both)."""
    found = []
    resource: dict[str, Any] = {}
    for kind, attributes in attribute_sets(request):
        if kind == "resource":
            resource = attributes
            continue
        merged = {**resource, **attributes}
        found.append({name: merged.get(name) for name in names})
    return found
