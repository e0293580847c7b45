"""AWS event-stream frames, written the way Bedrock's streaming replies carry them.

The fake Bedrock needs to produce ``application/vnd.amazon.eventstream`` bodies;
this module builds the frames as bytes so a test can also corrupt them. The
layout (all integers big-endian) is the one ``botocore.eventstream`` decodes::

    prelude   total length (u32) | headers length (u32) | CRC32 of those 8 bytes (u32)
    headers   per header: name length (u8) | name | type (u8) | value
              (type 7, a string: value length (u16) | UTF-8 value)
    payload   the rest, up to the last four bytes
    trailer   CRC32 of every byte before it (prelude included)

Only string headers are written: Bedrock sends nothing else.
"""

from __future__ import annotations

import base64
import struct
import zlib

import msgspec

_PRELUDE = struct.Struct("!II")
_CRC = struct.Struct("!I")
_STRING_HEADER = 7
_encode = msgspec.json.Encoder().encode


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message holding ``headers`` (as string headers, in order) and ``payload``."""
    encoded = b"".join(_header(name, value) for name, value in headers.items())
    total = _PRELUDE.size + _CRC.size + len(encoded) + len(payload) + _CRC.size
    prelude = _PRELUDE.pack(total, len(encoded))
    head = prelude + _CRC.pack(zlib.crc32(prelude))
    body = head + encoded + payload
    return body + _CRC.pack(zlib.crc32(body))


def chunk_frame(event_json: bytes) -> bytes:
    """A ``chunk`` event carrying one Anthropic stream event (its JSON bytes) the way
    InvokeModelWithResponseStream does: base64 inside ``{"bytes": …}``."""
    payload = _encode({"bytes": base64.b64encode(event_json).decode("ascii")})
    return encode_frame(
        {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"},
        payload,
    )


def exception_frame(exception_type: str, message: str) -> bytes:
    """A modelled exception mid-stream (``internalServerException``, ``throttlingException``…)."""
    return encode_frame(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        _encode({"message": message}),
    )


def corrupt(frame: bytes) -> bytes:
    """``frame`` with its message CRC wrong: a decoder must refuse it, not guess."""
    last = frame[-1] ^ 0xFF
    return frame[:-1] + bytes((last,))


def _header(name: str, value: str) -> bytes:
    raw_name = name.encode("utf-8")
    raw_value = value.encode("utf-8")
    return (
        struct.pack(f"!B{len(raw_name)}sBH", len(raw_name), raw_name, _STRING_HEADER, len(raw_value))
        + raw_value
    )
