"""OTLP export requests for the stamping tests: every attribute list below the
resources, written out per signal by hand (not from the message descriptors, so
that it checks the stamp's own table rather than repeating it), and exports of
an exact size."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

IDENTITY_KEYS = frozenset({"user.id", "user.email", "user.groups", "identity.source"})


def attribute_lists(request: Message) -> Iterator[tuple[str, Any]]:
    """(where, the repeated KeyValue field) for every list below the resources."""
    if isinstance(request, ExportMetricsServiceRequest):
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                yield "scope", sm.scope.attributes
                for metric in sm.metrics:
                    yield f"{metric.name} metadata", metric.metadata
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points if kind else ():
                        yield f"{kind} point", point.attributes
                        for exemplar in getattr(point, "exemplars", ()):  # summaries have none
                            yield f"{kind} exemplar", exemplar.filtered_attributes
    elif isinstance(request, ExportLogsServiceRequest):
        for rl in request.resource_logs:
            for sl in rl.scope_logs:
                yield "scope", sl.scope.attributes
                for record in sl.log_records:
                    yield "log record", record.attributes
    else:
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                yield "scope", ss.scope.attributes
                for span in ss.spans:
                    yield "span", span.attributes
                    for event in span.events:
                        yield "span event", event.attributes
                    for link in span.links:
                        yield "span link", link.attributes


def claims_below(request: Message) -> list[tuple[str, str, str]]:
    """(where, key, value as text) of every identity attribute below the resources."""
    return [
        (where, kv.key, str(getattr(kv.value, kv.value.WhichOneof("value") or "string_value")))
        for where, attributes in attribute_lists(request)
        for kv in attributes
        if kv.key in IDENTITY_KEYS
    ]


def resource_lists(request: Message) -> Iterator[Any]:
    (field,) = request.DESCRIPTOR.fields
    for entry in getattr(request, field.name):
        yield entry.resource.attributes


def without_identity(request: Message) -> Message:
    """A copy with every identity attribute taken off, on resources and below."""
    copy = type(request)()
    copy.CopyFrom(request)
    for attributes in [*resource_lists(copy), *(a for _, a in attribute_lists(copy))]:
        kept = [kv for kv in attributes if kv.key not in IDENTITY_KEYS]
        del attributes[:]
        attributes.extend(kept)
    return copy


def padded_to(request: Message, size: int) -> bytes:
    """``request`` serialized to exactly ``size`` bytes, a resource attribute
    ``padding`` making up the difference."""
    (field,) = request.DESCRIPTOR.fields
    padding = getattr(request, field.name)[0].resource.attributes.add(key="padding").value
    padding.string_value = ""
    while request.ByteSize() != size:  # the string's length prefix may grow a byte: settles in a step or two
        padding.string_value = "x" * (len(padding.string_value) + size - request.ByteSize())
    return request.SerializeToString()
