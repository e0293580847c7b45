"""The soak's summary: ``summary.json`` (everything) and ``summary.md`` (a table per step).

``python -m bench.soak.report DIR`` writes ``summary.md`` again from ``DIR/summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TITLES = {
    "signin": "1. Sign in on r1, refresh on r2, revoke on r3",
    "caps": "2. One spend cap, waves of 48 streams over three replicas",
    "kill": "3. kill -9 a replica mid-stream under steady load, then restart it",
    "postgres": "4. PostgreSQL under steady load: pg_ctl restart -m fast, then 6 s down",
    "upstream": "5. Stalled primary upstream, 529 storm, both overloaded",
    "slowloris": "6. Slowloris: dribbling connections beside real clients",
}


def write(out: Path, summary: dict[str, Any]) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "summary.md").write_text(markdown(summary))


def _failed(t: dict[str, Any] | None) -> str:
    if not t:
        return "–"
    return ", ".join(f"{k}: {v}" for k, v in t["failed"].items()) or "none"


def _lat(t: dict[str, Any]) -> str:
    return (f"streams p50 {t['stream_ms_p50']} / p99 {t['stream_ms_p99']} ms, "
            f"JSON p50 {t['json_ms_p50']} / p99 {t['json_ms_p99']} ms")


def markdown(s: dict[str, Any]) -> str:
    m = s["machine"]
    lines = [
        f"# Soak {'passed' if s['passed'] else 'FAILED'} ({s['started']})",
        "",
        f"Command: `{s['command']}` — {s['seconds']:.0f} s in all (setup {s.get('setup_s', '?')} s).",
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['mem_gb']} GiB, Linux {m['kernel']}, Python {m['python']}, "
        f"{m['haproxy']}; Gatehouse {m['git']} ({m.get('git_uncommitted_files', 0)} tracked files changed, not committed). "
        f"Load average {m['loadavg_at_start']:.2f} at the start, {m.get('loadavg_at_end', 0):.2f} at the end; "
        f"the soak used {m.get('soak_cpu_cores', '?')} cores on average, other work on the machine "
        f"{m.get('other_cpu_cores', '?')} cores.",
        "",
        "Three `gatehouse serve` replicas on one PostgreSQL behind HAProxy (roundrobin, `/readyz` checks every "
        "second, out after 3 failures, back after 2), two fake upstreams (primary, secondary), spend limits on "
        "(an organization cap above the run; one user's small cap in step 2), "
        f"`fail_closed_on_error: {str(s['plan'].get('fail_closed_on_error')).lower()}`, "
        f"`store.readiness_grace_seconds: {s['plan'].get('readiness_grace_seconds')}`.",
        "",
        "| step | s | requests | served | failed (how) | served & charged | recovery s | violations |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in s.get("steps", []):
        t = r.get("traffic")
        sp = r.get("spend") or {}
        charged = f"{sp['served_and_charged']} / {sp['served']}" if sp else "–"
        lines.append(
            f"| {TITLES.get(r['step'], r['step'])} | {r['seconds']:.0f} | {t['requests'] if t else '–'} | "
            f"{t['served'] if t else '–'} | {_failed(t)} | {charged} | {r.get('recovery_s', '–')} | "
            f"{len(r['violations'])} |")
    lines.append("")
    for r in s.get("steps", []):
        lines += [f"## {TITLES.get(r['step'], r['step'])}", ""]
        t = r.get("traffic")
        if t:
            lines.append(f"- clients: {t['requests']} requests, {t['served']} served in full, failed: {_failed(t)}; "
                         f"{_lat(t)}")
        sp = r.get("spend")
        if sp:
            lines.append(f"- spend: {sp['served_and_charged']} of {sp['served']} served requests charged "
                         f"({sp['served_micro']} µ$), {len(sp['served_not_charged'])} never charged, "
                         f"{len(sp['excused_not_charged'])} excused (last settlement batch of a killed process), "
                         f"{sp['charged_not_served']} charged ({sp['charged_not_served_micro']} µ$) that no client received in full; "
                         f"usage rows for the served: {sp['usage_rows_for_served']} "
                         f"({len(sp['excused_without_usage_row'])} missing, excused as above)")
        for name, ph in (r.get("phases") or {}).items():
            lines.append(f"- phase *{name}*: {ph['requests']} requests, {ph['served']} served, failed: {_failed(ph)}; "
                         f"{_lat(ph)}")
        if r.get("baseline_without_slowloris"):
            b = r["baseline_without_slowloris"]
            lines.append(f"- the same clients just before, without dribblers: {b['requests']} requests, "
                         f"{b['served']} served; {_lat(b)}")
        for k, v in (r.get("facts") or {}).items():
            lines.append(f"- {k.replace('_', ' ')}: {json.dumps(v, default=str)}")
        if "recovery_s" in r:
            lines.append(f"- time to recover: {r['recovery_s']} s (from the fault to the end of the last failed request)")
        lines += [f"- **violation**: {v}" for v in r["violations"]] or ["- no violations"]
        lines.append(f"- machine busy during the step: {r['machine_busy_cores']} of {m['cpus']} cores")
        lines.append("")
    f = s.get("final")
    if f:
        lines += ["## After every replica shut down", "",
                  f"- exit codes on SIGTERM: {s.get('replica_exit_codes')}; kills {s.get('kills')}, restarts {s.get('restarts')}",
                  f"- open reservations: {f['open_reservations']}; counters not matching their charges: "
                  f"{len(f['counters_not_matching_charges'])}",
                  f"- settled requests {f['settled_requests']}, expired reservations and leases "
                  f"{f['expired_reservations_and_leases']}, charged {f['charged_micro']} µ$ = counters "
                  f"{f['counters_spent_micro']} µ$; usage rows {f['usage_rows']}",
                  f"- tracebacks in any log: {s.get('tracebacks') or 'none'}", ""]
    lines += ["## Violations", ""] + ([f"- {v}" for v in s["violations"]] or ["none"]) + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    # python -m bench.soak.report DIR: summary.md again from DIR/summary.json.
    import sys

    folder = Path(sys.argv[1])
    (folder / "summary.md").write_text(markdown(json.loads((folder / "summary.json").read_text())))
