"""Run the benchmark suite and write bench/results/<date>-<host>/.

    python -m bench.run                 # default budget (about 20 min on 2 cores)
    BENCH_QUICK=1 python -m bench.run   # about 5 min
    BENCH_PEERS=claude-gateway=/path/to/claude,litellm python -m bench.run

Environment:
  BENCH_QUICK=1        smaller cells and fewer steps
  BENCH_PEERS          comma list: claude-gateway[=PATH|npm], litellm
  BENCH_OUT            results folder (default bench/results/<date>-<host>)
  BENCH_SCENARIOS      comma list of scenario numbers to run (default all)
  BENCH_PROFILE=0      skip the py-spy profile of the gateway under load
  BENCH_TELEMETRY_LOAD closed, open or closed,open (default): the telemetry scenario's
                       inference load, wrk c64 and/or a fixed arrival rate (open loop)
  BENCH_HOLD=1         start the lab and the targets, print where they are,
                       and wait (to try requests by hand); measures nothing

Scenarios: 1 small JSON, 2 short SSE (both at concurrency 1/16/64/256),
3a idle-heavy streams, 3b busy streams, 4 policy on vs off (read from 1 and 2),
5 sign-in throughput, 6 --workers 2, cloud (JSON and SSE at concurrency 64,
policy on, through a Bedrock and a Vertex upstream beside the Claude API one),
metrics (JSON and SSE at concurrency 64, policy on, the gateway's own metrics
off and on, scraped after each cell), telemetry (JSON and SSE at concurrency 64,
policy on, on a gateway relaying clients' telemetry, with 5,000 simulated clients
exporting every 60 s and without, in paired rounds; the same again with inference
at a fixed 700 req/s, open loop, leaving the gateway's core headroom; then the
exporters alone).
Targets alternate inside each cell so drift hits every target alike. Nothing
here asserts a figure.

Ctrl-C or SIGTERM stops every process the run started (gateways, the simulated
upstream, the IdP, PostgreSQL), then the run dies of that signal: raw.jsonl
keeps the rows measured so far, and no report is written.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

from bench import procs, relay_load, report, stats
from bench.report import NOISY_SHARE
from bench.targets import CLOUDS, HERE, REPO, Lab, Target, find_claude, scrape
from gateway.devenv.run import AskedStop, catch_stop_signals

MODEL = "claude-sonnet-4-6"
T = TypeVar("T")


def body(stream: bool, upstream: str = "anthropic") -> str:
    """The request body; for a fake cloud hit directly, as the gateways translate it."""
    doc: dict[str, Any] = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        doc["stream"] = True
    if upstream == "bedrock":
        doc = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": doc["messages"]}
    elif upstream == "vertex":
        del doc["model"]
        doc["anthropic_version"] = "vertex-2023-10-16"
    return json.dumps(doc, separators=(",", ":"))


def target_body(target: Target, stream: bool) -> str:
    return body(stream, target.upstream if target.kind == "direct" else "anthropic")


class Budget:
    """Sizes of every cell; BENCH_QUICK shrinks them."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.cell_s = 3.0 if quick else 5.0
        self.warmup_s = 1.0
        self.concurrency = [1, 64] if quick else [1, 16, 64, 256]
        self.ttfb_requests = 300 if quick else 1500
        self.idle_steps = [100, 1000] if quick else [100, 1000, 5000]
        self.idle_peer_steps = [100] if quick else [100, 1000]
        self.idle_events = 20 if quick else 60
        self.busy_conc = [64] if quick else [64, 256]
        self.busy_events = 60 if quick else 100  # at 20 events/s
        self.signin_s = 3.0 if quick else 6.0
        self.poll_codes = 200 if quick else 1500
        self.poll_s = 10.0 if quick else 20.0
        self.profile_s = 8 if quick else 15
        # The cloud cell is repeated (targets rotated each time) and reported as medians.
        self.cloud_rounds = 2 if quick else 3
        # Metrics off vs on differ by a few %: more rounds than the cloud cells to see it through drift.
        self.metrics_rounds = 2 if quick else 6
        # Telemetry relayed beside inference load: signed-in clients each exporting metrics and
        # logs once a minute (about 83 + 83 exports/s), on vs off in paired rounds like metrics.
        self.telemetry_rounds = 2 if quick else 6
        self.telemetry_clients = 5000
        self.telemetry_interval_s = 60.0
        # The exporters alone (no wrk): the gateway's CPU per export without a subtraction.
        self.telemetry_alone_s = 5.0 if quick else 10.0
        # The same question with the gateway's core not saturated: inference at a fixed arrival
        # rate (open loop, Poisson), about half of what one gateway core sustains closed-loop on
        # the 2-core VM (1,450-1,720 req/s at c64), exporters off vs on in paired rounds.
        self.telemetry_open_rate = 700.0
        self.telemetry_open_s = 3.0 if quick else 6.0
        self.telemetry_open_rounds = 2 if quick else 6
        # Which inference load the telemetry scenario drives: "closed" (wrk c64), "open", or both.
        self.telemetry_loads: tuple[str, ...] = ("closed", "open")


