"""OTLP/HTTP delivery: one POST of the client's bytes to a collector's signal URL.

The request goes through the gateway's one outbound :class:`Transport`, so it
gets the upstreams' address guard (resolved addresses checked at run time) and
the proxy :class:`~gateway.upstreams.egress.Egress` chose for the URL at boot.
The status alone decides the outcome (:func:`~gateway.telemetry.queue.classify`);
the start of the answer is read only for the log line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

import aiohttp

from gateway.errors import Kind
from gateway.telemetry.queue import Attempt, Outcome, classify, parse_retry_after
from gateway.upstreams.transport import Transport, UpstreamFailure

# What we read of a collector's answer: enough for an error message, and it lets
# the connection go back to the pool when the body is this small.
ANSWER_READ_BYTES = 64 * 1024


class HttpExport:
    def __init__(self, transport: Transport, timeout_s: float, now: Callable[[], datetime]) -> None:
        self._transport = transport
        self._timeout_s = timeout_s
        self._now = now

    async def send(self, url: str, headers: dict[str, str], body: bytes, proxy: str | None) -> Attempt:
        """One POST; the collector gets ``timeout_s`` for its response headers and
        again for the start of its body."""
        try:
            resp = await self._transport.open("POST", url, headers, body, self._timeout_s, proxy=proxy)
        except UpstreamFailure as exc:
            if exc.kind is Kind.UNSAFE_UPSTREAM_ADDRESS:
                return Attempt(Outcome.FAILED, f"the address guard refused it: {exc.detail}")
            return Attempt(Outcome.FAILED, exc.detail)
        try:
            answer = await self._read_answer(resp)
        finally:
            resp.release()
        outcome = classify(resp.status)
        retry_after = None
        if outcome is Outcome.FAILED:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._now())
        detail = f"HTTP {resp.status}" + (f": {answer[:200]!r}" if answer else "")
        return Attempt(outcome, detail, retry_after)

    async def _read_answer(self, resp: aiohttp.ClientResponse) -> bytes:
        """The start of the collector's answer; the status already decided the
        outcome, so a body that breaks off or stalls changes nothing."""
        answer = b""
        try:
            async with asyncio.timeout(self._timeout_s):
                while len(answer) < ANSWER_READ_BYTES:
                    chunk = await resp.content.read(ANSWER_READ_BYTES - len(answer))
                    if not chunk:
                        return answer
                    answer += chunk
        except (aiohttp.ClientError, OSError, TimeoutError):
            pass
        resp.close()  # not read to the end: this connection cannot be reused
        return answer
