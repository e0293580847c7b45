"""SPEC §13 (limits) and §24 (network access), with hand-written request heads.

A size limit must be decided from the headers alone (SPEC LIMIT-2, MSG-3), so
these checks send a head that promises a body and then send none: a gateway
that waits for the body before refusing never answers within the deadline.
"""

from __future__ import annotations

import json
from typing import Any

from protocol_spec.conformance.context import Ctx, small_request
from protocol_spec.conformance.target import RawAnswer, raw_exchange, request_head
from protocol_spec.conformance.verdicts import check

HEAD_ONLY_TIMEOUT_S = 5.0


def _envelope_of(answer: RawAnswer) -> tuple[str | None, str | None]:
    body = answer.json()
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None, None
    return body["error"].get("type"), body["error"].get("message")


def _judge(c: Ctx, rid: str, answer: RawAnswer | str, status: int, error_type: str | None, what: str) -> None:
    """``error_type`` None: only the status is judged (OAuth endpoints answer in their own shape)."""
    if isinstance(answer, str):
        c.expect(rid, False, what, observed=answer, expected=f"{status} {error_type or ''}")
        c.also("LIMIT-6", False, what, observed=answer, expected="x-should-retry: false")
        return
    kind, _ = _envelope_of(answer)
    ok = answer.status == status and (error_type is None or kind == error_type)
    c.expect(rid, ok, what, observed=answer.summary(), expected=f"{status} {error_type or ''}".strip())
    c.also("LIMIT-6", answer.headers.get("x-should-retry") == "false", f"{what}: x-should-retry", observed=answer.headers.get("x-should-retry"), expected="false")
    c.also("ERR-3", "json" in answer.headers.get("Content-Type", ""), f"{what}: not plain text", observed=answer.headers.get("Content-Type"), expected="application/json")


async def _exchange(c: Ctx, head: bytes, body: bytes = b"") -> RawAnswer | str:
    try:
        return await raw_exchange(c.t.host, c.t.port, head, body, HEAD_ONLY_TIMEOUT_S)
    except TimeoutError:
        return f"no answer within {HEAD_ONLY_TIMEOUT_S} s"
    except (ConnectionError, OSError) as err:
        return f"connection failed: {err}"


