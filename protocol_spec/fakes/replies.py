"""What the fake upstream answers, described as plain values.

A :class:`Reply` says what one response should look like; :func:`prepare`
turns it into the exact bytes to put on the wire, once. The server then only
sleeps and writes, which keeps it fast enough to sit behind a benchmark and
keeps the bytes a test expects (:func:`sse_bytes`) identical to what was sent.

Nothing here does I/O or imports aiohttp: replies travel as JSON to a fake in
another process (``POST /_fake/script``), so they must be plain data.
"""

from __future__ import annotations

import uuid
import zlib
from typing import Any

import msgspec

DEFAULT_TEXT = "Hello from the simulated upstream."
DEFAULT_MODEL = "claude-opus-4-7"
# Fixed so that a test can compute the expected stream bytes before the request.
DEFAULT_MESSAGE_ID = "msg_01FakeUpstreamReply00000001"
DEFAULT_TOOL_USE_ID = "toolu_01FakeUpstreamTool000001"
LONG_STALL_SECONDS = 3600.0
ORGANIZATION_ID = "00000000-0000-4000-8000-0000000fa4e0"

JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream; charset=utf-8"

_encode = msgspec.json.Encoder().encode


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Token counts of one reply.

    Cache writes are given per lifetime; ``cache_creation_input_tokens`` is
    their sum, as the real API reports it.
    """

    input_tokens: int = 12
    output_tokens: int = 8
    cache_read_input_tokens: int = 0
    ephemeral_5m_input_tokens: int = 0
    ephemeral_1h_input_tokens: int = 0

    @property
    def cache_creation_input_tokens(self) -> int:
        return self.ephemeral_5m_input_tokens + self.ephemeral_1h_input_tokens

    def full(self, output_tokens: int | None = None) -> dict[str, Any]:
        """The ``usage`` object of a JSON reply and of ``message_start``."""
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.ephemeral_5m_input_tokens,
                "ephemeral_1h_input_tokens": self.ephemeral_1h_input_tokens,
            },
            "output_tokens": self.output_tokens if output_tokens is None else output_tokens,
            "service_tier": "standard",
        }

    def cumulative(self) -> dict[str, Any]:
        """The ``usage`` object of ``message_delta``: running totals."""
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "output_tokens": self.output_tokens,
        }


class SseEvent(msgspec.Struct, frozen=True, omit_defaults=True):
    """One frame of an event stream, written after waiting ``delay`` seconds.

    ``data`` that is not a string is written as compact JSON; a string is
    written as is (so a test can send malformed JSON). ``comment`` makes a
    comment frame (``: keep-alive``) and ``raw`` writes bytes untouched, for
    framing the other fields cannot express.
    """

    event: str | None = None
    data: Any = None
    comment: str | None = None
    raw: bytes | None = None
    delay: float = 0.0

    def frame(self) -> bytes:
        if self.raw is not None:
            return self.raw
        if self.comment is not None:
            return b": " + self.comment.encode() + b"\n\n"
        out = b""
        if self.event is not None:
            out += b"event: " + self.event.encode() + b"\n"
        if self.data is not None:
            text = self.data if isinstance(self.data, str) else _encode(self.data).decode()
            for line in text.split("\n"):
                out += b"data: " + line.encode() + b"\n"
        return out + b"\n"


class Reply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One scripted response.

    The body is the first of these that is set: ``body`` (raw bytes),
    ``json``, ``events`` (an event stream). With none set, the reply is a
    Messages answer saying ``text``: JSON or a stream as the request's
    ``stream`` field asks, unless ``stream`` forces one.

    Timing and failures: ``headers_delay`` waits before the status line;
    ``stall_after=N`` sleeps ``stall_seconds`` before frame N (a JSON body is
    one frame, so 0 means "headers, then nothing"); ``reset_after=N`` resets
    the connection instead of writing frame N.

    ``request_id`` None means a fresh ``req_…`` per response and "" means no
    header at all.
    """

    status: int = 200
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: bytes | None = None
    json: Any = None
    events: tuple[SseEvent, ...] | None = None
    content_type: str | None = None
    # "gzip", "deflate", or "auto" (whichever the request's Accept-Encoding offers).
    encoding: str | None = None

    # The generated Messages answer.
    stream: bool | None = None
    text: str = DEFAULT_TEXT
    model: str | None = None
    message_id: str = DEFAULT_MESSAGE_ID
    usage: Usage = msgspec.field(default_factory=Usage)
    deltas: int = 4
    ttft: float = 0.0
    gap: float = 0.0
    ping: bool = True
    message_delta: bool = True
    message_stop: bool = True

    headers_delay: float = 0.0
    stall_after: int | None = None
    stall_seconds: float = LONG_STALL_SECONDS
    reset_after: int | None = None

    request_id: str | None = None
    ratelimit_headers: bool = True
    should_retry: bool | None = None
    retry_after: int | str | None = None

    @property
    def is_generated(self) -> bool:
        """True when the body is the generated Messages answer."""
        return self.body is None and self.json is None and self.events is None


