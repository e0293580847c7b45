"""OTLP export bodies: made for the telemetry checks, read back from what the real client sent.

The checks send real OTLP/HTTP requests (``opentelemetry-proto``'s message
types, never bytes laid out by hand), each carrying a marker that makes its
bytes unique, so what a collector received can be matched to what was sent
whatever order a gateway delivers in. ``interop`` reads the attributes of the
client's own exports to see who they claim to come from (SPEC TEL-7).

Pure: values in, values out.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MARKER = "conformance.export"
SERVICE = "gatehouse-conformance"


def _attribute(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def metrics_protobuf(marker: str) -> bytes:
    """An ExportMetricsServiceRequest with one monotonic sum, its resource naming ``marker``."""
    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    resource.resource.attributes.extend([_attribute("service.name", SERVICE), _attribute(MARKER, marker)])
    metric = resource.scope_metrics.add().metrics.add()
    metric.name = "conformance.exports"
    metric.sum.is_monotonic = True
    metric.sum.aggregation_temporality = 1  # delta, as the real client exports
    point = metric.sum.data_points.add()
    point.as_int = 1
    point.time_unix_nano = 1_700_000_000_000_000_000
    return request.SerializeToString()


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


# -- reading exports ---------------------------------------------------------------


def _plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _plain(kv.value) for kv in pairs}


def decode(signal: str, body: bytes, content_encoding: str | None = None) -> ExportMetricsServiceRequest | ExportLogsServiceRequest | None:
    """An OTLP/HTTP protobuf metrics or logs export, or None when it is not one."""
    try:
        raw = gzip.decompress(body) if (content_encoding or "").lower() == "gzip" else body
        message = ExportMetricsServiceRequest() if signal == "metrics" else ExportLogsServiceRequest()
        message.ParseFromString(raw)
    except (DecodeError, OSError, EOFError):
        return None
    return message


def attribute_sets(message: ExportMetricsServiceRequest | ExportLogsServiceRequest) -> Iterator[tuple[str, dict[str, Any]]]:
    """("resource" | "point" | "record", attributes) for every resource, data point and log record."""
    if isinstance(message, ExportMetricsServiceRequest):
        for resource in message.resource_metrics:
            yield "resource", _attributes(resource.resource.attributes)
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(getattr(metric, kind), "data_points", []) if kind else []:
                        yield "point", _attributes(point.attributes)
        return
    for resource in message.resource_logs:
        yield "resource", _attributes(resource.resource.attributes)
        for scope in resource.scope_logs:
            for record in scope.log_records:
                yield "record", _attributes(record.attributes)


def identity_of(message: ExportMetricsServiceRequest | ExportLogsServiceRequest, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per data point or log record: ``names`` as the export states them, the record's own
    attribute over its resource's (how a backend reads an attribute set on both)."""
    found = []
    resource: dict[str, Any] = {}
    for kind, attributes in attribute_sets(message):
        if kind == "resource":
            resource = attributes
            continue
        merged = {**resource, **attributes}
        found.append({name: merged.get(name) for name in names})
    return found
