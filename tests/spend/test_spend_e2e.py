"""Spend limits that hold: three gateway processes, one database, 64 concurrent streams of one user.

Costs are computed from the built-in price of claude-sonnet-4-6 ($3 input / $15
output per MTok, i.e. 3 and 15 micro-dollars per token) and the estimate rule:
input ≈ body bytes ÷ 4 at the dearest input rate (1-hour cache write, 2× input),
plus the output allowance at the output rate.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid

import aiohttp
import asyncpg
import pytest

from gateway.auth.tokens import TokenService
from protocol_spec.fakes import Reply, Usage
from tests.harness import JWT_SECRET
from tests.system.test_process import ENV, free_port, spawn, wait_exit, wait_ready

WRITE_KEY = "admin-write-key-0123456789abcdef0123456789"
IN_RATE, OUT_RATE, DEAREST_IN = 3, 15, 6  # µUSD per token
ALLOWANCE = 100
CAP_CENTS = 1
CAP_MICRO = CAP_CENTS * 10_000


def body(max_tokens: int = ALLOWANCE, stream: bool = True) -> bytes:
    doc = {"model": "claude-sonnet-4-6", "max_tokens": max_tokens, "stream": stream, "messages": [{"role": "user", "content": "x" * 100}]}
    return json.dumps(doc, separators=(",", ":")).encode()


ESTIMATE = (len(body()) // 4) * DEAREST_IN + ALLOWANCE * OUT_RATE


class Cluster:
    def __init__(self, urls, procs, public_url, db):
        self.urls, self.procs, self.public_url, self.db = urls, procs, public_url, db
        self.tokens = TokenService((JWT_SECRET,), public_url, 3600)

    def token(self, sub: str, groups=()) -> str:
        return self.tokens.mint(sub=sub, email=f"{sub}@example.com", groups=list(groups), now=int(time.time()))

    async def admin(self, payload: dict, probe: tuple[str, tuple[str, ...]] = ("alice", ())) -> dict:
        """Set a cap, then wait until every replica's limits cache applies it to ``probe`` (sub, groups)."""
        async with aiohttp.ClientSession() as s:
            async with s.post(self.urls[0] + "/v1/organizations/spend_limits", json=payload, headers={"x-api-key": WRITE_KEY}) as r:
                assert r.status == 200, await r.text()
                doc = await r.json()
            auth = {"Authorization": f"Bearer {self.token(probe[0], probe[1])}"}
            for url in self.urls:
                for _ in range(100):
                    async with s.get(url + "/api/oauth/usage", headers=auth) as r:
                        if (await r.json())["limits"]:
                            break
                    await asyncio.sleep(0.02)
                else:
                    raise AssertionError(f"{url} never applied the cap")
        return doc

    async def fetch(self, sql: str, *args):
        conn = await asyncpg.connect(self.db)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()


@pytest.fixture
async def cluster(tmp_path, pg_cluster, fake_upstream):
    """``await cluster(extra_yaml, processes=3)`` → three gateways on one fresh database."""
    started: list = []

    async def make(spend_yaml: str = "", processes: int = 3) -> Cluster:
        db = pg_cluster.create_database("spend_" + uuid.uuid4().hex[:8])
        ports = [free_port() for _ in range(processes)]
        public = f"http://127.0.0.1:{ports[0]}"
        procs = []
        for port in ports:
            cfg = tmp_path / f"gw-{port}.yaml"
            cfg.write_text(
                f"""
listen: {{host: 127.0.0.1, port: {port}, public_url: "{public}"}}
oidc: {{issuer: "http://127.0.0.1:9", client_id: gatehouse, client_secret: x}}
session: {{jwt_secret: "${{JWT}}"}}
store: {{postgres_url: "{db}", max_connections: 20}}
upstreams: [{{provider: anthropic, base_url: "{fake_upstream.url}", auth: {{api_key: "${{UPSTREAM_KEY}}"}}}}]
admin:
  write_keys: [{{id: tests, key: "{WRITE_KEY}"}}]
gatehouse:
  spend:
    output_allowance_tokens: {ALLOWANCE}
{spend_yaml}
"""
            )
            procs.append(spawn("serve", "--config", str(cfg)))
        started.extend(procs)
        for port, proc in zip(ports, procs, strict=True):
            await wait_ready(port, proc)
        return Cluster([f"http://127.0.0.1:{p}" for p in ports], procs, public, db)

    yield make
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in started:
        if proc.poll() is None:
            await wait_exit(proc)


