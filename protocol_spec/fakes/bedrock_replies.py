"""What the fake Bedrock runtime answers, as plain values rendered to wire bytes.

A :class:`BedrockReply` is one scripted answer. Its successful content is an
ordinary :class:`~protocol_spec.fakes.replies.Reply` (text, usage, deltas,
timings, ``stall_after`` for silence, ``reset_after`` for a broken
connection), rendered the way Bedrock carries it:

* ``invoke``: Anthropic's JSON message, ``model`` being the id in the path;
* ``invoke-with-response-stream``: one event-stream ``chunk`` frame per
  Anthropic event, payload ``{"bytes": base64(event JSON)}``, the
  ``message_stop`` event carrying ``amazon-bedrock-invocationMetrics``;
* ``count-tokens``: ``{"inputTokens": N}``.

An error answer is a status, an ``x-amzn-ErrorType`` and ``{"message": …}``.
A stream may also end in an exception frame or carry a frame whose CRC is
wrong. Nothing here does I/O, so replies travel as JSON to a fake in another
process (``POST /_fake/script``).
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from protocol_spec.fakes.eventstream import chunk_frame, corrupt, exception_frame
from protocol_spec.fakes.replies import Prepared, Reply, message_json, reply_events

__all__ = [
    "ACCESS_DENIED",
    "INTERNAL",
    "NOT_FOUND",
    "THROTTLING",
    "TOO_LONG",
    "UNAVAILABLE",
    "BedrockReply",
    "bedrock_error",
    "render",
    "stream_exception",
    "validation",
]

EVENT_STREAM_TYPE = "application/vnd.amazon.eventstream"
JSON_TYPE = "application/json"
# Real Bedrock suffixes the error type with its service namespace; clients take
# the part before the colon (botocore does).
ERROR_NAMESPACE = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
FAKE_LATENCY_MS = 420

_encode = msgspec.json.Encoder().encode


class BedrockReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One scripted answer of the fake Bedrock runtime.

    ``error`` set: the answer is ``status`` with ``x-amzn-ErrorType: error``
    and ``{"message": message}``. Otherwise ``answer`` says what succeeds.
    ``exception_at=N`` sends an exception frame (``exception``, with
    ``message``) instead of stream frame N and ends the stream;
    ``corrupt_at=N`` sends frame N with a wrong CRC. ``input_tokens`` is what
    ``count-tokens`` answers (default: a quarter of the counted body's bytes).
    """

    answer: Reply = msgspec.field(default_factory=Reply)
    status: int = 200
    error: str | None = None
    message: str = ""
    exception_at: int | None = None
    exception: str = "internalServerException"
    corrupt_at: int | None = None
    input_tokens: int | None = None


def bedrock_error(status: int, error: str, message: str) -> BedrockReply:
    return BedrockReply(status=status, error=error, message=message)


def validation(message: str) -> BedrockReply:
    return bedrock_error(400, "ValidationException", message)


def stream_exception(
    at: int, exception: str = "internalServerException", message: str = "The system encountered an error."
) -> BedrockReply:
    """A stream that breaks off with an exception frame in place of frame ``at``."""
    return BedrockReply(exception_at=at, exception=exception, message=message)


THROTTLING = bedrock_error(429, "ThrottlingException", "Too many requests, please wait before trying again.")
TOO_LONG = validation("Input is too long for requested model.")
ACCESS_DENIED = bedrock_error(
    403, "AccessDeniedException", "You don't have access to the model with the specified model ID."
)
NOT_FOUND = bedrock_error(404, "ResourceNotFoundException", "The provided model identifier is invalid.")
UNAVAILABLE = bedrock_error(503, "ServiceUnavailableException", "Bedrock is unable to process your request.")
INTERNAL = bedrock_error(
    500, "InternalServerException", "The server encountered an internal error while processing the request."
)


def new_request_id() -> str:
    return str(uuid.uuid4())


def error_answer(status: int, error: str, message: str) -> Prepared:
    """An error in Bedrock's shape (also used for the fake's own signature refusals)."""
    headers = (
        ("Content-Type", JSON_TYPE),
        ("x-amzn-ErrorType", error + ERROR_NAMESPACE),
    )
    return Prepared(status, headers, ((0.0, _encode({"message": message})),), streaming=False)


