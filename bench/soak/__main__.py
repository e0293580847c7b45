"""``python -m bench.soak``: run the soak, write the summary, exit 1 on any violated invariant.

Options (also read from the environment by ``make soak``):
  --steps signin,caps,kill,postgres,upstream,slowloris   (SOAK_STEPS; default all, in this order)
  --scale 1.0      durations of the loaded steps (SOAK_SCALE; the smoke uses 0.2)
  --rate 30        offered requests a second, half streaming (SOAK_RATE)
  --slow 500       dribbling connections of the slowloris step
  --readiness-grace 30   the replicas' store.readiness_grace_seconds (SOAK_READINESS_GRACE)
  --fail-closed    enforcement.fail_closed_on_error: true on every replica (SOAK_FAIL_CLOSED=1)
  --out DIR        results folder (SOAK_OUT; default bench/results/<date>-<host>-soak/)
  --smoke          the tiny run of ``make test``: the kill step only, scale 0.2, 100 dribblers
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import procs
from bench.soak import lab as labmod
from bench.soak.report import write
from bench.soak.steps import DEFAULT_REPLY, RUNNERS, STEPS, Ctx, Plan

HERE = Path(__file__).resolve().parent


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", default=os.environ.get("SOAK_STEPS", ",".join(STEPS)))
    p.add_argument("--scale", type=float, default=float(os.environ.get("SOAK_SCALE", "1.0")))
    p.add_argument("--rate", type=float, default=float(os.environ.get("SOAK_RATE", "30")))
    p.add_argument("--slow", type=int, default=500)
    p.add_argument("--fail-closed", action="store_true", default=os.environ.get("SOAK_FAIL_CLOSED") == "1",
                   help="enforcement.fail_closed_on_error: true on every replica (SOAK_FAIL_CLOSED=1)")
    p.add_argument("--readiness-grace", type=int, default=int(os.environ.get("SOAK_READINESS_GRACE", "30")),
                   help="store.readiness_grace_seconds of the replicas (default 30, as conf/deploy's production overlay)")
    p.add_argument("--out", default=os.environ.get("SOAK_OUT"))
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.scale, args.slow, args.rate = "kill", 0.2, 100, 20.0
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in RUNNERS]
    if unknown:
        p.error(f"unknown steps {unknown}; known: {', '.join(STEPS)}")
    args.step_list = steps
    return args


def machine() -> dict[str, Any]:
    def cmd(*argv: str) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        mem_kb = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration):
        pass
    return {
        "host": socket.gethostname().split(".")[0], "cpus": os.cpu_count(), "cpu_model": model,
        "mem_gb": round(mem_kb / 2**20, 1), "kernel": platform.release(), "python": platform.python_version(),
        "haproxy": cmd("haproxy", "-v"), "git": cmd("git", "-C", str(labmod.REPO), "rev-parse", "--short", "HEAD"),
        # Files changed but not committed (another session's work in progress runs too).
        "git_uncommitted_files": len(subprocess.run(["git", "-C", str(labmod.REPO), "status", "--porcelain",
                                                     "--untracked-files=no"], capture_output=True, text=True).stdout.splitlines()),
        "loadavg_at_start": os.getloadavg()[0],
    }


async def run_steps(lab: labmod.Lab, plan: Plan, steps: list[str]) -> list[dict[str, Any]]:
    ctx = Ctx(lab, plan)
    for name in ("primary", "secondary"):
        await asyncio.to_thread(lab.upstream, name, [DEFAULT_REPLY])
    status, doc = await ctx.admin("POST", "/v1/organizations/spend_limits",
                                  {"scope": {"type": "organization"}, "amount": str(labmod.ORG_CAP_CENTS),
                                   "period": "monthly"})
    if status != 200:
        raise RuntimeError(f"setting the organization cap answered {status}: {doc}")
    results = []
    for name in steps:
        print(f"soak: step {name} ...", flush=True)
        t0 = time.monotonic()
        busy0 = procs.machine_busy_seconds()
        try:
            result = await RUNNERS[name](ctx)
        except Exception:  # noqa: BLE001 - a step that breaks is a failed invariant, and the next step still runs
            result = {"violations": [f"the step itself failed: {traceback.format_exc(limit=3)}"]}
        wall = time.monotonic() - t0
        result = {"step": name, "seconds": round(wall, 1),
                  "machine_busy_cores": round((procs.machine_busy_seconds() - busy0) / wall, 2), **result}
        crashed = lab.crashed()
        if crashed:
            result["violations"].append(f"replicas exited without being killed: {crashed}")
            for r in lab.replicas:  # so later steps still have three
                if r.name in crashed:
                    lab.start_replica(r)
        print(f"soak: step {name}: {len(result['violations'])} violation(s) in {wall:.0f} s", flush=True)
        for v in result["violations"]:
            print(f"  - {v}", flush=True)
        results.append(result)
    return results


async def final_checks(lab: labmod.Lab) -> dict[str, Any]:
    """After every replica has shut down: nothing open, every counter the sum of its charges."""
    import asyncpg

    conn = await asyncpg.connect(lab.db_url)
    try:
        open_rows = await conn.fetchval("SELECT count(*) FROM spend_reservations WHERE state = 'open'")
        mismatched = await conn.fetch(
            "SELECT c.scope_id, c.spent_micro, c.reserved_micro, coalesce(s.total, 0) AS charged "
            "FROM spend_counters c LEFT JOIN (SELECT sub, sum(coalesce(settled_micro, 0)) AS total "
            "FROM spend_reservations WHERE state <> 'open' GROUP BY sub) s ON s.sub = c.scope_id "
            "WHERE c.scope_type = 'user' AND c.period = 'daily' "
            "AND (c.spent_micro <> coalesce(s.total, 0) OR c.reserved_micro <> 0)")
        totals = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE request_id LIKE 'req_%' AND state = 'settled') AS settled_requests, "
            "count(*) FILTER (WHERE state = 'expired') AS expired, "
            "coalesce(sum(settled_micro), 0) AS charged_micro FROM spend_reservations")
        spent = await conn.fetchval("SELECT coalesce(sum(spent_micro), 0) FROM spend_counters "
                                    "WHERE scope_type = 'user' AND period = 'daily'")
        usage = await conn.fetchval("SELECT count(*) FROM usage_records")
    finally:
        await conn.close()
    return {"open_reservations": open_rows, "counters_not_matching_charges": [dict(r) for r in mismatched],
            "settled_requests": totals["settled_requests"], "expired_reservations_and_leases": totals["expired"],
            "charged_micro": totals["charged_micro"], "counters_spent_micro": spent, "usage_rows": usage}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    host = socket.gethostname().split(".")[0]
    out = Path(args.out).resolve() if args.out else HERE.parent / "results" / f"{dt.date.today().isoformat()}-{host}-soak"
    out.mkdir(parents=True, exist_ok=True)
    procs.raise_nofile()
    plan = Plan(scale=args.scale, rate=args.rate, slow_connections=args.slow)
    info = machine()
    given = " ".join(argv if argv is not None else sys.argv[1:])
    settings = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("SOAK_") and k != "SOAK_VIA_MAKE")
    if os.environ.get("SOAK_VIA_MAKE"):
        command = f"{settings} make soak" + (f" SOAK_ARGS='{given}'" if given else "")
    else:
        command = f"{settings} python -m bench.soak {given}"
    lab = labmod.Lab(out / "raw", with_idp="signin" in args.step_list, readiness_grace_s=args.readiness_grace,
                     fail_closed=args.fail_closed)
    summary: dict[str, Any] = {"command": command.strip(), "machine": info,
                               "plan": dict(vars(plan), readiness_grace_seconds=args.readiness_grace,
                                            fail_closed_on_error=args.fail_closed),
                               "steps_run": args.step_list, "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    violations: list[str] = []
    t0 = time.monotonic()
    busy0 = procs.machine_busy_seconds()
    try:
        lab.start()
        summary["setup_s"] = round(time.monotonic() - t0, 1)
        results = asyncio.run(run_steps(lab, plan, args.step_list))
        summary["steps"] = results
        for r in results:
            violations += [f"{r['step']}: {v}" for v in r["violations"]]
        codes = lab.stop_replicas()
        summary["replica_exit_codes"] = codes
        if any(c != 0 for c in codes.values()):
            violations.append(f"a replica did not drain and exit 0 on SIGTERM: {codes}")
        final = asyncio.run(final_checks(lab))
        summary["final"] = final
        if final["open_reservations"]:
            violations.append(f"{final['open_reservations']} reservations still open after every replica shut down")
        if final["counters_not_matching_charges"]:
            violations.append(f"spend counters differ from the sum of their charges: {final['counters_not_matching_charges']}")
        summary["restarts"] = {r.name: r.starts - 1 for r in lab.replicas}
        summary["kills"] = {r.name: r.kills for r in lab.replicas}
        unexpected = {n: c for n, c in summary["restarts"].items() if c > summary["kills"][n]}
        if unexpected:
            violations.append(f"replicas needed restarts nobody planned: {unexpected}")
        tb = lab.tracebacks()
        summary["tracebacks"] = tb
        if tb:
            violations.append(f"tracebacks in the logs: {tb}")
    except Exception:  # noqa: BLE001 - the summary says why the run could not finish
        violations.append(f"the soak could not run: {traceback.format_exc(limit=5)}")
    finally:
        lab.stop()
    summary["seconds"] = round(time.monotonic() - t0, 1)
    # What the soak used (itself, every child it waited for, PostgreSQL) against what the whole
    # machine did: the rest is other work sharing the cores (other jobs, the kernel).
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system + lab.pg_cpu_s
    others = procs.machine_busy_seconds() - busy0 - own
    summary["machine"]["soak_cpu_cores"] = round(own / summary["seconds"], 2)
    summary["machine"]["other_cpu_cores"] = round(max(0.0, others) / summary["seconds"], 2)
    summary["machine"]["loadavg_at_end"] = os.getloadavg()[0]
    summary["violations"] = violations
    summary["passed"] = not violations
    write(out, summary)
    print(f"soak: {'PASSED' if not violations else 'FAILED'} in {summary['seconds']:.0f} s; summary in {out}",
          flush=True)
    for v in violations:
        print(f"  - {v}", flush=True)
    return 0 if not violations else 1


if __name__ == "__main__":
    sys.exit(main())
