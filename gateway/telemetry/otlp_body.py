"""One client export made into the protobuf ``Export*ServiceRequest`` an OTLP/gRPC
collector takes, and the little of a collector's answer the relay reads.

A client posts ``http/protobuf`` or ``http/json``, gzip-compressed or not
(reference §9.1). gRPC carries only binary protobuf, so:

* ``application/x-protobuf`` without encoding is already the request: its bytes
  go as they are, never decoded or re-encoded (:func:`export_request`);
* gzip (and HTTP ``deflate``, the zlib format) is undone under a bound
  (:data:`MAX_DECOMPRESSED_BYTES`): a few kB of gzip can expand to gigabytes,
  and the bound turns that into a rejection;
* ``application/json`` is read with opentelemetry-proto's own message classes
  through protobuf's JSON mapping, with the deviations OTLP/JSON makes from it
  (opentelemetry-proto ``docs/specification.md``, "JSON Protobuf Encoding"):
  ``traceId``, ``spanId`` and ``parentSpanId`` are case-insensitive hex, not
  base64, wherever they appear (spans, links, log records, exemplars); enum
  values come as integers (names are accepted too: protobuf's mapping allows
  both and refusing them would gain nothing); unknown fields are ignored, as a
  receiver MUST; 64-bit integers may be strings or numbers. Keys are meant to
  be lowerCamelCase; the original snake_case names are accepted as well, as
  the collector's own JSON reader does.

Anything that cannot be made into a request raises :class:`BodyRejected` with
a short reason fit for a log line. It is the payload's fault, so the relay
counts it as rejected and never retries it.

Pure: bytes in, bytes out. The stamping of identities (``stamp.py``) reads
bodies with the same steps: :func:`media_type`, :func:`decoded` and
:func:`from_protobuf`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from gateway.errors import Fault, Party

# What one export may expand to. The ingest cap bounds what a client sends, not
# what it decompresses to; 64 MiB is well past any real batch (collectors take
# 4 MiB per gRPC message by default) and small enough to hold while converting.
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024

REQUEST_TYPES: Mapping[str, type[Message]] = {
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
    "logs": logs_service_pb2.ExportLogsServiceRequest,
    "traces": trace_service_pb2.ExportTraceServiceRequest,
}
_RESPONSE_TYPES: Mapping[str, type[Message]] = {
    "metrics": metrics_service_pb2.ExportMetricsServiceResponse,
    "logs": logs_service_pb2.ExportLogsServiceResponse,
    "traces": trace_service_pb2.ExportTraceServiceResponse,
}
# partial_success.rejected_<items> per signal (the spec's "Partial Success").
_REJECTED_FIELD = {"metrics": "rejected_data_points", "logs": "rejected_log_records", "traces": "rejected_spans"}

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# Read as protobuf too: the type some encoders write (the relay forwards it as it came).
_PROTOBUF_ALIASES = frozenset({PROTOBUF, "application/protobuf"})
# zlib's window bits per HTTP content coding: gzip has a header and trailer
# around the deflate stream; HTTP "deflate" is the zlib format (RFC 9110 §8.4.1.2).
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# The bytes fields OTLP/JSON writes in hex: trace and span ids, in every message.
_HEX_FIELDS = frozenset({"trace_id", "span_id", "parent_span_id"})
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})*")
_REASON_CHARS = 160


class BodyRejected(Fault, ValueError):
    """The export cannot become an OTLP request; ``str()`` is a short reason. The
    client already had its 200 (TEL-1): the relay counts and logs it, nothing answers."""

    fault = Party.CLIENT


def export_request(
    signal: str, body: bytes, content_type: str | None, content_encoding: str | None,
    limit: int = MAX_DECOMPRESSED_BYTES,
) -> bytes:
    """The serialized request for ``signal``. A plain protobuf body is returned as
    it is (the same object): its bytes are the request, unchecked and untouched."""
    kind = media_type(content_type)
    data = decoded(body, content_encoding, limit)
    if kind == PROTOBUF:
        return data
    return _from_json(signal, data).SerializeToString()


def parse(
    signal: str, body: bytes, content_type: str | None, content_encoding: str | None,
    limit: int = MAX_DECOMPRESSED_BYTES,
) -> Message:
    """The export as a request message, whatever its type and encoding."""
    kind = media_type(content_type)
    data = decoded(body, content_encoding, limit)
    if kind == JSON:
        return _from_json(signal, data)
    return from_protobuf(signal, data)


def from_protobuf(signal: str, data: bytes) -> Message:
    """``data`` (not compressed) read as ``signal``'s request message."""
    message = _request_type(signal)()
    try:
        message.ParseFromString(data)
    except (DecodeError, RecursionError) as exc:
        raise BodyRejected(f"not a protobuf {message.DESCRIPTOR.name}: {_short(exc)}") from None
    return message


