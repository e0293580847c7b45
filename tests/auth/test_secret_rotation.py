"""Rotating ``session.jwt_secret`` without signing anyone out, against a real PostgreSQL.

Stored IdP refresh tokens are re-sealed under the newest secret by every refresh
and, for families nobody refreshes, by the ``signin.reseal`` job
(gateway.auth.resealing); ``gatehouse sessions audit-secrets`` says when the old
secret may go. The IdP stands where it does in the gateway: ``FakeIdp.recheck``
for the session store, the scripted IdP (which keeps its refresh tokens unless
told to rotate them) for whole gateways.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.app.jobs import JOBS
from gateway.auth import resealing
from gateway.auth.device_store import Approved, DeviceStore
from gateway.auth.sealing import Sealer
from gateway.auth.session_store import SessionService
from gateway.auth.tokens import TokenService
from gateway.config.schema import Store as StoreCfg
from gateway.db.store import Store
from tests.auth.test_session_store import ALICE, ISSUER, TTL_S, Events, FakeIdp, expect_oauth, rt
from tests.harness import BASE_CONFIG, Clock

S0, S1, S2, S3 = (f"rotation-secret-{n}-" + n * 32 for n in "0123")


def seal_index(secrets: tuple[str, ...], sealed: bytes) -> int | None:
    return resealing.idp_sealer(secrets).opened_by(sealed)


# -- the pure part -------------------------------------------------------------------


def test_sealer_tells_which_secret_opens_a_value_and_reseals_it_under_the_first():
    old = Sealer((S0,), "p")
    rotated = Sealer((S1, S0), "p")
    sealed = old.seal(b"idp-token")
    assert rotated.opened_by(sealed) == 1
    assert rotated.opened_by(rotated.seal(b"x")) == 0
    moved = rotated.reseal(sealed)
    assert moved is not None and rotated.opened_by(moved) == 0
    assert Sealer((S1,), "p").open(moved) == b"idp-token"
    # Another purpose's key never opens it, and neither does a secret not listed.
    assert Sealer((S1, S0), "other").opened_by(sealed) is None
    assert Sealer((S2,), "p").reseal(sealed) is None
    assert rotated.secret_count == 2


def test_plan_reseals_only_what_an_older_secret_opens():
    rotated = resealing.idp_sealer((S1, S0))
    rows = [
        {"id": "current", "sealed": rotated.seal(b"a")},
        {"id": "older", "sealed": resealing.idp_sealer((S0,)).seal(b"b")},
        {"id": "lost", "sealed": resealing.idp_sealer((S2,)).seal(b"c")},
    ]
    todo = resealing.plan(rows, rotated)
    assert todo.ids == ["older"] and todo.old == [rows[1]["sealed"]] and todo.unreadable == 1
    assert rotated.opened_by(todo.new[0]) == 0 and rotated.open(todo.new[0]) == b"b"
    counts = {"families": resealing.Counter({0: 4, 1: 2, None: 1}), "device_grants": resealing.Counter({2: 1})}
    assert resealing.blocking(counts, keep=1) == 3
    assert resealing.blocking(counts, keep=2) == 1
    assert resealing.blocking(counts, keep=3) == 0


# -- the session store ---------------------------------------------------------------


@pytest.fixture
async def store(pg_cluster):
    """A database of its own: the re-seal job and the audit scan every row in it."""
    url = pg_cluster.create_database("rotation_" + uuid.uuid4().hex[:10])
    opened = await Store.open(StoreCfg(url, connect_timeout_seconds=2), log=lambda level, msg: None)
    await opened.migrate()
    opened.url = url  # type: ignore[attr-defined]  # for the CLI's config
    yield opened
    await opened.close()


def service(store, secrets, clock, events=None) -> SessionService:
    return SessionService(
        store,
        TokenService(secrets, ISSUER, TTL_S),
        secrets=secrets,
        clock=clock,
        emit=events if events is not None else Events(),
        log=lambda level, msg: None,
    )


async def stored_token(store, family_id: str) -> bytes:
    return await store.pool.fetchval("SELECT idp_refresh_token FROM session_families WHERE family_id = $1", family_id)


async def family_of(store, pair) -> str:
    # The access token's sid names the family.
    return TokenService((S0, S1, S2, S3), ISSUER, TTL_S).verify_ignoring_time(pair.access_token).sid


async def test_a_refresh_reseals_the_kept_idp_token_so_the_old_secret_can_go(store):
    clock = Clock()
    idp = FakeIdp()  # keeps its refresh token: recheck returns no new one
    first = await service(store, (S0,), clock).start_family(ALICE, "idp-rt", client_ip=None)
    family = await family_of(store, first)
    assert seal_index((S1, S0), await stored_token(store, family)) == 1

    second = await service(store, (S1, S0), clock).refresh(rt(first), idp.recheck, client_ip=None)
    assert seal_index((S1, S0), await stored_token(store, family)) == 0
    third = await service(store, (S1,), clock).refresh(rt(second), idp.recheck, client_ip=None)
    assert third.refresh_token and idp.calls == ["idp-rt", "idp-rt"]


async def test_a_token_the_idp_rotated_is_stored_under_the_current_secret(store):
    clock = Clock()
    idp = FakeIdp()
    idp.rotate = True
    first = await service(store, (S0,), clock).start_family(ALICE, "idp-rt", client_ip=None)
    await service(store, (S1, S0), clock).refresh(rt(first), idp.recheck, client_ip=None)
    sealed = await stored_token(store, await family_of(store, first))
    assert resealing.idp_sealer((S1,)).open(sealed) == b"idp-rt-1"


async def test_a_truly_unreadable_idp_token_still_ends_the_family(store):
    clock = Clock()
    events = Events()
    first = await service(store, (S0,), clock).start_family(ALICE, "idp-rt", client_ip=None)
    # The re-seal job leaves it alone: no listed secret opens it.
    logged: list[str] = []
    job = resealing.Resealer(lambda: store.pool, resealing.idp_sealer((S2, S1)), clock=clock, log=lambda lvl, m: logged.append(m))
    await job.run_once()
    assert seal_index((S0,), await stored_token(store, await family_of(store, first))) == 0
    assert "0 stored IdP refresh token(s)" in logged[0] and "1 open under no listed secret" in logged[0]

    await expect_oauth(service(store, (S2, S1), clock, events).refresh(rt(first), FakeIdp().recheck, client_ip=None), "invalid_grant", 401)
    assert events.named("session.refresh")[-1]["reason"] == "idp_token_unreadable"
    assert events.named("session.revoke")[-1]["reason"] == "idp_token_unreadable"


# -- the re-seal job -----------------------------------------------------------------


async def approve_device(store, sealer: Sealer, now: datetime, token: bytes = b"dev-rt") -> bytes:
    devices = DeviceStore(store)
    code_hash = uuid.uuid4().bytes
    assert await devices.create(
        device_code_hash=code_hash, user_code=uuid.uuid4().hex[:8].upper(), surface=None, client_ip=None, now=now, ttl_s=600
    )
    assert await devices.approve(code_hash, now, Approved("sub-alice", "alice@example.com", None, (), sealer.seal(token)))
    return code_hash


async def test_the_reseal_job_moves_every_live_token_in_bounded_pages_then_rests(store):
    clock = Clock()
    old = service(store, (S0,), clock)
    families = [await family_of(store, await old.start_family(ALICE, f"idp-rt-{i}", client_ip=None)) for i in range(5)]
    revoked = await family_of(store, await old.start_family(ALICE, "idp-rt-revoked", client_ip=None))
    await old.revoke_family(revoked, "admin_revoke")
    device = await approve_device(store, resealing.idp_sealer((S0,)), datetime.fromtimestamp(clock(), UTC))
    # Past its maximum lifetime a family cannot be refreshed: nothing to move.
    clock.advance(-old.max_lifetime_s - 10)
    ended = await family_of(store, await old.start_family(ALICE, "idp-rt-ended", client_ip=None))
    clock.advance(old.max_lifetime_s + 10)

    logged: list[str] = []
    job = resealing.Resealer(
        lambda: store.pool, resealing.idp_sealer((S1, S0)), clock=clock, batch=2, rest_s=600, log=lambda lvl, m: logged.append(m)
    )
    for run in (1, 2):
        await job.run_once()
        # Two families per run: a page at a time, never the whole table.
        moved = [seal_index((S1, S0), await stored_token(store, f)) for f in families]
        assert moved.count(0) == 2 * run
    await job.run_once()  # the last page: one family, and the pass ends
    for family in families:
        assert seal_index((S1, S0), await stored_token(store, family)) == 0
    for family in (revoked, ended):
        assert seal_index((S1, S0), await stored_token(store, family)) == 1
    sealed_device = await store.pool.fetchval("SELECT idp_refresh_token FROM device_grants WHERE device_code_hash = $1", device)
    assert resealing.idp_sealer((S1,)).open(sealed_device) == b"dev-rt"
    assert logged == [
        "re-sealed 6 stored IdP refresh token(s) under the current session.jwt_secret; "
        "0 open under no listed secret (those people sign in again)"
    ]


async def test_after_a_pass_that_moved_something_the_job_looks_again_then_rests(store):
    clock = Clock()
    old = service(store, (S0,), clock)
    first = await old.start_family(ALICE, "idp-rt", client_ip=None)
    job = resealing.Resealer(lambda: store.pool, resealing.idp_sealer((S1, S0)), clock=clock, rest_s=600, log=lambda lvl, m: None)
    await job.run_once()  # moves it
    await job.run_once()  # looks again at once (a replica may still seal under S0): nothing; rests
    # A replica not yet rolled signs someone in under the old secret.
    late = await family_of(store, await old.start_family(ALICE, "idp-rt-late", client_ip=None))
    await job.run_once()
    clock.advance(599)
    await job.run_once()
    assert seal_index((S1, S0), await stored_token(store, late)) == 1  # still resting
    clock.advance(2)
    await job.run_once()
    assert seal_index((S1, S0), await stored_token(store, late)) == 0
    # And with the old secret dropped, the family moved first refreshes.
    idp = FakeIdp()
    assert (await service(store, (S1,), clock).refresh(rt(first), idp.recheck, client_ip=None)).refresh_token
    assert idp.calls == ["idp-rt"]


async def test_replicas_resealing_at_once_write_each_row_once(store):
    clock = Clock()
    old = service(store, (S0,), clock)
    for i in range(7):
        await old.start_family(ALICE, f"idp-rt-{i}", client_ip=None)
    logs: list[list[str]] = [[], []]
    jobs = [
        resealing.Resealer(lambda: store.pool, resealing.idp_sealer((S1, S0)), clock=clock, batch=3, log=lambda lvl, m, k=k: logs[k].append(m))
        for k in (0, 1)
    ]
    for _ in range(3):
        await asyncio.gather(*(job.run_once() for job in jobs))
    total = 0
    for lines in logs:
        for line in lines:
            total += int(line.split()[1])
    assert total == 7  # compare and swap: whoever came second found the row changed
    rows = await store.pool.fetch("SELECT idp_refresh_token FROM session_families")
    assert [seal_index((S1, S0), r["idp_refresh_token"]) for r in rows] == [0] * 7


async def test_the_job_skips_a_round_when_the_database_is_down(store):
    logged: list[tuple[str, str]] = []
    gone = await Store.open(StoreCfg(store.url, connect_timeout_seconds=2), log=lambda level, msg: None)
    await gone.close()
    job = resealing.Resealer(lambda: gone.pool, resealing.idp_sealer((S1, S0)), clock=Clock(), log=lambda lvl, m: logged.append((lvl, m)))
    await job.run_once()
    assert logged and logged[0][0] == "warn" and "re-sealing IdP refresh tokens skipped" in logged[0][1]


# -- gatehouse sessions audit-secrets ------------------------------------------------


def audit_cli(tmp_path, store, secrets: tuple[str, ...], *args: str) -> subprocess.CompletedProcess[str]:
    listed = "[" + ", ".join(secrets) + "]"
    text = BASE_CONFIG.format(
        jwt_secret=listed, pg_url=store.url, issuer="http://127.0.0.1:9", port=8080, extra="",
        upstreams="  - provider: anthropic\n    base_url: http://127.0.0.1:9\n    auth:\n      api_key: sk-ant-test",
    )  # fmt: skip
    path = tmp_path / f"audit-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(text)
    env = dict(os.environ, CLAUDE_GATEWAY_ALLOW_LOOPBACK="1")
    return subprocess.run(
        [sys.executable, "-m", "gateway", "sessions", "audit-secrets", "--config", str(path), *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_audit_secrets_counts_stored_tokens_and_exits_3_while_one_needs_a_dropped_secret(store, tmp_path):
    clock = Clock()
    for secrets, n in (((S0,), 2), ((S1, S0), 1), ((S2,), 1)):
        for i in range(n):
            await service(store, secrets, clock).start_family(ALICE, f"idp-rt-{i}", client_ip=None)
    await approve_device(store, resealing.idp_sealer((S0,)), datetime.now(UTC))
    await approve_device(store, resealing.idp_sealer((S0,)), datetime.now(UTC) - timedelta(hours=1))  # expired: not counted
    revoked = await service(store, (S0,), clock).start_family(ALICE, "idp-rt", client_ip=None)
    await service(store, (S0,), clock).revoke_family(await family_of(store, revoked), "admin_revoke")

    done = await asyncio.to_thread(audit_cli, tmp_path, store, (S1, S0), "--json")
    assert done.returncode == 3, done.stderr
    doc = json.loads(done.stdout)
    assert doc == {
        "configured_secrets": 2,
        "keep": 1,
        "data": [
            {"secret_index": 0, "families": 1, "device_grants": 0},
            {"secret_index": 1, "families": 2, "device_grants": 1},
            {"secret_index": None, "families": 1, "device_grants": 0},
        ],
        "blocking": 3,
        "safe_to_drop": False,
    }
    table = await asyncio.to_thread(audit_cli, tmp_path, store, (S1, S0))
    assert table.returncode == 3
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["SECRET", "FAMILIES", "DEVICE", "GRANTS"]
    assert lines[1].split() == ["0", "(current)", "1", "0"]
    assert lines[2].split() == ["1", "(to", "drop)", "2", "1"]
    assert lines[3].split() == ["none", "(unreadable)", "1", "0"]
    assert lines[4].startswith("NOT safe to drop secret(s) 1: 3 stored token(s)")
    assert lines[5] == "1 stored token(s) open under no configured secret: those people sign in again"

    # Keeping both: nothing is dropped, so nothing blocks.
    kept = await asyncio.to_thread(audit_cli, tmp_path, store, (S1, S0), "--keep", "2")
    assert kept.returncode == 0 and "all 2 configured secret(s) are kept" in kept.stdout

    # After the re-seal job has run, dropping S0 is safe.
    job = resealing.Resealer(lambda: store.pool, resealing.idp_sealer((S1, S0)), clock=clock, log=lambda lvl, m: None)
    await job.run_once()
    after = await asyncio.to_thread(audit_cli, tmp_path, store, (S1, S0))
    assert after.returncode == 0, after.stdout
    assert "safe to drop secret(s) 1: no stored token needs them" in after.stdout

    bad = await asyncio.to_thread(audit_cli, tmp_path, store, (S1, S0), "--keep", "0")
    assert bad.returncode == 2 and "--keep must be at least 1" in bad.stderr


def test_list_and_revoke_still_need_an_email(tmp_path):
    env = dict(os.environ, CLAUDE_GATEWAY_ALLOW_LOOPBACK="1")
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "sessions", "list", "--config", str(tmp_path / "none.yaml")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "sessions list needs --email" in done.stderr


# -- whole gateways: three rotations across two replicas -------------------------------


async def test_sessions_survive_three_rotations_across_two_replicas(pg_cluster, fake_upstream):
    from tests.auth.test_signin import ALICE as ALICE_CLAIMS
    from tests.auth.test_signin import refresh, sign_in
    from tests.harness import free_port, make_config, start_gateway, upstream_block
    from tests.scripted_idp import ScriptedIdp

    db = pg_cluster.create_database("rotations_" + uuid.uuid4().hex[:8])
    ports = [free_port(), free_port()]
    idp = ScriptedIdp(client_id="gatehouse-tests", client_secret="gatehouse-tests-secret", users={"alice": dict(ALICE_CLAIMS)})
    assert idp.rotate_refresh_tokens is False  # the case where our sealed copy is all there is

    async def replicas(secrets: tuple[str, ...]) -> list[Any]:
        base = BASE_CONFIG.replace("jwt_secret: {jwt_secret}", "jwt_secret: [" + ", ".join(secrets) + "]")
        return [
            await start_gateway(make_config(db, [upstream_block(fake_upstream.url)], issuer=idp.issuer, port=port, base=base))
            for port in ports
        ]

    async def close(gws: list[Any]) -> None:
        for gw in gws:
            await gw.close()

    async with idp:
        gws = await replicas((S0,))
        try:
            _, _, status, busy = await sign_in(gws[0])  # refreshed at every step
            assert status == 200, busy
            _, _, status, idle = await sign_in(gws[1])  # refreshed only at the very end
            assert status == 200, idle
        finally:
            await close(gws)
        tokens = {"busy": busy["refresh_token"], "idle": idle["refresh_token"]}
        for old, new in ((S0, S1), (S1, S2), (S2, S3)):
            # Step 1: prepend the new secret and roll both replicas.
            gws = await replicas((new, old))
            try:
                status, _, doc = await refresh(gws[0], tokens["busy"])
                assert status == 200, doc
                tokens["busy"] = doc["refresh_token"]
                # Step 2: the re-seal job (one run on one replica) moves the idle family.
                (job,) = [j for j in gws[1].app[JOBS].jobs if j.name == "signin.reseal"]
                await job.run()
            finally:
                await close(gws)
            # Step 3: drop the old secret and roll again; both families still refresh.
            gws = await replicas((new,))
            try:
                assert not [j for j in gws[0].app[JOBS].jobs if j.name == "signin.reseal"]
                status, _, doc = await refresh(gws[1], tokens["busy"])
                assert status == 200, doc
                tokens["busy"] = doc["refresh_token"]
            finally:
                await close(gws)
        gws = await replicas((S3,))
        try:
            status, _, doc = await refresh(gws[0], tokens["idle"])
            assert status == 200, doc
        finally:
            await close(gws)
