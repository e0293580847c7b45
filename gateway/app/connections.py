"""Deadlines on client connections: the request head, the request body, idle keep-alive.

Every open connection holds a file descriptor. aiohttp closes an idle kept-alive
connection (its ``keepalive_timeout``) but sets no deadline on *reading* a request:
a client that sends its headers, or its body, a byte at a time holds its socket for
as long as it likes, and a thousand such clients use up the process's open-file
limit so that nobody else is served (issue 12). This module adds the missing
deadlines where aiohttp reads, in a subclass of its connection protocol:

- **head**: the request line and headers must have arrived in full within
  ``header_read_timeout_seconds`` of the connection being accepted, or of the first
  byte of a later request on a kept-alive connection. Otherwise the connection is
  closed without an answer (there is no request to answer yet).
- **body**: the body must have arrived in full within ``body_read_timeout_seconds``
  of the head. Otherwise whoever reads it gets a 408 in our envelope and the
  connection is closed after that answer.
- **idle**: a kept-alive connection that starts no new request within
  ``keepalive_idle_timeout_seconds`` is closed (aiohttp's own keep-alive timer).

None of them applies while a response is being written: a stream is bounded by the
upstream's idle read rule (``gatehouse.upstream.idle_read_timeout_seconds``) and by
the client, never by these deadlines.

The hooks lean on aiohttp internals (``RequestHandler``'s message queue, waiter,
lingering time and keep-alive deadline); tests/app/test_connection_deadlines.py drives
each deadline through a real gateway process, so an aiohttp upgrade that moves them
fails there rather than silently dropping a deadline.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from gateway import audit
from gateway.app.bad_requests import EnvelopedParseErrors, guard_expect
from gateway.errors import GatewayError, Kind

# Closed connections are counted and logged at most this often, not one line each:
# a flood of slow clients must not become a flood of log lines.
LOG_EVERY_S = 10.0


@dataclass
class Deadlines:
    header_s: float
    body_s: float
    idle_s: float
    # Closures not logged yet, by reason; when the last line went out; the pending flush.
    closed: dict[str, int] = field(default_factory=dict)
    logged_at: float = float("-inf")
    flush_handle: asyncio.TimerHandle | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> Deadlines:
        c = cfg.gatehouse.connections
        return cls(c.header_read_timeout_seconds, c.body_read_timeout_seconds, c.keepalive_idle_timeout_seconds)

    def count(self, reason: str) -> None:
        """Count one closure: logged at once after a quiet spell, else in the next line."""
        self.closed[reason] = self.closed.get(reason, 0) + 1
        if self.flush_handle is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self.logged_at + LOG_EVERY_S - loop.time()
        if wait <= 0:
            self.flush()
        else:
            self.flush_handle = loop.call_later(wait, self.flush)

    def flush(self) -> None:
        """Log what is counted (also called at shutdown, so no count is left unsaid)."""
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        if self.closed:
            self.logged_at = asyncio.get_running_loop().time()
            summary = ", ".join(f"{n} {why}" for why, n in sorted(self.closed.items()))
            self.closed.clear()
            audit.log("info", f"closed slow client connections: {summary}")


class GuardedRequestHandler(EnvelopedParseErrors):
    """aiohttp's connection protocol with head and body read deadlines.

    Its base answers what the parser refuses in our envelope (gateway.app.bad_requests).
    """

    __slots__ = ("_deadlines", "_head_timer", "_body_timer", "_body")

    def __init__(self, manager: Server, *, deadlines: Deadlines, **kwargs: Any) -> None:
        kwargs["keepalive_timeout"] = deadlines.idle_s
        super().__init__(manager, **kwargs)
        self._deadlines = deadlines
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body: Any = None

    # ------------------------------------------------------------ protocol events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_head_clock()

    def data_received(self, data: bytes) -> None:
        # The first bytes of a head on a kept-alive connection start its clock (unless
        # they hold the whole head, as they nearly always do: then no timer at all).
        starts_head = self._head_timer is None and bool(data) and self._awaiting_request()
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:  # a request head arrived in full
            self._stop_head_clock()
            payload = self._messages[-1][1]
            if not payload.is_eof():
                self._start_body_clock(payload)
        elif starts_head and self.transport is not None:
            self._start_head_clock()
        elif self._body is not None and self._body.is_eof():
            self._stop_body_clock()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_clock()
        self._stop_body_clock()
        super().connection_lost(exc)

    # ------------------------------------------------------------ head

    def _awaiting_request(self) -> bool:
        """Between requests: the serving loop waits for the next head."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _start_head_clock(self) -> None:
        loop = self._loop
        deadline = loop.time() + self._deadlines.header_s
        self._head_timer = loop.call_at(deadline, self._head_expired)

    def _stop_head_clock(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _process_keepalive(self) -> None:
        # aiohttp's idle timer runs from the end of the last response (or the accept)
        # and does not notice the bytes of a new head: while a head is awaited or on
        # its way, the head deadline alone decides. The idle timer is set afresh after
        # the next response.
        if self._head_timer is not None:
            self._keepalive_handle = None
            return
        super()._process_keepalive()

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._messages or self._current_request is not None or self.transport is None:
            return
        self._deadlines.count("without a request head in time")
        self.force_close()

    # ------------------------------------------------------------ body

    def _start_body_clock(self, payload: Any) -> None:
        self._stop_body_clock()
        self._body = payload
        self._body_timer = self._loop.call_later(self._deadlines.body_s, self._body_expired)

    def _stop_body_clock(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._body = None

    def _body_expired(self) -> None:
        payload, self._body, self._body_timer = self._body, None, None
        if payload is None or payload.is_eof() or self.transport is None:
            return
        self._deadlines.count("with a request body not in time")
        if self._current_request is None:
            # Nobody reads this body any more (the answer went out without it and
            # aiohttp is draining the rest): just close.
            self.force_close()
            return
        # The handler gets the 408 from its next read of the body. No lingering read
        # of the rest afterwards: the connection closes once that answer is written.
        self._lingering_time = 0.0
        self.close()
        payload.set_exception(body_timeout(self._deadlines.body_s))


def body_timeout(seconds: float) -> GatewayError:
    return GatewayError(
        Kind.REQUEST_TIMEOUT,
        f"the request body did not arrive in full within {seconds:g}s",
        headers={"Connection": "close"},
    )


class GuardedServer(Server):
    """aiohttp's low-level server, making guarded connections."""

    def __init__(self, plain: Server, deadlines: Deadlines) -> None:
        super().__init__(
            guard_expect(plain.request_handler),
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )
        self.deadlines = deadlines

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, deadlines=self.deadlines, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections keep the deadlines in ``deadlines``."""

    __slots__ = ("_deadlines",)

    def __init__(self, app: web.Application, *, deadlines: Deadlines, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._deadlines = deadlines

    async def _make_server(self) -> Server:
        return GuardedServer(await super()._make_server(), self._deadlines)
