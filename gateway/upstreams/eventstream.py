"""Bedrock's streaming reply (an AWS event stream) re-emitted as the Messages API's SSE.

InvokeModelWithResponseStream answers ``application/vnd.amazon.eventstream``:
binary frames, each one self-delimiting and checksummed (all integers
big-endian)::

    prelude   total length (u32) | headers length (u32) | CRC32 of those 8 bytes
    headers   name length (u8) | name | value type (u8) | value   (repeated)
    payload   up to the last four bytes
    trailer   CRC32 of every byte before it

A ``chunk`` event carries one Anthropic stream event, base64 in
``{"bytes": …}``; it becomes ``event: <type>\\ndata: <event JSON>\\n\\n`` with
the JSON exactly as Bedrock sent it (only its ``type`` is decoded). An
``exception`` frame (``internalServerException``, ``throttlingException``…),
an ``error`` frame or any event other than ``chunk`` ends the stream: the
client gets one ``error`` event (``api_error``, ``upstream error``, as
Anthropic's gateway words it; the upstream's text goes to the log only) and
the rest is ignored. A frame that fails its checksums or is framed
impossibly raises :class:`StreamCorrupt`: nothing after it can be trusted.

Pure: bytes in, bytes out. The decoder is written out here rather than
driving ``botocore.eventstream.EventStreamBuffer``, which re-slices its
whole buffer per frame and parses every header through Python calls; this
one keeps a partial frame between calls without copying it again per chunk.
"""

from __future__ import annotations

import re
import struct
import zlib

import msgspec

from gateway.client_text import capped
from gateway.errors import Fault, Party, sse_error
from protocol_spec.cloud_wire import event_type_decoder, exception_body_decoder, payload_part_decoder

PING = b'event: ping\ndata: {"type": "ping"}\n\n'
UPSTREAM_ERROR = sse_error("api_error", "upstream error")

# One frame carries one Anthropic stream event. The largest seen in practice is a
# server-tool result block (web search, code execution), hundreds of KB at most;
# Bedrock's own limits are 128 KiB of headers and 24 MiB of payload. 8 MiB keeps
# a wide margin for real events while bounding what one broken or hostile stream
# can make the gateway hold for it.
MAX_FRAME_BYTES = 8 * 1024 * 1024

_PRELUDE = struct.Struct("!III")
_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")
_PRELUDE_BYTES = 12
_CRC_BYTES = 4
_MIN_FRAME = _PRELUDE_BYTES + _CRC_BYTES
# Fixed value sizes per header value type (AWS event-stream encoding); 6 (bytes)
# and 7 (string) carry a u16 length instead.
_FIXED_VALUE_BYTES = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}
_BYTES_VALUE, _STRING_VALUE = 6, 7
# An SSE event name comes from the upstream's JSON; only a plain token may
# reach the ``event:`` line (a line break there would forge events).
_EVENT_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
MAX_FAILURE_CHARS = 2000
# The start of each SSE event the Messages API streams, built once.
_EVENT_HEADS = {
    name: b"event: " + name.encode() + b"\ndata: "
    for name in (
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    )
}


class StreamCorrupt(Fault):
    """The upstream's event stream broke its own framing (a checksum mismatch, an
    impossible length, a chunk that is not an event): the stream cannot go on.

    ``before`` holds the SSE of the good frames that arrived in the same
    :meth:`EventStreamSse.feed` call ahead of the broken one: the client
    should still get them, then the error event.
    """

    fault = Party.UPSTREAM

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.before = b""


def _string_header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return (
        struct.pack(f"!B{len(raw_name)}sBH", len(raw_name), raw_name, _STRING_VALUE, len(raw_value))
        + raw_value
    )


# The headers of a chunk frame as Bedrock writes them, byte for byte: the common
# case is one comparison instead of a header walk.
_CHUNK_HEADERS = (
    _string_header(":event-type", "chunk")
    + _string_header(":content-type", "application/json")
    + _string_header(":message-type", "event")
)