class Runner:
    def __init__(self, out: Path, budget: Budget, peers: dict[str, str], scenarios: set[str]) -> None:
        self.out = out
        self.b = budget
        self.peers = peers
        self.scenarios = scenarios
        self.raw = open(out / "raw.jsonl", "a")
        self.lab = Lab(out, log=self.log)
        self.started = time.monotonic()
        self.wrk = shutil.which("wrk")
        # Load-side processes beside the lab's own while a cell runs (the telemetry exporters).
        self.extra_load: list[int] = []
        # CLOCK_MONOTONIC bounds of the last measured interval.
        self.window: tuple[float, float] | None = None

    def log(self, msg: str) -> None:
        print(f"[bench {time.monotonic() - self.started:7.1f}s] {msg}", file=sys.stderr, flush=True)

    def emit(self, row: dict[str, Any]) -> None:
        self.raw.write(json.dumps(row) + "\n")
        self.raw.flush()

    # ------------------------------------------------------------ measuring

    def load_side(self) -> dict[str, Any]:
        lab = self.lab
        side: dict[str, Any] = {"upstream": lab.fakes(), "postgres": [lab.db.pid]}
        telemetry = [p.pid for p in (lab.sink,) if p is not None and p.popen.poll() is None] + self.extra_load
        if telemetry:  # the OTLP sink and the exporters, when the telemetry scenario runs
            side["telemetry"] = telemetry
        return side

    def measure(self, target: Target, argv: list[str], *, env: dict[str, str] | None = None,
                timeout: float) -> tuple[subprocess.CompletedProcess, procs.Watch, float]:
        """Run one load process on the load cores while watching every side."""
        watched: dict[str, Any] = dict(self.load_side())
        if target.proc is not None:
            watched["gateway"] = target.proc
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with procs.Watch(watched) as watch:
            t0 = time.monotonic()
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                                  preexec_fn=lambda: os.sched_setaffinity(0, self.lab.load_cores), cwd=str(REPO))
            self.window = (t0, time.monotonic())
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        tool_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        return done, watch, tool_cpu

    def common(self, target: Target, watch: procs.Watch, tool_cpu: float, requests: int, elapsed: float) -> dict[str, Any]:
        gw_cpu = watch.cpu_s.get("gateway")
        load_cpu = tool_cpu + sum(cpu for name, cpu in watch.cpu_s.items() if name != "gateway")
        # The load side owns one core; past 90 % of it the figures say more about
        # the load than about the target.
        load_share = load_cpu / watch.wall_s
        # CPU the machine spent on anything but this cell and the bench's own bookkeeping
        # (other jobs on a shared host): large values mean the cell competed with a neighbour.
        other = (watch.machine_busy_s - load_cpu - (gw_cpu or 0.0) - watch.self_cpu_s) / watch.wall_s
        return {
            "target": target.name,
            "upstream": target.upstream,
            "baseline": target.baseline,
            "requests": requests,
            "rps": requests / elapsed if elapsed else 0.0,
            "gw_cpu_share": gw_cpu / watch.wall_s if gw_cpu is not None else None,
            "cpu_us_per_req": gw_cpu / requests * 1e6 if gw_cpu is not None and requests else None,
            "tool_cpu_share": tool_cpu / watch.wall_s,
            "upstream_cpu_share": watch.share("upstream"),
            "postgres_cpu_share": watch.share("postgres"),
            "load_cpu_share": load_share,
            "load_bound": load_share > 0.9 * len(self.lab.load_cores),
            "bench_cpu_share": watch.self_cpu_s / watch.wall_s,
            "other_cpu_share": max(other, 0.0),
            "noisy": other > NOISY_SHARE,
            "peak_rss_mb": watch.peak_rss.get("gateway", 0) / 2**20 if "gateway" in watch.peak_rss else None,
            "notes": target.notes,
            **({"telemetry_cpu_share": watch.share("telemetry")} if "telemetry" in watch.cpu_s else {}),
        }

    def wrk_cell(self, scenario: str, mode: str, target: Target, conc: int, round_no: int | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
        env = dict(os.environ, BENCH_BODY=target_body(target, mode == "sse"), BENCH_TOKEN=target.token or "",
                   BENCH_PATH=target.path(mode == "sse"))
        assert self.wrk is not None  # callers use the asyncio driver without wrk
        duration = self.b.cell_s + self.b.warmup_s
        # wrk has no warm-up switch: run it for warm-up + cell and accept that the
        # first second is in the figures (the same for every target).
        argv = [self.wrk, "-t1", f"-c{conc}", f"-d{duration:g}s", "--timeout", "10s", "-s",
                str(HERE / "lua" / "messages.lua"), f"http://127.0.0.1:{target.port}{target.path(mode == 'sse')}"]
        done, watch, tool_cpu = self.measure(target, argv, env=env, timeout=duration + 30)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if line is None:
            self.log(f"wrk failed for {target.name}: {done.stdout[-300:]} {done.stderr[-300:]}")
            return None
        w = json.loads(line.removeprefix("BENCH_JSON "))
        pct = {float(p): us / 1000 for p, us in w["percentiles_us"]}
        errors = w["err_connect"] + w["err_read"] + w["err_write"] + w["err_status"] + w["err_timeout"]
        row = {
            "scenario": scenario, "mode": mode, "concurrency": conc, "tool": "wrk",
            **self.common(target, watch, tool_cpu, w["requests"], w["duration_us"] / 1e6),
            "p50_ms": pct[50.0], "p90_ms": pct[90.0], "p99_ms": pct[99.0], "p999_ms": pct[99.9],
            "cdf_ms": sorted(pct.items()), "errors": errors, **(extra or {}),
        }
        if round_no is not None:
            row["round"] = round_no
        self.emit(row)
        self.log(f"{scenario} {mode} c{conc} {target.name}{_label(extra)}: {row['rps']:.0f} req/s p50 {row['p50_ms']:.2f} "
                 f"p99 {row['p99_ms']:.2f} ms gw {row['cpu_us_per_req'] or 0:.0f} µs/req"
                 f"{' LOAD-BOUND' if row['load_bound'] else ''}"
                 f"{' NOISY (others %.0f %%)' % (row['other_cpu_share'] * 100) if row['noisy'] else ''}")
        return row

    def driver(self, target: Target, spec: dict[str, Any], timeout: float) -> tuple[dict[str, Any], procs.Watch, float]:
        stream = json.loads(spec.get("body") or "{}").get("stream") is True
        spec = {"host": "127.0.0.1", "port": target.port, "path": target.path(stream), "headers": target.headers, **spec}
        argv = [sys.executable, "-m", "bench.driver", json.dumps(spec)]
        done, watch, tool_cpu = self.measure(target, argv, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"driver failed for {target.name}: {done.stderr[-800:]}")
        return json.loads(done.stdout), watch, tool_cpu

    def loop_cell(self, scenario: str, mode: str, target: Target, conc: int, *, duration: float,
                  max_requests: int | None = None, round_no: int | None = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
        spec = {"mode": "loop", "body": target_body(target, mode == "sse"), "concurrency": conc, "duration_s": duration,
                "warmup_s": self.b.warmup_s, "hard_limit_s": duration + 60}
        if max_requests:
            spec["max_requests"] = max_requests
        res, watch, tool_cpu = self.driver(target, spec, timeout=duration + 90)
        total = [s[0] * 1000 for s in res["samples"]]
        ttfb = [s[1] * 1000 for s in res["samples"] if s[1] is not None]
        row = {
            "scenario": scenario, "mode": mode, "concurrency": conc, "tool": "asyncio",
            **self.common(target, watch, tool_cpu, res["requests"], res["elapsed_s"]),
            **stats.summary(total, "ms"), **stats.summary(ttfb, "ms", prefix="ttfb_"),
            "cdf_ms": stats.cdf(total), "errors": res["errors"], **(extra or {}),
        }
        if round_no is not None:
            row["round"] = round_no
        self.emit(row)
        self.log(f"{scenario} {mode} c{conc} {target.name}{_label(extra)} (asyncio): p50 {row.get('p50_ms', 0):.2f} "
                 f"p99 {row.get('p99_ms', 0):.2f} ms, first byte p50 {row.get('ttfb_p50_ms', 0):.2f} "
                 f"p99 {row.get('ttfb_p99_ms', 0):.2f} ms")
        return row

    def open_cell(self, scenario: str, mode: str, target: Target, rate: float, *, duration: float,
                  round_no: int | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Inference at a fixed arrival rate (bench/driver.py "open"); latency from each scheduled start.
        The seed is fixed so every cell is offered the same arrivals."""
        spec = {"mode": "open", "body": target_body(target, mode == "sse"), "rate": rate, "duration_s": duration,
                "warmup_s": self.b.warmup_s, "arrivals": "poisson", "seed": 7, "max_connections": 256,
                "drain_s": 10.0, "hard_limit_s": duration + 60}
        res, watch, tool_cpu = self.driver(target, spec, timeout=duration + 90)
        total = [s[0] * 1000 for s in res["samples"]]
        service = [s[1] * 1000 for s in res["samples"]]
        send_lag = [s[3] * 1000 for s in res["samples"]]
        # CPU and the request rate over every answered request (warm-up included, as the
        # gateway's CPU is); latency over the requests scheduled after the warm-up only.
        row = {
            "scenario": scenario, "mode": mode, "concurrency": None, "rate": rate, "tool": "asyncio-open",
            **self.common(target, watch, tool_cpu, res["answered"], self.b.warmup_s + duration),
            "measured": res["requests"], "offered": res["offered"], "connections": res["connections"],
            **stats.summary(total, "ms"), **stats.summary(service, "ms", prefix="service_"),
            **stats.summary(send_lag, "ms", prefix="send_lag_"),
            "cdf_ms": stats.cdf(total), "errors": res["errors"], "error_kinds": res["error_kinds"], **(extra or {}),
        }
        if round_no is not None:
            row["round"] = round_no
        self.emit(row)
        self.log(f"{scenario} {mode} {rate:g}/s {target.name}{_label(extra)}: {row['rps']:.0f} req/s p50 "
                 f"{row.get('p50_ms', 0):.2f} p99 {row.get('p99_ms', 0):.2f} p99.9 {row.get('p999_ms', 0):.2f} ms, "
                 f"gw {row['cpu_us_per_req'] or 0:.0f} µs/req, {(row['gw_cpu_share'] or 0) * 100:.0f} % busy, "
                 f"send lag p99 {row.get('send_lag_p99_ms', 0):.2f} ms, errors {row['errors']}")
        return row

    def stream_cell(self, scenario: str, target: Target, streams: int, *, events: int, gap_s: float,
                    ttft_s: float, ramp_s: float) -> None:
        length = ttft_s + gap_s * (events - 1)
        deadline = ramp_s + length + 30
        spec = {"mode": "streams", "body": body(True), "streams": streams, "ramp_s": ramp_s, "gap_s": gap_s,
                "deadline_s": deadline, "hard_limit_s": deadline + 30}
        idle_rss = procs.rss_bytes(target.proc.pids()) if target.proc else None
        res, watch, tool_cpu = self.driver(target, spec, timeout=deadline + 90)
        late = [x * 1000 for x in res["lateness_s"]]
        row = {
            "scenario": scenario, "mode": "stream-hold", "concurrency": streams, "tool": "asyncio",
            **self.common(target, watch, tool_cpu, res["ok"], watch.wall_s),
            **stats.summary([x * 1000 for x in res["first_byte_s"]], "ms", prefix="ttfb_"),
            **stats.summary([x * 1000 for x in res["first_token_s"] if x is not None], "ms", prefix="ttft_"),
            **stats.summary(late, "ms", prefix="late_"),
            **stats.summary([x * 1000 for x in res["probe_s"]], "ms", prefix="probe_"),
            "events": res["events"], "errors": res["errors"], "error_kinds": res["error_kinds"],
            "idle_rss_mb": idle_rss / 2**20 if idle_rss else None,
            "stream_len_s": length, "gap_s": gap_s,
        }
        if idle_rss and row["peak_rss_mb"]:
            row["rss_kb_per_stream"] = (row["peak_rss_mb"] * 2**20 - idle_rss) / 1024 / streams
        row["cpu_us_per_event"] = (watch.cpu_s.get("gateway", 0) / res["events"] * 1e6) if res["events"] and target.proc else None
        self.emit(row)
        self.log(f"{scenario} {target.name} {streams} streams: ok {res['ok']} err {res['errors']} "
                 f"ttfb p99 {row.get('ttfb_p99_ms', 0):.1f} ms, probe p99 {row.get('probe_p99_ms', 0):.2f} ms, "
                 f"late p99 {row.get('late_p99_ms', 0):.2f} ms, rss/stream {row.get('rss_kb_per_stream', 0):.1f} KB")

    # ------------------------------------------------------------ scenarios

    def start_targets(self, *, idle_rss: bool = True) -> list[Target]:
        lab = self.lab
        wanted = [Target("direct", "direct"), Target("gatehouse", "gatehouse"),
                  Target("gatehouse-policy", "gatehouse", policy=True)]
        claude = self.peers.get("claude-gateway")
        if claude is not None:
            path = find_claude(claude, self.out)
            wanted += [Target("claude-gateway", "claude"), Target("claude-gateway-full", "claude", policy=True)]
        if "litellm" in self.peers:
            wanted.append(Target("litellm", "litellm"))
        started = []
        for t in wanted:
            try:
                lab.add(t, claude_bin=path if t.kind == "claude" else None)
                started.append(t)
                self.log(f"started {t.name} on port {t.port}")
            except Exception as exc:  # a peer that cannot start is reported, not fatal
                self.log(f"could not start {t.name}: {exc}")
                self.emit({"scenario": "setup", "target": t.name, "error": str(exc)})
        if not idle_rss:
            return started
        time.sleep(2)  # settle before reading the idle RSS
        for t in started:
            if t.proc is not None:
                self.emit({"scenario": "idle", "target": t.name, "idle_rss_mb": procs.rss_bytes(t.proc.pids()) / 2**20,
                           "notes": t.notes})
        return started

    def minimal_idle_rss(self) -> None:
        t = self.lab.add(Target("gatehouse-minimal", "gatehouse"))
        assert t.proc is not None
        time.sleep(2)
        rss = procs.rss_bytes(t.proc.pids()) / 2**20
        self.emit({"scenario": "idle", "target": t.name, "idle_rss_mb": rss, "notes": ["minimal config"]})
        self.log(f"gatehouse idle RSS with a minimal config: {rss:.1f} MB")
        t.proc.stop()
        self.lab.targets.remove(t)

    def rotate(self, targets: list[T], i: int) -> list[T]:
        return targets[i % len(targets):] + targets[: i % len(targets)]

    def scenario_1_2(self, targets: list[Target]) -> None:
        self.lab.set_upstream()  # the default short answer: JSON or 4-delta stream
        cell = 0
        for mode, scenario in (("json", "1"), ("sse", "2")):
            if scenario not in self.scenarios:
                continue
            for conc in self.b.concurrency:
                for t in self.rotate(targets, cell):
                    if self.wrk:
                        self.wrk_cell(scenario, mode, t, conc)
                    else:
                        self.loop_cell(scenario, mode, t, conc, duration=self.b.cell_s)
                cell += 1
            # Per-request first byte at concurrency 1, from the asyncio driver.
            for t in self.rotate(targets, cell):
                self.loop_cell(scenario, mode, t, 1, duration=self.b.cell_s, max_requests=self.b.ttfb_requests)

    def scenario_3b(self, targets: list[Target]) -> None:
        gap = 0.05
        self.lab.set_upstream(deltas=self.b.busy_events, gap=gap, ttft=gap, text="word " * self.b.busy_events * 4)
        for i, conc in enumerate(self.b.busy_conc):
            for t in self.rotate(targets, i):
                self.stream_cell("3b", t, conc, events=self.b.busy_events, gap_s=gap, ttft_s=gap, ramp_s=1.0)

    def scenario_3a(self, targets: list[Target]) -> None:
        events = self.b.idle_events
        self.lab.set_upstream(deltas=events, gap=1.0, ttft=0.5, text="token " * events * 4)
        by_name = {t.name: t for t in targets}
        for streams in self.b.idle_steps:
            for name in ("direct", "gatehouse-policy", "claude-gateway-full", "litellm"):
                t = by_name.get(name)
                if t is None or (name not in ("direct", "gatehouse-policy") and streams not in self.b.idle_peer_steps):
                    continue
                # Ramp at most 500 new streams a second so the step is about holding, not connecting.
                self.stream_cell("3a", t, streams, events=events, gap_s=1.0, ttft_s=0.5, ramp_s=max(1.0, streams / 500))

    def scenario_cloud(self, targets: list[Target]) -> None:
        """JSON and SSE at c64, policy on, through each upstream kind, all targets rotated in one cell."""
        claude = self.peers.get("claude-gateway")
        self.lab.start_clouds(front_door=claude is not None)
        self.lab.set_upstream()
        wanted = [Target(f"direct-{c}", "direct", upstream=c) for c in CLOUDS]
        wanted += [Target(f"gatehouse-policy-{c}", "gatehouse", policy=True, upstream=c) for c in CLOUDS]
        if claude is not None:
            path = find_claude(claude, self.out)
            wanted += [Target(f"claude-gateway-full-{c}", "claude", policy=True, upstream=c) for c in CLOUDS]
        cloud = []
        for t in wanted:
            try:
                self.lab.add(t, claude_bin=path if t.kind == "claude" else None)
                cloud.append(t)
                self.log(f"started {t.name} on port {t.port}")
            except Exception as exc:  # reported, not fatal: the other cells still run
                self.log(f"could not start {t.name}: {exc}")
                self.emit({"scenario": "setup", "target": t.name, "error": str(exc)})
        # The Claude API cell of the same run rides along, so drift hits all alike.
        same_run = [t for t in targets if t.name in ("direct", "gatehouse-policy", "claude-gateway-full")]
        every = same_run + cloud
        for n in range(self.b.cloud_rounds):
            for i, mode in enumerate(("json", "sse")):
                for t in self.rotate(every, 2 * n + i):
                    if self.wrk:
                        self.wrk_cell("cloud", mode, t, 64, round_no=n)
                    else:
                        self.loop_cell("cloud", mode, t, 64, duration=self.b.cell_s, round_no=n)
        stats = self.lab.bedrock_stats()
        self.emit({"scenario": "cloud-fakes", "target": "bedrock", "bedrock": stats})
        self.log(f"fake Bedrock signatures: {stats}")
        if "profile" in self.scenarios:
            for t in cloud:
                if t.name == "gatehouse-policy-bedrock":
                    self.profile(t)
        for t in cloud:
            if t.proc is not None:
                t.proc.stop()
            self.lab.targets.remove(t)

    def scenario_metrics(self, targets: list[Target]) -> None:
        """JSON and SSE at c64, policy on: the gateway's own metrics off (gatehouse-policy) and on
        (gatehouse-policy-metrics), rotated over rounds like the cloud cells; each on-cell ends with
        a Prometheus scrape whose request count must match what wrk got answered."""
        off = next((t for t in targets if t.name == "gatehouse-policy"), None)
        on = Target("gatehouse-policy-metrics", "gatehouse", policy=True, metrics=True)
        try:
            self.lab.add(on)
        except Exception as exc:
            self.log(f"could not start {on.name}: {exc}")
            self.emit({"scenario": "setup", "target": on.name, "error": str(exc)})
            return
        self.log(f"started {on.name} on port {on.port}")
        self.lab.set_upstream()
        pair = [t for t in (off, on) if t is not None]
        # Two targets: each goes first in every other round of each mode (drift hits both alike).
        for n in range(self.b.metrics_rounds):
            for i, mode in enumerate(("json", "sse")):
                for t in self.rotate(pair, n + i):
                    before = self.counted(t)
                    if self.wrk:
                        self.wrk_cell("metrics", mode, t, 64, round_no=n)
                    else:
                        self.loop_cell("metrics", mode, t, 64, duration=self.b.cell_s, round_no=n)
                    if t is on:
                        self.emit({"scenario": "metrics-scrape", "target": t.name, "mode": mode, "round": n,
                                   **self.scrape_row(t, before)})
        if "profile" in self.scenarios:
            # Where the on-target's extra CPU goes, immune to a noisy neighbour: the share of
            # samples in the metrics code (report.own_telemetry_share).
            self.profile(on)
        if on.proc is not None:
            on.proc.stop()
        self.lab.targets.remove(on)

    def scenario_telemetry(self, targets: list[Target]) -> None:
        """JSON and SSE at c64, policy on, on gateways relaying clients' metrics and logs to the
        lab's OTLP sink (as received, and with identity stamping): each cell twice per round, with
        the simulated clients exporting and without, the order alternating; then the exporters alone."""
        try:
            self.lab.start_sink()
        except Exception as exc:
            self.log(f"could not start the OTLP sink: {exc}")
            self.emit({"scenario": "setup", "target": "otlp-sink", "error": str(exc)})
            return
        relays = []
        for name, how in (("gatehouse-policy-telemetry", "relay"), ("gatehouse-policy-telemetry-stamp", "stamp")):
            t = Target(name, "gatehouse", policy=True, telemetry=how)
            try:
                self.lab.add(t)
                relays.append(t)
                self.log(f"started {t.name} on port {t.port}")
            except Exception as exc:  # reported, not fatal
                self.log(f"could not start {t.name}: {exc}")
                self.emit({"scenario": "setup", "target": t.name, "error": str(exc)})
        self.lab.set_upstream()
        loads = [(load, rounds) for load, rounds in (("closed", self.b.telemetry_rounds), ("open", self.b.telemetry_open_rounds))
                 if load in self.b.telemetry_loads]
        for load, rounds in loads:
            for n in range(rounds):
                for i, mode in enumerate(("json", "sse")):
                    for t in relays:
                        # Exporting and not, back to back on the same gateway; who goes first alternates.
                        for exporting in self.rotate([False, True], n + i):
                            self.telemetry_cell(mode, t, exporting, n, load)
        for t in relays:
            self.exporters_alone(t)
            if "profile" in self.scenarios:
                self.profile_exports(t)
        for t in relays:
            if t.proc is not None:
                t.proc.stop()
            self.lab.targets.remove(t)

    def telemetry_cell(self, mode: str, target: Target, exporting: bool, round_no: int, load: str = "closed") -> None:
        """One inference cell on a relaying gateway, with the simulated clients exporting or not.
        ``load``: "closed" (c64, the core saturated) or "open" (a fixed rate leaving it headroom)."""
        extra = {"exporting": exporting, "variant": target.telemetry}
        scenario = "telemetry" if load == "closed" else "telemetry-open"

        def measure() -> dict[str, Any] | None:
            if load == "open":
                return self.open_cell(scenario, mode, target, self.b.telemetry_open_rate,
                                      duration=self.b.telemetry_open_s, round_no=round_no, extra=extra)
            return self.cell(scenario, mode, target, round_no, extra)

        if not exporting:
            measure()
            return
        before = self.lab.sink_stats()
        run = self.start_exporters(target, f"{target.name}-{load}-{mode}-{round_no}")
        try:
            row = measure()
        finally:
            self.extra_load.remove(run.pid)
            result = run.stop()
        self.emit_exports(f"{scenario}-exports", target, result, before, self.window, mode=mode, round=round_no,
                          telemetry_cpu_share=(row or {}).get("telemetry_cpu_share"))

    def cell(self, scenario: str, mode: str, target: Target, round_no: int,
             extra: dict[str, Any]) -> dict[str, Any] | None:
        if self.wrk:
            return self.wrk_cell(scenario, mode, target, 64, round_no=round_no, extra=extra)
        return self.loop_cell(scenario, mode, target, 64, duration=self.b.cell_s, round_no=round_no, extra=extra)

    def start_exporters(self, target: Target, tag: str) -> relay_load.ExporterProcess:
        run = relay_load.ExporterProcess(self.lab, target, clients=self.b.telemetry_clients,
                                         interval_s=self.b.telemetry_interval_s,
                                         bound_s=self.b.cell_s + self.b.telemetry_alone_s + 120, tag=tag)
        self.extra_load.append(run.pid)
        try:
            run.wait_ready()
        except Exception:
            self.extra_load.remove(run.pid)
            raise
        return run

    def exporters_alone(self, target: Target) -> None:
        """The exporters and nothing else for a while: the gateway's CPU per export, measured
        without subtracting one noisy cell from another."""
        before = self.lab.sink_stats()
        run = self.start_exporters(target, f"{target.name}-alone")
        try:
            watched = {**self.load_side(), "gateway": target.proc}
            with procs.Watch(watched) as watch:
                t0 = time.monotonic()
                time.sleep(self.b.telemetry_alone_s)
                window = (t0, time.monotonic())
        finally:
            self.extra_load.remove(run.pid)
            result = run.stop()
        row = self.exports_fields(target, result, before, window)
        gw, exports = watch.cpu_s.get("gateway", 0.0), row.get("in_window", 0)
        row.update({"scenario": "telemetry-alone", "gw_cpu_s": gw, "gw_cpu_share": watch.share("gateway"),
                    "cpu_us_per_export": gw / exports * 1e6 if exports else None,
                    "telemetry_cpu_share": watch.share("telemetry"), "wall_s": watch.wall_s})
        self.emit(row)
        self.log_exports(row)
        self.log(f"telemetry {target.name}, exporters alone: {exports} exports in {watch.wall_s:.1f} s, gateway "
                 f"{row['gw_cpu_share'] * 100:.1f} % of a core, {row['cpu_us_per_export'] or 0:.0f} µs per export")

    def emit_exports(self, scenario: str, target: Target, result: dict[str, Any], before: dict[str, Any],
                     window: tuple[float, float] | None, **keys: Any) -> None:
        row = {"scenario": scenario, **keys, **self.exports_fields(target, result, before, window)}
        self.emit(row)
        self.log_exports(row)

    def exports_fields(self, target: Target, result: dict[str, Any], before: dict[str, Any],
                       window: tuple[float, float] | None) -> dict[str, Any]:
        """An exporter run's figures, once the sink has received what the gateway accepted."""
        sink, waited = relay_load.settle(self.lab, before, sum(result["ok"].values()))
        return {"target": target.name, "variant": target.telemetry,
                **relay_load.exports_row(result, sink, waited, window)}

    def log_exports(self, row: dict[str, Any]) -> None:
        self.log(f"{row['scenario']} {row['target']} {row.get('mode', '')}: {row['sent_total']} exports sent "
                 f"({row['sent_per_s']:.0f}/s), {row['ok_total']} answered 200, sink got {row['sink_exports']} "
                 f"({row['sink_stamped']} stamped), lost {row['lost']}, export p99 {row.get('p99_ms', 0):.1f} ms")

    def counted(self, target: Target) -> float | None:
        """gatehouse_requests_total summed, from a scrape (None for a target without metrics)."""
        if not target.metrics:
            return None
        from prometheus_client.parser import text_string_to_metric_families

        _, text = scrape(target)
        for family in text_string_to_metric_families(text.decode()):
            if family.name == "gatehouse_requests":
                return sum(s.value for s in family.samples)
        return 0.0

    def scrape_row(self, target: Target, before: float | None) -> dict[str, Any]:
        ms, text = scrape(target)
        after = self.counted(target)
        row = {"scrape_ms": ms, "scrape_bytes": len(text), "series_lines": text.count(b"\n")}
        if before is not None and after is not None:
            row["requests_counted"] = after - before
        self.log(f"metrics scrape {target.name}: {ms:.1f} ms, {len(text)} bytes, "
                 f"{row.get('requests_counted', 0):.0f} requests counted in the cell")
        return row

    def scenario_5(self, targets: list[Target]) -> None:
        for t in targets:
            if t.kind not in ("gatehouse", "claude") or t.policy:
                continue
            spec = {"mode": "signin", "concurrency": 16, "duration_s": self.b.signin_s, "client_id": "claude-code",
                    "auth_body": "client_id=claude-code&scope=openid+email+profile",
                    "headers": {"Content-Type": "application/x-www-form-urlencoded"},
                    "poll_codes": self.b.poll_codes, "interval_s": 5.0, "poll_s": self.b.poll_s,
                    "hard_limit_s": 120}
            res, watch, tool_cpu = self.driver(t, spec, timeout=180)
            auth = [x * 1000 for x in res["auth_latency_s"]]
            polls = [x * 1000 for x in res["poll_latency_s"]]
            row = {
                "scenario": "5", "mode": "signin", "concurrency": 16, "tool": "asyncio",
                **self.common(t, watch, tool_cpu, res["authorizations"] + res["polls"], watch.wall_s),
                "auth_per_s": res["authorizations"] / res["auth_elapsed_s"],
                **stats.summary(auth, "ms", prefix="auth_"),
                "polls_per_s": res["polls"] / res["poll_elapsed_s"],
                "offered_polls_per_s": res["codes_polled"] / 5.0,
                **stats.summary(polls, "ms", prefix="poll_"),
                "poll_statuses": res["poll_statuses"], "errors": sum(res["errors"].values()),
            }
            self.emit(row)
            self.log(f"5 {t.name}: {row['auth_per_s']:.0f} authorizations/s, {row['polls_per_s']:.0f} polls/s "
                     f"(offered {row['offered_polls_per_s']:.0f}), poll p99 {row.get('poll_p99_ms', 0):.1f} ms {res['poll_statuses']}")

    def scenario_6(self) -> None:
        t = self.lab.add(Target("gatehouse-2w", "gatehouse", policy=True, workers=2))
        time.sleep(1)
        self.lab.set_upstream()
        for mode in ("json", "sse"):
            for conc in ([64] if self.b.quick else [64, 256]):
                if self.wrk:
                    self.wrk_cell("6", mode, t, conc)
                else:
                    self.loop_cell("6", mode, t, conc, duration=self.b.cell_s)
        assert t.proc is not None
        t.proc.stop()
        self.lab.targets.remove(t)

    def profile(self, target: Target) -> None:
        """py-spy on the gateway while wrk drives it at concurrency 64 (JSON, then SSE)."""
        pyspy = self.pyspy()
        if pyspy is None or not self.wrk:
            self.log("profile skipped: py-spy or wrk missing")
            return
        self.lab.set_upstream()
        for mode in ("json", "sse"):
            folded = self.out / f"profile-{target.name}-{mode}.folded"
            env = dict(os.environ, BENCH_BODY=body(mode == "sse"), BENCH_TOKEN=target.token or "")
            self.log(f"profiling {target.name} {mode} for {self.b.profile_s} s")
            spy = self.spy(pyspy, target, folded)
            try:
                time.sleep(0.5)
                subprocess.run([self.wrk, "-t1", "-c64", f"-d{self.b.profile_s}s", "-s", str(HERE / "lua" / "messages.lua"),
                                f"http://127.0.0.1:{target.port}/v1/messages"], env=env, capture_output=True,
                               timeout=self.b.profile_s + 30, preexec_fn=lambda: os.sched_setaffinity(0, self.lab.load_cores))
                spy.wait(60)
            finally:
                if spy.poll() is None:  # stopped half way: py-spy must not outlive the run
                    spy.kill()
                    spy.wait()
            if folded.exists():
                self.emit({"scenario": "profile", "target": target.name, "mode": mode,
                           "top": report.top_frames(folded, 25)})
                self.log(f"profile {mode}: {folded.name}")

    def profile_exports(self, target: Target) -> None:
        """py-spy on a telemetry target while the exporters alone drive it: where an export's CPU goes."""
        pyspy = self.pyspy()
        if pyspy is None:
            self.log("profile skipped: py-spy missing")
            return
        folded = self.out / f"profile-{target.name}-exports.folded"
        self.log(f"profiling {target.name} under the exporters alone for {self.b.profile_s} s")
        run = self.start_exporters(target, f"{target.name}-profile")
        try:
            spy = self.spy(pyspy, target, folded)
            try:
                spy.wait(self.b.profile_s + 60)
            finally:
                if spy.poll() is None:  # stopped half way: py-spy must not outlive the run
                    spy.kill()
                    spy.wait()
        finally:
            self.extra_load.remove(run.pid)
            run.stop()
        if folded.exists():
            self.emit({"scenario": "profile", "target": target.name, "mode": "exports", "top": report.top_frames(folded, 25)})
            self.log(f"profile exports: {folded.name}")

    def pyspy(self) -> str | None:
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        return pyspy if Path(pyspy).exists() else None

    def spy(self, pyspy: str, target: Target, folded: Path) -> subprocess.Popen:
        """py-spy recording ``target`` for the profile budget, on the load cores."""
        assert target.proc is not None
        return subprocess.Popen(
            [pyspy, "record", "--pid", str(target.proc.pid), "--duration", str(self.b.profile_s), "--rate", "250",
             "--format", "raw", "--output", str(folded), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: os.sched_setaffinity(0, self.lab.load_cores))

    def spend_rows(self, target: Target) -> int | None:
        """How many spend counters the policy target wrote: 0 means no spend work in the hot path."""
        import asyncio

        import asyncpg

        async def count() -> int:
            url = self.lab.db.url.rsplit("/", 1)[0] + "/" + target.name.replace("-", "_")
            conn = await asyncpg.connect(url)
            try:
                return await conn.fetchval("SELECT count(*) FROM spend_counters")
            finally:
                await conn.close()

        try:
            return asyncio.run(count())
        except Exception as exc:
            self.log(f"could not read spend counters: {exc}")
            return None

    def hold(self) -> None:
        """Start the lab and the targets, say where they are, and wait for a signal."""
        try:
            self.lab.start()
            for t in self.start_targets(idle_rss=False):
                self.log(f"{t.name}: http://127.0.0.1:{t.port}" + (f"  token {t.token}" if t.token else ""))
            self.log("holding: " + ", ".join(f"{name} pid {pid}" for name, pid in self.lab.pids().items()))
            self.log("Ctrl-C stops everything")
            while True:
                time.sleep(3600)
        finally:
            self.lab.stop()
            self.raw.close()

    def run(self) -> None:
        self.log(f"results in {self.out}; gateway cores {sorted(self.lab.gw_cores)}, load cores {sorted(self.lab.load_cores)}")
        try:
            self.lab.start()
            if "idle" in self.scenarios or "1" in self.scenarios:
                self.minimal_idle_rss()
            targets = self.start_targets()
            self.scenario_1_2(targets)
            policy = next((t for t in targets if t.name == "gatehouse-policy"), None)
            if policy is not None:
                n = self.spend_rows(policy)
                self.emit({"scenario": "4", "target": policy.name, "spend_counters": n,
                           "spend_in_hot_path": bool(n), "admin_accepted": self.lab.spend_supported})
                if not n:
                    policy.notes.append("spend reservation is not in this build's hot path (admin: accepted, no spend rows written)")
            # Before the stream scenarios, whose thousands of streams leave the heaps grown.
            if "cloud" in self.scenarios:
                self.scenario_cloud(targets)
            if "metrics" in self.scenarios:
                self.scenario_metrics(targets)
            if "telemetry" in self.scenarios:
                self.scenario_telemetry(targets)
            if "3b" in self.scenarios:
                self.scenario_3b(targets)
            if "3a" in self.scenarios:
                self.scenario_3a(targets)
            if "5" in self.scenarios:
                self.scenario_5(targets)
            if "profile" in self.scenarios and policy is not None:
                self.profile(policy)
            for t in targets:
                if t.proc is not None and t.kind != "direct":
                    t.proc.stop()
            if "6" in self.scenarios:
                self.scenario_6()
        finally:
            self.lab.stop()
            self.raw.close()
        trim_logs(self.out / "logs")
        report.write(self.out)
        self.log(f"done: {self.out / 'table.md'}")


def _label(extra: dict[str, Any] | None) -> str:
    """How a telemetry cell is named in the log: with or without the exporters running."""
    if not extra or "exporting" not in extra:
        return ""
    return " (exporters on)" if extra["exporting"] else " (exporters off)"


def trim_logs(folder: Path, keep_lines: int = 200) -> None:
    """Keep only the tail of each process log: the audit lines of a run run to hundreds of MB."""
    for path in folder.glob("*.log"):
        with open(path, "rb") as fh:
            tail = fh.readlines()[-keep_lines:]
        path.write_bytes(b"".join(tail))


def parse_peers(text: str) -> dict[str, str]:
    peers: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = item.partition("=")
        peers[name] = value
    return peers


def main() -> None:
    quick = os.environ.get("BENCH_QUICK") == "1"
    host = socket.gethostname().split(".")[0]
    out = Path(os.environ.get("BENCH_OUT") or HERE / "results" / f"{dt.date.today().isoformat()}-{host}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "raw.jsonl").unlink(missing_ok=True)
    all_scenarios = "idle,1,2,3a,3b,5,cloud,metrics,telemetry,6,profile"
    scenarios = set((os.environ.get("BENCH_SCENARIOS") or all_scenarios).split(","))
    if os.environ.get("BENCH_PROFILE") == "0":
        scenarios.discard("profile")
    procs.raise_nofile(65536)
    budget = Budget(quick)
    if os.environ.get("BENCH_TELEMETRY_LOAD"):
        budget.telemetry_loads = tuple(os.environ["BENCH_TELEMETRY_LOAD"].split(","))
    runner = Runner(out, budget, parse_peers(os.environ.get("BENCH_PEERS", "")), scenarios)
    machine = {
        "host": host, "cpus": os.cpu_count(), "cpu_model": _cpu_model(), "mem_gb": _mem_gb(),
        "kernel": os.uname().release, "python": sys.version.split()[0], "quick": quick,
        "peers": runner.peers, "wrk": runner.wrk is not None, "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": _git_head(),
    }
    (out / "machine.json").write_text(json.dumps(machine, indent=2))
    try:
        catch_stop_signals()
        runner.hold() if os.environ.get("BENCH_HOLD") == "1" else runner.run()
    except AskedStop as stop:
        # Signals are ignored from here on; a second pass catches anything a
        # signal during the first clean-up left running (every stop is idempotent).
        runner.lab.stop()
        runner.log(f"{stop}: stopped everything this run started; no report written")
        # Die of the signal itself, so make and shells see an interrupted run.
        signal.signal(stop.signum, signal.SIG_DFL)
        os.kill(os.getpid(), stop.signum)
        raise SystemExit(128 + stop.signum) from None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _mem_gb() -> float:
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        return round(kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return 0.0


def _git_head() -> str | None:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=str(REPO))
    return out.stdout.strip() or None


if __name__ == "__main__":
    main()
