"""Turn raw.jsonl into table.md and PNG plots; summarise py-spy profiles.

    python -m bench.report bench/results/<date>-<host>

Reads only the results folder, so a table can be rebuilt from committed raw
data. Plots need matplotlib (``pip install matplotlib``); without it the
table is still written and the plots are listed as skipped.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

# The targets, checked against Anthropic's gateway with admin: and managed: on.
PEER = "claude-gateway-full"
# bench/run.py flags a row noisy past this share of a core spent outside the cell.
NOISY_SHARE = 0.15
OURS = "gatehouse-policy"


def load(out: Path) -> list[dict[str, Any]]:
    return _rows(out / "raw.jsonl")


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def other_runs(out: Path) -> list[list[dict[str, Any]]]:
    """The rows of earlier runs kept beside this one (``other-runs/*raw.jsonl``), one list per run."""
    return [_rows(path) for path in sorted((out / "other-runs").glob("*raw.jsonl"))]


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def _index(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    return {(r.get("scenario"), r.get("mode"), r.get("concurrency"), r.get("tool"), r.get("target")): r for r in rows}


def _direct(idx: dict, r: dict[str, Any]) -> dict[str, Any] | None:
    """The same cell's direct row for this row's upstream (the fake it talks to)."""
    return idx.get((r["scenario"], r["mode"], r["concurrency"], r["tool"], r.get("baseline") or "direct"))


def _added(r: dict[str, Any], d: dict[str, Any] | None, key: str) -> float | None:
    if d is None or r["target"].startswith("direct") or r.get(key) is None or d.get(key) is None:
        return None
    return r[key] - d[key]


def _flags(r: dict[str, Any]) -> str:
    flags = []
    if r.get("load_bound"):
        flags.append("load-bound")
    if r.get("errors"):
        flags.append(f"{r['errors']} errors")
    if r.get("noisy"):
        flags.append(f"noisy (others {r['other_cpu_share'] * 100:.0f} %)")
    return ", ".join(flags)


def latency_table(rows: list[dict[str, Any]], idx: dict) -> list[str]:
    lines = [
        "| target | conc | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | added p50 | added p99 | gw CPU µs/req | gw CPU % | peak RSS MB | load side % | flags |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        d = _direct(idx, r)
        lines.append(
            f"| {r['target']} | {r['concurrency']} | {fmt(r['rps'])} | {fmt(r['p50_ms'])} | {fmt(r['p90_ms'])} | "
            f"{fmt(r['p99_ms'])} | {fmt(r['p999_ms'])} | {fmt(_added(r, d, 'p50_ms'))} | {fmt(_added(r, d, 'p99_ms'))} | "
            f"{fmt(r.get('cpu_us_per_req'))} | {fmt(_pct(r.get('gw_cpu_share')))} | {fmt(r.get('peak_rss_mb'), 1)} | "
            f"{fmt(_pct(r.get('load_cpu_share')))} | {_flags(r)} |"
        )
    return lines


def _pct(share: float | None) -> float | None:
    return share * 100 if share is not None else None


def _order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = ["direct", "gatehouse", "gatehouse-policy", "gatehouse-2w", "claude-gateway", "claude-gateway-full", "litellm"]
    rank = {n: i for i, n in enumerate(names)}
    return sorted(rows, key=lambda r: (r.get("concurrency") or 0, rank.get(r["target"], 99)))


def write(out: Path) -> None:
    rows = load(out)
    machine = json.loads((out / "machine.json").read_text()) if (out / "machine.json").exists() else {}
    idx = _index(rows)
    md: list[str] = [f"# Gatehouse bench — {out.name}", ""]
    if machine:
        md += [
            f"Machine: {machine.get('cpus')} × {machine.get('cpu_model')}, {machine.get('mem_gb')} GiB, Linux "
            f"{machine.get('kernel')}, Python {machine.get('python')}; Gatehouse at {machine.get('git')}; "
            f"{'quick' if machine.get('quick') else 'default'} budget; run {machine.get('date')}.",
            "Gateway under test pinned to one core; load tool, simulated upstream, PostgreSQL and driver to the other. "
            "\"load side %\" is their CPU as a share of one core; rows past 90 % are marked load-bound. "
            "Added latency = target minus direct in the same cell. Times in ms.",
            "",
        ]
    setup = [r for r in rows if r.get("scenario") in ("setup", "idle", "4")]
    if setup:
        md += ["## Targets", ""]
        for r in setup:
            if r["scenario"] == "setup":
                md.append(f"- **{r['target']}**: could not start — {r['error']}")
            elif r["scenario"] == "idle":
                notes = "; ".join(r.get("notes") or [])
                md.append(f"- **{r['target']}**: idle RSS {fmt(r['idle_rss_mb'], 1)} MB{' — ' + notes if notes else ''}")
            else:
                md.append(f"- spend counters written by {r['target']} during scenarios 1–2: {r.get('spend_counters')} "
                          f"({'spend reservation measured' if r.get('spend_in_hot_path') else 'no spend work in the hot path of this build'})")
        md.append("")
    for scenario, title in (("1", "1. Small JSON (wrk)"), ("2", "2. Short SSE streams (wrk)"), ("6", "6. --workers 2, policy on (both cores; no linearity target)")):
        cell = [r for r in rows if r.get("scenario") == scenario and r.get("mode") != "stream-hold"
                and not (r.get("tool") == "asyncio" and scenario in ("1", "2"))]
        if not cell:
            continue
        md += [f"## {title}", ""]
        for mode in ("json", "sse"):
            part = _order([r for r in cell if r["mode"] == mode])
            if part:
                md += [f"**{mode}**", "", *latency_table(part, idx), ""]
    ttfb = [r for r in rows if r.get("tool") == "asyncio" and r.get("scenario") in ("1", "2")]
    if ttfb:
        md += ["## Per-request first byte at concurrency 1 (asyncio driver)", "",
               "| scenario | target | requests | total p50 | total p99 | first byte p50 | first byte p99 | added first byte p50 | added first byte p99 |",
               "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in _order(ttfb):
            d = _direct(idx, r)
            md.append(f"| {r['scenario']} {r['mode']} | {r['target']} | {r['requests']} | {fmt(r.get('p50_ms'))} | {fmt(r.get('p99_ms'))} | "
                      f"{fmt(r.get('ttfb_p50_ms'))} | {fmt(r.get('ttfb_p99_ms'))} | {fmt(_added(r, d, 'ttfb_p50_ms'))} | {fmt(_added(r, d, 'ttfb_p99_ms'))} |")
        md.append("")
    for scenario, title in (("3b", "3b. Busy streams (20 events/s)"), ("3a", "3a. Idle-heavy streams (first token 0.5 s, 1 event/s)")):
        part = [r for r in rows if r.get("scenario") == scenario]
        if not part:
            continue
        md += [f"## {title}", "",
               "Probe = GET /healthz latency on the same process while it holds the streams (its event-loop lag plus one tiny request). "
               "Late = how much later than the upstream's schedule each event reached the client.", "",
               "| target | streams | ok | first byte p50 | first byte p99 | first token p99 | late p50 | late p99 | probe p50 | probe p99 | gw CPU % | µs/event | peak RSS MB | KB/stream | load side % | flags |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in sorted(part, key=lambda r: (r["concurrency"], r["target"])):
            md.append(
                f"| {r['target']} | {r['concurrency']} | {r['requests']} | {fmt(r.get('ttfb_p50_ms'))} | {fmt(r.get('ttfb_p99_ms'))} | "
                f"{fmt(r.get('ttft_p99_ms'))} | {fmt(r.get('late_p50_ms'))} | {fmt(r.get('late_p99_ms'))} | {fmt(r.get('probe_p50_ms'))} | "
                f"{fmt(r.get('probe_p99_ms'))} | {fmt(_pct(r.get('gw_cpu_share')))} | {fmt(r.get('cpu_us_per_event'))} | "
                f"{fmt(r.get('peak_rss_mb'), 1)} | {fmt(r.get('rss_kb_per_stream'), 1)} | {fmt(_pct(r.get('load_cpu_share')))} | {_flags(r)} |")
        md.append("")
    md += scenario_4(rows, idx)
    md += cloud_section(rows, idx)
    md += metrics_section(rows)
    md += telemetry_section(rows, other_runs(out))
    signin = [r for r in rows if r.get("scenario") == "5"]
    if signin:
        md += ["## 5. Sign-in throughput", "",
               "Device authorizations in a closed loop (16 connections), then the codes each polled every 5 s (their interval).", "",
               "| target | authorizations/s | auth p50 | auth p99 | polls/s achieved | polls/s offered | poll p50 | poll p99 | gw CPU % | load side % | errors |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in signin:
            md.append(f"| {r['target']} | {fmt(r['auth_per_s'])} | {fmt(r.get('auth_p50_ms'))} | {fmt(r.get('auth_p99_ms'))} | "
                      f"{fmt(r['polls_per_s'])} | {fmt(r['offered_polls_per_s'])} | {fmt(r.get('poll_p50_ms'))} | {fmt(r.get('poll_p99_ms'))} | "
                      f"{fmt(_pct(r.get('gw_cpu_share')))} | {fmt(_pct(r.get('load_cpu_share')))} | {r.get('errors')} |")
        md.append("")
    md += targets_check(rows, idx)
    profiles = [r for r in rows if r.get("scenario") == "profile"]
    if profiles:
        md += ["## Where the gateway's time goes (py-spy, wrk c64; 'exports': the telemetry exporters alone)", ""]
        for r in profiles:
            md += [f"**{r['target']} {r['mode']}** — share of samples by leaf frame (self time):", "",
                   "| share | frame |", "|---:|---|"]
            md += [f"| {share:.1f} % | `{frame}` |" for frame, share in r["top"]["self"][:15]]
            md += ["", "Inclusive share of selected gateway frames:", "", "| share | frame |", "|---:|---|"]
            md += [f"| {share:.1f} % | `{frame}` |" for frame, share in r["top"]["inclusive"][:15]]
            folded = out / f"profile-{r['target']}-{r['mode']}.folded"
            if r["target"] == METRICS_ON and folded.exists():
                md += ["", f"Samples in the gateway's own telemetry (counting, publishing, statement timing): "
                       f"{own_telemetry_share(folded):.2f} %."]
            md.append("")
    plots = make_plots(rows, out)
    md += ["## Plots", ""] + ([f"![{p}]({p})" for p in plots] or ["(matplotlib not installed: no plots)"]) + [""]
    (out / "table.md").write_text("\n".join(md))


def scenario_4(rows: list[dict[str, Any]], idx: dict) -> list[str]:
    pairs = []
    for r in rows:
        if r.get("target") == "gatehouse" and r.get("scenario") in ("1", "2"):
            on = idx.get((r["scenario"], r["mode"], r["concurrency"], r.get("tool"), OURS))
            if on and (r.get("tool") == "wrk" or not any(x.get("tool") == "wrk" for x in rows)):
                pairs.append((r, on))
    if not pairs:
        return []
    lines = ["## 4. Policy on vs off (Gatehouse)", "",
             "| mode | conc | req/s off | req/s on | p50 off | p50 on | p99 off | p99 on | µs/req off | µs/req on |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for off, on in pairs:
        lines.append(f"| {off['mode']} | {off['concurrency']} | {fmt(off['rps'])} | {fmt(on['rps'])} | {fmt(off['p50_ms'])} | {fmt(on['p50_ms'])} | "
                     f"{fmt(off['p99_ms'])} | {fmt(on['p99_ms'])} | {fmt(off.get('cpu_us_per_req'))} | {fmt(on.get('cpu_us_per_req'))} |")
    return lines + [""]


CLOUD_ORDER = ["direct", "gatehouse-policy", "claude-gateway-full"]


def _gateway_of(target: str) -> str:
    """"gatehouse-policy-bedrock" → "gatehouse-policy": the same gateway on the Claude API."""
    for cloud in ("-bedrock", "-vertex"):
        if target.endswith(cloud):
            return target.removesuffix(cloud)
    return target


def cloud_cells(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(mode, target) → medians over the cloud rounds; added latency taken per round
    against that round's direct row of the same upstream, then the median. Noisy
    rounds (another job took CPU during the cell) are counted, not left out: dropping
    them for one target and not another would compare unlike cells."""
    cell = [r for r in rows if r.get("scenario") == "cloud"]
    by_round = {(r["mode"], r.get("round"), r["target"]): r for r in cell}
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in cell:
        grouped[(r["mode"], r["target"])].append(r)
    out = {}
    for (mode, target), rs in grouped.items():
        added = defaultdict(list)
        for r in rs:
            d = by_round.get((mode, r.get("round"), r.get("baseline") or "direct"))
            for key in ("p50_ms", "p99_ms"):
                value = _added(r, d, key)
                if value is not None:
                    added[key].append(value)
        out[(mode, target)] = {
            "target": target, "mode": mode, "upstream": rs[0].get("upstream", "anthropic"), "rounds": len(rs),
            **{key: _median([r.get(key) for r in rs]) for key in (
                "rps", "p50_ms", "p99_ms", "cpu_us_per_req", "peak_rss_mb", "load_cpu_share", "other_cpu_share")},
            "rps_range": (min(r["rps"] for r in rs), max(r["rps"] for r in rs)),
            "cpu_range": _range([r.get("cpu_us_per_req") for r in rs]),
            "added_p50_ms": _median(added["p50_ms"]), "added_p99_ms": _median(added["p99_ms"]),
            "errors": sum(r.get("errors") or 0 for r in rs),
            "load_bound": any(r.get("load_bound") for r in rs),
            "noisy": sum(bool(r.get("noisy")) for r in rs),
        }
    return out


def _median(values: list[Any]) -> float | None:
    present = sorted(v for v in values if v is not None)
    if not present:
        return None
    mid = len(present) // 2
    return present[mid] if len(present) % 2 else (present[mid - 1] + present[mid]) / 2


def _range(values: list[Any]) -> tuple[float, float] | None:
    present = [v for v in values if v is not None]
    return (min(present), max(present)) if present else None


CLOUD_ORDER = ["direct", "gatehouse-policy", "claude-gateway-full"]


def _cpu_ratio(cells: dict, c: dict[str, Any]) -> float | None:
    api = cells.get((c["mode"], _gateway_of(c["target"])))
    if api is None or api is c or not c.get("cpu_us_per_req") or not api.get("cpu_us_per_req"):
        return None
    return c["cpu_us_per_req"] / api["cpu_us_per_req"]


def cloud_section(rows: list[dict[str, Any]], idx: dict) -> list[str]:
    cells = cloud_cells(rows)
    if not cells:
        return []
    rounds = max(c["rounds"] for c in cells.values())
    lines = ["## Cloud upstreams: Claude API, Bedrock, Vertex (c64, policy on)", "",
             f"Every target of a mode ran in the same cell, in turn, {rounds} time(s) with the order rotated; figures "
             f"are medians over those rounds (req/s and CPU ranges in brackets). A round is noisy when other jobs "
             f"took more than {NOISY_SHARE * 100:.0f} % of a core during it. Added latency = target minus the "
             "direct row of its own upstream in the same round (`direct` is the fake Claude API, `direct-bedrock` / "
             "`direct-vertex` the fake clouds hit with a Bedrock API key / a Google bearer). \"CPU vs Claude API\" = "
             "gateway CPU per request over the same gateway's on the Claude API. \"others %\" = CPU the machine spent "
             "outside the cell (other jobs), as a share of one core.", ""]
    rank = {n: i for i, n in enumerate(CLOUD_ORDER)}
    for mode in ("json", "sse"):
        part = [c for c in cells.values() if c["mode"] == mode]
        if not part:
            continue
        part.sort(key=lambda c: (["anthropic", "bedrock", "vertex"].index(c["upstream"]), rank.get(_gateway_of(c["target"]), 9)))
        lines += [f"**{mode}**", "",
                  "| target | upstream | req/s | p50 ms | p99 ms | added p50 | added p99 | gw CPU µs/req | CPU vs Claude API | peak RSS MB | load side % | others % | flags |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for c in part:
            ratio = _cpu_ratio(cells, c)
            lo, hi = c["rps_range"]
            cpu = fmt(c["cpu_us_per_req"]) + (f" ({c['cpu_range'][0]:.0f}–{c['cpu_range'][1]:.0f})" if c["cpu_range"] and c["rounds"] > 1 else "")
            flags = [f for f in ("load-bound" if c["load_bound"] else "", f"{c['errors']} errors" if c["errors"] else "",
                                 f"{c['noisy']} of {c['rounds']} round(s) noisy" if c["noisy"] else "") if f]
            lines.append(
                f"| {c['target']} | {c['upstream']} | {fmt(c['rps'])}{f' ({lo:.0f}–{hi:.0f})' if c['rounds'] > 1 else ''} | "
                f"{fmt(c['p50_ms'])} | {fmt(c['p99_ms'])} | {fmt(c['added_p50_ms'])} | {fmt(c['added_p99_ms'])} | {cpu} | "
                f"{fmt(ratio) + '×' if ratio else '–'} | {fmt(c['peak_rss_mb'], 1)} | {fmt(_pct(c['load_cpu_share']))} | "
                f"{fmt(_pct(c['other_cpu_share']))} | {', '.join(flags)} |")
        lines.append("")
    for r in rows:
        if r.get("scenario") == "cloud-fakes" and r.get("bedrock"):
            s = r["bedrock"]
            if "signed_requests" in s:
                sample = (f"{s['signed_requests']} of them signed with SigV4 (the rest carried direct-bedrock's API "
                          f"key); {s['signatures_verified']} signatures recomputed with botocore (the first and then "
                          f"one in {s['verify_every']} signed requests)")
            else:  # runs before the fake counted signed requests apart: one in N of all requests was sampled
                sample = (f"{s['signatures_verified']} SigV4 signatures recomputed with botocore (the first and then "
                          f"one in {s['verify_every']} requests, API-key requests included in that count)")
            lines += [f"Fake Bedrock: {s['requests']} requests, {sample}, {s['signatures_refused']} of them refused; the "
                      "others were checked for a SigV4 scope naming a known key, the region and `bedrock`.", ""]
    return lines


METRICS_OFF, METRICS_ON = "gatehouse-policy", "gatehouse-policy-metrics"


def metrics_section(rows: list[dict[str, Any]]) -> list[str]:
    """The gateway's own metrics off vs on (scenario "metrics"): medians over rounds and the CPU ratio."""
    cell = [r for r in rows if r.get("scenario") == "metrics"]
    if not cell:
        return []
    lines = ["## The gateway's own metrics: off vs on (c64, policy on)", "",
             "Each round runs both targets in turn (order rotated); figures are medians over the rounds, CPU ranges "
             "in brackets. 'CPU on/off' is the on-target's gateway CPU per request over the off-target's (the issue's "
             "bound: at most 1.10). Each on-cell ends with a scrape of GET /metrics.", "",
             "| mode | target | rounds | req/s | p50 ms | p99 ms | gw CPU µs/req | CPU on/off | others % | flags |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for mode in ("json", "sse"):
        medians = {}
        for target in (METRICS_OFF, METRICS_ON):
            rs = [r for r in cell if r["mode"] == mode and r["target"] == target]
            if rs:
                medians[target] = (rs, {k: _median([r.get(k) for r in rs]) for k in (
                    "rps", "p50_ms", "p99_ms", "cpu_us_per_req", "other_cpu_share")})
        off = medians.get(METRICS_OFF, (None, {}))[1].get("cpu_us_per_req")
        for target, (rs, m) in medians.items():
            cpu_range = _range([r.get("cpu_us_per_req") for r in rs])
            ratio = m["cpu_us_per_req"] / off if target == METRICS_ON and off and m["cpu_us_per_req"] else None
            flags = [f for f in ("load-bound" if any(r.get("load_bound") for r in rs) else "",
                                 f"{sum(bool(r.get('noisy')) for r in rs)} noisy" if any(r.get("noisy") for r in rs) else "") if f]
            cpu = fmt(m["cpu_us_per_req"]) + (f" ({cpu_range[0]:.0f}–{cpu_range[1]:.0f})" if cpu_range and len(rs) > 1 else "")
            lines.append(f"| {mode} | {target} | {len(rs)} | {fmt(m['rps'])} | {fmt(m['p50_ms'])} | {fmt(m['p99_ms'])} | "
                         f"{cpu} | {fmt(ratio) if ratio else '–'} | {fmt(_pct(m['other_cpu_share']))} | {', '.join(flags)} |")
    scrapes = [r for r in rows if r.get("scenario") == "metrics-scrape"]
    if scrapes:
        ms = _median([r.get("scrape_ms") for r in scrapes])
        lines += ["", f"Scrapes: {len(scrapes)}, median {fmt(ms)} ms for {scrapes[-1].get('series_lines')} lines "
                  f"({scrapes[-1].get('scrape_bytes')} bytes); requests counted per cell: "
                  + ", ".join(f"{r.get('requests_counted', 0):.0f}" for r in scrapes) + "."]
    return [*lines, ""]


TELEMETRY_HOW = {"relay": "relayed as received", "stamp": "identity stamped"}


def telemetry_pairs(rows: list[dict[str, Any]], scenario: str = "telemetry") -> list[dict[str, Any]]:
    """Scenario "telemetry" (or "telemetry-open"): per target, mode and round, the cell without the
    exporters, the one with them, and the exporters' run during the latter, with the ratios of the pair."""
    cells: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r.get("scenario") == scenario:
            cells[(r["target"], r["mode"], r.get("round"), "on" if r.get("exporting") else "off")] = r
        elif r.get("scenario") == f"{scenario}-exports":
            cells[(r["target"], r["mode"], r.get("round"), "exports")] = r
    pairs = []
    for (target, mode, round_no, kind), off in cells.items():
        on, exports = cells.get((target, mode, round_no, "on")), cells.get((target, mode, round_no, "exports"))
        if kind != "off" or on is None:
            continue
        pair = {"target": target, "mode": mode, "round": round_no, "off": off, "on": on, "exports": exports,
                "p99_ratio": _ratio(on.get("p99_ms"), off.get("p99_ms")),
                "cpu_ratio": _ratio(on.get("cpu_us_per_req"), off.get("cpu_us_per_req")), "cpu_us_per_export": None}
        # The on-cell's gateway CPU beyond what its requests cost in the off-cell, over the exports
        # answered while it was measured: the relay's cost per export, as noisy as the pair.
        if exports and exports.get("in_window") and on.get("cpu_us_per_req") and off.get("cpu_us_per_req"):
            extra_us = (on["cpu_us_per_req"] - off["cpu_us_per_req"]) * on["requests"]
            pair["cpu_us_per_export"] = extra_us / exports["in_window"]
            pair["exports_per_s"] = exports["in_window"] / exports["window_s"]
        pairs.append(pair)
    return pairs


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _spread(values: list[Any]) -> float | None:
    """(max − min) / median, in percent: how far one setup moves from round to round (two rounds at least)."""
    present, mid = [v for v in values if v is not None], _median(values)
    return (max(present) - min(present)) / mid * 100 if len(present) > 1 and mid else None


def _percent(value: float | None) -> str:
    return f"{value:.0f} %" if value is not None else "–"


def _med_range(values: list[Any], digits: int = 2) -> str:
    mid, span = _median(values), _range(values)
    if mid is None or span is None:
        return "–"
    return f"{fmt(mid, digits)} ({fmt(span[0], digits)}–{fmt(span[1], digits)})"


def telemetry_section(rows: list[dict[str, Any]], others: list[list[dict[str, Any]]] | None = None) -> list[str]:
    """Telemetry relayed beside inference load: the hot path with the exporters on vs off
    (and, pooled with ``others``, the paired rounds of every run kept in the folder)."""
    pairs = telemetry_pairs(rows)
    open_lines = telemetry_open(rows)
    pooled = pairs + [p for run in others or [] for p in telemetry_pairs(run)]
    if not pairs:
        if not open_lines:
            return []
        lines = ["## Telemetry relayed beside inference load", "", *open_lines]
        if pooled:  # this run had no closed-loop cells: the earlier runs' still stand, labelled as such
            lines += ["", "Closed loop (wrk c64, the gateway's core saturated), from the earlier runs in `other-runs/` "
                      "only (this run measured the open-loop cells above):", "",
                      *telemetry_pooled(pooled, sum(bool(telemetry_pairs(run)) for run in others or []), earlier_only=True)]
        return [*lines, "", *telemetry_exports(rows), ""]
    lines = ["## Telemetry relayed beside inference load (c64, policy on)", "", *open_lines, *([""] if open_lines else []),
             "Each gateway relays clients' metrics and logs (`telemetry.forward_to`) to a counting OTLP sink on the "
             "load core. In every round each cell runs twice on the same gateway, back to back: without the simulated "
             "clients and with them exporting (the order alternates). 'on/off' columns are medians of the per-round "
             "ratios (range in brackets). The gateway's CPU in an on-cell includes the relay's work (ingest, stamping, "
             "sending to the sink), all divided by the inference requests; 'µs per export' is the on-cell's CPU beyond "
             "the off-cell's per-request cost, over the exports answered while it was measured. 'Off spread' is the "
             "off-cells' own range over their median: how far the same cell moves between rounds without any change.", "",
             "| target | mode | rounds | req/s off / on | p50 ms off / on | p99 ms off / on | p99 on/off | "
             "gw CPU µs/req off / on | CPU on/off | gw CPU % off / on | off spread p99 / CPU | exports/s | µs per export | "
             "others % off / on | flags |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    keys = sorted({(p["target"], p["mode"]) for p in pairs}, key=lambda k: (k[0], k[1] != "json"))
    for target, mode in keys:
        ps = [p for p in pairs if p["target"] == target and p["mode"] == mode]
        off, on = [p["off"] for p in ps], [p["on"] for p in ps]

        def both(key: str, digits: int = 2, off: list = off, on: list = on) -> str:
            return f"{fmt(_median([r.get(key) for r in off]), digits)} / {fmt(_median([r.get(key) for r in on]), digits)}"

        flags = [f for f in (
            "load-bound" if any(r.get("load_bound") for r in off + on) else "",
            f"{sum(bool(r.get('noisy')) for r in off + on)} of {len(off + on)} cells noisy" if any(r.get("noisy") for r in off + on) else "",
            f"{sum(r.get('errors') or 0 for r in off + on)} errors" if any(r.get("errors") for r in off + on) else "") if f]
        spread = " / ".join(_percent(_spread([r.get(k) for r in off])) for k in ("p99_ms", "cpu_us_per_req"))
        neighbours = f"{fmt(_pct(_median([r.get('other_cpu_share') for r in off])), 0)} / {fmt(_pct(_median([r.get('other_cpu_share') for r in on])), 0)}"
        lines.append(
            f"| {target} | {mode} | {len(ps)} | {both('rps')} | {both('p50_ms')} | {both('p99_ms')} | "
            f"{_med_range([p['p99_ratio'] for p in ps])} | {both('cpu_us_per_req')} | {_med_range([p['cpu_ratio'] for p in ps])} | "
            f"{fmt(_pct(_median([r.get('gw_cpu_share') for r in off])), 0)} / {fmt(_pct(_median([r.get('gw_cpu_share') for r in on])), 0)} | "
            f"{spread} | {fmt(_median([p.get('exports_per_s') for p in ps]), 0)} | "
            f"{_med_range([p['cpu_us_per_export'] for p in ps], 0)} | {neighbours} | {', '.join(flags)} |")
    if len(pooled) > len(pairs):
        lines += ["", *telemetry_pooled(pooled, 1 + sum(bool(telemetry_pairs(run)) for run in others or []))]
    lines += ["", *telemetry_exports(rows)]
    return [*lines, ""]


def telemetry_pooled(pairs: list[dict[str, Any]], runs: int, *, earlier_only: bool = False) -> list[str]:
    """The per-round on/off ratios of several runs together: a drift or a neighbour moves single
    rounds either way, an effect of the exporters moves most of them the same way."""
    which = "`other-runs/`" if earlier_only else "this one and `other-runs/`"
    lines = [f"The paired rounds of all {runs} runs in this folder ({which}) together: medians of "
             "the per-round on/off ratios, and in how many rounds the figure was higher with the exporters on.", "",
             "| target | mode | rounds | CPU on/off | rounds CPU higher | p99 on/off | rounds p99 higher | "
             "req/s on/off | µs per export |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for target, mode in sorted({(p["target"], p["mode"]) for p in pairs}, key=lambda k: (k[0], k[1] != "json")):
        ps = [p for p in pairs if p["target"] == target and p["mode"] == mode]
        cpu, p99 = [p["cpu_ratio"] for p in ps], [p["p99_ratio"] for p in ps]
        rps = [_ratio(p["on"].get("rps"), p["off"].get("rps")) for p in ps]
        lines.append(
            f"| {target} | {mode} | {len(ps)} | {fmt(_median(cpu))} | {sum(c is not None and c > 1 for c in cpu)} of {len(ps)} | "
            f"{fmt(_median(p99))} | {sum(c is not None and c > 1 for c in p99)} of {len(ps)} | {fmt(_median(rps))} | "
            f"{fmt(_median([p['cpu_us_per_export'] for p in ps]), 0)} |")
    return lines


def relay_cost_us(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per target, the gateway's CPU per export with the exporters alone (no inference load)."""
    return {r["target"]: r["cpu_us_per_export"] for r in rows
            if r.get("scenario") == "telemetry-alone" and r.get("cpu_us_per_export")}


def telemetry_open(rows: list[dict[str, Any]]) -> list[str]:
    """Inference at a fixed arrival rate (open loop) beside the exporters: the hot path's latency
    and CPU with the gateway's core not saturated, and the CPU with the relay's own cost taken out."""
    pairs = telemetry_pairs(rows, "telemetry-open")
    if not pairs:
        return []
    cost = relay_cost_us(rows)
    rate = _median([p["off"].get("rate") for p in pairs])
    lines = [f"**Open loop: inference at a fixed {fmt(rate, 0)} req/s** (Poisson arrivals, the same seeded schedule in "
             "every cell, about half of what the gateway's core sustains at c64), exporters off vs on, paired rounds as "
             "above. Latency counts from each request's scheduled start, so queueing is not hidden (coordinated "
             "omission); 'send lag' is how late the driver itself sent (the same in both cells). 'gw CPU µs/req' is all "
             "the gateway's CPU over the inference requests, the relay's work included; 'minus relay' takes out the "
             "exports answered during the cell times the relay's cost per export measured with the exporters alone "
             f"({', '.join(f'{t}: {fmt(v, 0)} µs' for t, v in sorted(cost.items())) or 'not measured'}), leaving the "
             "hot path's own cost. 'µs per export (pairs)' is the on-cell's CPU beyond the off-cell's, over the exports "
             "answered during it: when it is at most the alone figure, the relay's work accounts for all of the on-cells' "
             "extra CPU. Medians over rounds; on/off = median of the per-round ratios (range); 'higher' = rounds in "
             "which the on-cell's figure was the larger.", "",
             "| target | mode | rounds | req/s off / on | p50 ms off / on | p99 ms off / on | p99.9 ms off / on | p99 on/off | "
             "p99 higher | gw CPU % off / on | gw CPU µs/req off / on (relay included) | CPU on/off | µs per export (pairs) | "
             "on minus relay µs/req | (on − relay)/off | exports/s | send lag p99 ms | others % off / on | flags |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for target, mode in sorted({(p["target"], p["mode"]) for p in pairs}, key=lambda k: (k[0], k[1] != "json")):
        ps = [p for p in pairs if p["target"] == target and p["mode"] == mode]
        off, on = [p["off"] for p in ps], [p["on"] for p in ps]
        own, own_ratio = [], []
        for p in ps:
            ex, per_export = p["exports"], cost.get(target)
            value = None
            if ex and ex.get("in_window") is not None and per_export and p["on"].get("cpu_us_per_req"):
                value = p["on"]["cpu_us_per_req"] - ex["in_window"] * per_export / p["on"]["requests"]
            own.append(value)
            own_ratio.append(_ratio(value, p["off"].get("cpu_us_per_req")))

        def both(key: str, digits: int = 2, off: list = off, on: list = on) -> str:
            return f"{fmt(_median([r.get(key) for r in off]), digits)} / {fmt(_median([r.get(key) for r in on]), digits)}"

        errors = sum(r.get("errors") or 0 for r in off + on)
        flags = [f for f in (
            "load-bound" if any(r.get("load_bound") for r in off + on) else "",
            f"{sum(bool(r.get('noisy')) for r in off + on)} of {len(off + on)} cells noisy" if any(r.get("noisy") for r in off + on) else "",
            f"{errors} errors" if errors else "") if f]
        lines.append(
            f"| {target} | {mode} | {len(ps)} | {both('rps', 0)} | {both('p50_ms')} | {both('p99_ms')} | {both('p999_ms')} | "
            f"{_med_range([p['p99_ratio'] for p in ps])} | "
            f"{sum(p['p99_ratio'] is not None and p['p99_ratio'] > 1 for p in ps)} of {len(ps)} | "
            f"{fmt(_pct(_median([r.get('gw_cpu_share') for r in off])), 0)} / {fmt(_pct(_median([r.get('gw_cpu_share') for r in on])), 0)} | "
            f"{both('cpu_us_per_req', 0)} | {_med_range([p['cpu_ratio'] for p in ps])} | "
            f"{_med_range([p['cpu_us_per_export'] for p in ps], 0)} | {fmt(_median(own), 0)} | {_med_range(own_ratio)} | "
            f"{fmt(_median([p.get('exports_per_s') for p in ps]), 0)} | {fmt(_median([r.get('send_lag_p99_ms') for r in off + on]))} | "
            f"{fmt(_pct(_median([r.get('other_cpu_share') for r in off])), 0)} / {fmt(_pct(_median([r.get('other_cpu_share') for r in on])), 0)} | "
            f"{', '.join(flags)} |")
    return lines


def telemetry_exports(rows: list[dict[str, Any]]) -> list[str]:
    """What the simulated clients sent, what the gateway answered and what reached the sink."""
    runs = [r for r in rows if r.get("scenario") in ("telemetry-exports", "telemetry-open-exports", "telemetry-alone")]
    if not runs:
        return []
    first = runs[0]
    lines = [f"Exports: {first['clients']:,} simulated clients, each sending one metrics export "
             f"({first['export_bytes']['metrics']} bytes) and one logs export ({first['export_bytes']['logs']} bytes) "
             f"every {first['interval_s']:g} s, offered {first['offered_per_s']:.0f} exports/s. 'Lost' = answered 200 "
             "but never received by the sink (after waiting for the relay to drain, 'settle').", "",
             "| target | cells | exports sent | sent/s | answered 200 | other answers, errors | sink received | stamped | "
             "lost | bytes answered 200 → at the sink | export p50 / p99 ms | late p99 ms | settle s (max) | exporters + sink % of a core |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for where, scenario in (("with wrk", "telemetry-exports"), ("open loop", "telemetry-open-exports"),
                            ("alone", "telemetry-alone")):
        for target in sorted({r["target"] for r in runs if r["scenario"] == scenario}):
            rs = [r for r in runs if r["scenario"] == scenario and r["target"] == target]
            other: Counter[str] = Counter()
            for r in rs:
                other.update({k: v for k, v in r["statuses"].items() if k != "200"})
                other.update(r["errors"])
                other.update({"unfinished": r.get("unfinished", 0)} if r.get("unfinished") else {})

            def total(key: str, rs: list = rs) -> int:
                return sum(r.get(key) or 0 for r in rs)

            lines.append(
                f"| {target} | {len(rs)} {where} | {total('sent_total'):,} | {fmt(_median([r['sent_per_s'] for r in rs]), 0)} | "
                f"{total('ok_total'):,} | {', '.join(f'{k}: {v}' for k, v in sorted(other.items())) or 'none'} | "
                f"{total('sink_exports'):,} | {total('sink_stamped'):,} | {total('lost'):,} | "
                f"{total('sent_bytes'):,} → {total('sink_bytes'):,} | {fmt(_median([r.get('p50_ms') for r in rs]))} / "
                f"{fmt(_median([r.get('p99_ms') for r in rs]))} | {fmt(_median([r.get('late_p99_ms') for r in rs]))} | "
                f"{fmt(max(r['settle_s'] for r in rs))} | {fmt(_pct(_median([r.get('telemetry_cpu_share') for r in rs])), 1)} |")
    alone = [r for r in runs if r["scenario"] == "telemetry-alone"]
    if alone:
        lines += ["", "The exporters alone (no inference load): the gateway's CPU per export, without a subtraction.", "",
                  "| target | how | exports measured | seconds | gateway % of a core | gateway CPU µs per export |",
                  "|---|---|---:|---:|---:|---:|"]
        for r in alone:
            lines.append(f"| {r['target']} | {TELEMETRY_HOW.get(r.get('variant') or '', '–')} | {r.get('in_window', 0):,} | "
                         f"{fmt(r['wall_s'], 1)} | {fmt(_pct(r['gw_cpu_share']), 1)} | {fmt(r.get('cpu_us_per_export'), 0)} |")
    return lines


def cloud_checks(rows: list[dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """The issue's Bedrock-path targets, read from the cloud cell's medians."""
    cells = cloud_cells(rows)
    checks: list[tuple[str, str, bool | None]] = []
    for mode in ("json", "sse"):
        ours, peer = cells.get((mode, OURS + "-bedrock")), cells.get((mode, PEER + "-bedrock"))
        if ours is None:
            continue
        if peer and peer["rps"]:
            ratio = ours["rps"] / peer["rps"]
            checks.append((f"Bedrock: throughput ≥ 2.5× Anthropic's at c64, {mode}",
                           f"{ours['rps']:.0f} vs {peer['rps']:.0f} req/s = {ratio:.2f}×", ratio >= 2.5))
            a_ours, a_peer = ours["added_p99_ms"], peer["added_p99_ms"]
            if a_ours is not None and a_peer:
                checks.append((f"Bedrock: p99 added ≤ 0.5× Anthropic's at c64, {mode}",
                               f"{a_ours:.2f} vs {a_peer:.2f} ms = {a_ours / a_peer:.2f}×", a_ours / a_peer <= 0.5))
        ratio = _cpu_ratio(cells, ours)
        if ratio is not None:
            api = cells[(mode, OURS)]
            checks.append((f"Bedrock CPU per request ≤ 2× the Claude API path's, {mode}",
                           f"{ours['cpu_us_per_req']:.0f} vs {api['cpu_us_per_req']:.0f} µs = {ratio:.2f}×", ratio <= 2))
    return checks


def targets_check(rows: list[dict[str, Any]], idx: dict) -> list[str]:
    """The issue's targets, met or missed, with the measured numbers."""
    checks: list[tuple[str, str, bool | None]] = []

    def get(scenario, mode, conc, tool, target):
        return idx.get((scenario, mode, conc, tool, target))

    for scenario, mode in (("1", "json"), ("2", "sse")):
        ours, peer = get(scenario, mode, 64, "wrk", OURS), get(scenario, mode, 64, "wrk", PEER)
        if ours and peer:
            ratio = ours["rps"] / peer["rps"] if peer["rps"] else math.nan
            checks.append((f"throughput ≥ 2.5× Anthropic's at c64, {mode}", f"{ours['rps']:.0f} vs {peer['rps']:.0f} req/s = {ratio:.2f}×", ratio >= 2.5))
            d = get(scenario, mode, 64, "wrk", "direct")
            a_ours, a_peer = _added(ours, d, "p99_ms"), _added(peer, d, "p99_ms")
            if a_ours is not None and a_peer:
                checks.append((f"p99 added latency ≤ 0.5× Anthropic's at c64, {mode}",
                               f"{a_ours:.2f} vs {a_peer:.2f} ms = {a_ours / a_peer:.2f}×", a_ours / a_peer <= 0.5))
    c1 = get("1", "json", 1, "wrk", OURS)
    d1 = get("1", "json", 1, "wrk", "direct")
    if c1 and d1:
        added = c1["p50_ms"] - d1["p50_ms"]
        checks.append(("added p50 at c1 ≤ 0.5 ms, JSON", f"{added:.3f} ms (wrk)", added <= 0.5))
    t1, td = get("2", "sse", 1, "asyncio", OURS), get("2", "sse", 1, "asyncio", "direct")
    if t1 and td and t1.get("ttfb_p99_ms") is not None:
        added = t1["ttfb_p99_ms"] - td["ttfb_p99_ms"]
        checks.append(("added time to first byte ≤ 1 ms at p99, c1 (SSE)", f"{added:.3f} ms", added <= 1.0))
    cpu: list[float] = [r["cpu_us_per_req"] for r in rows if r.get("target") == OURS and r.get("tool") == "wrk"
           and r.get("scenario") in ("1", "2") and r.get("concurrency") == 64 and r.get("cpu_us_per_req")]
    if cpu:
        checks.append(("gateway CPU ≤ 500 µs per request (c64, JSON and SSE)", " / ".join(f"{c:.0f} µs" for c in cpu), max(cpu) <= 500))
    idle = {r["target"]: r["idle_rss_mb"] for r in rows if r.get("scenario") == "idle"}
    if "gatehouse-minimal" in idle:
        checks.append(("idle RSS ≤ 60 MB, minimal config", f"{idle['gatehouse-minimal']:.1f} MB", idle["gatehouse-minimal"] <= 60))
    peak: list[float] = [r["peak_rss_mb"] for r in rows if r.get("target") == OURS and r.get("concurrency") == 64
            and r.get("scenario") in ("1", "2") and r.get("peak_rss_mb")]
    if peak:
        checks.append(("RSS ≤ 80 MB under the c64 load", f"{max(peak):.1f} MB", max(peak) <= 80))
    big = [r for r in rows if r.get("scenario") == "3a" and r.get("target") == OURS]
    if big:
        r = max(big, key=lambda r: r["concurrency"])
        kb, lag = r.get("rss_kb_per_stream"), r.get("probe_p99_ms")
        complete = r["requests"] == r["concurrency"]
        checks.append((f"{r['concurrency']} idle-heavy streams in one process, all complete", f"{r['requests']} ok, {r.get('errors')} errors", complete))
        if kb is not None:
            checks.append(("≤ 20 KB per stream", f"{kb:.1f} KB", kb <= 20))
        if lag is not None:
            checks.append(("event-loop lag p99 ≤ 5 ms (health probe p99)", f"{lag:.2f} ms", lag <= 5))
    checks += cloud_checks(rows)
    if not checks:
        return []
    lines = ["## Targets (Gatehouse policy on vs Anthropic's gateway with admin: and managed:)", "",
             "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'yes' if ok else 'NO'} |" for name, value, ok in checks]
    return lines + [""]


def make_plots(rows: list[dict[str, Any]], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    for scenario, mode in (("1", "json"), ("2", "sse")):
        cell = [r for r in rows if r.get("scenario") == scenario and r.get("tool") == "wrk"]
        if not cell:
            continue
        conc = max(r["concurrency"] for r in cell if r["concurrency"] <= 64)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in _order([r for r in cell if r["concurrency"] == conc]):
            pts = [(v, p) for p, v in r["cdf_ms"] if v > 0]
            ax.plot([v for v, _ in pts], [p for _, p in pts], marker=".", label=r["target"])
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("percentile")
        ax.set_title(f"Latency CDF, {mode}, concurrency {conc}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        name = f"cdf-{mode}-c{conc}.png"
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append(name)

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
        by_target: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in cell:
            by_target[r["target"]].append(r)
        for target, rs in sorted(by_target.items()):
            rs.sort(key=lambda r: r["concurrency"])
            a1.plot([r["concurrency"] for r in rs], [r["rps"] for r in rs], marker="o", label=target)
            a2.plot([r["concurrency"] for r in rs], [r["p99_ms"] for r in rs], marker="o", label=target)
        for ax, label in ((a1, "req/s"), (a2, "p99 latency (ms, log)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
        a2.set_yscale("log")
        a1.legend(fontsize=8)
        fig.suptitle(f"Throughput and p99 vs concurrency, {mode}")
        name = f"throughput-p99-{mode}.png"
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append(name)
    idle = [r for r in rows if r.get("scenario") == "3a" and r.get("peak_rss_mb")]
    if idle:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        by_target = defaultdict(list)
        for r in idle:
            by_target[r["target"]].append(r)
        for target, rs in sorted(by_target.items()):
            rs.sort(key=lambda r: r["concurrency"])
            ax.plot([r["concurrency"] for r in rs], [r["peak_rss_mb"] for r in rs], marker="o", label=target)
        ax.set_xlabel("concurrent idle-heavy streams")
        ax.set_ylabel("gateway peak RSS (MB)")
        ax.set_title("Memory vs concurrent streams")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "memory-streams.png", dpi=110)
        plt.close(fig)
        made.append("memory-streams.png")
    return made


# ------------------------------------------------------------ profiles

INTERESTING = ("gateway/", "aiohttp/", "msgspec", "asyncpg/", "uvloop", "yarl/", "multidict/", "json/")


def _frames(folded: Path) -> tuple[Counter, Counter, int]:
    leaf: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";")]
        leaf[frames[-1]] += n
        for f in set(frames):
            if any(k in f for k in ("gateway/",)):
                incl[f] += n
    return leaf, incl, total


def _short(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"; keep the
    # function and, without the line number, the path from the gateway package
    # down (its modules sit in subpackages) or else the last two path parts.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = path.split("/")
    start = len(parts) - 1 - parts[::-1].index("gateway") if "gateway" in parts[:-1] else len(parts) - 2
    return f"{name} ({'/'.join(parts[max(start, 0):])})" if where else name


# Frames of the gateway's own metrics and traces: the hot-path counting, the SDK and Prometheus
# rendering at scrape time, and asyncpg's query logger that times statements for them.
OWN_TELEMETRY_FRAMES = ("telemetry/own_metrics.py", "http/own_telemetry.py", "telemetry/instruments.py",
                        "telemetry/tracing.py", "opentelemetry/", "prometheus_client/", "_time_and_log", "logged (")


def own_telemetry_share(folded: Path) -> float:
    """Percent of samples with an own-telemetry frame anywhere in their stack."""
    hit = total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        if any(k in stack for k in OWN_TELEMETRY_FRAMES):
            hit += int(count)
    return hit * 100 / total if total else 0.0


def top_frames(folded: Path, n: int) -> dict[str, list[tuple[str, float]]]:
    leaf, incl, total = _frames(folded)
    total = total or 1
    return {
        "self": [(f, c * 100 / total) for f, c in leaf.most_common(n)],
        "inclusive": [(f, c * 100 / total) for f, c in incl.most_common(n)],
        "samples": [("total", float(total))],
    }


if __name__ == "__main__":
    write(Path(sys.argv[1]))
