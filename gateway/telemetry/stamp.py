"""Server-side identity stamping of relayed exports (``gatehouse.telemetry.stamp_identity``).

The client stamps its own exports with the identity of its gateway session
(reference §9.4: ``user.id`` = the IdP ``sub``, ``user.email``, ``user.groups``
as one comma-separated string, ``identity.source: gateway-oidc``). A modified
client can put anything there. With stamping on, the gateway writes the identity
itself, from the bearer that authenticated the export, so that no attribute a
backend reads names anyone but the caller.

Rules:

* **Resources**: the four attributes are written on every resource of the
  request, in a fixed order after the client's own, and whatever values the
  client sent for them are removed. A resource the client left out is made.
* **Below the resource**: every other attribute list (scope attributes, metric
  metadata, data points of every kind, exemplars' filtered attributes, log
  records, spans, span events, span links). Nothing is added there; what the
  client sent is corrected where it stands:

  - ``user.email`` is replaced with the caller's (the real client puts it on
    each point of a signed-in session);
  - ``user.groups`` and ``identity.source`` are removed (they belong to the
    resource);
  - Claude Desktop's ``enduser.id`` (the email) and ``enduser.sub`` become the
    caller's, here and on the resources, wherever the client put them (never
    added: the CLI does not send them);
  - ``user.id`` is kept when it is the client's installation hash, 64 lower-case
    hex digits: the real client, not signed in to a gateway, puts that on every
    point and log record (cag-telemetry.md §5), and it names an installation,
    not a person. Any other value becomes the caller's ``sub``: signed in, the
    client's ``user.id`` is the ``sub`` (§9.4; INTEROP.md saw it on every point
    and record), so a true one is left as it was. An IdP whose ``sub`` is itself
    64 hex digits cannot be told apart from a hash here: the resource's
    ``user.id`` is the one to trust.

  Key/value lists inside attribute values and log bodies are data, not
  attributes, and are left alone, as are fields this version of
  ``opentelemetry-proto`` does not know.
* An attribute the identity has no value for (no email, no groups) is removed
  and not written: a forged value never survives because the real one is empty.
  ``user.groups`` is also left out when a group name holds a comma, since the
  comma-joined string would then name groups the caller is not in.
* Protobuf bodies are decoded and re-encoded with ``opentelemetry-proto``'s
  request messages (unknown fields survive the round trip). OTLP/JSON bodies
  are edited as a JSON document, because the protobuf JSON mapping differs from
  OTLP/JSON (hex trace ids, not base64) and would change what the client meant;
  only identity attributes change, the rest is re-encoded as it was read. The
  same table of attribute lists (:data:`ATTRIBUTE_LISTS`, from the message
  descriptors) drives both, under either JSON spelling of a field.
* A body that is, or inflates to, more than :data:`MAX_STAMPED_BYTES` is refused.
  ``gzip`` and ``deflate`` bodies are inflated (never past that bound) and
  compressed again in the same encoding, so the ``Content-Encoding`` the relay forwards stays true. Content
  types, encodings and protobuf are read by :mod:`~gateway.telemetry.otlp_body`,
  as for gRPC destinations.
* A body this module cannot read (a content type or encoding it does not know,
  broken compression, a decode error, an OTLP/JSON document of the wrong shape
  where an attribute list may lie) raises
  :class:`~gateway.telemetry.otlp_body.BodyRejected`. The caller must drop it:
  with stamping on, an export that passed unstamped could carry any identity.

Pure: values in, values out.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.telemetry.otlp_body import (
    PROTOBUF,
    REQUEST_TYPES,
    WBITS,
    BodyRejected,
    FieldRoutes,
    decoded,
    from_protobuf,
    media_type,
)

IDENTITY_SOURCE = "gateway-oidc"
IDENTITY_KEYS = frozenset({"user.id", "user.email", "user.groups", "identity.source"})
# Claude Desktop names the same person with these (the bootstrap's otlpResourceAttributes):
# corrected wherever the client put them, on resources too, but never added.
END_USER_KEYS = frozenset({"enduser.id", "enduser.sub"})
_CORRECTED_KEYS = IDENTITY_KEYS | END_USER_KEYS
# The most a stamped export may decode to. Stamping holds its thread for some
# 10-25 µs a kB (bench/stamp.py; the more points and attributes, the more), so
# this bounds one export to about 0.1 s of CPU. The real client's exports are a
# few kB, and an SDK's batches (512 spans or records by default) are mostly
# well under 1 MiB.
# Past it an export is refused like one that cannot be read: relayed unstamped
# it could carry any identity.
MAX_STAMPED_BYTES = 4 * 1024 * 1024
# zlib's own default: a stamped export is re-compressed once per request, and
# level 9 costs several times more CPU for a few percent of a few kB.
COMPRESS_LEVEL = 6
# What the real client puts in a point's user.id: a SHA-256 of its installation, in hex.
INSTALLATION_ID = re.compile(r"[0-9a-f]{64}")

_KEY_VALUE = "opentelemetry.proto.common.v1.KeyValue"
# The resource's list is stamped whole; a KeyValueList is an attribute's (or a log body's) value.
_NOT_BELOW_THE_RESOURCE = frozenset({"opentelemetry.proto.resource.v1.Resource", "opentelemetry.proto.common.v1.KeyValueList"})


def _is_attribute_list(field: FieldDescriptor) -> bool:
    return (
        field.is_repeated
        and field.type == FieldDescriptor.TYPE_MESSAGE
        and field.message_type.full_name == _KEY_VALUE
        and field.containing_type.full_name not in _NOT_BELOW_THE_RESOURCE
    )


# Every attribute list below the resource, and the fields that lead to one.
ATTRIBUTE_LISTS = FieldRoutes(_is_attribute_list)
# Protobuf writes a key's UTF-8 bytes as they are: without these, no attribute
# can be an identity attribute and the walk below the resource is skipped.
_IDENTITY_KEY_PREFIXES = (b"user.", b"identity.source", b"enduser.")

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


@dataclass(frozen=True, slots=True)
class _Stamp:
    resource: list[tuple[str, str]]  # written on every resource
    sub: str
    email: str | None


_KEEP = object()  # a point-level attribute that stays as the client sent it


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
    limit: int = MAX_STAMPED_BYTES,
) -> bytes:
    """``body`` with the caller's identity on every resource and no other identity
    below it, in the same content type and encoding; raises :class:`BodyRejected`
    when it cannot be read or decodes to more than ``limit`` bytes."""
    resources = _resource_field(signal)
    kind = media_type(content_type)
    data = decoded(body, content_encoding, limit)
    marks = _Stamp(identity_attributes(identity), identity.sub, identity.email or None)
    if kind == PROTOBUF:
        edited = _stamp_protobuf(signal, data, resources, marks)
    else:
        edited = _stamp_json(data, resources, marks)
    return _compressed(edited, content_encoding)


def _resource_field(signal: str) -> FieldDescriptor:
    """The request's one field: its repeated per-resource entries."""
    if signal not in REQUEST_TYPES:
        raise BodyRejected(f"no OTLP signal named {signal[:40]!r}")
    (field,) = REQUEST_TYPES[signal].DESCRIPTOR.fields
    return field