def render(reply: BedrockReply, operation: str, model_id: str, counted: bytes | None = None) -> Prepared:
    """``reply`` as the bytes of one answer to ``operation`` ("invoke", "stream" or "count")."""
    if reply.error is not None:
        prepared = error_answer(reply.status, reply.error, reply.message)
        return msgspec.structs.replace(prepared, headers_delay=reply.answer.headers_delay)
    if operation == "stream":
        return _stream(reply, model_id)
    if operation == "count":
        tokens = reply.input_tokens if reply.input_tokens is not None else max(1, len(counted or b"") // 4)
        return _json(reply, {"inputTokens": tokens})
    return _json(reply, _message(reply.answer, model_id))


def _message(answer: Reply, model_id: str) -> Any:
    if answer.body is not None:
        return answer.body
    if answer.json is not None:
        return answer.json
    return message_json(answer.text, model=model_id, usage=answer.usage, message_id=answer.message_id)


def _json(reply: BedrockReply, body: Any) -> Prepared:
    answer = reply.answer
    raw = body if isinstance(body, bytes) else _encode(body)
    usage = answer.usage
    headers = (
        ("Content-Type", JSON_TYPE),
        ("X-Amzn-Bedrock-Input-Token-Count", str(usage.input_tokens)),
        ("X-Amzn-Bedrock-Output-Token-Count", str(usage.output_tokens)),
        ("X-Amzn-Bedrock-Invocation-Latency", str(FAKE_LATENCY_MS)),
    )
    return Prepared(
        reply.status,
        headers,
        ((0.0, raw),),
        streaming=False,
        headers_delay=answer.headers_delay,
        stall_after=answer.stall_after,
        stall_seconds=answer.stall_seconds,
        reset_after=answer.reset_after,
        fresh_request_id=False,
    )


def _stream(reply: BedrockReply, model_id: str) -> Prepared:
    answer = reply.answer
    if answer.is_generated:
        # Bedrock relays no ping events: its silence is the gateway's to fill.
        answer = msgspec.structs.replace(answer, ping=False)
    frames: list[tuple[float, bytes]] = []
    for index, event in enumerate(reply_events(answer, model_id)):
        if index == reply.exception_at:
            frames.append((event.delay, exception_frame(reply.exception, reply.message)))
            break
        frame = chunk_frame(_event_json(event.data, answer))
        frames.append((event.delay, corrupt(frame) if index == reply.corrupt_at else frame))
    else:
        if reply.exception_at is not None and reply.exception_at >= len(frames):
            frames.append((0.0, exception_frame(reply.exception, reply.message)))
    headers = (
        ("Content-Type", EVENT_STREAM_TYPE),
        ("X-Amzn-Bedrock-Content-Type", JSON_TYPE),
    )
    return Prepared(
        reply.status,
        headers,
        tuple(frames),
        streaming=True,
        headers_delay=answer.headers_delay,
        stall_after=answer.stall_after,
        stall_seconds=answer.stall_seconds,
        reset_after=answer.reset_after,
        fresh_request_id=False,
    )


def _event_json(data: Any, answer: Reply) -> bytes:
    if isinstance(data, str):
        return data.encode()  # scripted malformed JSON goes out as written
    if isinstance(data, dict) and data.get("type") == "message_stop":
        data = {**data, "amazon-bedrock-invocationMetrics": _metrics(answer)}
    return _encode(data)


def _metrics(answer: Reply) -> dict[str, int]:
    usage = answer.usage
    metrics = {
        "inputTokenCount": usage.input_tokens,
        "outputTokenCount": usage.output_tokens,
        "invocationLatency": FAKE_LATENCY_MS,
        "firstByteLatency": FAKE_LATENCY_MS // 2,
    }
    if usage.cache_read_input_tokens:
        metrics["cacheReadInputTokenCount"] = usage.cache_read_input_tokens
    if usage.cache_creation_input_tokens:
        metrics["cacheWriteInputTokenCount"] = usage.cache_creation_input_tokens
    return metrics
