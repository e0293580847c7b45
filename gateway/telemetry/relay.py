"""The relay's edge: one sender task per destination, each draining its own
queue in order, one export in flight at a time (reference §9.1; the queue and
retry rules are in :mod:`gateway.telemetry.queue`).

* :meth:`Relay.submit` is synchronous: the ingest handler hands the export over
  and answers 200 at once. It never awaits and never blocks on a destination,
  whatever state the destinations are in.
* :meth:`Relay.refused` is how the ingest reports an export it would not hand
  over (with identity stamping on, one that could not be stamped): never queued,
  it is counted as ``unstampable`` on each destination that takes its signal.
* Destinations are independent: each has its own queue, sender, backoff and
  counters; a dead collector costs at most its queue bound in memory.
* Each destination speaks its protocol (``gatehouse.protocol``): OTLP/HTTP
  posts the client's bytes, type and encoding as they came
  (:mod:`~gateway.telemetry.http_export`); OTLP/gRPC sends them as an Export
  call, converted only when they are not plain protobuf
  (:mod:`~gateway.telemetry.grpc_export`). Either way the address guard and the
  egress proxy apply, and the headers are the destination's own (the client's
  bearer never leaves). Everything else here (queues, order, backoff, drain,
  counters) is the same for both.
* :meth:`Relay.drain` at shutdown cuts short any backoff in progress, lets the
  senders work until their queues are empty or the timeout passes, then stops
  them and closes the gRPC channels; what is left is counted as dropped and
  logged.

Time is injected (``sleep`` for backoff, ``rng`` for jitter, ``now`` for HTTP
dates) so tests drive an outage without waiting out real backoff.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime

from gateway import audit
from gateway.telemetry.destinations import Destination, grpc_metadata, outbound_headers
from gateway.telemetry.grpc_export import GrpcExport, system_roots
from gateway.telemetry.http_export import HttpExport
from gateway.telemetry.otlp_body import BodyRejected, export_request
from gateway.telemetry.queue import (
    DEFAULT_MAX_QUEUE_BYTES,
    Attempt,
    Backoff,
    Export,
    ExportQueue,
    Outcome,
    worth_logging,
)
from gateway.upstreams.egress import Egress
from gateway.upstreams.outbound import Ask, CredentialFailure, Endpoint, Outbound, Signer
from gateway.upstreams.transport import Transport

# Anthropic's gateway gives a collector 10 s to answer an export; so do we, for
# the response headers and again for its (small) body, or for a whole gRPC call.
SEND_TIMEOUT_S = 10.0
DEFAULT_BACKOFF = Backoff()
COUNTERS = (
    "queued", "queued_bytes", "peak_queued_bytes", "sent", "partial", "retried", "rejected", "dropped",
    "dropped_bytes", "unstampable",
)


# A signer is asked on behalf of a developer's request; an export is the gateway's own.
_NO_ASK = Ask(Endpoint.MESSAGES, "", b"", "", False, {}, (), None, None)


class _Lane:
    """One destination's queue, sender state and counters."""

    def __init__(self, dest: Destination, max_bytes: int, proxy: Callable[[str], str | None]) -> None:
        self.dest = dest
        self.queue = ExportQueue(max_bytes)
        self.proxies = {signal: proxy(url) for signal, url in dest.urls.items()}
        self.grpc: GrpcExport | None = None  # the channel of a gRPC destination
        # The export being retried and its request bytes, so a retry does not convert again.
        self.converted: tuple[Export, bytes] | None = None
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
        grpc_roots: bytes | None = None,
    ) -> None:
        """``grpc_roots``: PEM CA certificates for TLS gRPC destinations; by
        default the ones HTTPS destinations are checked against."""
        proxy = (egress or Egress()).proxy_for
        # By destination name: the gateway's own credential for it (``auth: {google: {}}``),
        # started by the caller; the relay owns it from here and closes it at drain.
        self._signers = dict(signers or {})
        self._http = HttpExport(transport, send_timeout_s, now)
        self._backoff = backoff
        self._rng = rng
        self._sleep = sleep
        self._log = log
        self._flushing = asyncio.Event()
        self._stopped = False
        self._refused = 0  # exports refused before queueing, across destinations (for the log's cadence)
        self._lanes = [_Lane(d, max_queue_bytes, proxy) for d in destinations]
        for lane in self._lanes:
            if lane.dest.protocol == "grpc" and lane.dest.urls:
                lane.grpc = self._grpc_export(lane, transport, send_timeout_s, grpc_roots)

    def _grpc_export(self, lane: _Lane, transport: Transport, timeout_s: float, roots: bytes | None) -> GrpcExport:
        signal, url = next(iter(lane.dest.urls.items()))  # one origin: every signal's URL says it
        _, left_out = grpc_metadata(lane.dest.headers)
        if left_out:
            self._log(
                "warn",
                f"telemetry relay: {lane.dest.name}: header(s) {', '.join(left_out)} cannot be sent as gRPC "
                "metadata (reserved by gRPC or HTTP/2, or a -bin header whose value is not base64) and are left out",
            )
        tls = url.startswith("https:")
        return GrpcExport(
            url, check_target=transport.check_target, timeout_s=timeout_s, proxy=lane.proxies[signal],
            roots=(roots or system_roots()) if tls else None,
        )

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

    def refused(self, signal: str, size: int, why: str) -> None:
        """An export the ingest would not queue (with identity stamping on, one that
        could not be stamped): counted as ``unstampable`` for every destination that
        takes ``signal``, and logged the first time and every 100th."""
        names = []
        for lane in self._lanes:
            if lane.dest.url_for(signal) is not None:
                lane.counts["unstampable"] += 1
                names.append(lane.dest.name)
        self._refused += 1
        if worth_logging(self._refused):
            self._log(
                "warn",
                f"telemetry relay: dropped a {signal} export ({size} bytes) meant for {', '.join(names) or 'no destination'}: "
                f"{why}; {self._refused} dropped so far",
            )

    def counters(self) -> dict[str, dict[str, int]]:
        """Per destination name: queued, queued_bytes, peak_queued_bytes, sent,
        partial, retried (failed tries), rejected, dropped, dropped_bytes, and
        unstampable (exports refused before queueing, see :meth:`refused`)."""
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
        await asyncio.gather(*(lane.grpc.close() for lane in self._lanes if lane.grpc is not None))
        # The gateway's own credentials for collectors (auth: {google: {}}) go with the senders.
        await asyncio.gather(*(signer.close() for signer in self._signers.values()), return_exceptions=True)
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
                attempt = await self._deliver(lane, export)
            except Exception as exc:  # a bug must not stop this destination for good
                lane.in_flight = None
                self._log("error", f"telemetry relay: {lane.dest.name}: export dropped on an internal error: {exc!r}")
                lane.counts["dropped"] += 1
                lane.counts["dropped_bytes"] += export.size
                continue
            lane.in_flight = None
            wait = self._settle(lane, export, attempt)
            if wait is not None:
                await self._pause(wait)

    async def _deliver(self, lane: _Lane, export: Export) -> Attempt:
        """One try, over the destination's protocol."""
        url = lane.dest.urls[export.signal]
        if lane.grpc is None:
            headers, body = outbound_headers(lane.dest, export.content_type, export.content_encoding), export.body
        else:
            try:
                body = await self._grpc_request(lane, export)
            except BodyRejected as exc:
                return Attempt(Outcome.REJECTED, f"not an OTLP export: {exc}")
            headers = dict(lane.dest.headers)
        signer = self._signers.get(lane.dest.name)
        if signer is not None:
            try:
                signed = await signer.authorize(Outbound(url, headers, body), _NO_ASK)
            except CredentialFailure as exc:
                # The gateway's credential trouble: kept and retried like a collector outage.
                return Attempt(Outcome.FAILED, f"no credential: {exc.detail}")
            url, headers = signed.url, signed.headers
        if lane.grpc is None:
            return await self._http.send(url, headers, body, lane.proxies[export.signal])
        metadata, _ = grpc_metadata(headers.items())
        return await lane.grpc.send(export.signal, metadata, body)

    async def _grpc_request(self, lane: _Lane, export: Export) -> bytes:
        """The export as an Export*ServiceRequest, made once however often it is tried."""
        if lane.converted is None or lane.converted[0] is not export:
            # gunzip and JSON parsing take a while on a large body: off the loop.
            body = await asyncio.to_thread(
                export_request, export.signal, export.body, export.content_type, export.content_encoding
            )
            lane.converted = (export, body)
        return lane.converted[1]

    def _settle(self, lane: _Lane, export: Export, attempt: Attempt) -> float | None:
        """Count and log one try's outcome; returns the wait before the next try, if any."""
        name, outcome, detail = lane.dest.name, attempt.outcome, attempt.detail
        if outcome is not Outcome.FAILED:
            lane.converted = None
        if outcome is Outcome.DELIVERED:
            lane.counts["sent"] += 1
            if attempt.partial:
                # Delivered: the collector kept the rest, and the spec forbids a retry.
                lane.counts["partial"] += 1
                if worth_logging(lane.counts["partial"]):
                    self._log(
                        "warn",
                        f"telemetry relay: {name} accepted a {export.signal} export only in part ({detail}); "
                        f"{lane.counts['partial']} so far",
                    )
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
        wait = self._backoff.wait(lane.failures, self._rng(), attempt.retry_after_s)
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