def _point_value(key: str, sent: str | None, marks: _Stamp) -> object:
    """What an identity attribute below the resource becomes: ``_KEEP``, a new
    string value, or None (removed). ``sent`` is its value if a string."""
    if key == "user.id":
        return _KEEP if sent is not None and INSTALLATION_ID.fullmatch(sent) else marks.sub
    if key in ("user.email", "enduser.id"):
        return marks.email
    if key == "enduser.sub":
        return marks.sub
    return None  # user.groups, identity.source


# ------------------------------------------------------------ protobuf


def _stamp_protobuf(signal: str, data: bytes, resources: FieldDescriptor, marks: _Stamp) -> bytes:
    request = from_protobuf(signal, data)
    below = any(prefix in data for prefix in _IDENTITY_KEY_PREFIXES)
    for entry in getattr(request, resources.name):
        attributes = entry.resource.attributes
        # Backwards, so each deletion leaves the indices still to visit unchanged.
        for i in range(len(attributes) - 1, -1, -1):
            if attributes[i].key in IDENTITY_KEYS:
                del attributes[i]
        for key, value in marks.resource:
            attributes.add(key=key).value.string_value = value
        _correct_protobuf(attributes, marks, END_USER_KEYS)
        if below:
            _walk_protobuf(entry, marks)
    return request.SerializeToString()


def _walk_protobuf(message: Message, marks: _Stamp) -> None:
    for name, wanted, repeated, _ in ATTRIBUTE_LISTS.of(message.DESCRIPTOR):
        if wanted:
            _correct_protobuf(getattr(message, name), marks)
        elif repeated:
            for child in getattr(message, name):
                _walk_protobuf(child, marks)
        elif message.HasField(name):
            _walk_protobuf(getattr(message, name), marks)


