"""The relay's edge: one sender task per destination, each draining its own
queue in order, one export in flight at a time (reference §9.1; the queue and
retry rules are in :mod:`gateway.telemetry.queue`).

* :meth:`Relay.submit` is synchronous: the ingest handler hands the export over
  and answers 200 at once. It never awaits and never blocks on a destination,
  whatever state the destinations are in.
* Destinations are independent: each has its own queue, sender, backoff and
  counters; a dead collector costs at most its queue bound in memory.
* Exports go through the gateway's one outbound :class:`Transport`, so they get
  the upstreams' address guard (resolved addresses checked at run time) and the
  proxy :class:`Egress` chose for the URL at boot. The bytes, content type and
  encoding are the client's; the headers are the destination's own (the
  client's bearer never leaves).
* :meth:`Relay.drain` at shutdown cuts short any backoff in progress, lets the
  senders work until their queues are empty or the timeout passes, then stops
  them; what is left is counted as dropped and logged.

Time is injected (``sleep`` for backoff, ``rng`` for jitter, ``now`` for HTTP
dates) so tests drive an outage without waiting out real backoff.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime

import aiohttp

from gateway import audit
from gateway.errors import Kind
from gateway.telemetry.destinations import Destination, outbound_headers
from gateway.telemetry.queue import (
    DEFAULT_MAX_QUEUE_BYTES,
    Backoff,
    Export,
    ExportQueue,
    Outcome,
    classify,
    parse_retry_after,
    worth_logging,
)
from gateway.upstreams.egress import Egress
from gateway.upstreams.outbound import Ask, CredentialFailure, Endpoint, Outbound, Signer
from gateway.upstreams.transport import Transport, UpstreamFailure

# Anthropic's gateway gives a collector 10 s to answer an export; so do we, for
# the response headers and again for its (small) body.
SEND_TIMEOUT_S = 10.0
# What we read of a collector's answer: enough for an error message, and it lets
# the connection go back to the pool when the body is this small.
ANSWER_READ_BYTES = 64 * 1024
DEFAULT_BACKOFF = Backoff()
COUNTERS = (
    "queued", "queued_bytes", "peak_queued_bytes", "sent", "retried", "rejected", "dropped", "dropped_bytes",
)


# A signer is asked on behalf of a developer's request; an export is the gateway's own.
_NO_ASK = Ask(Endpoint.MESSAGES, "", b"", "", False, {}, (), None, None)


class _Lane:
    """One destination's queue, sender state and counters."""

    def __init__(self, dest: Destination, max_bytes: int, proxy: Callable[[str], str | None]) -> None:
        self.dest = dest
        self.queue = ExportQueue(max_bytes)
        self.proxies = {signal: proxy(url) for signal, url in dest.urls.items()}
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.in_flight: Export | None = None
        self.failures = 0  # consecutive failed tries; reset by a delivery
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.task: asyncio.Task[None] | None = None

    def left(self) -> tuple[int, int]:
        """(exports, bytes) not yet delivered, the one in flight included."""
        extra = self.in_flight.size if self.in_flight else 0
        return len(self.queue) + (self.in_flight is not None), self.queue.bytes + extra

    def snapshot(self) -> dict[str, int]:
        counts = dict(self.counts)
        counts["queued"], counts["queued_bytes"] = len(self.queue), self.queue.bytes
        return counts


