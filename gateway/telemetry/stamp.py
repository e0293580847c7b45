"""Server-side identity stamping of relayed exports (``gatehouse.telemetry.stamp_identity``).

The client stamps its own exports with the identity of its gateway session
(reference §9.4: ``user.id`` = the IdP ``sub``, ``user.email``, ``user.groups``
as one comma-separated string, ``identity.source: gateway-oidc``). A modified
client can put anything there. With stamping on, the gateway writes those four
attributes itself, from the bearer that authenticated the export, on every
resource of the request, and removes whatever values the client sent for them.

Rules:

* Only the resource is stamped. Attributes of data points, log records and
  spans are the client's and stay as sent (the real client puts its own
  ``user.id``, an installation hash, on each point).
* An attribute the identity has no value for (no email, no groups) is removed
  and not written: a forged value never survives because the real one is empty.
  ``user.groups`` is also left out when a group name holds a comma, since the
  comma-joined string would then name groups the caller is not in.
* Protobuf bodies are decoded and re-encoded with ``opentelemetry-proto``'s
  request messages (unknown fields survive the round trip). OTLP/JSON bodies
  are edited as a JSON document, because the protobuf JSON mapping differs from
  OTLP/JSON (hex trace ids, not base64) and would change what the client meant;
  only the resource attributes change, the rest is re-encoded as it was read.
* ``gzip`` and ``deflate`` bodies are inflated up to :data:`MAX_INFLATED_BYTES`
  and compressed again in the same encoding, so the ``Content-Encoding`` the
  relay forwards stays true.
* A body this module cannot read (a content type or encoding it does not know,
  broken compression, a decode error, an OTLP/JSON document of the wrong shape)
  raises :class:`UnstampableError`. The caller must drop it: with stamping on, an
  export that passed unstamped could carry any identity at all.

Pure: values in, values out.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

IDENTITY_SOURCE = "gateway-oidc"
IDENTITY_KEYS = frozenset({"user.id", "user.email", "user.groups", "identity.source"})
# Bigger than any export a client sends (the OTel SDKs cap a request at 64 MiB
# before compression), small enough that a zip bomb costs a bounded allocation.
MAX_INFLATED_BYTES = 64 * 1024 * 1024
# zlib's own default: a stamped export is re-compressed once per request, and
# level 9 costs several times more CPU for a few percent of a few kB.
COMPRESS_LEVEL = 6

# Per signal: the request message, its repeated field of per-resource entries,
# and that field's names in OTLP/JSON (lowerCamelCase, and the proto name that
# protobuf JSON parsers also accept: a stamp must not miss either).
_SIGNALS: dict[str, tuple[type[Message], str, tuple[str, str]]] = {
    "metrics": (ExportMetricsServiceRequest, "resource_metrics", ("resourceMetrics", "resource_metrics")),
    "logs": (ExportLogsServiceRequest, "resource_logs", ("resourceLogs", "resource_logs")),
    "traces": (ExportTraceServiceRequest, "resource_spans", ("resourceSpans", "resource_spans")),
}
_PROTOBUF_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})
_JSON_TYPE = "application/json"
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer around the deflate stream
_ZLIB_WBITS = zlib.MAX_WBITS  # HTTP "deflate" is the zlib format (RFC 9110 §8.4.1.2)

_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder().encode


class Identity(Protocol):
    """The caller, as the bearer says (``gateway.auth.tokens.Principal`` is one)."""

    @property
    def sub(self) -> str: ...
    @property
    def email(self) -> str | None: ...
    @property
    def groups(self) -> tuple[str, ...]: ...


class UnstampableError(ValueError):
    """The export cannot be stamped; with stamping on it must not be forwarded."""


def identity_attributes(identity: Identity) -> list[tuple[str, str]]:
    """The resource attributes stamped for ``identity``, in a fixed order."""
    stamped = [("user.id", identity.sub)]
    if identity.email:
        stamped.append(("user.email", identity.email))
    if identity.groups and not any("," in g for g in identity.groups):
        stamped.append(("user.groups", ",".join(identity.groups)))
    stamped.append(("identity.source", IDENTITY_SOURCE))
    return stamped


def stamp(
    signal: str, body: bytes, content_type: str | None, content_encoding: str | None, identity: Identity
) -> bytes:
    """``body`` with the caller's identity on every resource, in the same content
    type and encoding; raises :class:`UnstampableError` when it cannot be read."""
    if signal not in _SIGNALS:
        raise UnstampableError(f"unknown signal {signal!r}")
    edit = _editor(content_type)
    inflate, deflate = _codec(content_encoding)
    return deflate(edit(signal, inflate(body), identity_attributes(identity)))


# ------------------------------------------------------------ content types


def _editor(content_type: str | None) -> Callable[[str, bytes, list[tuple[str, str]]], bytes]:
    # No Content-Type is read as protobuf, the OTLP/HTTP default (the relay
    # forwards it as application/x-protobuf too).
    media = (content_type or "application/x-protobuf").split(";", 1)[0].strip().lower()
    if media in _PROTOBUF_TYPES:
        return _stamp_protobuf
    if media == _JSON_TYPE:
        return _stamp_json
    raise UnstampableError(f"content type {content_type!r} is neither OTLP protobuf nor JSON")


def _stamp_protobuf(signal: str, data: bytes, stamped: list[tuple[str, str]]) -> bytes:
    message_class, field, _ = _SIGNALS[signal]
    try:
        request = message_class.FromString(data)
    except DecodeError as exc:
        raise UnstampableError(f"not an OTLP {signal} export request: {exc}") from None
    for entry in getattr(request, field):
        attributes = entry.resource.attributes
        # Backwards, so each deletion leaves the indices still to visit unchanged.
        for i in range(len(attributes) - 1, -1, -1):
            if attributes[i].key in IDENTITY_KEYS:
                del attributes[i]
        for key, value in stamped:
            attributes.add(key=key).value.string_value = value
    return request.SerializeToString()


def _stamp_json(signal: str, data: bytes, stamped: list[tuple[str, str]]) -> bytes:
    try:
        document = _json_decode(data)
    except msgspec.DecodeError as exc:
        raise UnstampableError(f"not a JSON document: {exc}") from None
    if not isinstance(document, dict):
        raise UnstampableError("an OTLP/JSON export is a JSON object")
    written = [{"key": key, "value": {"stringValue": value}} for key, value in stamped]
    for name in _SIGNALS[signal][2]:
        entries = document.get(name)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise UnstampableError(f"{name} is not a list")
        for entry in entries:
            _stamp_json_entry(entry, name, written)
    return _json_encode(document)


def _stamp_json_entry(entry: Any, name: str, written: list[dict[str, Any]]) -> None:
    if not isinstance(entry, dict):
        raise UnstampableError(f"an entry of {name} is not an object")
    resource = entry.get("resource")
    if resource is None:
        resource = entry["resource"] = {}
    elif not isinstance(resource, dict):
        raise UnstampableError(f"a resource in {name} is not an object")
    attributes = resource.get("attributes") or []
    if not isinstance(attributes, list) or not all(
        isinstance(a, dict) and isinstance(a.get("key"), str) for a in attributes
    ):
        raise UnstampableError(f"a resource in {name} has attributes that are not key/value objects")
    resource["attributes"] = [a for a in attributes if a["key"] not in IDENTITY_KEYS] + written


# ------------------------------------------------------------ content encodings


def _codec(content_encoding: str | None) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    """(inflate, compress again) for the body's encoding."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return _unchanged, _unchanged
    if encoding == "gzip":
        return (lambda body: inflate(body, _GZIP_WBITS)), _gzip
    if encoding == "deflate":
        return (lambda body: inflate(body, _ZLIB_WBITS)), _zlib
    raise UnstampableError(f"content encoding {content_encoding!r} is not gzip or deflate")


def _unchanged(data: bytes) -> bytes:
    return data


def _gzip(data: bytes) -> bytes:
    # mtime 0 like gzip.compress(..., mtime=0): the same stamped export compresses to the same bytes.
    packer = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    return packer.compress(data) + packer.flush()


def _zlib(data: bytes) -> bytes:
    return zlib.compress(data, COMPRESS_LEVEL)


def inflate(body: bytes, wbits: int, limit: int = MAX_INFLATED_BYTES) -> bytes:
    """``body`` decompressed, refusing more than ``limit`` bytes of output. A gzip
    body may hold several members one after another (RFC 1952 §2.2)."""
    out = bytearray()
    rest = body
    while True:
        unpacker = zlib.decompressobj(wbits)
        try:
            out += unpacker.decompress(rest, limit + 1 - len(out))
        except zlib.error as exc:
            raise UnstampableError(f"broken compressed body: {exc}") from None
        if len(out) > limit:
            raise UnstampableError(f"the body inflates to more than {limit} bytes")
        if not unpacker.eof:
            raise UnstampableError("the compressed body is cut short")
        rest = unpacker.unused_data
        if not rest:
            return bytes(out)
        if wbits != _GZIP_WBITS:
            raise UnstampableError("bytes after the end of the compressed body")