def _correct_protobuf(attributes: Any, marks: _Stamp, keys: frozenset[str] = _CORRECTED_KEYS) -> None:
    removed: list[int] = []
    for i, kv in enumerate(attributes):
        key = kv.key
        if key not in keys:
            continue
        value = kv.value
        corrected = _point_value(key, value.string_value if value.WhichOneof("value") == "string_value" else None, marks)
        if corrected is None:
            removed.append(i)
        elif corrected is not _KEEP:
            value.Clear()  # unknown fields too: a newer reader must not find another value there
            value.string_value = corrected
    for i in reversed(removed):  # last first, so each index still points at its attribute
        del attributes[i]


# ------------------------------------------------------------ OTLP/JSON


def _stamp_json(data: bytes, resources: FieldDescriptor, marks: _Stamp) -> bytes:
    try:
        document = _json_decode(data)
    except msgspec.DecodeError as exc:
        raise BodyRejected(f"not a JSON document: {exc}") from None
    except RecursionError:  # msgspec recurses into nested values; a client can nest past the limit
        raise BodyRejected("not a JSON document: nested too deeply") from None
    if not isinstance(document, dict):
        raise BodyRejected("an OTLP/JSON export is a JSON object")
    written = [{"key": key, "value": {"stringValue": value}} for key, value in marks.resource]
    # lowerCamelCase, and the proto name that protobuf JSON parsers also accept: a stamp must not miss either.
    for name in dict.fromkeys((resources.json_name, resources.name)):
        entries = document.get(name)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise BodyRejected(f"{name} is not a list")
        for entry in entries:
            _stamp_json_entry(entry, name, written, marks)
            _walk_json(entry, resources.message_type, marks)
    return _json_encode(document)


def _stamp_json_entry(entry: Any, name: str, written: list[dict[str, Any]], marks: _Stamp) -> None:
    if not isinstance(entry, dict):
        raise BodyRejected(f"an entry of {name} is not an object")
    resource = entry.get("resource")
    if resource is None:
        resource = entry["resource"] = {}
    elif not isinstance(resource, dict):
        raise BodyRejected(f"a resource in {name} is not an object")
    attributes = resource.get("attributes") or []
    _check_json_attributes(attributes, f"a resource in {name}")
    resource["attributes"] = [a for a in attributes if a["key"] not in IDENTITY_KEYS] + written
    _correct_json(resource["attributes"], f"a resource in {name}", marks, END_USER_KEYS)


def _walk_json(node: dict[str, Any], descriptor: Descriptor, marks: _Stamp) -> None:
    """Correct every attribute list under ``node``. Where one may lie, a value of
    the wrong shape is refused: a lenient reader might find an identity in it."""
    routes = ATTRIBUTE_LISTS.by_json_key(descriptor)
    for key, value in node.items():
        route = routes.get(key)
        if route is None or value is None:  # null is the field's default, as protobuf's JSON mapping reads it
            continue
        if route.wanted:
            _correct_json(value, key, marks)
            continue
        if route.repeated and not isinstance(value, list):
            raise BodyRejected(f"{key} is not a list")
        for child in value if route.repeated else (value,):
            if not isinstance(child, dict):
                raise BodyRejected(f"{key} holds something that is not an object")
            _walk_json(child, route.message_type, marks)


def _correct_json(attributes: Any, key: str, marks: _Stamp, keys: frozenset[str] = _CORRECTED_KEYS) -> None:
    _check_json_attributes(attributes, key)
    for i in range(len(attributes) - 1, -1, -1):
        attribute = attributes[i]
        if attribute["key"] not in keys:
            continue
        value = _point_value(attribute["key"], _json_string(attribute.get("value")), marks)
        if value is None:
            del attributes[i]
        elif value is not _KEEP:
            attribute["value"] = {"stringValue": value}


def _json_string(value: Any) -> str | None:
    """An OTLP/JSON ``AnyValue`` that holds a string and nothing else: that string."""
    if not isinstance(value, dict) or len(value) != 1:
        return None
    (key, string), = value.items()
    return string if key in ("stringValue", "string_value") and isinstance(string, str) else None


def _check_json_attributes(attributes: Any, where: str) -> None:
    if not isinstance(attributes, list) or not all(
        isinstance(a, dict) and isinstance(a.get("key"), str) for a in attributes
    ):
        raise BodyRejected(f"{where}: attributes that are not key/value objects")


# ------------------------------------------------------------ content encodings


def _compressed(data: bytes, content_encoding: str | None) -> bytes:
    """``data`` in the encoding it came in (:func:`decoded` has vouched for it)."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in WBITS:
        # gzip with mtime 0, like gzip.compress(..., mtime=0): the same stamped export compresses to the same bytes.
        packer = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, WBITS[encoding])
        return packer.compress(data) + packer.flush()
    return data
