"""The soak's steps: each a fault (or a sign-in walk) under load, with what it must show.

A step returns a plain dict for the summary: its traffic tally, spend served vs
charged, times to recover, and ``violations`` (strings; any one fails the run).
Durations scale with ``Plan.scale`` so the smoke in ``make test`` runs the same
code for a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg

from bench.soak import lab as labmod
from bench.soak.lab import LEASE_TTL_S, READ_KEY, WRITE_KEY, Lab, Replica
from bench.soak.traffic import Load, Outcome, Tokens, one, recovery_s, tally
from gateway.spend.store import SWEEP_EVERY_S

STEPS = ("signin", "caps", "kill", "postgres", "upstream", "slowloris")
# What the fake upstreams answer unless a step says otherwise: streams of about 0.7 s.
DEFAULT_REPLY = {"deltas": 6, "gap": 0.12, "usage": {"input_tokens": 12, "output_tokens": 50}}
OVERLOADED = {"status": 529, "json": {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}}
# Spend a settlement may still be on its way to the database for (the batch interval is 50 ms).
KILL_SETTLE_WINDOW_S = 1.0


@dataclass
class Plan:
    scale: float = 1.0  # 1.0: the full soak; the smoke uses about 0.2
    rate: float = 30.0  # offered requests a second during loaded steps
    slow_connections: int = 500

    def secs(self, full: float) -> float:
        return max(2.0, full * self.scale)


class Ctx:
    def __init__(self, lab: Lab, plan: Plan) -> None:
        self.lab, self.plan = lab, plan
        self.tokens = Tokens(lab.lb_url)

    async def db(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.lab.db_url, timeout=5)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def admin(self, method: str, path: str, payload: Any = None, read: bool = False) -> tuple[int, Any]:
        key = READ_KEY if read else WRITE_KEY
        status, raw = await asyncio.to_thread(labmod.http, method, self.lab.replicas[0].url + path, payload,
                                              {"x-api-key": key})
        return status, json.loads(raw) if raw else None

    def users(self, prefix: str, n: int) -> list[str]:
        return [self.tokens(f"{prefix}-{i}") for i in range(n)]

    async def reconcile(self, outcomes: list[Outcome], excused: set[str] | None = None,
                        wait_s: float = 30.0) -> dict[str, Any]:
        """Every request a client received in full is recorded (usage row) and charged (settled
        spend row), once: waits up to ``wait_s`` for queued settlements to land."""
        served = {o.request_id for o in outcomes if o.kind == "ok" and o.request_id}
        started = {o.request_id for o in outcomes if o.request_id}
        deadline = time.monotonic() + wait_s
        while True:
            rows = await self.db(
                "SELECT r.request_id, r.state, r.settled_micro, u.request_id IS NOT NULL AS used "
                "FROM spend_reservations r LEFT JOIN usage_records u USING (request_id) "
                "WHERE r.request_id = ANY($1::text[])", list(started))
            charged = {r["request_id"]: r for r in rows if r["state"] in ("settled", "expired")}
            missing = served - charged.keys() - (excused or set())
            used = {r["request_id"] for r in await self.db(
                "SELECT request_id FROM usage_records WHERE request_id = ANY($1::text[])", list(served))}
            unused = served - used - (excused or set())
            if (not missing and not unused) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        return {
            "served": len(served),
            "served_and_charged": len(served & charged.keys()),
            "served_not_charged": sorted(missing),
            "excused_not_charged": sorted((served - charged.keys()) & (excused or set())),
            # Cut streams and the like: charged what they produced (refusals hold a row at zero).
            "charged_not_served": sum(1 for r in charged.keys() - served if charged[r]["settled_micro"]),
            "charged_not_served_micro": sum(charged[r]["settled_micro"] or 0 for r in charged.keys() - served),
            "served_micro": sum(charged[r]["settled_micro"] or 0 for r in served & charged.keys()),
            "usage_rows_for_served": len(used),
            "served_without_usage_row": sorted(unused),
            "excused_without_usage_row": sorted((served - used) & (excused or set())),
        }

    async def stale_open(self, grace_s: float = SWEEP_EVERY_S + 2) -> int:
        """Reservations past their expiry by more than a sweep's interval (every replica sweeps
        every ``SWEEP_EVERY_S``) and still open: an expiry that did not happen."""
        rows = await self.db("SELECT count(*) AS n FROM spend_reservations WHERE state = 'open' "
                             "AND expires_at < now() - make_interval(secs => $1)", grace_s)
        return int(rows[0]["n"])


def _envelope_violations(outcomes: list[Outcome]) -> list[str]:
    bad = [o for o in outcomes if o.kind in ("truncated", "bad_envelope")]
    return [f"{len(bad)} answers were not protocol-correct ({', '.join(sorted({o.label for o in bad}))})"] if bad else []


# ---------------------------------------------------------------- 1. sign-in across replicas


async def signin(ctx: Ctx) -> dict[str, Any]:
    from protocol_spec.browser import ScriptedBrowser, approve_device

    r1, r2, r3 = ctx.lab.replicas
    cli = {"User-Agent": "claude-code/2.1.328", "Accept": "application/json"}
    violations: list[str] = []
    facts: dict[str, Any] = {}
    async with aiohttp.ClientSession(headers=cli) as s:
        async def form(url: str, data: dict[str, str]) -> tuple[int, Any]:
            async with s.post(url, data=data, allow_redirects=False) as r:
                text = await r.text()
                return r.status, json.loads(text) if text else None

        async def use(token: str) -> list[int]:
            return [(await one(s, r.url, token, stream=False)).status or 0 for r in ctx.lab.replicas]

        status, dev = await form(r1.url + "/oauth/device_authorization", {"surface": "claude_code"})
        browser = ScriptedBrowser()
        try:
            page = await approve_device(browser, dev["verification_uri_complete"], idp_fields={"sub": "soak-alice"})
        finally:
            await browser.close()
        status, doc = await form(r1.url + "/oauth/token", {"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                                                           "device_code": dev["device_code"]})
        facts["signed_in_on"] = f"{r1.name} (browser leg through HAProxy: page {page.status})"
        if status != 200:
            return {"violations": [f"device sign-in through {r1.name} answered {status}: {doc}"], "facts": facts}
        facts["first_token_on_each_replica"] = await use(doc["access_token"])
        status, fresh = await form(r2.url + "/oauth/token", {"grant_type": "refresh_token",
                                                             "refresh_token": doc["refresh_token"]})
        facts["refresh_on"] = f"{r2.name}: {status}"
        if status != 200:
            return {"violations": [f"refresh through {r2.name} answered {status}: {fresh}"], "facts": facts}
        facts["refreshed_token_on_each_replica"] = await use(fresh["access_token"])
        for name, statuses in (("first", facts["first_token_on_each_replica"]),
                               ("refreshed", facts["refreshed_token_on_each_replica"])):
            if statuses != [200] * 3:
                violations.append(f"the {name} access token was not accepted everywhere: {statuses}")
        t0 = time.monotonic()
        status, _ = await form(r3.url + "/oauth/revoke", {"token": fresh["refresh_token"]})
        facts["revoke_on"] = f"{r3.name}: {status}"
        refused_after: dict[str, float] = {}
        while len(refused_after) < 3 and time.monotonic() - t0 < 15:
            for r in ctx.lab.replicas:
                if r.name not in refused_after:
                    o = await one(s, r.url, fresh["access_token"], stream=False)
                    if o.status == 401:
                        refused_after[r.name] = round(time.monotonic() - t0, 3)
            await asyncio.sleep(0.05)
        facts["access_token_refused_after_s"] = refused_after
        if len(refused_after) < 3:
            violations.append(f"revoked token still accepted after 15 s by {sorted({'r1', 'r2', 'r3'} - refused_after.keys())}")
        elif max(refused_after.values()) > 5:
            violations.append(f"revocation took {max(refused_after.values())} s to reach every replica")
        grants = []
        for r in ctx.lab.replicas:
            grants.append((await form(r.url + "/oauth/token", {"grant_type": "refresh_token",
                                                               "refresh_token": fresh["refresh_token"]}))[0])
        facts["revoked_refresh_token_on_each_replica"] = grants
        if any(g == 200 for g in grants):
            violations.append(f"a revoked refresh token was honoured: {grants}")
    return {"facts": facts, "violations": violations}


# ---------------------------------------------------------------- 2. caps across replicas


async def caps(ctx: Ctx) -> dict[str, Any]:
    cap_cents = 3
    cap = cap_cents * 10_000
    sub = "soak-capped"
    status, doc = await ctx.admin("POST", "/v1/organizations/spend_limits",
                                  {"scope": {"type": "user", "user_id": sub}, "amount": str(cap_cents), "period": "daily"})
    if status != 200:
        return {"violations": [f"setting the cap answered {status}: {doc}"]}
    await asyncio.sleep(1.5)  # every replica's limits cache picks it up (LISTEN/NOTIFY, renewals)
    token = ctx.tokens(sub)
    outcomes: list[Outcome] = []
    violations: list[str] = []
    peaks: list[int] = []
    quiet = 0
    waves = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        while quiet < 2 and waves < 40:
            waves += 1
            wave = await asyncio.gather(*(one(s, ctx.lab.lb_url, token, stream=True) for _ in range(48)))
            outcomes += wave
            row = await ctx.db("SELECT spent_micro, reserved_micro FROM spend_counters WHERE scope_type = 'user' "
                               "AND scope_id = $1 AND period = 'daily'", sub)
            if row:
                peaks.append(row[0]["spent_micro"] + row[0]["reserved_micro"])
            quiet = 0 if any(o.kind == "ok" for o in wave) else quiet + 1
            if quiet:
                await asyncio.sleep(1.5)  # a used-up lease's crumbs come back at the next renewal
    spend = await ctx.reconcile(outcomes)
    counters = await ctx.db("SELECT spent_micro, reserved_micro FROM spend_counters WHERE scope_type = 'user' "
                            "AND scope_id = $1 AND period = 'daily'", sub)
    spent = counters[0]["spent_micro"] if counters else 0
    _, eff = await ctx.admin("GET", f"/v1/organizations/spend_limits/effective?user_ids={sub}", read=True)
    refusals = [o for o in outcomes if o.kind != "ok"]
    if any(o.label != "429 billing_error" for o in refusals):
        violations.append(f"refusals other than 429 billing_error: {tally(refusals)['failed']}")
    if max(peaks, default=0) > cap:
        violations.append(f"settled + reserved reached {max(peaks)} µ$ over the {cap} µ$ cap")
    if spent > cap:
        violations.append(f"spent {spent} µ$ over the {cap} µ$ cap")
    if spend["served_not_charged"]:
        violations.append(f"{len(spend['served_not_charged'])} served requests were never charged")
    if spent != spend["served_micro"] + 0 and spend["charged_not_served"] == 0:
        violations.append(f"the counter says {spent} µ$, the served requests' settlements {spend['served_micro']} µ$")
    violations += _envelope_violations(outcomes)
    return {
        "traffic": tally(outcomes), "spend": spend, "violations": violations,
        "facts": {"cap_micro": cap, "waves_of_48_streams": waves, "spent_micro": spent,
                  "max_settled_plus_reserved_micro": max(peaks, default=0),
                  "effective_api": (eff or {}).get("data", eff)},
    }


# ---------------------------------------------------------------- 3. kill -9 a replica mid-stream


async def kill(ctx: Ctx) -> dict[str, Any]:
    lab, plan = ctx.lab, ctx.plan
    victim: Replica = lab.replicas[1]
    dur = plan.secs(30)
    facts: dict[str, Any] = {"victim": victim.name, "load_s": dur, "offered_rate": plan.rate}
    load = Load(lab.lb_url, ctx.users("kill", 8), rate=plan.rate)
    t_start = time.monotonic()
    async with load:
        await asyncio.sleep(dur / 3)
        before = [o for o in load.outcomes]
        kill_at = time.monotonic()
        await asyncio.to_thread(lab.kill, victim)
        facts["lb_marked_down_after_s"] = await _until(lambda: victim.name not in lab.lb_up(), 20, kill_at)
        await asyncio.sleep(max(0.0, dur / 3 - (time.monotonic() - kill_at)))
        restart_at = time.monotonic()
        # Spawned from this thread: a child's parent-death signal fires when the thread that
        # forked it ends, so a worker thread's child would be SIGTERMed with the thread.
        lab.start_replica(victim, wait=False)
        facts["restart_ready_s"] = await _until(lambda: labmod.ready(victim.url), 60, restart_at)
        facts["lb_back_up_after_s"] = await _until(lambda: victim.name in lab.lb_up(), 20, restart_at)
        # Long enough after its return for the balancer to send it requests again.
        await asyncio.sleep(max(2.0, dur - (time.monotonic() - t_start)))
    outcomes = load.outcomes
    in_flight = [o for o in outcomes if o.start < kill_at < o.end]
    facts["in_flight_at_kill_on_victim"] = sum(1 for o in in_flight if o.server == victim.name)
    facts["in_flight_at_kill_outcomes"] = tally([o for o in in_flight if o.server == victim.name or o.kind != "ok"])["failed"]
    facts["served_by_victim_after_restart"] = sum(1 for o in outcomes if o.start > restart_at and o.server == victim.name)
    violations = _envelope_violations(outcomes)
    late = [o for o in outcomes if o.kind != "ok" and o.start >= kill_at + 0.5]
    if late:
        violations.append(f"{len(late)} requests started after the kill failed: {tally(late)['failed']}")
    # What the killed process may lose (README, "What a process killed with kill -9 loses"):
    # settlements of the last batch window, charged later through their lease or reservation.
    excused = {o.request_id for o in before + in_flight if o.request_id and o.server == victim.name
               and kill_at - KILL_SETTLE_WINDOW_S <= o.end <= kill_at + 0.1}
    # Leases and reservations the victim held expire after their time to live and are charged.
    wait = kill_at + LEASE_TTL_S + SWEEP_EVERY_S + 2 - time.monotonic()
    if wait > 0:
        await asyncio.sleep(wait)
    spend = await ctx.reconcile(outcomes, excused)
    stale = await ctx.stale_open()
    expired = await ctx.db("SELECT action, count(*) AS n FROM admin_audit WHERE action IN "
                           "('spend.lease_expired', 'spend.reservation_expired') GROUP BY action")
    facts["expired_after_kill"] = {r["action"]: r["n"] for r in expired}
    charged = await ctx.db("SELECT coalesce(sum((after->>'charged_micro')::bigint), 0) AS micro FROM admin_audit "
                           "WHERE action = 'spend.lease_expired'")
    facts["charged_by_lease_expiry_micro"] = charged[0]["micro"]
    facts["stale_open_reservations"] = stale
    if stale:
        violations.append(f"{stale} reservations outlived their time to live without being charged")
    if spend["served_not_charged"]:
        violations.append(f"{len(spend['served_not_charged'])} served requests were never charged")
    if spend["served_without_usage_row"]:
        by_id = {o.request_id: o for o in outcomes}
        lost = [(by_id[i].server, round(by_id[i].end - kill_at, 2)) for i in spend["served_without_usage_row"]]
        violations.append(f"{len(lost)} served requests have no usage row (replica, end relative to the kill): {lost}")
    if facts["served_by_victim_after_restart"] == 0:
        violations.append(f"HAProxy never sent {victim.name} traffic again after its restart")
    return {"traffic": tally(outcomes), "spend": spend, "recovery_s": recovery_s(outcomes, kill_at),
            "facts": facts, "violations": violations}


def _reads_db(r: Replica) -> bool:
    """The replica answers an admin read that needs PostgreSQL (its pool reconnected); /readyz
    would not tell, since it stays 200 for store.readiness_grace_seconds."""
    try:
        status, _ = labmod.http("GET", r.url + "/v1/organizations/spend_limits/effective?user_ids=soak-probe",
                                headers={"x-api-key": READ_KEY}, timeout=3.0)
    except OSError:
        return False
    return status == 200


async def _until(cond: Any, timeout: float, since: float) -> float | None:
    while time.monotonic() - since < timeout:
        if await asyncio.to_thread(cond):
            return round(time.monotonic() - since, 2)
        await asyncio.sleep(0.1)
    return None


# ---------------------------------------------------------------- 4. restart PostgreSQL


async def postgres(ctx: Ctx) -> dict[str, Any]:
    """A fast restart (what the brief asks), then an outage of several seconds (a failover's
    length), both under steady load with fail-open configured."""
    lab, plan = ctx.lab, ctx.plan
    dur = plan.secs(40)
    outage = plan.secs(6)
    facts: dict[str, Any] = {"load_s": dur, "fail_closed_on_error": lab.fail_closed, "outage_s": outage}
    # Many people, so some requests always need the database (a first request, no lease yet).
    load = Load(lab.lb_url, ctx.users("pg", 60), rate=plan.rate)
    t_start = time.monotonic()
    marks: list[tuple[str, float]] = []
    async with load:
        await asyncio.sleep(dur / 5)
        restart_at = time.monotonic()
        marks.append(("pg_ctl restart -m fast", restart_at))
        facts["pg_ctl_restart_s"] = round(await asyncio.to_thread(lab.restart_postgres), 2)
        ready: dict[str, float | None] = {}
        for r in lab.replicas:
            ready[r.name] = await _until(lambda r=r: _reads_db(r), 60, restart_at)
        facts["after_restart_replica_reads_db_s"] = ready
        await asyncio.sleep(max(0.0, dur * 2 / 5 - (time.monotonic() - t_start)))
        down_at = time.monotonic()
        marks.append((f"PostgreSQL stopped for {outage:g} s", down_at))
        await asyncio.to_thread(lab.stop_postgres)
        await asyncio.sleep(outage)
        await asyncio.to_thread(lab.start_postgres)
        up_at = time.monotonic()
        marks.append(("PostgreSQL back", up_at))
        back: dict[str, float | None] = {}
        for r in lab.replicas:
            back[r.name] = await _until(lambda r=r: _reads_db(r), 60, up_at)
        facts["after_outage_replica_reads_db_s"] = back
        facts["after_outage_lb_all_up_s"] = await _until(lambda: len(lab.lb_up()) == 3, 30, up_at)
        await asyncio.sleep(max(0.0, dur - (time.monotonic() - t_start)))
    marks.append(("end", time.monotonic()))
    outcomes = load.outcomes
    phases = {}
    for (name, t0), (_, t1) in zip(marks, marks[1:], strict=False):
        phases[name] = tally([o for o in outcomes if t0 <= o.start < t1])
    violations = _envelope_violations(outcomes)
    if any(v is None for v in (*ready.values(), *back.values())):
        violations.append(f"a replica did not reconnect by itself within 60 s: {ready} {back}")
    failed = [o for o in outcomes if o.kind != "ok"]
    lb_refused = [o for o in failed if o.error == "haproxy"]
    facts["refused_by_haproxy_no_replica_ready"] = len(lb_refused)
    gateway_failed = [o for o in failed if o.error != "haproxy"]
    if lab.fail_closed:
        # Refused, in the envelope, as "spend limit unavailable": never a 5xx, never a cut stream.
        wrong = [o for o in gateway_failed if o.label != "429 billing_error"]
        facts["refused_fail_closed"] = len(gateway_failed) - len(wrong)
        if wrong:
            violations.append(f"{len(wrong)} requests failed otherwise than 429 billing_error with fail-closed "
                              f"configured: {tally(wrong)['failed']}")
    elif gateway_failed:  # fail-open: an admission the database cannot judge is let through
        violations.append(f"{len(gateway_failed)} requests failed at the gateway with fail-open configured: "
                          f"{tally(gateway_failed)['failed']}")
    spend = await ctx.reconcile(outcomes, wait_s=40)
    if spend["served_not_charged"]:
        violations.append(f"{len(spend['served_not_charged'])} served requests were never charged (settlement lost)")
    if spend["served_without_usage_row"]:
        violations.append(f"{len(spend['served_without_usage_row'])} served requests have no usage row")
    # The replicas' own word for what the outage did: admissions let through unjudged (each must
    # have been charged once it was back), settlements and usage rows owed and retried.
    logs = "".join(r.log.read_text(errors="replace") for r in lab.replicas)
    unjudged = set(re.findall(r"letting the request through \(request (req_[0-9a-f]+)\)", logs))
    rows = await ctx.db("SELECT request_id FROM spend_reservations WHERE request_id = ANY($1::text[]) "
                        "AND state = 'settled' AND settled_micro > 0", list(unjudged))
    facts["let_through_unjudged"] = len(unjudged)
    facts["let_through_unjudged_then_charged"] = len(rows)
    facts["log_lines_settling_owed"] = logs.count("owed, retried every second until stored")
    # LISTEN/NOTIFY (revocations, limit changes) has a connection of its own, which must come back too.
    relistened = {r.name: r.log.read_text(errors="replace").count("gatehouse-listener: reconnected")
                  for r in lab.replicas}
    facts["listener_reconnects"] = relistened
    if not all(relistened.values()):
        violations.append(f"a replica's LISTEN connection never came back: {relistened}")
    facts["log_lines_usage_rows_retried"] = logs.count("usage records, will keep retrying")
    served_ids = {o.request_id for o in outcomes if o.kind == "ok"}
    uncharged = (unjudged & served_ids) - {r["request_id"] for r in rows}
    if uncharged:
        violations.append(f"{len(uncharged)} requests let through during the outage were never charged")
    return {"traffic": tally(outcomes), "phases": phases, "spend": spend,
            "recovery_s": recovery_s(outcomes, down_at), "facts": facts, "violations": violations}


# ---------------------------------------------------------------- 5. stalled upstream, 529 storm


async def upstream(ctx: Ctx) -> dict[str, Any]:
    lab, plan = ctx.lab, ctx.plan
    phases: dict[str, Any] = {}
    violations: list[str] = []
    load = Load(lab.lb_url, ctx.users("up", 8), rate=plan.rate * 2 / 3)
    marks: list[tuple[str, float]] = []
    async with load:
        await asyncio.to_thread(lab.upstream, "primary", [dict(DEFAULT_REPLY, headers_delay=60)])
        marks.append(("primary stalls (no headers for 60 s)", time.monotonic()))
        await asyncio.sleep(plan.secs(10))
        await asyncio.to_thread(lab.upstream, "primary", [OVERLOADED])
        marks.append(("primary answers 529", time.monotonic()))
        await asyncio.sleep(plan.secs(8))
        await asyncio.to_thread(lab.upstream, "secondary", [OVERLOADED])
        marks.append(("both answer 529", time.monotonic()))
        await asyncio.sleep(plan.secs(5))
        for name in ("primary", "secondary"):
            await asyncio.to_thread(lab.upstream, name, [DEFAULT_REPLY])
        restored = time.monotonic()
        marks.append(("both healthy again", restored))
        await asyncio.sleep(plan.secs(12))
    outcomes = load.outcomes
    marks.append(("end", time.monotonic()))
    for (name, t0), (_, t1) in zip(marks, marks[1:], strict=False):
        part = [o for o in outcomes if t0 <= o.start < t1]
        phases[name] = tally(part)
    first, second, both, back = (phases[m[0]] for m in marks[:4])
    # Failover before the first byte: a stalled or overloaded primary costs time, not answers.
    for label, ph in (("primary stalled", first), ("primary 529", second)):
        if ph["failed"]:
            violations.append(f"{label}: requests failed though the secondary was healthy: {ph['failed']}")
    both_part = [o for o in outcomes if marks[2][1] + 0.5 <= o.start < marks[3][1]]
    if any(o.kind == "ok" for o in both_part):
        pass  # a request that raced the switch may still be served
    wrong = [o for o in both_part if o.kind not in ("ok", "status")]
    if wrong:
        violations.append(f"with every upstream overloaded, answers were not error envelopes: {tally(wrong)['failed']}")
    violations += _envelope_violations(outcomes)
    healthy_again = [o for o in outcomes if o.start >= restored]
    ok_from = next((o.start for o in sorted(healthy_again, key=lambda o: o.start) if o.kind == "ok"), None)
    last_bad = max((o.start for o in healthy_again if o.kind != "ok"), default=None)
    rec = round((last_bad if last_bad is not None else restored) - restored, 2)
    if last_bad is not None and marks[-1][1] - last_bad < 2:
        violations.append("requests were still failing at the end of the step, after both upstreams recovered")
    return {"traffic": tally(outcomes), "phases": phases, "recovery_s": rec,
            "facts": {"first_ok_after_restore_s": round(ok_from - restored, 2) if ok_from else None,
                      "upstream_ttfb_ms": labmod.UPSTREAM_TTFB_MS},
            "violations": violations}


# ---------------------------------------------------------------- 6. slowloris


async def slowloris(ctx: Ctx) -> dict[str, Any]:
    lab, plan = ctx.lab, ctx.plan
    n = plan.slow_connections
    dur = plan.secs(15)
    lifetimes: list[float] = []
    never_closed = opened = refused = 0
    deadline = labmod.HEADER_DEADLINE_S

    async def dribble(r: Replica, stop_at: float) -> None:
        """One header line a second, never the blank line; reconnect when closed, as an attacker would."""
        nonlocal never_closed, opened, refused
        while time.monotonic() < stop_at:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
            except OSError:
                refused += 1
                await asyncio.sleep(0.5)
                continue
            opened += 1
            t0 = time.monotonic()
            writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            i = 0
            try:
                while True:
                    if time.monotonic() >= stop_at:
                        if time.monotonic() - t0 > deadline + 3:
                            never_closed += 1
                        return
                    writer.write(f"X-Slow-{i}: {'a' * 8}\r\n".encode())
                    await writer.drain()
                    i += 1
                    try:
                        if await asyncio.wait_for(reader.read(1024), 1.0) == b"":
                            lifetimes.append(time.monotonic() - t0)
                            break
                    except TimeoutError:
                        continue
            except (ConnectionError, OSError):
                lifetimes.append(time.monotonic() - t0)
            finally:
                writer.close()

    load = Load(lab.lb_url, ctx.users("slow", 8), rate=plan.rate * 2 / 3)
    baseline = Load(lab.lb_url, ctx.users("slow", 8), rate=plan.rate * 2 / 3)
    async with baseline:
        await asyncio.sleep(plan.secs(5))
    async with load:
        stop_at = time.monotonic() + dur
        await asyncio.gather(*(dribble(lab.replicas[i % 3], stop_at) for i in range(n)))
    outcomes = load.outcomes
    violations = _envelope_violations(outcomes)
    if any(o.kind != "ok" for o in outcomes):
        violations.append(f"real clients failed during the slowloris: {tally(outcomes)['failed']}")
    lifetimes.sort()
    if never_closed:
        violations.append(f"{never_closed} dribbling connections outlived the header deadline by more than 3 s")
    if lifetimes and lifetimes[-1] > deadline + 3:
        violations.append(f"a dribbling connection lived {lifetimes[-1]:.1f} s (header deadline {deadline:g} s)")
    if refused:
        violations.append(f"{refused} dribbling connections were refused (the gateway stopped accepting)")
    return {"traffic": tally(outcomes), "baseline_without_slowloris": tally(baseline.outcomes),
            "facts": {"dribbling_at_once": n, "connections_opened": opened, "closed_by_gateway": len(lifetimes),
                      "lifetime_s_min": round(lifetimes[0], 2) if lifetimes else None,
                      "lifetime_s_max": round(lifetimes[-1], 2) if lifetimes else None,
                      "header_read_timeout_seconds": deadline, "load_s": dur},
            "violations": violations}


RUNNERS = {"signin": signin, "caps": caps, "kill": kill, "postgres": postgres, "upstream": upstream,
           "slowloris": slowloris}
