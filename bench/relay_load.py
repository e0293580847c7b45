"""The bench's side of the telemetry scenario: the exporter process, and what reached the sink.

bench/run.py starts one :class:`ExporterProcess` (bench/exporters.py) for each
cell that measures the gateway with telemetry coming in, stops it when the
cell is over, and then asks :func:`settle` how many of the exports the gateway
answered 200 the sink received, waiting while the relay's queues drain. The
figures for the table come from :func:`exports_row`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from bench.targets import REPO, Lab, Target

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
# How long the sink may take to receive what the gateway accepted once the
# exporters stop: the relay sends one export at a time per destination, so a
# backlog drains at the sink's pace; past this, the rest counts as lost.
SETTLE_TIMEOUT_S = 20.0
RELAYED = ("metrics", "logs")


class ExporterProcess:
    """One run of ``python -m bench.exporters`` against a target, on the load cores."""

    def __init__(self, lab: Lab, target: Target, *, clients: int, interval_s: float, bound_s: float, tag: str) -> None:
        raw = lab.out / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        self.ready_path = raw / f"exporters-{tag}.ready"
        self.result_path = raw / f"exporters-{tag}.json"
        for path in (self.ready_path, self.result_path):
            path.unlink(missing_ok=True)
        spec = {"host": "127.0.0.1", "port": target.port, "token": target.token, "clients": clients,
                "interval_s": interval_s, "duration_s": bound_s, "ready_path": str(self.ready_path),
                "result_path": str(self.result_path)}
        self.proc = lab.spawn("exporters", [sys.executable, "-m", "bench.exporters", json.dumps(spec)],
                              cores=lab.load_cores, env=lab.env, log_path=str(lab.logs / "exporters.log"), cwd=str(REPO))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> None:
        """Until the first export has been answered (its process started, the ingest path warm)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready_path.exists():
            if self.proc.popen.poll() is not None:
                raise RuntimeError(f"the exporters exited with {self.proc.popen.returncode}; log: {self.proc.log_path}")
            if time.monotonic() > deadline:
                self.proc.stop()
                raise RuntimeError(f"no export answered within {READY_TIMEOUT_S:g}s; log: {self.proc.log_path}")
            time.sleep(0.02)

    def stop(self) -> dict[str, Any]:
        """SIGTERM (by pid), then the result it wrote: it finishes the exports still open first."""
        if self.proc.popen.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.popen.wait(STOP_TIMEOUT_S)
        except Exception:
            self.proc.stop()
            raise
        try:
            result = json.loads(self.result_path.read_text())
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"the exporters wrote no result ({exc}); log: {self.proc.log_path}") from None
        for path in (self.ready_path, self.result_path):
            path.unlink(missing_ok=True)
        return result


def received(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, int]]:
    """What the sink got between two of its stats, per relayed signal."""
    return {s: {k: after[s][k] - before[s][k] for k in after[s]} for s in RELAYED}


def settle(lab: Lab, before: dict[str, Any], accepted: int) -> tuple[dict[str, dict[str, int]], float]:
    """The sink's counts once it holds ``accepted`` exports, or at the timeout; and the seconds waited."""
    t0 = time.monotonic()
    while True:
        got = received(before, lab.sink_stats())
        waited = time.monotonic() - t0
        if sum(g["exports"] for g in got.values()) >= accepted or waited > SETTLE_TIMEOUT_S:
            return got, waited
        time.sleep(0.05)


def exports_row(result: dict[str, Any], sink: dict[str, dict[str, int]], settle_s: float,
                window: tuple[float, float] | None) -> dict[str, Any]:
    """One row's worth of an exporter run: sent, answered, what the sink received, and how
    many 200s fell inside the measured ``window`` (CLOCK_MONOTONIC, as ``ok_at``)."""
    ok = sum(result["ok"].values())
    row = {k: v for k, v in result.items() if k != "ok_at"}
    row.update({
        "sent_total": sum(result["sent"].values()), "ok_total": ok,
        "sink": sink, "sink_exports": sum(g["exports"] for g in sink.values()),
        "sink_bytes": sum(g["bytes"] for g in sink.values()),
        "sink_stamped": sum(g["stamped"] for g in sink.values()),
        "sent_bytes": sum(result["ok"].get(s, 0) * result["export_bytes"][s] for s in result["export_bytes"]),
        "settle_s": settle_s,
    })
    row["lost"] = ok - row["sink_exports"]
    if window is not None:
        lo, hi = window
        row["in_window"] = sum(lo <= t <= hi for t in result["ok_at"])
        row["window_s"] = hi - lo
    return row
