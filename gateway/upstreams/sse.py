"""The usage tap: reads usage off relayed SSE bytes without re-framing them.

The relay writes every upstream chunk to the client unchanged; it also hands
the chunk to :meth:`UsageTap.feed`, which finds event boundaries and looks at
just two kinds of events:

* ``message_start`` and ``message_delta``: their (small) JSON is decoded for
  ``usage``. ``message_start.message.usage`` sets every field; each later
  ``message_delta.usage`` overrides the fields it carries. The values are
  cumulative, so they replace, never add (SPEC "Usage accounting").
* ``content_block_delta``: only the length of its ``data:`` payload is counted,
  without decoding, less the fixed JSON every delta carries (``DELTA_ENVELOPE_BYTES``),
  so a stream cut before ``message_delta`` can still be billed: output tokens
  are then estimated as those bytes ÷ 4, about one per four characters of
  text (MSG-40). Counting the envelope too would make a one-token delta look
  like twenty.

Everything else (``ping``, comments, ``content_block_start``…) is skipped.
The tap holds at most one partial event between chunks.
"""

from __future__ import annotations

from typing import NamedTuple

from protocol_spec.wire import Usage, message_delta_decoder, message_start_decoder, reply_view_decoder

BYTES_PER_TOKEN_ESTIMATE = 4
# The payload of a content_block_delta with no text at all, the smallest there is:
# {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""}}
# Tool-input and thinking deltas wrap more, so subtracting this never undercounts.
DELTA_ENVELOPE_BYTES = 80


class UsageTotals(NamedTuple):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_creation_5m: int
    cache_creation_1h: int
    cache_read_input_tokens: int
    # True when output_tokens is an estimate (the stream ended without message_delta).
    estimated: bool


ZERO = UsageTotals(0, 0, 0, 0, 0, 0, False)


class _Fields:
    __slots__ = ("input", "output", "cc", "cc5", "cc1", "cr")

    def __init__(self) -> None:
        self.input = self.output = self.cc = self.cc5 = self.cc1 = self.cr = 0

    def apply(self, usage: Usage | None) -> None:
        if usage is None:
            return
        if usage.input_tokens is not None:
            self.input = usage.input_tokens
        if usage.output_tokens is not None:
            self.output = usage.output_tokens
        if usage.cache_creation_input_tokens is not None:
            self.cc = usage.cache_creation_input_tokens
        if usage.cache_read_input_tokens is not None:
            self.cr = usage.cache_read_input_tokens
        split = usage.cache_creation
        if split is not None:
            if split.ephemeral_5m_input_tokens is not None:
                self.cc5 = split.ephemeral_5m_input_tokens
            if split.ephemeral_1h_input_tokens is not None:
                self.cc1 = split.ephemeral_1h_input_tokens


class UsageTap:
    """Feed it the relayed bytes of one SSE stream; ask it for usage at the end."""

    __slots__ = ("_pending", "_after_cr", "_fields", "_saw_start", "_saw_delta", "delta_bytes", "events")

    def __init__(self) -> None:
        self._pending = b""
        # A chunk may end between the CR and LF of one line end: the LF must not
        # count as a second line end (that would split the event in two).
        self._after_cr = False
        self._fields = _Fields()
        self._saw_start = False
        self._saw_delta = False
        self.delta_bytes = 0
        self.events = 0

    @property
    def mid_event(self) -> bool:
        """True when the bytes relayed so far stop inside an event."""
        return bool(self._pending.strip())

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]  # the second half of a CRLF the last chunk ended in
        self._after_cr = chunk[-1:] == b"\r"
        data = self._pending + chunk if self._pending else chunk
        if b"\r" in data:
            # CRLF framing is legal SSE; normalise for our own parsing only.
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self._pending = data
            return
        self._pending = data[end + 2 :]
        for event in data[:end].split(b"\n\n"):
            # Extra blank lines between events are allowed, wherever a chunk cuts them.
            if event and (event[0] != 0x0A or event.strip(b"\n")):
                self._event(event)

    def _event(self, event: bytes) -> None:
        self.events += 1
        name, data = _split_event(event)
        if name == b"content_block_delta":
            if len(data) > DELTA_ENVELOPE_BYTES:
                self.delta_bytes += len(data) - DELTA_ENVELOPE_BYTES
        elif name == b"message_start":
            self._saw_start = True
            try:
                start = message_start_decoder.decode(data)
            except Exception:
                return
            if start.message is not None:
                self._fields.apply(start.message.usage)
        elif name == b"message_delta":
            self._saw_delta = True
            try:
                delta = message_delta_decoder.decode(data)
            except Exception:
                return
            self._fields.apply(delta.usage)

    def totals(self) -> UsageTotals:
        f = self._fields
        output, estimated = f.output, False
        if not self._saw_delta:
            guess = self.delta_bytes // BYTES_PER_TOKEN_ESTIMATE
            if guess > output:
                output, estimated = guess, True
        return UsageTotals(f.input, output, f.cc, f.cc5, f.cc1, f.cr, estimated)


def _split_event(event: bytes) -> tuple[bytes, bytes]:
    """The event name and its data payload (multi-line data joined by newlines)."""
    name = b""
    data_lines: list[bytes] = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data_lines.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            name = line[6:].strip()
    data = data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines)
    if not name and data.startswith(b'{"type":"'):
        # No ``event:`` line: the type is the first field of the payload.
        name = data[9 : data.find(b'"', 9)]
    return name, data


def json_usage(body: bytes) -> UsageTotals:
    """Usage from a non-streaming Messages reply; zeros when it has none."""
    try:
        reply = reply_view_decoder.decode(body)
    except Exception:
        return ZERO
    fields = _Fields()
    fields.apply(reply.usage)
    return UsageTotals(fields.input, fields.output, fields.cc, fields.cc5, fields.cc1, fields.cr, False)