def gunzip(body: bytes, limit: int) -> bytes:
    """``body`` decompressed (every gzip member, as ``gzip.decompress`` reads them),
    or :class:`BodyRejected` when it is not gzip, is cut short, or would exceed
    ``limit`` bytes. Never holds more than ``limit + 1`` bytes of output."""
    return _inflate(body, "gzip", limit)


def media_type(content_type: str | None) -> str:
    """``application/x-protobuf`` (also when the client sent none, as the relay
    assumes for HTTP destinations) or ``application/json``; anything else is
    rejected, as an OTLP/HTTP collector answers it with 415."""
    kind = (content_type or PROTOBUF).split(";", 1)[0].strip().lower()
    if kind in _PROTOBUF_ALIASES:
        return PROTOBUF
    if kind != JSON:
        raise BodyRejected(f"content type {kind[:60]!r} is neither {PROTOBUF} nor {JSON}")
    return kind


def decoded(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """``body`` without its content coding (none, gzip or deflate), at most ``limit`` bytes."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        if len(body) > limit:
            raise BodyRejected(f"larger than {limit} bytes")
        return body
    if encoding in WBITS:
        return _inflate(body, encoding, limit)
    raise BodyRejected(f"content encoding {encoding[:40]!r} is not supported (only gzip and deflate)")


def partial_success(signal: str, response: bytes) -> tuple[int, str] | None:
    """(items rejected, the collector's message) when the collector's answer carries
    a ``partial_success``; None for a full success or an answer that does not
    parse (the call succeeded either way)."""
    answer = _RESPONSE_TYPES[signal]()
    try:
        answer.ParseFromString(response)
    except DecodeError:
        return None
    if not answer.HasField("partial_success"):
        return None
    partial = answer.partial_success
    return int(getattr(partial, _REJECTED_FIELD[signal])), str(partial.error_message)


# ---------------------------------------------------------------- the steps


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Never holds more than ``limit + 1`` bytes of output. A gzip body may be
    several members one after another (RFC 1952 §2.2); a zlib stream is one."""
    out = bytearray()
    data = body
    while True:
        inflater = zlib.decompressobj(wbits=WBITS[encoding])
        try:
            out += inflater.decompress(data, limit - len(out) + 1)
        except zlib.error as exc:
            raise BodyRejected(f"not valid {encoding} ({exc})") from None
        if len(out) > limit:
            raise BodyRejected(f"decompresses to more than {limit} bytes")
        if not inflater.eof:
            raise BodyRejected(f"{encoding} data cut short")
        data = inflater.unused_data
        if not data:
            return bytes(out)
        if encoding == "deflate":
            raise BodyRejected("bytes after the end of the deflate stream")


def _request_type(signal: str) -> type[Message]:
    try:
        return REQUEST_TYPES[signal]
    except KeyError:
        raise BodyRejected(f"no OTLP signal named {signal[:40]!r}") from None


def _from_json(signal: str, data: bytes) -> Message:
    message = _request_type(signal)()
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BodyRejected(f"not JSON: {_short(exc)}") from None
    if not isinstance(document, dict):
        raise BodyRejected(f"not an OTLP/JSON {message.DESCRIPTOR.name}: the body is not a JSON object")
    try:
        _hex_ids_to_base64(document, message.DESCRIPTOR)
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except (json_format.ParseError, BodyRejected, ValueError, TypeError, RecursionError) as exc:
        raise BodyRejected(f"not an OTLP/JSON {message.DESCRIPTOR.name}: {_short(exc)}") from None
    return message


class Route(NamedTuple):
    """One field on the way: ``wanted`` when it is a field sought, else a message
    field to descend into (some field sought lies below it). Plain values, not
    the descriptor: a walk reads them for every message it visits."""

    name: str
    wanted: bool
    repeated: bool
    message_type: Descriptor | None  # what a message field holds


def _route(field: FieldDescriptor, wanted: bool) -> Route:
    return Route(field.name, wanted, field.is_repeated, field.message_type)


class FieldRoutes:
    """For one kind of field (``wanted`` says which), the fields of each message
    type that hold one or lead to one, so a walk visits only those. The schema
    has cycles (``AnyValue`` holds key/value lists of ``AnyValue``): a message
    type is looked at once, and a field sought is never descended into."""

    def __init__(self, wanted: Callable[[FieldDescriptor], bool]) -> None:
        self._wanted = wanted
        self._of: dict[str, tuple[Route, ...]] = {}
        self._by_key: dict[str, dict[str, Route]] = {}

    def of(self, descriptor: Descriptor) -> tuple[Route, ...]:
        """The routes out of ``descriptor``'s messages, in field order."""
        routes = self._of.get(descriptor.full_name)
        if routes is None:
            routes = self._of[descriptor.full_name] = tuple(
                _route(f, self._wanted(f)) for f in descriptor.fields
                if self._wanted(f) or (f.type == FieldDescriptor.TYPE_MESSAGE and self._leads(f.message_type, set()))
            )
        return routes

    def by_json_key(self, descriptor: Descriptor) -> dict[str, Route]:
        """The same routes by OTLP/JSON key: lowerCamelCase and the proto name, as
        the collector's JSON reader (and protobuf's) take either."""
        keyed = self._by_key.get(descriptor.full_name)
        if keyed is None:
            keyed = self._by_key[descriptor.full_name] = {}
            routes = {route.name: route for route in self.of(descriptor)}
            for field in descriptor.fields:
                if field.name in routes:
                    keyed[field.json_name] = keyed[field.name] = routes[field.name]
        return keyed

    def _leads(self, descriptor: Descriptor, seen: set[str]) -> bool:
        if descriptor.full_name in seen:
            return False
        seen.add(descriptor.full_name)
        return any(
            self._wanted(f) or (f.type == FieldDescriptor.TYPE_MESSAGE and self._leads(f.message_type, seen))
            for f in descriptor.fields
        )


_ID_ROUTES = FieldRoutes(lambda f: f.type == FieldDescriptor.TYPE_BYTES and f.name in _HEX_FIELDS)


def _hex_ids_to_base64(node: dict[str, Any], descriptor: Descriptor) -> None:
    """Rewrite, in place, every hex trace/span id under ``node`` into the base64
    protobuf's JSON mapping reads. Only fields that can lead to an id are
    visited, so attribute values (however deep) are left to ParseDict."""
    for key, value in node.items():
        route = _ID_ROUTES.by_json_key(descriptor).get(key)
        if route is None:
            continue
        if route.wanted:
            node[key] = _hex_to_base64(key, value)
            continue
        for child in value if isinstance(value, list) else (value,):
            if isinstance(child, dict):  # anything else is ParseDict's to refuse
                _hex_ids_to_base64(child, route.message_type)


def _hex_to_base64(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise BodyRejected(f"{key} must be a hex string (OTLP/JSON writes ids in hex, not base64)")
    try:
        return base64.b64encode(bytes.fromhex(value)).decode("ascii")
    except (ValueError, binascii.Error):  # pragma: no cover - the pattern already rules these out
        raise BodyRejected(f"{key} must be a hex string") from None


def _short(exc: BaseException) -> str:
    """An error's text cut to a log-line length (it may quote the client's data)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"
