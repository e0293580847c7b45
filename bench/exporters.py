"""Signed-in Claude Code clients exporting their telemetry through a gateway, at a realistic rate.

    python -m bench.exporters SPEC_JSON

Runs as its own process on the load core (like bench.driver), from when it is
started until SIGTERM or its own bounds, whichever comes first.

Each of ``clients`` simulated clients posts one metrics export and one logs
export to the gateway every ``interval_s``, with the bearer it was given: the
real client's exports (bench/stamp.py: about 2.8 kB of metrics with 4 metrics
and 7 points, about 5 kB of logs with 7 records, ``application/x-protobuf``,
no compression, cag-telemetry.md §5). The clients are spread evenly over the
interval and a client's logs export sits half a slot after its metrics one,
so the gateway sees one export every ``interval_s / (2 * clients)`` seconds:
5,000 clients every 60 s are about 83 metrics and 83 logs exports a second.
A client that falls behind (the gateway slow to answer) is sent as soon as
possible and its lateness is reported, so the offered rate is kept, never
silently lowered.

Connections: exports share a pool of kept-alive connections (a new one only
when all are busy), as they would reach a gateway through a load balancer;
``fresh_connections`` opens one per export instead (clients connecting
straight to the gateway, each once a minute).

Bounds: ``duration_s`` (default 600) and ``max_exports``; exports still open
when it stops get ``DRAIN_S`` (15 s) to finish. Files: ``ready_path`` is written once
the first export has been answered, whatever the answer (the gateway's
ingest path is warm, or the result will say why not), and
``result_path`` gets the result as one JSON object: exports sent and answered
per signal, statuses, errors, request latency, lateness against the schedule,
and ``ok_at``, the CLOCK_MONOTONIC time each 200 arrived, so the bench can
count the exports inside one measured window.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import stats
from bench.httpclient import Connection, build_request

SIGNALS = ("metrics", "logs")
# What the real client's OTLP/HTTP exporter sends (cag-telemetry.md §5).
USER_AGENT = "OTel-OTLP-Exporter-JavaScript/0.208.0"
DEFAULT_DURATION_S = 600.0
DRAIN_S = 15.0


def slot(k: int, clients: int, interval_s: float) -> tuple[float, str, int]:
    """The k-th export of the run: (seconds after the start it is due, signal, client)."""
    step = interval_s / (2 * clients)
    return k * step, SIGNALS[k % 2], (k // 2) % clients


def bodies() -> dict[str, bytes]:
    """One metrics and one logs export as the real client sends them (bench/stamp.py)."""
    from bench.stamp import claude_code_logs, claude_code_metrics

    return {"metrics": claude_code_metrics().SerializeToString(), "logs": claude_code_logs().SerializeToString()}


class Exporters:
    """The clients of one run and what happened to their exports."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.host, self.port = spec["host"], spec["port"]
        self.clients = int(spec.get("clients", 5000))
        self.interval_s = float(spec.get("interval_s", 60.0))
        self.duration_s = float(spec.get("duration_s", DEFAULT_DURATION_S))
        self.max_exports = int(spec.get("max_exports", 10**9))
        self.fresh = bool(spec.get("fresh_connections", False))
        self.ready_path = Path(spec["ready_path"]) if spec.get("ready_path") else None
        headers = {"Authorization": f"Bearer {spec['token']}", "Content-Type": "application/x-protobuf",
                   "User-Agent": USER_AGENT}
        self.body = bodies()
        host = f"{self.host}:{self.port}"
        self.requests = {s: build_request("POST", f"/v1/{s}", host, b, headers) for s, b in self.body.items()}
        self.idle: list[Connection] = []
        self.opened = 0
        self.sent: Counter[str] = Counter()
        self.ok: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.latency_ms: list[float] = []
        self.late_ms: list[float] = []
        self.ok_at: list[float] = []

    async def run(self, stop: asyncio.Event) -> dict[str, Any]:
        start = time.monotonic()
        deadline = start + self.duration_s
        in_flight: set[asyncio.Task[None]] = set()
        k = 0
        while k < self.max_exports and not stop.is_set():
            offset, sig, _ = slot(k, self.clients, self.interval_s)
            due = start + offset
            if due >= deadline:
                break
            if await _stopped_within(stop, due - time.monotonic()):
                break
            self.late_ms.append(max(0.0, time.monotonic() - due) * 1000)
            task = asyncio.create_task(self._export(sig))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            k += 1
        elapsed = time.monotonic() - start
        if in_flight:
            await asyncio.wait(in_flight, timeout=DRAIN_S)
        for conn in self.idle:
            conn.close()
        return self.result(elapsed, unfinished=len(in_flight))

    async def _export(self, sig: str) -> None:
        conn = self.idle.pop() if self.idle else self._open()
        self.sent[sig] += 1
        ex = await conn.exchange(self.requests[sig])
        if ex.error:
            self.errors[ex.error] += 1
        else:
            self.statuses[str(ex.status)] += 1
            if ex.total_s is not None:
                self.latency_ms.append(ex.total_s * 1000)
            if ex.status == 200:
                self.ok[sig] += 1
                self.ok_at.append(time.monotonic())
        self._ready()
        if self.fresh:
            conn.close()
        else:
            self.idle.append(conn)

    def _open(self) -> Connection:
        self.opened += 1
        return Connection(self.host, self.port)

    def _ready(self) -> None:
        if self.ready_path is not None:
            self.ready_path.write_text("ready\n")
            self.ready_path = None  # once

    def result(self, elapsed: float, unfinished: int) -> dict[str, Any]:
        total = sum(self.sent.values())
        return {
            "clients": self.clients, "interval_s": self.interval_s,
            "offered_per_s": 2 * self.clients / self.interval_s,
            "sent": dict(self.sent), "ok": dict(self.ok), "statuses": dict(self.statuses), "errors": dict(self.errors),
            "unfinished": unfinished, "export_bytes": {s: len(b) for s, b in self.body.items()},
            "elapsed_s": elapsed, "sent_per_s": total / elapsed if elapsed > 0 else 0.0,
            "connections_opened": self.opened, "fresh_connections": self.fresh,
            **stats.summary(self.latency_ms, "ms"), **stats.summary(self.late_ms, "ms", prefix="late_"),
            "ok_at": [round(t, 4) for t in self.ok_at],
        }


async def _stopped_within(stop: asyncio.Event, delay: float) -> bool:
    """Wait ``delay`` seconds (not at all when late); True when ``stop`` was set meanwhile."""
    if delay <= 0:
        return stop.is_set()
    try:
        await asyncio.wait_for(stop.wait(), delay)
    except TimeoutError:
        return False
    return True


async def run_exporters(spec: dict[str, Any], stop: asyncio.Event | None = None) -> dict[str, Any]:
    """One run; ``stop`` ends it early (SIGTERM does, in the process)."""
    return await Exporters(spec).run(stop or asyncio.Event())


async def _main(spec: dict[str, Any]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    result = await run_exporters(spec, stop)
    text = json.dumps(result)
    if spec.get("result_path"):
        Path(spec["result_path"]).write_text(text + "\n")
    else:
        print(text)


def main() -> None:
    spec = json.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read())
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of the gateway
        asyncio.run(_main(spec))
    else:
        uvloop.run(_main(spec))


if __name__ == "__main__":
    main()