class Relay:
    def __init__(
        self,
        destinations: Iterable[Destination],
        transport: Transport,
        *,
        egress: Egress | None = None,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        send_timeout_s: float = SEND_TIMEOUT_S,
        backoff: Backoff = DEFAULT_BACKOFF,
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        log: Callable[[str, str], None] = audit.log,
        signers: Mapping[str, Signer] | None = None,
    ) -> None:
        proxy = (egress or Egress()).proxy_for
        # By destination name: the gateway's own credential for it (``auth: {google: {}}``).
        self._signers = dict(signers or {})
        self._lanes = [_Lane(d, max_queue_bytes, proxy) for d in destinations]
        self._transport = transport
        self._timeout_s = send_timeout_s
        self._backoff = backoff
        self._rng = rng
        self._sleep = sleep
        self._now = now
        self._log = log
        self._flushing = asyncio.Event()
        self._stopped = False

    # ------------------------------------------------------------ the caller's side

    def wants(self, signal: str) -> bool:
        """Whether any destination takes ``signal`` (else the export is discarded)."""
        return any(lane.dest.url_for(signal) for lane in self._lanes)

    def submit(self, signal: str, body: bytes, content_type: str | None, content_encoding: str | None) -> None:
        """Queue one export for every destination that takes ``signal``. Never waits."""
        export = Export(signal, body, content_type, content_encoding)
        for lane in self._lanes:
            if lane.dest.url_for(signal) is None:
                continue
            if self._stopped:
                self._dropped(lane, [export], "the relay has stopped")
                continue
            self._dropped(lane, lane.queue.push(export), "its queue is full")
            lane.counts["peak_queued_bytes"] = max(lane.counts["peak_queued_bytes"], lane.queue.bytes)
            lane.idle.clear()
            lane.wake.set()

    def counters(self) -> dict[str, dict[str, int]]:
        """Per destination name: queued, queued_bytes, peak_queued_bytes, sent,
        retried (failed tries), rejected, dropped, dropped_bytes."""
        return {lane.dest.name: lane.snapshot() for lane in self._lanes}

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start one sender per destination (inside the running loop)."""
        for lane in self._lanes:
            if lane.task is None:
                lane.task = asyncio.get_running_loop().create_task(self._sender(lane), name=f"otlp {lane.dest.name}")

    async def drain(self, timeout_s: float) -> int:
        """Deliver what can be within ``timeout_s``, then stop; returns the number
        of exports left undelivered (counted as dropped and logged)."""
        self._flushing.set()
        try:
            async with asyncio.timeout(timeout_s):
                while not all(lane.idle.is_set() for lane in self._lanes if lane.task is not None):
                    await asyncio.gather(*(lane.idle.wait() for lane in self._lanes if lane.task is not None))
        except TimeoutError:
            pass
        self._stopped = True
        tasks = [lane.task for lane in self._lanes if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        left = 0
        for lane in self._lanes:
            lane.task = None
            exports, size = lane.left()
            if exports:
                left += exports
                lane.counts["dropped"] += exports
                lane.counts["dropped_bytes"] += size
                lane.queue.clear()
                lane.in_flight = None
                self._log("warn", f"telemetry relay: {exports} export(s) ({size} bytes) for {lane.dest.name} not delivered at shutdown")
        return left

    # ------------------------------------------------------------ the sender

    async def _sender(self, lane: _Lane) -> None:
        while True:
            while not lane.queue:
                lane.idle.set()
                lane.wake.clear()
                await lane.wake.wait()
            # In flight until settled: a drain that cancels us counts it as left.
            export = lane.in_flight = lane.queue.pop()
            try:
                outcome, detail, retry_after = await self._deliver(lane, export)
            except Exception as exc:  # a bug must not stop this destination for good
                lane.in_flight = None
                self._log("error", f"telemetry relay: {lane.dest.name}: export dropped on an internal error: {exc!r}")
                lane.counts["dropped"] += 1
                lane.counts["dropped_bytes"] += export.size
                continue
            lane.in_flight = None
            wait = self._settle(lane, export, outcome, detail, retry_after)
            if wait is not None:
                await self._pause(wait)

    async def _deliver(self, lane: _Lane, export: Export) -> tuple[Outcome, str, float | None]:
        """One try: (outcome, what to log, the collector's Retry-After in seconds)."""
        url = lane.dest.urls[export.signal]
        headers = outbound_headers(lane.dest, export.content_type, export.content_encoding)
        signer = self._signers.get(lane.dest.name)
        if signer is not None:
            try:
                signed = await signer.authorize(Outbound(url, headers, export.body), _NO_ASK)
            except CredentialFailure as exc:
                # The gateway's credential trouble: kept and retried like a collector outage.
                return Outcome.FAILED, f"no credential: {exc.detail}", None
            url, headers = signed.url, signed.headers
        try:
            resp = await self._transport.open(
                "POST", url, headers, export.body, self._timeout_s, proxy=lane.proxies[export.signal]
            )
        except UpstreamFailure as exc:
            if exc.kind is Kind.UNSAFE_UPSTREAM_ADDRESS:
                return Outcome.FAILED, f"the address guard refused it: {exc.detail}", None
            return Outcome.FAILED, exc.detail, None
        try:
            answer = await self._read_answer(resp)
        finally:
            resp.release()
        outcome = classify(resp.status)
        retry_after = None
        if outcome is Outcome.FAILED:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._now())
        detail = f"HTTP {resp.status}" + (f": {answer[:200]!r}" if answer else "")
        return outcome, detail, retry_after

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

    def _settle(
        self, lane: _Lane, export: Export, outcome: Outcome, detail: str, retry_after: float | None
    ) -> float | None:
        """Count and log one try's outcome; returns the wait before the next try, if any."""
        name = lane.dest.name
        if outcome is Outcome.DELIVERED:
            lane.counts["sent"] += 1
            if lane.failures:
                self._log("info", f"telemetry relay: {name} delivers again after {lane.failures} failed tries")
            lane.failures = 0
            return None
        if outcome is Outcome.REJECTED:
            # A rejection says nothing about the destination's health: the
            # failure count neither grows nor resets (as in the reference).
            lane.counts["rejected"] += 1
            if worth_logging(lane.counts["rejected"]):
                self._log(
                    "warn",
                    f"telemetry relay: {name} rejected a {export.signal} export ({export.size} bytes, {detail}); "
                    f"not retried ({lane.counts['rejected']} rejected so far)",
                )
            return None
        lane.failures += 1
        lane.counts["retried"] += 1
        self._dropped(lane, lane.queue.push_front(export), "its queue filled while retrying")
        wait = self._backoff.wait(lane.failures, self._rng(), retry_after)
        if worth_logging(lane.failures):
            self._log(
                "warn",
                f"telemetry relay: {name} failed ({detail}); retrying in {wait:.1f}s "
                f"({lane.failures} failed tries in a row, {len(lane.queue)} export(s) queued)",
            )
        return wait

    async def _pause(self, wait: float) -> None:
        """Back off; a drain that starts meanwhile cuts the wait short once."""
        if self._flushing.is_set():
            await self._sleep(wait)
            return
        sleeper = asyncio.ensure_future(self._sleep(wait))
        flushing = asyncio.ensure_future(self._flushing.wait())
        try:
            await asyncio.wait((sleeper, flushing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            flushing.cancel()

    def _dropped(self, lane: _Lane, exports: list[Export], why: str) -> None:
        if not exports:
            return
        before = lane.counts["dropped"]
        lane.counts["dropped"] += len(exports)
        lane.counts["dropped_bytes"] += sum(e.size for e in exports)
        # Log the first drop and every 100th, not each one.
        if before == 0 or before // 100 != lane.counts["dropped"] // 100:
            self._log(
                "warn",
                f"telemetry relay: dropped {len(exports)} export(s) for {lane.dest.name}: {why} "
                f"({lane.queue.max_bytes} bytes); {lane.counts['dropped']} dropped so far",
            )
