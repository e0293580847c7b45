"""The bench cannot rot: every scenario runs once in a tiny form.

Asyncio driver only (no wrk, no peers), seconds per scenario. Nothing here
checks a timing: benchmark figures are read by people, never asserted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from aiohttp import web

from bench import driver, exporters, procs, report, stats
from bench.otlp_sink import sink_app
from bench.run import Budget, Runner, body
from bench.targets import REPO
from gateway.devenv.postgres import _alive
from protocol_spec.fakes import FakeUpstream, Reply
from tests.system.test_devenv import ignore_sigint, kill_leftovers, read_until


async def test_driver_modes_against_the_fake():
    async with FakeUpstream(record=False, default=Reply(deltas=3, gap=0.05, ttft=0.05)) as fake:
        base = {"host": "127.0.0.1", "port": fake.port, "path": "/v1/messages", "headers": {}}
        loop = await driver.run_loop({**base, "body": body(False), "concurrency": 2, "duration_s": 0.3, "max_requests": 20})
        assert loop["requests"] > 0 and loop["errors"] == 0
        streams = await driver.run_streams({**base, "body": body(True), "streams": 3, "gap_s": 0.05, "deadline_s": 10,
                                            "probe_path": "/v1/models"})
        assert streams["ok"] == 3 and streams["events"] == 9
        assert all(t is not None for t in streams["first_token_s"])
        # Open loop: the schedule is kept whatever the replies do; every request is counted.
        fixed = await driver.run_open({**base, "body": body(False), "rate": 40, "duration_s": 0.3, "warmup_s": 0.1,
                                       "arrivals": "even", "max_connections": 2})
        assert fixed["offered"] == 12 and fixed["requests"] == 12 and fixed["answered"] == 16 and fixed["errors"] == 0
        assert all(late >= service for late, service, *_ in fixed["samples"])  # from the schedule, never less
        shut = await driver.run_open({**base, "port": _closed_port(), "body": body(False), "rate": 20, "duration_s": 0.2,
                                      "arrivals": "even"})
        assert shut["requests"] == 0 and shut["errors"] == 4 and shut["error_kinds"]


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_open_loop_schedule_is_fixed_by_its_seed():
    even = driver.schedule(10, 1.0, arrivals="even")
    assert len(even) == 10 and even[1] - even[0] == 0.1
    poisson = driver.schedule(1000, 2.0, seed=3)
    assert poisson == driver.schedule(1000, 2.0, seed=3) != driver.schedule(1000, 2.0, seed=4)
    assert 1800 < len(poisson) < 2200 and driver.schedule(1000, 2.0, limit=5) == driver.schedule(1000, 2.0)[:5]


class Tiny(Budget):
    def __init__(self) -> None:
        super().__init__(quick=True)
        self.cell_s, self.warmup_s = 0.4, 0.1
        self.concurrency = [1, 4]
        self.ttfb_requests = 20
        self.idle_steps = self.idle_peer_steps = [5]
        self.idle_events = 2
        self.busy_conc = [4]
        self.busy_events = 5
        self.signin_s = 0.3
        self.poll_codes = 5
        self.poll_s = 1.0
        self.telemetry_rounds = 1
        self.telemetry_clients, self.telemetry_interval_s = 20, 1.0  # 40 exports/s
        self.telemetry_alone_s = 0.5
        self.telemetry_open_rate, self.telemetry_open_s, self.telemetry_open_rounds = 50.0, 0.3, 1


def test_every_scenario_once(tmp_path):
    runner = Runner(tmp_path, Tiny(), peers={}, scenarios={"idle", "1", "2", "3a", "3b", "5", "metrics", "telemetry", "6"})
    runner.wrk = None  # the asyncio driver stands in, so CI needs no wrk
    (tmp_path / "machine.json").write_text(json.dumps({"cpus": 2, "quick": True}))
    runner.run()
    rows = report.load(tmp_path)
    seen = {(r["scenario"], r["target"]) for r in rows}
    for scenario in ("1", "2", "6"):
        assert any(s == scenario for s, _ in seen), scenario
    for target in ("direct", "gatehouse", "gatehouse-policy"):
        assert ("1", target) in seen and ("2", target) in seen
    assert ("3a", "gatehouse-policy") in seen and ("3b", "gatehouse") in seen
    assert ("5", "gatehouse") in seen and ("idle", "gatehouse-minimal") in seen
    assert ("metrics", "gatehouse-policy-metrics") in seen and ("metrics", "gatehouse-policy") in seen
    scrapes = [r for r in rows if r["scenario"] == "metrics-scrape"]
    assert scrapes and all(r["requests_counted"] > 0 for r in scrapes)
    assert all(not r.get("errors") for r in rows if r.get("scenario") in ("1", "2", "3a", "3b", "telemetry"))
    relays = ("gatehouse-policy-telemetry", "gatehouse-policy-telemetry-stamp")
    cells = {(r["target"], r["mode"], r["exporting"]) for r in rows if r["scenario"] == "telemetry"}
    assert cells == {(t, m, on) for t in relays for m in ("json", "sse") for on in (False, True)}
    opened = {(r["target"], r["mode"], r["exporting"]) for r in rows if r["scenario"] == "telemetry-open"}
    assert opened == cells
    assert all(r["rate"] == 50.0 and r["measured"] > 0 and not r["errors"] for r in rows if r["scenario"] == "telemetry-open")
    runs = [r for r in rows if r["scenario"] in ("telemetry-exports", "telemetry-open-exports", "telemetry-alone")]
    assert len(runs) == 10
    for r in runs:
        # Every export sent was answered 200 and reached the sink; stamped exactly when asked.
        assert r["sent_total"] > 0 and r["ok_total"] == r["sent_total"] and r["lost"] == 0, r
        assert r["sink_stamped"] == (r["sink_exports"] if r["variant"] == "stamp" else 0), r
        if r["variant"] == "relay":  # relayed as received, byte for byte
            assert r["sink_bytes"] == r["sent_bytes"]
    assert all(r["in_window"] > 0 for r in runs)
    table = (tmp_path / "table.md").read_text()
    assert "## 4. Policy on vs off" in table and "## 5. Sign-in throughput" in table
    assert "## The gateway's own metrics: off vs on" in table
    assert "## Telemetry relayed beside inference load" in table and "The exporters alone" in table
    assert "Open loop: inference at a fixed 50 req/s" in table and "on minus relay" in table


def test_exporters_keep_their_schedule():
    clients, interval = 3, 60.0
    step = interval / (2 * clients)
    # Each client's metrics export, then its logs export half a slot later, clients in turn.
    assert [exporters.slot(k, clients, interval) for k in range(7)] == [
        (0.0, "metrics", 0), (step, "logs", 0), (2 * step, "metrics", 1), (3 * step, "logs", 1),
        (4 * step, "metrics", 2), (5 * step, "logs", 2), (6 * step, "metrics", 0),
    ]
    assert exporters.slot(2 * clients, clients, interval)[0] == interval  # the next minute


async def _sink_runner() -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(sink_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def _sink_stats(port: int) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/_sink/stats") as resp:
        return await resp.json()


async def test_exporters_reach_the_sink_each_once():
    runner, port = await _sink_runner()
    try:
        # 30 exports due within 5 ms: the schedule costs the test no waiting.
        spec = {"host": "127.0.0.1", "port": port, "token": "t", "clients": 10, "interval_s": 0.003, "max_exports": 30}
        result = await exporters.run_exporters(spec)
        got = await _sink_stats(port)
    finally:
        await runner.cleanup()
    assert result["sent"] == result["ok"] == {"metrics": 15, "logs": 15} and not result["errors"]
    assert len(result["ok_at"]) == 30
    sizes = result["export_bytes"]
    for sig in ("metrics", "logs"):
        assert got[sig] == {"exports": 15, "bytes": 15 * sizes[sig], "stamped": 0}
    assert got["traces"]["exports"] == 0 and got["other"]["requests"] == 0


async def test_exporters_stop_when_asked_and_report_failures():
    import asyncio

    runner, port = await _sink_runner()
    await runner.cleanup()  # nobody listens on that port any more
    stop = asyncio.Event()
    # One client a minute: the first export is due at once, the next in 30 s.
    spec = {"host": "127.0.0.1", "port": port, "token": "t", "clients": 1, "interval_s": 60.0}
    task = asyncio.create_task(exporters.run_exporters(spec, stop))
    await asyncio.sleep(0)  # the first export goes out; the schedule waits for the second
    stop.set()
    result = await asyncio.wait_for(task, 10)  # long before the second export is due
    assert result["sent"] == {"metrics": 1} and result["ok"] == {} and result["ok_at"] == []
    assert sum(result["errors"].values()) == 1


def test_percentiles_and_profile_summary(tmp_path):
    s = stats.summary([float(i) for i in range(1, 101)], "ms")
    assert s["p50_ms"] == 50 and s["p99_ms"] == 99 and s["max_ms"] == 100
    folded = tmp_path / "p.folded"
    folded.write_text("run (uvloop/x.py:1);messages (gateway/http/messages.py:70);encode (msgspec/x.py:2) 3\n"
                      "run (uvloop/x.py:1);read (aiohttp/web.py:5) 1\n")
    top = report.top_frames(folded, 5)
    assert top["self"][0] == ("encode (msgspec/x.py)", 75.0)
    assert top["inclusive"][0][0] == "messages (gateway/http/messages.py)"


# SIGINT as a background job gets it (inherited as ignored, so Python's own
# KeyboardInterrupt never fires), and SIGTERM to the bench process alone: either
# way every process the run started must end, and the run dies of that signal.
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT-group", "SIGTERM"])
def test_a_stopped_run_leaves_nothing_running(tmp_path, sig):
    env = dict(os.environ, BENCH_HOLD="1", BENCH_OUT=str(tmp_path), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.run"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=env, cwd=str(REPO), start_new_session=True, preexec_fn=ignore_sigint if sig == signal.SIGINT else None,
    )  # fmt: skip
    proc.stdout = proc.stderr  # read_until reads .stdout
    trees: list[int] = []
    try:
        out = read_until(proc, "Ctrl-C stops everything", 28)
        held = dict((name, int(pid)) for name, pid in re.findall(r"([\w-]+) pid (\d+)", out.split("holding: ")[1]))
        assert {"idp", "upstream", "gatehouse", "gatehouse-policy", "postgres"} <= set(held), out
        started = [pid for name, pid in held.items() if name != "postgres"]
        trees += [p for pid in started for p in procs.tree(pid)] + [held["postgres"]]  # with children, if any
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        assert proc.wait(timeout=25) == -sig
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in trees):
            time.sleep(0.05)
        assert [p for p in trees if _alive(p)] == []
        # Nothing anywhere still runs with a config from this run's folder.
        assert [pid for pid in procs.tree(1) if str(tmp_path) in _cmdline(pid)] == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_leftovers(trees)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
