"""``load_test_mode`` on the hot path: who the request is, and the canned reply.

The Messages handler decides (two lines in :func:`gateway.http.messages.messages`);
this module does the rest. By the time :func:`reply` runs, the request was
authenticated, admitted by the spend gate and translated and signed for its
first upstream (``messages.sign_only``), exactly as a real one; only sending
is skipped. The bytes come ready-made from :mod:`gateway.upstreams.load_test`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import aiohttp
from aiohttp import web

from gateway.auth.tokens import Principal
from gateway.errors import GatewayError, Kind
from gateway.http.keys import SECURITY_HEADERS
from gateway.upstreams import load_test
from gateway.upstreams.load_test import Canned
from gateway.upstreams.outbound import Ask, Endpoint

if TYPE_CHECKING:
    from gateway.http import spend_gate

CLIENT_CLOSED = 499
USER_HEADER = load_test.USER_HEADER


class Outcome(Protocol):
    """What :func:`reply` notes of the request (``messages.Outcome``, which records it)."""

    request_id: str
    status: int
    ms_headers: float | None
    first_byte_at: float | None
    finished: bool


def as_user(principal: Principal, header: str | None) -> Principal:
    """The developer a load-test request stands for.

    Without ``x-load-test-user``, the token's own. With ``x-load-test-user: N`` (up to
    seven digits), a made-up developer of that number: sub ``load-test-user-N``, email
    ``load-test-user-N@load-test.invalid``. The token's groups, session and expiry stay,
    so role policies and group caps apply to every simulated developer as to the
    token's bearer.
    """
    if header is None:
        return principal
    try:
        n = load_test.user_number(header)
    except load_test.BadLoadTestUser as exc:
        raise GatewayError(Kind.INVALID_REQUEST, str(exc)) from None
    return principal._replace(sub=load_test.user_sub(n), email=load_test.user_email(n), name=f"Load test user {n}")


async def reply(
    canned: Canned,
    request: web.Request,
    ask: Ask,
    outcome: Outcome,
    ticket: spend_gate.Ticket | None,
    t0: float,
) -> web.StreamResponse:
    """The canned answer to a request already signed and dropped: JSON at once, a stream
    paced over ``reply_seconds``. Usage is zero, so the books record no spend."""
    headers = dict(ticket.headers) if ticket is not None else {}
    outcome.status = 200
    outcome.ms_headers = (time.monotonic() - t0) * 1000
    if ask.endpoint is Endpoint.COUNT_TOKENS or not ask.stream:
        body = canned.count_body if ask.endpoint is Endpoint.COUNT_TOKENS else canned.json_body
        outcome.finished = True
        headers["Content-Type"] = "application/json"
        return web.Response(status=200, body=body, headers=headers)
    headers.update(SECURITY_HEADERS)
    headers["Content-Type"] = "text/event-stream; charset=utf-8"
    headers["Cache-Control"] = "no-cache"
    headers["request-id"] = outcome.request_id
    out = web.StreamResponse(status=200, headers=headers)
    await out.prepare(request)
    outcome.first_byte_at = time.monotonic()
    try:
        await paced(out.write, canned.stream)
        await out.write_eof()
        outcome.finished = True
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        outcome.status = CLIENT_CLOSED
    return out


async def paced(
    write: Callable[[bytes], Awaitable[None]],
    stream: tuple[tuple[float, bytes], ...],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Write each part of ``stream`` when it is due, measured from the first write, so a
    slow write does not push every later part back by as much."""
    start = clock()
    for due, data in stream:
        wait = start + due - clock()
        if wait > 0:
            await sleep(wait)
        await write(data)
