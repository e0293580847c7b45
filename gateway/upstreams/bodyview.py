"""Read the few fields the gateway needs from a Messages body, and splice ``model``.

The body is forwarded as received. Only when an upstream must receive another
model id (an alias or ``models[].upstream_model``) are the bytes of the
top-level ``model`` value replaced in place — never a full decode and
re-encode, which would reorder or reformat what the client sent (and break the
attribution block and body-keyed caches, SPEC "Forwarding").
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import msgspec

from gateway.client_text import unprintable
from gateway.errors import GatewayError, Kind
from protocol_spec.wire import encoder, messages_view_decoder, thinking_view_decoder

# Routed fields go into routing, the allowlist, the spend store, the usage record
# and the log. Real model ids are short printable text (the longest, Bedrock
# inference-profile ARNs, stay near 100 characters); anything else is refused
# here, before it can reach a database batch or a log line (issue 12).
MAX_MODEL_CHARS = 256


class View(NamedTuple):
    model: str
    stream: bool
    max_tokens: int | None
    tags: dict[str, Any] | None


def _bad(message: str) -> GatewayError:
    return GatewayError(Kind.INVALID_REQUEST, message)


def decode_view(body: bytes) -> View:
    try:
        view = messages_view_decoder.decode(body)
    except msgspec.ValidationError:
        # Valid JSON of the wrong shape (an array, a number, …).
        raise _bad("request body must be a JSON object") from None
    except msgspec.DecodeError:
        raise _bad("invalid JSON") from None
    except RecursionError:
        # msgspec recurses into nested values even to skip them.
        raise _bad("invalid JSON: nested too deeply") from None
    model = view.model
    if model is msgspec.UNSET or model == "":
        raise _bad("model is required")
    if not isinstance(model, str):
        raise _bad("model must be a string")
    check_routed_text("model", model, MAX_MODEL_CHARS)
    max_tokens = view.max_tokens if type(view.max_tokens) is int else None
    tags = view.tags if isinstance(view.tags, dict) else None
    return View(model, view.stream is True, max_tokens, tags)


def thinking_budget(body: bytes) -> int | None:
    """``thinking.budget_tokens`` when thinking is enabled (Bedrock's CountTokens needs
    ``max_tokens`` above it); read only for token counting."""
    try:
        thinking = thinking_view_decoder.decode(body).thinking
    except (msgspec.DecodeError, RecursionError):
        return None
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    return budget if type(budget) is int and budget >= 0 else None


def check_routed_text(name: str, value: str, max_chars: int) -> None:
    """Refuse a routed string that is too long or holds unprintable characters."""
    if len(value) > max_chars:
        raise _bad(f"{name} must be at most {max_chars} characters")
    if unprintable(value):
        raise _bad(f"{name} must not contain control characters")


# A JSON string token, or one structural character. Strings are matched whole,
# so brackets and quotes inside them never count.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]', re.S)
_FAST = re.compile(rb'\A\s*\{\s*"model"\s*:\s*')
_COLON = re.compile(rb"\s*:\s*")


def _top_level_member(body: bytes, wanted: bytes) -> tuple[int, int] | None:
    """(key start, value start) of the top-level member whose encoded key is ``wanted``."""
    depth = 0
    for tok in _TOKEN.finditer(body):
        text = tok.group()
        first = text[0]
        if first in b"{[":
            depth += 1
        elif first in b"}]":
            depth -= 1
        elif depth == 1 and text == wanted:
            colon = _COLON.match(body, tok.end())
            if colon is not None and b":" in colon.group():
                return tok.start(), colon.end()
    return None


def model_value_span(body: bytes) -> tuple[int, int]:
    """Byte offsets [start, end) of the top-level ``model`` string value."""
    # Claude Code sends ``model`` first; then no scan of the body is needed.
    fast = _FAST.match(body)
    start = fast.end() if fast is not None else None
    if start is None:
        member = _top_level_member(body, b'"model"')
        start = member[1] if member is not None else None
    if start is not None:
        value = _TOKEN.match(body, start)
        if value is not None and body[value.start()] == 0x22:
            return value.start(), value.end()
    raise _bad("model is required")


def splice_model(body: bytes, new_model: str) -> bytes:
    start, end = model_value_span(body)
    out = body[:start] + encoder.encode(new_model) + body[end:]
    # The bytes scan finds the first plain "model" key; a JSON decoder (the view's,
    # and the upstream's) keeps the last one and reads escaped keys too. A body where
    # those differ would reach the upstream with the alias unspliced: refuse it.
    spliced = _top_level_keys(out).get("model")
    if spliced is None or bytes(spliced) != encoder.encode(new_model):
        raise _bad("model must appear once in the request body, its key written without escapes")
    return out


def _top_level_keys(body: bytes) -> dict[str, msgspec.Raw]:
    """The top-level members as a JSON decoder sees them (the last of repeated keys wins)."""
    try:
        return msgspec.json.decode(body, type=dict[str, msgspec.Raw])
    except (msgspec.DecodeError, RecursionError):
        raise _bad("invalid JSON") from None


def _value_end(body: bytes, start: int) -> int:
    """End offset of the JSON value starting at ``start`` (string, number, literal, or container)."""
    first = body[start : start + 1]
    if first == b'"':
        token = _TOKEN.match(body, start)
        assert token is not None
        return token.end()
    if first in (b"{", b"["):
        depth = 0
        for tok in _TOKEN.finditer(body, start):
            text = tok.group()
            if text[0] in b"{[":
                depth += 1
            elif text[0] in b"}]":
                depth -= 1
                if depth == 0:
                    return tok.end()
        raise _bad("invalid JSON")
    scalar = _SCALAR.match(body, start)
    if scalar is None:
        raise _bad("invalid JSON")
    return scalar.end()


_SCALAR = re.compile(rb"-?[0-9][0-9eE.+\-]*|true|false|null")
_WS = re.compile(rb"\s*")


def remove_member(body: bytes, key: str) -> bytes:
    """``body`` without its top-level member ``key`` (and one adjoining comma).

    Every other byte is kept as the client sent it. Used for fields an
    upstream must not receive (request ``tags`` for signed-in developers).
    A key repeated, or written with escapes (which the byte scan does not
    see), would still reach the upstream: that body is refused instead.
    """
    member = _top_level_member(body, encoder.encode(key))
    if member is not None:
        body = _without(body, *member)
    if key in _top_level_keys(body):
        raise _bad(f"{key} must appear once in the request body, its key written without escapes")
    return body


def _without(body: bytes, key_start: int, value_start: int) -> bytes:
    end = _value_end(body, value_start)
    after = _WS.match(body, end).end()  # type: ignore[union-attr]
    if body[after : after + 1] == b",":
        # First or middle member: take the comma that follows.
        return body[:key_start] + body[_WS.match(body, after + 1).end() :]  # type: ignore[union-attr]
    # Last member: take the comma that precedes it.
    before = body.rfind(b",", 0, key_start)
    opening = body.rfind(b"{", 0, key_start)
    start = before if before > opening else key_start
    return body[:start] + body[end:]
