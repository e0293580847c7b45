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
* ``gzip`` and ``deflate`` bodies are inflated (within the bound of
  :func:`~gateway.telemetry.otlp_body.decoded`) and compressed again in the same
  encoding, so the ``Content-Encoding`` the relay forwards stays true. Content
  types, encodings and protobuf are read by :mod:`~gateway.telemetry.otlp_body`,
  as for gRPC destinations.
* A body this module cannot read (a content type or encoding it does not know,
  broken compression, a decode error, an OTLP/JSON document of the wrong shape)
  raises :class:`~gateway.telemetry.otlp_body.BodyRejected`. The caller must drop
  it: with stamping on, an export that passed unstamped could carry any identity.

Pure: values in, values out.
"""

from __future__ import annotations

import zlib
from typing import Any, Protocol

import msgspec
from google.protobuf.descriptor import FieldDescriptor

from gateway.telemetry.otlp_body import (
    MAX_DECOMPRESSED_BYTES,
    PROTOBUF,
    REQUEST_TYPES,
    WBITS,
    BodyRejected,
    decoded,
    from_protobuf,
    media_type,
)

IDENTITY_SOURCE = "gateway-oidc"
IDENTITY_KEYS = frozenset({"user.id", "user.email", "user.groups", "identity.source"})
# zlib's own default: a stamped export is re-compressed once per request, and
# level 9 costs several times more CPU for a few percent of a few kB.
COMPRESS_LEVEL = 6

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
    signal: str, body: bytes, content_type: str | None, content_encoding: str | None, identity: Identity,
    limit: int = MAX_DECOMPRESSED_BYTES,
) -> bytes:
    """``body`` with the caller's identity on every resource, in the same content
    type and encoding; raises :class:`BodyRejected` when it cannot be read or
    decodes to more than ``limit`` bytes."""
    resources = _resource_field(signal)
    kind = media_type(content_type)
    data = decoded(body, content_encoding, limit)
    stamped = identity_attributes(identity)
    if kind == PROTOBUF:
        edited = _stamp_protobuf(signal, data, resources, stamped)
    else:
        edited = _stamp_json(data, resources, stamped)
    return _compressed(edited, content_encoding)


def _resource_field(signal: str) -> FieldDescriptor:
    """The request's one field: its repeated per-resource entries."""
    if signal not in REQUEST_TYPES:
        raise BodyRejected(f"no OTLP signal named {signal[:40]!r}")
    (field,) = REQUEST_TYPES[signal].DESCRIPTOR.fields
    return field


# ------------------------------------------------------------ content types


def _stamp_protobuf(signal: str, data: bytes, resources: FieldDescriptor, stamped: list[tuple[str, str]]) -> bytes:
    request = from_protobuf(signal, data)
    for entry in getattr(request, resources.name):
        attributes = entry.resource.attributes
        # Backwards, so each deletion leaves the indices still to visit unchanged.
        for i in range(len(attributes) - 1, -1, -1):
            if attributes[i].key in IDENTITY_KEYS:
                del attributes[i]
        for key, value in stamped:
            attributes.add(key=key).value.string_value = value
    return request.SerializeToString()


def _stamp_json(data: bytes, resources: FieldDescriptor, stamped: list[tuple[str, str]]) -> bytes:
    try:
        document = _json_decode(data)
    except msgspec.DecodeError as exc:
        raise BodyRejected(f"not a JSON document: {exc}") from None
    if not isinstance(document, dict):
        raise BodyRejected("an OTLP/JSON export is a JSON object")
    written = [{"key": key, "value": {"stringValue": value}} for key, value in stamped]
    # lowerCamelCase, and the proto name that protobuf JSON parsers also accept: a stamp must not miss either.
    for name in dict.fromkeys((resources.json_name, resources.name)):
        entries = document.get(name)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise BodyRejected(f"{name} is not a list")
        for entry in entries:
            _stamp_json_entry(entry, name, written)
    return _json_encode(document)


def _stamp_json_entry(entry: Any, name: str, written: list[dict[str, Any]]) -> None:
    if not isinstance(entry, dict):
        raise BodyRejected(f"an entry of {name} is not an object")
    resource = entry.get("resource")
    if resource is None:
        resource = entry["resource"] = {}
    elif not isinstance(resource, dict):
        raise BodyRejected(f"a resource in {name} is not an object")
    attributes = resource.get("attributes") or []
    if not isinstance(attributes, list) or not all(
        isinstance(a, dict) and isinstance(a.get("key"), str) for a in attributes
    ):
        raise BodyRejected(f"a resource in {name} has attributes that are not key/value objects")
    resource["attributes"] = [a for a in attributes if a["key"] not in IDENTITY_KEYS] + written


# ------------------------------------------------------------ content encodings


def _compressed(data: bytes, content_encoding: str | None) -> bytes:
    """``data`` in the encoding it came in (:func:`decoded` has vouched for it)."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in WBITS:
        # gzip with mtime 0, like gzip.compress(..., mtime=0): the same stamped export compresses to the same bytes.
        packer = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, WBITS[encoding])
        return packer.compress(data) + packer.flush()
    return data
