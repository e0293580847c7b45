"""The canned replies of ``load_test_mode`` (SPEC §10.10, MSG-49 to MSG-54).

In load-test mode every request is authenticated, admitted, translated and
signed as usual, then dropped before it is sent; the client gets one of the
replies built here instead. They are made once at boot, as bytes, from the two
numbers the config gives: about how many tokens of text (``reply_tokens``) and
over how many seconds a stream spreads them (``reply_seconds``).

Sizes: a token is taken as four characters of English text, the usual rule of
thumb, so ``reply_tokens`` tokens are that many times four characters. A
stream carries them three tokens (twelve characters) to a delta, close to what
a model's stream looks like: the default 750 tokens make 250 deltas.

Pacing is a schedule, not a loop of sleeps: :func:`schedule` says which bytes
are due how long after the reply started. Ticks are at least
:data:`MIN_TICK_S` apart, so a large reply over a short time is written in a
few hundred batches instead of tens of thousands of timer wake-ups.

Also here: the made-up developer an ``x-load-test-user`` header names. Pure:
numbers and strings in, bytes and values out.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import msgspec

from gateway.errors import Fault, Party

MESSAGE_ID = "msg_loadtest"
MODEL = "load-test"
CHARS_PER_TOKEN = 4
TOKENS_PER_DELTA = 3
MIN_TICK_S = 0.02
# Said in the text itself, so nobody mistakes a load test's output for a model's.
FILLER = (
    "This is a canned reply from Gatehouse in load-test mode. No model wrote it, "
    "and the request was never sent to a provider. "
)
USER_HEADER = "x-load-test-user"
_USER_NUMBER = re.compile(r"[0-9]{1,7}")
# A reserved top-level domain (RFC 2606): no load-test address can reach a mailbox.
USER_EMAIL_DOMAIN = "load-test.invalid"

_encode = msgspec.json.encode
_ZERO_USAGE = {"input_tokens": 0, "output_tokens": 0}


class Canned(NamedTuple):
    """The replies of one configuration, ready to write."""

    json_body: bytes  # a non-streaming Messages reply
    count_body: bytes  # a count_tokens reply
    stream: tuple[tuple[float, bytes], ...]  # (seconds after the start, bytes due then), in order


def filler_text(tokens: int) -> str:
    """About ``tokens`` tokens of filler that says it is canned, ending on a whole word."""
    size = tokens * CHARS_PER_TOKEN
    text = (FILLER * (size // len(FILLER) + 1))[:size]
    cut = text.rfind(" ")
    return (text[:cut] if cut > 0 else text).rstrip() or FILLER.split(" ", 1)[0]


def sse_event(name: str, data: dict[str, object]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encode(data) + b"\n\n"


def json_reply(text: str) -> bytes:
    return _encode({
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": _ZERO_USAGE,
    })


def stream_events(text: str) -> tuple[bytes, tuple[bytes, ...], bytes]:
    """(the opening events, one delta event per few tokens, the closing events)."""
    head = sse_event("message_start", {
        "type": "message_start",
        "message": {
            "id": MESSAGE_ID,
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _ZERO_USAGE,
        },
    }) + sse_event("content_block_start", {
        "type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""},
    })
    step = TOKENS_PER_DELTA * CHARS_PER_TOKEN
    deltas = tuple(
        sse_event("content_block_delta", {
            "type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text[i : i + step]},
        })
        for i in range(0, len(text), step)
    )
    tail = (
        sse_event("content_block_stop", {"type": "content_block_stop", "index": 0})
        + sse_event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 0},
        })
        + sse_event("message_stop", {"type": "message_stop"})
    )
    return head, deltas, tail


def schedule(head: bytes, deltas: tuple[bytes, ...], tail: bytes, seconds: float) -> tuple[tuple[float, bytes], ...]:
    """When each part of a stream is due: the opening at once, the deltas spread evenly
    over ``seconds`` in ticks at least :data:`MIN_TICK_S` apart, the closing with the last
    delta. ``seconds`` 0 is one write of everything."""
    if seconds <= 0 or not deltas:
        return ((0.0, head + b"".join(deltas) + tail),)
    ticks = max(1, min(len(deltas), math.floor(seconds / MIN_TICK_S)))
    out: list[tuple[float, bytes]] = [(0.0, head)]
    for t in range(1, ticks + 1):
        batch = deltas[(t - 1) * len(deltas) // ticks : t * len(deltas) // ticks]
        out.append((seconds * t / ticks, b"".join(batch) + (tail if t == ticks else b"")))
    return tuple(out)


def canned(reply_tokens: int, reply_seconds: float) -> Canned:
    text = filler_text(reply_tokens)
    head, deltas, tail = stream_events(text)
    return Canned(
        json_body=json_reply(text),
        count_body=_encode({"input_tokens": 0}),
        stream=schedule(head, deltas, tail, reply_seconds),
    )


class BadLoadTestUser(Fault, ValueError):
    """The ``x-load-test-user`` header is not a number of at most seven digits."""

    fault = Party.CLIENT


def user_number(header: str) -> int:
    """The developer number an ``x-load-test-user`` header names (leading zeros do not
    make another developer)."""
    value = header.strip()
    if _USER_NUMBER.fullmatch(value) is None:
        raise BadLoadTestUser(f"{USER_HEADER} must be a whole number of at most 7 digits")
    return int(value)


def user_sub(number: int) -> str:
    return f"load-test-user-{number}"


def user_email(number: int) -> str:
    return f"{user_sub(number)}@{USER_EMAIL_DOMAIN}"