class Prepared(msgspec.Struct, frozen=True):
    """A reply rendered to bytes: what the server writes, in order.

    ``frames`` pairs each chunk with the delay before it. A sized body is a
    single frame and ``streaming`` is False (Content-Length is known).
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    frames: tuple[tuple[float, bytes], ...]
    streaming: bool
    headers_delay: float = 0.0
    stall_after: int | None = None
    stall_seconds: float = LONG_STALL_SECONDS
    reset_after: int | None = None
    fresh_request_id: bool = True

    @property
    def plain(self) -> bool:
        """True when the body can go out in one write with no timing tricks."""
        return (
            not self.streaming
            and self.stall_after is None
            and self.reset_after is None
            and all(delay == 0 for delay, _ in self.frames)
        )

    @property
    def body_length(self) -> int:
        return sum(len(chunk) for _, chunk in self.frames)


# ---------------------------------------------------------------------------
# Building blocks for event streams.


def ping(delay: float = 0.0) -> SseEvent:
    return SseEvent("ping", {"type": "ping"}, delay=delay)


def comment(text: str = "keep-alive", delay: float = 0.0) -> SseEvent:
    return SseEvent(comment=text, delay=delay)


def error_event(
    error_type: str = "overloaded_error", message: str = "Overloaded", delay: float = 0.0
) -> SseEvent:
    return SseEvent(
        "error", {"type": "error", "error": {"type": error_type, "message": message}}, delay=delay
    )


def split_text(text: str, parts: int) -> list[str]:
    """``text`` cut into ``parts`` nearly equal, non-empty pieces (fewer if short)."""
    parts = max(1, min(parts, len(text)))
    size, extra = divmod(len(text), parts)
    pieces, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def _message_shell(message_id: str, model: str, usage: Usage) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        # The real API reports a token or so of output at the start.
        "usage": usage.full(output_tokens=1),
    }


def _closing(usage: Usage, stop_reason: str, message_delta: bool, message_stop: bool) -> list[SseEvent]:
    tail = []
    if message_delta:
        tail.append(
            SseEvent(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": usage.cumulative(),
                },
            )
        )
    if message_stop:
        tail.append(SseEvent("message_stop", {"type": "message_stop"}))
    return tail


def message_events(
    text: str = DEFAULT_TEXT,
    *,
    model: str = DEFAULT_MODEL,
    usage: Usage | None = None,
    message_id: str = DEFAULT_MESSAGE_ID,
    deltas: int = 4,
    ttft: float = 0.0,
    gap: float = 0.0,
    ping_event: bool = True,
    message_delta: bool = True,
    message_stop: bool = True,
) -> tuple[SseEvent, ...]:
    """A text answer in the event order the real client accepts.

    ``ttft`` is the wait before the first text delta, ``gap`` the wait
    before each later one.
    """
    usage = usage or Usage()
    events = [
        SseEvent(
            "message_start", {"type": "message_start", "message": _message_shell(message_id, model, usage)}
        ),
        SseEvent(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
    ]
    if ping_event:
        events.append(ping())
    for i, piece in enumerate(split_text(text, deltas)):
        events.append(
            SseEvent(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                delay=ttft if i == 0 else gap,
            )
        )
    events.append(SseEvent("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.extend(_closing(usage, "end_turn", message_delta, message_stop))
    return tuple(events)


def tool_use_events(
    name: str,
    tool_input: dict[str, Any],
    *,
    tool_use_id: str = DEFAULT_TOOL_USE_ID,
    model: str = DEFAULT_MODEL,
    usage: Usage | None = None,
    message_id: str = DEFAULT_MESSAGE_ID,
    deltas: int = 3,
) -> tuple[SseEvent, ...]:
    """A tool call: the input arrives as partial JSON, like the real API sends it."""
    usage = usage or Usage()
    events = [
        SseEvent(
            "message_start", {"type": "message_start", "message": _message_shell(message_id, model, usage)}
        ),
        SseEvent(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": tool_use_id, "name": name, "input": {}},
            },
        ),
        ping(),
    ]
    for piece in split_text(_encode(tool_input).decode(), deltas):
        events.append(
            SseEvent(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                },
            )
        )
    events.append(SseEvent("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.extend(_closing(usage, "tool_use", True, True))
    return tuple(events)


def message_json(
    text: str = DEFAULT_TEXT,
    *,
    model: str = DEFAULT_MODEL,
    usage: Usage | None = None,
    message_id: str = DEFAULT_MESSAGE_ID,
) -> dict[str, Any]:
    """A non-streaming Messages answer."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": (usage or Usage()).full(),
    }


def error_body(error_type: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return body


def error_reply(status: int, error_type: str, message: str, **fields: Any) -> Reply:
    """An error in Anthropic's envelope, with one request id in body and header."""
    request_id = fields.pop("request_id", None) or new_request_id()
    return Reply(
        status=status, json=error_body(error_type, message, request_id), request_id=request_id, **fields
    )


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]


# ---------------------------------------------------------------------------
# Rendering.