def _headers(token: str | None, extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out = [("Content-Type", "application/json"), ("anthropic-version", "2023-06-01")]
    if token:
        out.append(("Authorization", f"Bearer {token}"))
    return out + extra


@check("411 and 413 before the body is read", "LIMIT-1", "LIMIT-2", "LIMIT-3", "LIMIT-6", "MSG-3", "ERR-3")
async def size_limits(c: Ctx) -> None:
    token = await c.bearer()
    host = f"{c.t.host}:{c.t.port}"
    body = json.dumps(small_request()).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    head = request_head("POST", "/v1/messages", host, _headers(token, [("Transfer-Encoding", "chunked")]))
    _judge(c, "LIMIT-1", await _exchange(c, head, chunked), 411, "invalid_request_error", "a chunked body without Content-Length")
    over = c.state.max_request_bytes + 1
    targets: list[tuple[str, str, Any]] = [
        ("LIMIT-2", "/v1/messages", "application/json"),
        ("LIMIT-3", "/v1/messages/count_tokens", "application/json"),
        ("LIMIT-3", "/v1/metrics", "application/x-protobuf"),
        ("LIMIT-3", "/oauth/token", "application/x-www-form-urlencoded"),
        ("LIMIT-3", "/oauth/device_authorization", "application/x-www-form-urlencoded"),
    ]
    for rid, path, content_type in targets:
        head = request_head("POST", path, host, [("Content-Type", content_type), ("Authorization", f"Bearer {token}"), ("Content-Length", str(over))])
        answer = await _exchange(c, head)
        error_type = None if path.startswith("/oauth/") else "request_too_large"
        _judge(c, rid, answer, 413, error_type, f"POST {path} announcing {over} bytes, sending none")
        if path == "/v1/messages":
            c.expect("MSG-3", not isinstance(answer, str), "decided from the headers, before any body byte", observed=answer if isinstance(answer, str) else None)


@check("414 and 431 when configured", "LIMIT-4", "LIMIT-5", "LIMIT-6")
async def target_and_header_limits(c: Ctx) -> None:
    token = await c.bearer()
    host = f"{c.t.host}:{c.t.port}"
    long_target = "/v1/models?pad=" + "a" * (c.state.max_url_length + 16)
    head = request_head("GET", long_target, host, _headers(token, []))
    _judge(c, "LIMIT-4", await _exchange(c, head), 414, "invalid_request_error", f"a request target of {len(long_target)} bytes")
    # Many modest headers rather than one huge one: the section is over the limit,
    # no single line is unusual.
    count = c.state.max_request_header_bytes // 1000 + 8
    padding = [(f"x-conformance-pad-{i}", "p" * 990) for i in range(count)]
    head = request_head("GET", "/v1/models", host, _headers(token, padding))
    _judge(c, "LIMIT-5", await _exchange(c, head), 431, "invalid_request_error", f"a header section of about {count} KB")


@check("X-Forwarded-For from an untrusted peer is ignored", "NET-2", "NET-1")
async def forwarded_for(c: Ctx) -> None:
    # The fixture config denies 192.0.2.0/24 and trusts no proxy.
    for value in ("192.0.2.7", "192.0.2.7:4711", "127.0.0.1, 192.0.2.7"):
        answer = await c.t.get("/v1/models", bearer=await c.bearer(), headers={"X-Forwarded-For": value})
        c.expect("NET-2", answer.status == 200, f"X-Forwarded-For: {value}", observed=answer.summary(), expected="200: the TCP peer is the client")
        c.expect("NET-1", answer.status == 200, f"X-Forwarded-For: {value} from an untrusted peer", observed=answer.status, expected=200)


@check("what the HTTP parser refuses is answered in the envelope, never quoted", "ERR-9", "ERR-10")
async def parser_refusals(c: Ctx) -> None:
    host = f"{c.t.host}:{c.t.port}"
    # A bearer holding a DEL byte: the header line is malformed, and the token in it
    # must come back neither in the answer's body nor its headers.
    secret = "conformance-secret-" + "9f3a" * 4
    head = request_head("POST", "/v1/messages", host, [("Authorization", f"Bearer {secret}\x7f"), ("Content-Length", "0")])
    answer = await _exchange(c, head)
    if isinstance(answer, str):
        c.expect("ERR-9", False, "a DEL byte in the Authorization header", observed=answer, expected="400 invalid_request_error")
    else:
        kind, _ = _envelope_of(answer)
        c.expect("ERR-9", answer.status == 400 and kind == "invalid_request_error", "a DEL byte in the Authorization header", observed=answer.summary(), expected="400 invalid_request_error")
        echoed = secret.encode() in answer.body or any(secret in v for v in answer.headers.values())
        c.expect("ERR-9", not echoed, "the malformed line is not quoted back", observed="the token is echoed" if echoed else None, expected="no byte of the line")
    # An expectation other than 100-continue, holding a byte that is not UTF-8, on a known and an unknown path.
    for path in ("/v1/messages", "/conformance/no-such-route"):
        head = request_head("POST", path, host, [("Expect", "conformance-\xff"), ("Content-Length", "0")])
        answer = await _exchange(c, head)
        if isinstance(answer, str):
            c.expect("ERR-10", False, f"Expect: conformance-\\xff on {path}", observed=answer, expected="417 invalid_request_error")
            continue
        kind, _ = _envelope_of(answer)
        c.expect("ERR-10", answer.status == 417 and kind == "invalid_request_error", f"Expect: conformance-\\xff on {path}", observed=answer.summary(), expected="417 invalid_request_error")
        c.also("ERR-10", answer.headers.get("x-should-retry") == "false", f"{path}: x-should-retry", observed=answer.headers.get("x-should-retry"), expected="false")
        c.also("ERR-10", b"conformance-" not in answer.body, f"{path}: the value is not quoted", observed=answer.body[:120], expected="no quote of the header")
