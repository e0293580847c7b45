"""Requests aiohttp's parser refuses: answered in our envelope, never quoting the request.

aiohttp answers a request it cannot parse with a plain-text 400 that quotes the
offending line, and logs that line with a traceback. The line is often a header,
and the header is often ``Authorization``: a bearer token holding a stray byte
(DEL, a bare LF) was echoed to the client and written to the log (issue 12). A
line over the parser's limits got the same 400, where the protocol wants 414
(request target) or 431 (headers) in the envelope.

:class:`EnvelopedParseErrors` replaces aiohttp's answer. What the parser said is
used only to choose the status; the body and the log line name the kind of
problem and never a byte of the request. The connection is closed afterwards, as
aiohttp does: after a parse error nothing later on it can be trusted.

It is a base of the connection protocol the server runs
(:class:`gateway.app.connections.GuardedRequestHandler`).

:func:`guard_expect` does the same for an ``Expect`` header other than
``100-continue``. aiohttp answers that before any middleware runs, with a 417
whose text quotes the header; a value holding a byte that is not UTF-8 cannot
even be encoded there, so the client got a 500 and the log a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from gateway import audit
from gateway.errors import GatewayError, Kind, render
from gateway.http.keys import SECURITY_HEADERS, new_request_id


def parse_error(exc: BaseException | None, status: int, *, line_limit: int, field_limit: int) -> GatewayError:
    """Our error for what the parser raised; ``line_limit`` and ``field_limit`` are its two limits.

    aiohttp raises the same ``LineTooLong`` for the request target and for a
    header, carrying the limit it crossed; :func:`gateway.app.build.parser_limits`
    keeps the two limits different so that the limit tells which it was.
    """
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == line_limit and line_limit != field_limit:
            return GatewayError(Kind.URL_TOO_LONG, f"request URL is longer than {line_limit} bytes")
        return GatewayError(Kind.HEADERS_TOO_LARGE, "request headers are too large")
    if isinstance(exc, BadHttpMessage) and "too many headers" in exc.message.lower():
        return GatewayError(Kind.HEADERS_TOO_LARGE, "too many request headers")
    # The same parser errors can surface from a handler reading a broken body
    # (aiohttp then passes status 500): still the request's fault.
    if status >= 500 and not isinstance(exc, BadHttpMessage | RequestPayloadError):
        return GatewayError(Kind.INTERNAL, "internal error")
    return GatewayError(Kind.INVALID_REQUEST, "malformed HTTP request")


class _Tally:
    """Refusals counted and logged at most every ``every_s``: a flood of bad requests
    (every one closes its connection, so each costs the sender a new one) must not
    become a flood of log lines. Each refusal also has a ``debug`` line of its own."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self.counts: dict[str, int] = {}
        self.logged_at = float("-inf")

    def note(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        now = time.monotonic()
        if now - self.logged_at >= self.every_s:
            self.logged_at = now
            summary = ", ".join(f"{n} {why}" for why, n in sorted(self.counts.items()))
            self.counts.clear()
            audit.log("info", f"refused requests the HTTP parser could not accept: {summary}")


REFUSALS = _Tally()


class EnvelopedParseErrors(RequestHandler):
    """aiohttp's connection protocol, answering its own errors in our envelope."""

    __slots__ = ()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # ``message`` is aiohttp's text for the client, quoting the request: unused.
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot answer with an error")
        err = parse_error(exc, status, line_limit=self.max_line_size, field_limit=self.max_field_size)
        if err.kind is Kind.INTERNAL:
            # A bug in a handler, not a bad request: keep aiohttp's traceback for it.
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            # The class of the parser's error and who sent it; never its text.
            name = type(exc).__name__ if exc is not None else "error"
            audit.log("debug", f"refused a request aiohttp could not parse from {request.remote}: {name} ({err.message})")
            REFUSALS.note(err.message)
        request_id = new_request_id()
        code, headers, body = render(err, request_id)
        headers["request-id"] = request_id
        response = web.Response(status=code, body=body, headers={**headers, **SECURITY_HEADERS})
        response.force_close()
        return response


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def guard_expect(handler: Handler) -> Handler:
    """``handler``, with an unsupported ``Expect`` refused in our envelope before aiohttp reads it.

    ``100-continue`` (the only expectation HTTP defines) goes on to aiohttp,
    which sends the interim 100 as before.
    """

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        expect = request.headers.get(hdrs.EXPECT)
        if expect and expect.lower() != "100-continue":
            REFUSALS.note("unsupported Expect header")
            err = GatewayError(Kind.EXPECTATION_FAILED, "unsupported Expect header: only 100-continue is understood")
            request_id = new_request_id()
            code, headers, body = render(err, request_id)
            headers["request-id"] = request_id
            return web.Response(status=code, body=body, headers={**headers, **SECURITY_HEADERS})
        return await handler(request)

    return handle