def reply_events(reply: Reply, model: str | None = None) -> tuple[SseEvent, ...]:
    """The events a streaming reply sends; ``model`` is the request's model."""
    if reply.events is not None:
        return reply.events
    if not reply.is_generated:
        raise ValueError("this reply has a fixed body, not an event stream")
    return message_events(
        reply.text,
        model=reply.model or model or DEFAULT_MODEL,
        usage=reply.usage,
        message_id=reply.message_id,
        deltas=reply.deltas,
        ttft=reply.ttft,
        gap=reply.gap,
        ping_event=reply.ping,
        message_delta=reply.message_delta,
        message_stop=reply.message_stop,
    )


def sse_bytes(reply: Reply, model: str | None = None) -> bytes:
    """Exactly the (uncompressed) bytes a streaming reply writes."""
    return b"".join(event.frame() for event in reply_events(reply, model))


def choose_encoding(wanted: str | None, accept_encoding: str) -> str | None:
    """Resolve ``"auto"`` against the request's Accept-Encoding."""
    if wanted != "auto":
        return wanted
    offered = {token.split(";")[0].strip().lower() for token in accept_encoding.split(",")}
    for candidate in ("gzip", "deflate"):
        if candidate in offered:
            return candidate
    return None


def _compress(chunks: list[bytes], encoding: str | None) -> list[bytes]:
    """Compress chunk by chunk, flushing each so a reader can decode it at once."""
    if encoding is None:
        return chunks
    # wbits 31 writes a gzip wrapper, 15 a zlib one (HTTP's "deflate").
    wbits = {"gzip": 31, "deflate": 15}.get(encoding)
    if wbits is None:
        raise ValueError(f"unsupported encoding {encoding!r}")
    squeezer = zlib.compressobj(wbits=wbits)
    out = [squeezer.compress(chunk) + squeezer.flush(zlib.Z_SYNC_FLUSH) for chunk in chunks]
    tail = squeezer.flush(zlib.Z_FINISH)
    if out:
        out[-1] += tail
    else:
        out.append(tail)
    return out


def _headers(
    reply: Reply, content_type: str, streaming: bool, encoding: str | None
) -> tuple[tuple[str, str], ...]:
    base: list[tuple[str, str]] = [("Content-Type", reply.content_type or content_type)]
    if streaming:
        base.append(("Cache-Control", "no-cache"))
    if reply.request_id:
        base.append(("request-id", reply.request_id))
    base.append(("anthropic-organization-id", ORGANIZATION_ID))
    if reply.ratelimit_headers:
        # What the real API sends on every answer; a gateway must not pass these on.
        base += [
            ("anthropic-ratelimit-requests-limit", "4000"),
            ("anthropic-ratelimit-requests-remaining", "3999"),
            ("anthropic-ratelimit-requests-reset", "2026-01-01T00:00:00Z"),
            ("anthropic-ratelimit-input-tokens-limit", "2000000"),
            ("anthropic-ratelimit-input-tokens-remaining", "2000000"),
            ("anthropic-ratelimit-output-tokens-limit", "400000"),
            ("anthropic-ratelimit-output-tokens-remaining", "400000"),
            ("anthropic-ratelimit-tokens-limit", "2400000"),
            ("anthropic-ratelimit-tokens-remaining", "2400000"),
        ]
    if reply.should_retry is not None:
        base.append(("x-should-retry", "true" if reply.should_retry else "false"))
    if reply.retry_after is not None:
        base.append(("retry-after", str(reply.retry_after)))
    if encoding is not None:
        base.append(("Content-Encoding", encoding))
    # Scripted headers win over the defaults of the same name.
    overridden = {name.lower() for name in reply.headers}
    merged = [(name, value) for name, value in base if name.lower() not in overridden]
    return tuple(merged + list(reply.headers.items()))


def prepare(
    reply: Reply, *, model: str | None = None, wants_stream: bool = False, accept_encoding: str = ""
) -> Prepared:
    """Render ``reply`` for a request that named ``model`` and asked ``stream``."""
    encoding = choose_encoding(reply.encoding, accept_encoding)
    streaming = reply.events is not None or (
        reply.is_generated and (reply.stream if reply.stream is not None else wants_stream)
    )
    if streaming:
        events = reply_events(reply, model)
        delays = [event.delay for event in events]
        chunks = [event.frame() for event in events]
        content_type = SSE_TYPE
    else:
        if reply.body is not None:
            body = reply.body
        elif reply.json is not None:
            body = _encode(reply.json)
        else:
            body = _encode(
                message_json(
                    reply.text,
                    model=reply.model or model or DEFAULT_MODEL,
                    usage=reply.usage,
                    message_id=reply.message_id,
                )
            )
        delays, chunks, content_type = [0.0], [body], JSON_TYPE
    chunks = _compress(chunks, encoding)
    return Prepared(
        status=reply.status,
        headers=_headers(reply, content_type, streaming, encoding),
        frames=tuple(zip(delays, chunks, strict=True)),
        streaming=streaming,
        headers_delay=reply.headers_delay,
        stall_after=reply.stall_after,
        stall_seconds=reply.stall_seconds,
        reset_after=reply.reset_after,
        fresh_request_id=reply.request_id is None
        and "request-id" not in {name.lower() for name in reply.headers},
    )