class EventStreamSse:
    """Feed it the bytes of one InvokeModelWithResponseStream reply; it returns SSE.

    After an exception frame, or once :class:`StreamCorrupt` was raised,
    :attr:`ended` is True, :attr:`failure` holds the upstream's text (or what
    was wrong) for the log, and further input is ignored. A stream whose
    bytes end with :attr:`mid_frame` True was cut short.
    """

    __slots__ = ("_buffer", "_need", "_max_frame", "ended", "failure", "frames")

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._need = _PRELUDE_BYTES  # bytes wanted before the next parse is worth trying
        self._max_frame = max_frame
        self.ended = False
        self.failure: str | None = None
        self.frames = 0

    @property
    def mid_frame(self) -> bool:
        """True when the bytes fed so far stop inside a frame."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> bytes:
        """The SSE bytes for every frame completed by ``data`` (b"" when none is);
        raises :class:`StreamCorrupt`."""
        if self.ended:
            return b""
        buffer = self._buffer
        buffer += data
        if len(buffer) < self._need:
            return b""
        out: list[bytes] = []
        try:
            with memoryview(buffer) as view:
                used = self._frames(view, out)
        except StreamCorrupt as corrupt:
            self.ended = True
            self.failure = str(corrupt)
            self._buffer = bytearray()  # the traceback still holds views of the old one
            corrupt.before = b"".join(out)
            raise
        del buffer[:used]
        return b"".join(out)

    def _frames(self, view: memoryview, out: list[bytes]) -> int:
        """Translate the complete frames at the start of ``view``; the bytes they took.
        (One loop rather than a call per step: this runs once per token streamed.)"""
        pos, size = 0, len(view)
        while size - pos >= _PRELUDE_BYTES:
            total, headers_len, prelude_crc = _PRELUDE.unpack_from(view, pos)
            if zlib.crc32(view[pos : pos + 8]) != prelude_crc:
                raise StreamCorrupt("event stream prelude checksum mismatch")
            if total > self._max_frame:
                raise StreamCorrupt(
                    f"event stream frame of {total} bytes exceeds the {self._max_frame}-byte cap"
                )
            if total < _MIN_FRAME + headers_len:
                raise StreamCorrupt(
                    f"event stream frame length {total} cannot hold {headers_len} header bytes"
                )
            if size - pos < total:
                self._need = total  # the prelude is read again then: cheap, and keeps no state
                return pos
            end = pos + total - _CRC_BYTES
            if zlib.crc32(view[pos:end]) != _U32.unpack_from(view, end)[0]:
                raise StreamCorrupt("event stream message checksum mismatch")
            self.frames += 1
            payload_start = pos + _PRELUDE_BYTES + headers_len
            headers = view[pos + _PRELUDE_BYTES : payload_start]
            pos += total
            if headers == _CHUNK_HEADERS:
                out.append(_chunk(view[payload_start:end]))
                continue
            fields = _headers(headers)
            if fields.get(":message-type") == "event" and fields.get(":event-type") == "chunk":
                out.append(_chunk(view[payload_start:end]))
                continue
            out.append(self._end(fields, view[payload_start:end]))
            return size  # nothing after the error event reaches the client
        self._need = _PRELUDE_BYTES
        return pos

    def _end(self, fields: dict[str, str], payload: memoryview) -> bytes:
        self.ended = True
        kind = fields.get(":message-type")
        if kind == "exception":
            self.failure = f"{fields.get(':exception-type', 'exception')}: {_exception_text(payload)}"
        elif kind == "error":
            self.failure = f"{fields.get(':error-code', 'error')}: {fields.get(':error-message', '')}"
        else:
            self.failure = f"unexpected {kind} frame {fields.get(':event-type')!r}"
        self.failure = capped(self.failure, MAX_FAILURE_CHARS)
        return UPSTREAM_ERROR


def _chunk(payload: memoryview) -> bytes:
    try:
        event = payload_part_decoder.decode(payload).data
        name = event_type_decoder.decode(event).type
    except (msgspec.DecodeError, RecursionError):
        raise StreamCorrupt("event stream chunk is not a base64-wrapped JSON event with a type") from None
    head = _EVENT_HEADS.get(name) or _event_head(name)
    if b"\n" in event or b"\r" in event:
        # Raw line breaks in JSON are whitespace between tokens; as separate data
        # lines the client joins them back with "\n", the same JSON value.
        return head + b"\ndata: ".join(event.splitlines()) + b"\n\n"
    return head + event + b"\n\n"


def _event_head(name: str) -> bytes:
    """``event: <name>\\ndata: `` for an event type not in :data:`_EVENT_HEADS`."""
    if _EVENT_NAME.fullmatch(name) is None:
        raise StreamCorrupt(f"event stream chunk has an unusable event type {capped(name, 80)!r}")
    return b"event: " + name.encode() + b"\ndata: "


def _headers(raw: memoryview) -> dict[str, str]:
    """The string headers of a frame (other value types are skipped)."""
    fields: dict[str, str] = {}
    pos, size = 0, len(raw)
    try:
        while pos < size:
            name_len = raw[pos]
            name = bytes(raw[pos + 1 : pos + 1 + name_len]).decode()
            pos += 1 + name_len
            kind = raw[pos]
            pos += 1
            if kind in (_BYTES_VALUE, _STRING_VALUE):
                (value_len,) = _U16.unpack_from(raw, pos)
                value = bytes(raw[pos + 2 : pos + 2 + value_len])
                pos += 2 + value_len
                if kind == _STRING_VALUE:
                    fields[name] = value.decode()
            else:
                pos += _FIXED_VALUE_BYTES[kind]
    except (IndexError, KeyError, UnicodeDecodeError, struct.error):
        raise StreamCorrupt("event stream headers are malformed") from None
    if pos != size:
        raise StreamCorrupt("event stream headers overrun their declared length")
    return fields


def _exception_text(payload: memoryview) -> str:
    try:
        body = exception_body_decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        return bytes(payload).decode("utf-8", "replace")
    return body.message or body.Message or bytes(payload).decode("utf-8", "replace")