async def fire(cl: Cluster, tokens: list[str], n: int, payload: bytes = body()) -> list[int]:
    """n concurrent requests, spread over the replicas; returns the statuses."""

    async def one(i: int, s: aiohttp.ClientSession) -> int:
        url = cl.urls[i % len(cl.urls)] + "/v1/messages"
        async with s.post(url, data=payload, headers={"Authorization": f"Bearer {tokens[i % len(tokens)]}"}) as r:
            await r.read()
            return r.status

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        return list(await asyncio.gather(*(one(i, s) for i in range(n))))


async def settled(cl: Cluster, timeout: float = 10.0):
    """Wait until no reservation is open; return (reservations, user daily spent)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await cl.fetch("SELECT request_id, state, reserved_micro, settled_micro, sub FROM spend_reservations")
        if all(r["state"] != "open" for r in rows) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    spent = await cl.fetch("SELECT scope_type, scope_id, period, spent_micro, reserved_micro FROM spend_counters")
    return rows, spent


def daily(spent_rows, sub="alice"):
    return next(r for r in spent_rows if r["scope_type"] == "user" and r["scope_id"] == sub and r["period"] == "daily")


async def test_a_c_d_replies_within_the_allowance_never_pass_the_cap(cluster, fake_upstream):
    cl = await cluster()
    await cl.admin({"scope": {"type": "user", "user_id": "alice"}, "amount": str(CAP_CENTS), "period": "daily"})
    fake_upstream.set_default(Reply(stream=True, deltas=4, gap=0.1, usage=Usage(input_tokens=12, output_tokens=50)))
    statuses = await fire(cl, [cl.token("alice")], 64)
    admitted = statuses.count(200)
    assert admitted >= 1 and set(statuses) <= {200, 429}
    # (a) settled spend within the cap, below.
    rows, spent = await settled(cl)
    mine = [r for r in rows if r["sub"] == "alice"]
    # (c) every admitted request settled exactly once; refused ones hold nothing.
    assert sum(1 for r in mine if r["state"] == "settled" and r["settled_micro"] > 0) == admitted
    assert daily(spent)["spent_micro"] == sum(r["settled_micro"] or 0 for r in mine)
    assert daily(spent)["reserved_micro"] == 0
    assert daily(spent)["spent_micro"] <= CAP_MICRO
    # (d) keep asking one at a time until refused; after that, nothing more is admitted.
    for _ in range(40):
        if (await fire(cl, [cl.token("alice")], 1))[0] == 429:
            break
    else:
        raise AssertionError("never refused")
    assert await fire(cl, [cl.token("alice")], 8) == [429] * 8
    _, spent = await settled(cl)
    assert daily(spent)["spent_micro"] <= CAP_MICRO


async def test_429_and_usage_headers(cluster, fake_upstream):
    cl = await cluster()
    await cl.admin({"scope": {"type": "user", "user_id": "alice"}, "amount": "100", "period": "daily"})
    fake_upstream.set_default(Reply(stream=False, usage=Usage(input_tokens=12, output_tokens=50)))
    tok = cl.token("alice")
    async with aiohttp.ClientSession() as s:
        async with s.post(cl.urls[1] + "/v1/messages", data=body(stream=False), headers={"Authorization": f"Bearer {tok}"}) as r:
            assert r.status == 200
            h = r.headers
            assert h["anthropic-ratelimit-unified-status"] == "allowed"
            assert h["anthropic-ratelimit-unified-representative-claim"] == "overage"
            assert int(h["anthropic-ratelimit-unified-reset"]) == int(h["anthropic-ratelimit-unified-overage-reset"])
        async with s.get(cl.urls[2] + "/api/oauth/usage", headers={"Authorization": f"Bearer {tok}"}) as r:
            doc = await r.json()
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            assert doc["limits"][0]["group"] == "daily" and doc["extra_usage"]["monthly_limit"] == 100
        await cl.admin({"scope": {"type": "user", "user_id": "alice"}, "amount": "0", "period": "daily"})
        async with s.post(cl.urls[2] + "/v1/messages", data=body(stream=False), headers={"Authorization": f"Bearer {tok}"}) as r:
            assert r.status == 429
            assert r.headers["x-should-retry"] == "false"
            assert r.headers["anthropic-ratelimit-unified-status"] == "rejected"
            assert r.headers["anthropic-ratelimit-unified-overage-disabled-reason"] == "org_spend_cap_reached"
            assert "anthropic-ratelimit-unified-representative-claim" not in r.headers
            assert "anthropic-ratelimit-unified-overage-status" not in r.headers
            assert (await r.json()) == {"type": "error", "error": {"type": "billing_error", "message": "spend limit reached"}}
        # count_tokens is never blocked.
        async with s.post(cl.urls[0] + "/v1/messages/count_tokens", data=body(stream=False), headers={"Authorization": f"Bearer {tok}"}) as r:
            assert r.status == 200
        # No cap → no usage headers.
        async with s.post(cl.urls[0] + "/v1/messages", data=body(stream=False), headers={"Authorization": f"Bearer {cl.token('bob')}"}) as r:
            assert r.status == 200 and "anthropic-ratelimit-unified-status" not in r.headers


@pytest.mark.parametrize("cut", [False, True])
async def test_b_replies_larger_than_the_allowance_overshoot_only_as_the_guarantee_allows(cluster, fake_upstream, cut):
    cl = await cluster(f"    topup_tokens: 64\n    cut_streams_at_cap: {str(cut).lower()}\n")
    await cl.admin({"scope": {"type": "user", "user_id": "alice"}, "amount": str(CAP_CENTS), "period": "daily"})
    # 400 output tokens each, four times the allowance, in 10 deltas of ~40 tokens.
    text = "y" * 1600
    fake_upstream.set_default(Reply(stream=True, deltas=10, gap=0.05, text=text, usage=Usage(input_tokens=12, output_tokens=400)))
    statuses = await fire(cl, [cl.token("alice")], 64, body(max_tokens=1000))
    rows, spent = await settled(cl)
    admitted = [r for r in rows if r["sub"] == "alice" and (r["settled_micro"] or 0) > 0]
    assert len(admitted) == statuses.count(200)
    # What each request produced beyond what it had been granted (its final reservation).
    overshoots = [max(0, r["settled_micro"] - r["reserved_micro"]) for r in admitted]
    total = daily(spent)["spent_micro"]
    assert total <= CAP_MICRO + sum(overshoots)
    if cut:
        # Cut at the grant: at most one event's worth of output (~40 tokens of text plus framing) each.
        assert max(overshoots, default=0) <= 80 * OUT_RATE + 12 * IN_RATE
    assert await fire(cl, [cl.token("alice")], 4) == [429] * 4


async def test_e_group_pool_shared_by_several_users(cluster, fake_upstream):
    cl = await cluster()
    await cl.admin(
        {"scope": {"type": "rbac_group", "rbac_group_id": "team"}, "amount": "1000", "period": "monthly",
         "pooled_limit_enabled": True, "pooled_monthly_credit_limit": str(CAP_CENTS)},
        probe=("u1", ("team",)),
    )
    fake_upstream.set_default(Reply(stream=True, deltas=3, gap=0.05, usage=Usage(input_tokens=12, output_tokens=50)))
    tokens = [cl.token(u, groups=["team"]) for u in ("u1", "u2", "u3")]
    statuses = await fire(cl, tokens, 60)
    assert statuses.count(200) >= 1 and 429 in statuses
    _, spent = await settled(cl)
    pool = next(r for r in spent if r["scope_type"] == "group_pool" and r["scope_id"] == "team")
    assert pool["spent_micro"] <= CAP_MICRO
    users = sum(r["spent_micro"] for r in spent if r["scope_type"] == "user" and r["period"] == "monthly")
    assert users == pool["spent_micro"]  # every member's spend charged the pool


async def test_f_killed_process_reservation_expires_and_settles_once(cluster, fake_upstream):
    cl = await cluster("    reservation_ttl_seconds: 2\n    leases: false\n")
    await cl.admin({"scope": {"type": "user", "user_id": "alice"}, "amount": "100", "period": "daily"})
    fake_upstream.set_default(Reply(stream=True, deltas=40, gap=0.5, usage=Usage(input_tokens=12, output_tokens=50)))
    tok = cl.token("alice")
    async with aiohttp.ClientSession() as s:
        responses = [await s.post(cl.urls[0] + "/v1/messages", data=body(), headers={"Authorization": f"Bearer {tok}"}) for _ in range(3)]
        for r in responses:
            assert r.status == 200
            await r.content.readuntil(b"\n\n")
        cl.procs[0].send_signal(signal.SIGKILL)  # mid-stream: no settlement will come from it
        await wait_exit(cl.procs[0])
        for r in responses:
            r.close()
    rows, spent = await settled(cl, timeout=20)
    mine = [r for r in rows if r["sub"] == "alice"]
    assert len(mine) == 3 and all(r["state"] == "expired" for r in mine)
    # Charged exactly its reserved amount, once.
    assert daily(spent)["spent_micro"] == sum(r["reserved_micro"] for r in mine)
    assert daily(spent)["reserved_micro"] == 0
    flagged = await cl.fetch("SELECT target FROM admin_audit WHERE action = 'spend.reservation_expired'")
    assert {r["target"] for r in flagged} >= {r["request_id"] for r in mine} or len(flagged) == 3


async def test_f_killed_process_lease_charges_what_its_requests_held(cluster, fake_upstream):
    """A replica dies holding a lease: the expiry charges what its running requests held at the
    last renewal and frees the rest; the request admitted through the database expires as usual."""
    cl = await cluster("    reservation_ttl_seconds: 2\n    lease_ttl_seconds: 4\n", processes=2)
    await cl.admin({"scope": {"type": "user", "user_id": "alice"}, "amount": "100", "period": "daily"})
    fake_upstream.set_default(Reply(stream=True, deltas=40, gap=0.5, usage=Usage(input_tokens=12, output_tokens=50)))
    tok = cl.token("alice")
    async with aiohttp.ClientSession() as s:
        responses = []
        for _ in range(3):
            r = await s.post(cl.urls[0] + "/v1/messages", data=body(), headers={"Authorization": f"Bearer {tok}"})
            assert r.status == 200
            await r.content.readuntil(b"\n\n")
            responses.append(r)
            await asyncio.sleep(0.3)  # the first admission's lease is granted meanwhile
        await asyncio.sleep(1.5)  # a renewal writes down what the leased requests hold
        cl.procs[0].send_signal(signal.SIGKILL)
        await wait_exit(cl.procs[0])
        for r in responses:
            r.close()
    rows, spent = await settled(cl, timeout=20)
    mine = [r for r in rows if r["sub"] == "alice"]
    requests = [r for r in mine if r["request_id"].startswith("req_")]
    leases = [r for r in mine if r["request_id"].startswith("lease:")]
    assert len(requests) == 1 and requests[0]["state"] == "expired"
    assert len(leases) == 1 and leases[0]["state"] == "expired"
    estimate = requests[0]["reserved_micro"]
    assert leases[0]["reserved_micro"] > 2 * estimate  # the lease held more than its requests
    assert leases[0]["settled_micro"] == 2 * estimate  # ... and is charged only what they held
    assert daily(spent)["spent_micro"] == 3 * estimate
    assert daily(spent)["reserved_micro"] == 0
    flagged = await cl.fetch("SELECT target, after FROM admin_audit WHERE action = 'spend.lease_expired'")
    assert len(flagged) == 1 and json.loads(flagged[0]["after"])["charged_micro"] == 2 * estimate


async def test_leases_on_three_processes_never_pass_the_cap(cluster, fake_upstream):
    """A cap with room for leases (an eighth of it is worth many requests): waves of 64 concurrent
    streams on three gateway processes until every request is refused. Admissions come from leases
    most of the time, yet settled plus reserved spend never passes the cap, and at the end what
    was spent is within a few requests of it (no headroom stranded in a lease)."""
    cap_cents = 30
    cap = cap_cents * 10_000
    cl = await cluster()
    await cl.admin({"scope": {"type": "user", "user_id": "alice"}, "amount": str(cap_cents), "period": "daily"})
    fake_upstream.set_default(Reply(stream=True, deltas=4, gap=0.02, usage=Usage(input_tokens=12, output_tokens=50)))
    tok = cl.token("alice")
    admitted = 0
    refused_waves = 0
    for _ in range(40):
        statuses = await fire(cl, [tok], 64)
        assert set(statuses) <= {200, 429}
        admitted += statuses.count(200)
        counters = await cl.fetch("SELECT spent_micro, reserved_micro FROM spend_counters WHERE scope_id = 'alice' AND period = 'daily'")
        assert counters[0]["spent_micro"] + counters[0]["reserved_micro"] <= cap
        refused_waves = 0 if 200 in statuses else refused_waves + 1
        if refused_waves == 2:
            break
        if refused_waves:
            # Near the cap, leases used up by the last wave still hold their crumbs (less than a
            # request each) until the next renewal gives them back: ask once more after it.
            await asyncio.sleep(1.5)
    else:
        raise AssertionError("the cap never closed")
    await asyncio.sleep(0.3)  # the last settlements land
    rows = await cl.fetch("SELECT request_id, state, settled_micro FROM spend_reservations WHERE sub = 'alice'")
    assert sum(1 for r in rows if r["request_id"].startswith("lease:")) >= 2  # leases were in use
    settled_requests = [r for r in rows if r["request_id"].startswith("req_") and r["state"] == "settled" and r["settled_micro"]]
    assert len(settled_requests) == admitted  # every admitted request settled, exactly once
    counters = await cl.fetch("SELECT spent_micro, reserved_micro FROM spend_counters WHERE scope_id = 'alice' AND period = 'daily'")
    spent = counters[0]["spent_micro"]
    assert spent == sum(r["settled_micro"] for r in settled_requests)
    assert spent + counters[0]["reserved_micro"] <= cap
    assert spent > cap - 4 * ESTIMATE
