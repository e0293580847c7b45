"""``gatehouse privacy``: export and erasure of one person, against a real PostgreSQL.

Ann is stored in every table that can name a person (rows written as the
gateway writes them: usage through the store's batch insert, the rest with
the columns of sql/migrations); Bob shares her group's pooled budget and must
come out of her erasure untouched. The last tests run the command itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from gateway.admin import privacy
from gateway.db.store import Store, UsageRow
from gateway.spend.caps import period_bounds
from tests.harness import JWT_SECRET, make_config, upstream_block
from tests.system.test_process import ENV, GATEHOUSE, free_port, write_config

NOW = datetime(2027, 3, 10, 15, 30, tzinfo=UTC)
EMAIL = "Ann@Example.com"
ANN, BOB = "sub-ann-7f3e", "sub-bob-19c2"
ANN_IPS = ("10.0.0.7", "10.0.0.8")
KEY = privacy.pseudonym_key(JWT_SECRET)
ALIAS = privacy.pseudonym(KEY, ANN)
MONTH = period_bounds("monthly", NOW)[0]
TABLES = (
    "principals", "session_families", "session_refresh_tokens", "device_grants", "usage_records", "usage_daily",
    "spend_counters", "spend_reservations", "spend_limits", "admin_audit", "rate_counters",
)  # fmt: skip


@pytest.fixture(scope="module")
async def store(pg_url: str):
    opened = await Store.open(make_config(pg_url, [upstream_block("http://127.0.0.1:9")]).store)
    await opened.migrate()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def db(pg_url: str, store: Store):
    conn = await asyncpg.connect(pg_url)
    await conn.execute("TRUNCATE " + ", ".join(TABLES))
    try:
        yield conn
    finally:
        await conn.close()


def opaque(*parts: object) -> str:
    """An id like the gateway's (random-looking, naming no one), the same for the same parts."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


async def seed(db, store: Store, sub: str, email: str, ip: str, *, n: int = 1) -> None:
    """One person in every table, as the gateway would have left them."""
    await db.execute(
        "INSERT INTO principals (sub, email, name, groups, updated_at) VALUES ($1, $2, $3, '[\"eng\"]', $4)",
        sub, email.lower(), f"name of {sub}", NOW,
    )  # fmt: skip
    family = opaque("family", sub, n)
    await db.execute(
        "INSERT INTO session_families (family_id, sub, email, name, groups, client_ip, created_at, expires_at,"
        " last_access_exp, idp_refresh_token) VALUES ($1, $2, $3, $4, '{eng}', $5, $6, $7, $8, '\\x0102')",
        family, sub, email, f"name of {sub}", ip, NOW - timedelta(days=1), NOW + timedelta(days=29), NOW + timedelta(hours=1),
    )  # fmt: skip
    await db.execute(
        "INSERT INTO session_refresh_tokens (token_hash, family_id, issued_at) VALUES ($1, $2, $3)",
        opaque("token", family).encode(), family, NOW - timedelta(hours=1),
    )  # fmt: skip
    await db.execute(
        "INSERT INTO device_grants (device_code_hash, user_code, status, client_ip, created_at, expires_at, sub, email,"
        " name, groups) VALUES ($1, $2, 'consumed', $3, $4, $5, $6, $7, $8, '[\"eng\"]')",
        opaque("device", family).encode(), opaque("code", family)[:8].upper(), ip, NOW - timedelta(days=1), NOW + timedelta(days=1), sub, email,
        f"name of {sub}",
    )  # fmt: skip
    for prefix in privacy.RATE_KEY_PREFIXES:
        await db.execute(
            "INSERT INTO rate_counters (key, window_start, hits) VALUES ($1, $2, 3) ON CONFLICT DO NOTHING",
            prefix + ip, NOW,
        )  # fmt: skip
    await store.insert_usage([
        UsageRow(request_id=opaque("request", sub, n, i), ts=NOW - timedelta(days=i), sub=sub, email=email, model="claude-sonnet-4-5",
                 upstream="anthropic", status=200, input_tokens=100, output_tokens=50, path="/v1/messages")
        for i in range(3)
    ])  # fmt: skip
    await db.execute(
        "INSERT INTO usage_daily (day, sub, model, upstream, requests, input_tokens, updated_at)"
        " VALUES ($1, $2, 'claude-sonnet-4-5', 'anthropic', 10, 1000, $3)",
        (NOW - timedelta(days=500)).date(), sub, NOW,
    )  # fmt: skip
    await db.execute(
        "INSERT INTO spend_counters (scope_type, scope_id, period, period_start, spent_micro, updated_at)"
        " VALUES ('user', $1, 'monthly', $2, 400000, $3)"
        " ON CONFLICT (scope_type, scope_id, period, period_start) DO UPDATE SET spent_micro = spend_counters.spent_micro + 400000",
        sub, MONTH, NOW,
    )  # fmt: skip
    await db.execute(
        "INSERT INTO spend_counters (scope_type, scope_id, period, period_start, spent_micro, updated_at)"
        " VALUES ('group_pool', 'eng', 'monthly', $1, 400000, $2)"
        " ON CONFLICT (scope_type, scope_id, period, period_start) DO UPDATE SET spent_micro = spend_counters.spent_micro + 400000",
        MONTH, NOW,
    )  # fmt: skip
    await db.execute(
        "INSERT INTO spend_reservations (request_id, sub, model, key_types, key_ids, key_periods, key_starts,"
        " reserved_micro, state, created_at, expires_at, settled_at, settled_micro)"
        " VALUES ($1, $2, 'claude-sonnet-4-5', '{user,group_pool}', ARRAY[$2, 'eng'], '{monthly,monthly}', ARRAY[$3, $3]::timestamptz[],"
        " 0, 'settled', $4, $4, $4, 400000)",
        opaque("request", sub, n, 0), sub, MONTH, NOW,
    )  # fmt: skip
    await db.execute(
        "INSERT INTO admin_audit (at, actor, action, target, before, after, reason) VALUES"
        " ($1, 'gatehouse', 'spend.reservation_expired', 'user:' || $2, $3::jsonb, NULL, $4)",
        NOW, sub, json.dumps({"request_id": opaque("request", sub, n, 0), "note": f"seen as {email.upper()}"}), f"reservation of {sub} expired",
    )  # fmt: skip


async def seed_caps(db) -> None:
    """A cap on Ann, one she set as an OIDC admin, a pooled group budget (Bob's too)."""
    await db.execute(
        "INSERT INTO spend_limits (id, scope_type, scope_id, period, amount_cents, created_at, updated_at, created_by) VALUES"
        " ('spl_ann', 'user', $1, 'monthly', 5000, $2, $2, 'admin-key:ops'),"
        " ('spl_org', 'organization', '', 'monthly', 100000, $2, $2, 'oidc:' || $1),"
        " ('spl_eng', 'rbac_group', 'eng', 'monthly', NULL, $2, $2, 'admin-key:ops')",
        ANN, NOW,
    )  # fmt: skip
    await db.execute("UPDATE spend_limits SET pooled_limit_enabled = true, pooled_monthly_credit_limit_cents = 100 WHERE id = 'spl_eng'")
    await db.execute(
        "INSERT INTO admin_audit (at, actor, action, target, before, after) VALUES"
        " ($1, 'oidc:' || $2, 'spend_limit.upsert', 'spl_ann', NULL, $3::jsonb)",
        NOW, ANN, json.dumps({"scope": {"type": "user", "id": ANN}, "email": EMAIL.lower()}),
    )  # fmt: skip


@pytest.fixture
async def people(db, store):
    await seed(db, store, ANN, EMAIL, ANN_IPS[0], n=1)
    await seed(db, store, BOB, "bob@example.com", "10.9.9.9", n=1)
    await seed_caps(db)
    # Ann's second device: a sign-in from another address.
    await db.execute(
        "UPDATE device_grants SET client_ip = $1 WHERE sub = $2", ANN_IPS[1], ANN
    )  # fmt: skip
    await db.execute("INSERT INTO rate_counters (key, window_start, hits) VALUES ($1, $2, 1)", "verify:" + ANN_IPS[1], NOW)


async def dump(db) -> str:
    """Every row of every table the gateway keeps people in, as one text."""
    parts = []
    for table in TABLES:
        parts += [r["t"] for r in await db.fetch(f"SELECT row_to_json(x)::text AS t FROM {table} x")]
    return "\n".join(parts)


# ---------------------------------------------------------------- export


async def test_export_finds_the_person_in_every_table_by_email_in_any_case(db, store, people):
    doc = await privacy.export(store.pool, "ann@EXAMPLE.com")
    assert doc["subjects"] == [ANN]
    t = doc["tables"]
    counts = {name: len(rows) for name, rows in t.items()}
    assert counts == {
        "principals": 1, "session_families": 1, "session_refresh_tokens": 1, "device_grants": 1,
        "usage_records": 3, "usage_daily": 1, "spend_counters": 1, "spend_reservations": 1,
        "spend_limits": 2,  # the cap on her, the cap she created
        "admin_audit": 2,  # an expiry naming her, a change she made
        "rate_counters": 3,  # devauth and verify of her sign-in address, verify of her device's
    }  # fmt: skip
    assert t["principals"][0]["groups"] == ["eng"] and t["principals"][0]["email"] == "ann@example.com"
    assert t["session_families"][0]["client_ip"] == ANN_IPS[0]
    assert t["session_families"][0]["idp_refresh_token"] == "(sealed)"  # said to exist, never shown
    assert t["session_refresh_tokens"][0]["token_hash"] == opaque("token", opaque("family", ANN, 1)).encode().hex()
    assert {r["email"] for r in t["usage_records"]} == {EMAIL}
    assert t["spend_reservations"][0]["key_starts"] == [MONTH.isoformat()] * 2
    assert {r["key"] for r in t["rate_counters"]} == {"devauth:10.0.0.7", "verify:10.0.0.7", "verify:10.0.0.8"}
    assert BOB not in json.dumps(doc) and "bob@" not in json.dumps(doc)
    json.dumps(doc)  # all of it is JSON


async def test_export_of_an_unknown_email_is_empty(db, store, people):
    doc = await privacy.export(store.pool, "nobody@example.com")
    assert doc["subjects"] == [] and not any(doc["tables"].values())


# ---------------------------------------------------------------- erase


async def test_erase_leaves_nothing_personal_and_the_totals_unchanged(db, store, people, pg_url):
    totals = "SELECT (SELECT sum(spent_micro) FROM spend_counters) AS spent, (SELECT sum(requests) FROM usage_daily) AS daily," \
             " (SELECT count(*) FROM usage_records) AS raw"  # fmt: skip
    before = dict(await db.fetchrow(totals))
    bob_before = await privacy.export(store.pool, "bob@example.com")
    listener = await asyncpg.connect(pg_url)
    revoked: list[str] = []
    await listener.add_listener("gatehouse_revocations", lambda *a: revoked.append(a[3]))
    try:
        done = await privacy.erase(store.pool, EMAIL.lower(), KEY, NOW)
        await _until(lambda: revoked)
    finally:
        await listener.close()

    assert done.pseudonyms == (ALIAS,) and done.in_flight == 0
    assert done.counts == {
        "sessions_revoked": 1, "session_families": 1, "device_grants": 1, "spend_reservations": 1,
        "spend_counters": 1, "spend_limits": 2, "principals": 1, "usage_records": 3, "usage_daily": 1,
        "rate_counters": 3, "admin_audit": 2,
    }  # fmt: skip
    assert revoked == [opaque("family", ANN, 1)]  # every replica hears of it

    # Nothing left that names her: not her email, subject, name or addresses, anywhere.
    everything = (await dump(db)).lower()
    for trace in (EMAIL.lower(), ANN, "name of " + ANN, *ANN_IPS):
        assert trace.lower() not in everything, trace
    again = await privacy.export(store.pool, EMAIL)
    assert again["subjects"] == [] and not any(again["tables"].values())

    # The totals are what they were; her share stands under the pseudonym.
    assert dict(await db.fetchrow(totals)) == before
    assert await db.fetchval("SELECT spent_micro FROM spend_counters WHERE scope_id = $1", ALIAS) == 400000
    assert await db.fetchval("SELECT sum(spent_micro) FROM spend_counters WHERE scope_type = 'group_pool'") == 800000
    assert await db.fetchval("SELECT count(*) FROM usage_records WHERE sub = $1 AND email IS NULL", ALIAS) == 3
    reservation = await db.fetchrow("SELECT sub, key_ids FROM spend_reservations WHERE sub = $1", ALIAS)
    assert reservation["key_ids"] == [ALIAS, "eng"]  # the pool key is the group's, unchanged
    assert await db.fetchval("SELECT scope_id FROM spend_limits WHERE id = 'spl_ann'") == ALIAS
    assert await db.fetchval("SELECT created_by FROM spend_limits WHERE id = 'spl_org'") == "oidc:" + ALIAS
    family = await db.fetchrow("SELECT * FROM session_families WHERE family_id = $1", opaque("family", ANN, 1))
    assert family["revoked_at"] == NOW and family["revoke_reason"] == "erased" and family["sub"] == ALIAS
    assert (family["email"], family["client_ip"], family["idp_refresh_token"]) == (None, None, None)

    # The erasure itself is audited under the pseudonym, never the email.
    entry = await db.fetchrow("SELECT * FROM admin_audit WHERE action = 'privacy.erase'")
    assert (entry["actor"], entry["target"]) == ("cli", ALIAS)
    assert json.loads(entry["after"])["rows"]["usage_records"] == 3
    expired = await db.fetchrow("SELECT target, before, reason FROM admin_audit WHERE action = 'spend.reservation_expired' AND target <> $1", "user:" + BOB)
    assert expired["target"] == "user:" + ALIAS and json.loads(expired["before"])["note"] == "seen as " + ALIAS
    assert expired["reason"] == f"reservation of {ALIAS} expired"

    # Bob is exactly as he was.
    assert await privacy.export(store.pool, "bob@example.com") == bob_before


async def test_a_pooled_group_budget_still_counts_what_the_erased_person_spent(db, store, people):
    await privacy.erase(store.pool, EMAIL, KEY, NOW)
    # The pool has $1.00 (100 cents); Ann and Bob spent $0.40 each. Bob asking for
    # $0.30 more must still be refused, as it was before the erasure.
    keys = (["user", "group_pool"], [BOB, "eng"], ["monthly", "monthly"], [MONTH, MONTH])
    verdict = await db.fetchval(
        "SELECT bool_and(admitted) FROM spend_reserve('req-bob-x', $1, 'claude-sonnet-4-5', $2, $3, $4, $5,"
        " ARRAY[NULL, 1000000]::bigint[], 300000, $6, $7)",
        BOB, *keys, NOW, NOW + timedelta(minutes=5),
    )  # fmt: skip
    assert verdict is False
    admitted = await db.fetchval(
        "SELECT bool_and(admitted) FROM spend_reserve('req-bob-y', $1, 'claude-sonnet-4-5', $2, $3, $4, $5,"
        " ARRAY[NULL, 1000000]::bigint[], 200000, $6, $7)",
        BOB, *keys, NOW, NOW + timedelta(minutes=5),
    )  # fmt: skip
    assert admitted is True  # exactly the $0.20 left


async def test_a_request_in_flight_settles_onto_the_pseudonym(db, store, people):
    """An open reservation moves with her counters, so its settlement lands on the pseudonym."""
    keys = (["user", "group_pool"], [ANN, "eng"], ["monthly", "monthly"], [MONTH, MONTH])
    admitted = await db.fetchval(
        "SELECT bool_and(admitted) FROM spend_reserve('req-open', $1, 'claude-sonnet-4-5', $2, $3, $4, $5,"
        " ARRAY[NULL, NULL]::bigint[], 50000, $6, $7)",
        ANN, *keys, NOW, NOW + timedelta(minutes=5),
    )  # fmt: skip
    assert admitted is True
    done = await privacy.erase(store.pool, EMAIL, KEY, NOW)
    assert done.in_flight == 1  # the command tells the operator to run it again later
    row = await db.fetchrow("SELECT spent_micro, reserved_micro FROM spend_counters WHERE scope_id = $1", ALIAS)
    assert (row["spent_micro"], row["reserved_micro"]) == (400000, 50000)
    # The request ends; the gateway settles it with the keys it knew (her subject).
    outcome = await db.fetchval(
        "SELECT spend_settle('req-open', $1, 'claude-sonnet-4-5', $2, $3, $4, $5, 30000, $6)", ANN, *keys, NOW
    )  # fmt: skip
    assert outcome == "settled"
    row = await db.fetchrow("SELECT spent_micro, reserved_micro FROM spend_counters WHERE scope_id = $1", ALIAS)
    assert (row["spent_micro"], row["reserved_micro"]) == (430000, 0)
    assert await db.fetchval("SELECT count(*) FROM spend_counters WHERE scope_id = $1", ANN) == 0


async def test_a_second_erasure_of_the_same_subject_merges_into_the_same_pseudonym(db, store, people):
    await privacy.erase(store.pool, EMAIL, KEY, NOW)
    # She came back (same IdP subject) and spent again; then she is erased again.
    await seed(db, store, ANN, EMAIL, ANN_IPS[0], n=2)
    await db.execute(
        "INSERT INTO spend_limits (id, scope_type, scope_id, period, amount_cents, created_at, updated_at, created_by)"
        " VALUES ('spl_ann2', 'user', $1, 'monthly', 7000, $2, $2, 'admin-key:ops')",
        ANN, NOW,
    )  # fmt: skip
    done = await privacy.erase(store.pool, EMAIL, KEY, NOW + timedelta(hours=1))
    assert done.pseudonyms == (ALIAS,)
    assert await db.fetchval("SELECT spent_micro FROM spend_counters WHERE scope_id = $1", ALIAS) == 800000
    assert await db.fetchval("SELECT requests FROM usage_daily WHERE sub = $1", ALIAS) == 20
    # The newer cap on her replaced the older one under the pseudonym.
    assert [r["id"] for r in await db.fetch("SELECT id FROM spend_limits WHERE scope_id = $1", ALIAS)] == ["spl_ann2"]
    assert ANN not in await dump(db)


async def test_erasing_an_unknown_email_changes_nothing(db, store, people):
    before = await dump(db)
    with pytest.raises(privacy.UnknownPerson):
        await privacy.erase(store.pool, "nobody@example.com", KEY, NOW)
    assert await dump(db) == before


def test_pseudonyms_are_keyed_and_stable():
    assert privacy.pseudonym(KEY, ANN) == privacy.pseudonym(KEY, ANN)
    assert privacy.pseudonym(KEY, ANN) != privacy.pseudonym(privacy.pseudonym_key("another-secret-" + "x" * 32), ANN)
    assert ALIAS.startswith("erased:") and len(ALIAS) == len("erased:") + 32


def test_scrub_replaces_in_any_case_inside_json_values_and_keys():
    out = privacy.scrub({"A@X.io": ["user:a@x.io", 3, None], "n": {"k": "sub-1 and SUB-1"}}, {"a@x.io": "P", "sub-1": "Q"})
    assert out == {"P": ["user:P", 3, None], "n": {"k": "Q and Q"}}
    assert privacy.like_patterns(["a_b%c\\"]) == ["%a\\_b\\%c\\\\%"]


# ---------------------------------------------------------------- the command


def run(*args: str, config, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GATEHOUSE, "privacy", *args, "--config", str(config)],
        env=ENV, input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_the_command_exports_then_erases(db, store, people, pg_url, tmp_path):
    config = write_config(tmp_path, pg_url, "http://127.0.0.1:9", free_port())

    out = run("export", "--email", EMAIL, config=config)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["tables"]["usage_records"]) == 3

    refused = run("erase", "--email", EMAIL, config=config)  # not a terminal, no --yes
    assert refused.returncode == 1 and "not confirmed" in refused.stderr
    assert await db.fetchval("SELECT count(*) FROM principals WHERE sub = $1", ANN) == 1

    erased = run("erase", "--email", EMAIL, "--yes", config=config)
    assert erased.returncode == 0, erased.stderr
    result = json.loads(erased.stdout)
    assert result["erased"] is True and result["pseudonyms"] == [ALIAS]  # the config's secret keys it
    assert EMAIL.lower() not in erased.stdout.lower() and ANN not in erased.stdout

    again = run("erase", "--email", EMAIL, "--yes", config=config)
    assert again.returncode == 1
    assert f"nothing is stored for {EMAIL}" in again.stderr and again.stdout == ""

    empty = run("export", "--email", EMAIL, config=config)
    assert empty.returncode == 0 and not any(json.loads(empty.stdout)["tables"].values())
    assert "nothing is stored" in empty.stderr


def test_the_command_reports_an_unreachable_database(tmp_path):
    config = write_config(tmp_path, "postgresql://u@127.0.0.1:1/db", "http://127.0.0.1:9", free_port())
    out = run("export", "--email", EMAIL, config=config)
    assert out.returncode == 1 and "could not connect to PostgreSQL" in out.stderr


# ---------------------------------------------------------------- helpers


async def _until(check, tries: int = 200) -> None:
    import asyncio

    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.01)


def test_erase_on_a_terminal_asks_for_the_email_again():
    import argparse
    import io

    from gateway.app import privacy_cli

    args = argparse.Namespace(action="erase", email=EMAIL, yes=False)
    err = io.StringIO()
    # A wrong answer stops before the database is opened (the config's is unreachable).
    cfg = make_config("postgresql://u@127.0.0.1:1/db", [upstream_block("http://127.0.0.1:9")])
    assert privacy_cli.main(args, cfg, out=io.StringIO(), err=err, ask=lambda prompt: "someone@else.com") == 1
    assert "permanently erases" in err.getvalue() and "nothing erased (not confirmed" in err.getvalue()


async def test_an_erasure_and_retention_sweeps_at_once_lose_nothing(db, store, people, pg_url):
    """Sweeps on other replicas may be moving her old rows while she is erased: every row is
    counted once, and none ends up under her subject."""
    from gateway.admin import retention

    await store.insert_usage([
        UsageRow(request_id=opaque("old", i), ts=NOW - timedelta(days=30 + i % 20), sub=ANN, email=EMAIL,
                 model="claude-sonnet-4-5", upstream="anthropic", status=200, input_tokens=i, path="/v1/messages")
        for i in range(2000)
    ])  # fmt: skip
    total = "SELECT (SELECT coalesce(sum(input_tokens), 0) FROM usage_records) + (SELECT sum(input_tokens) FROM usage_daily)"
    before = await db.fetchval(total)
    cfg = make_config(pg_url, [upstream_block("http://127.0.0.1:9")], "gatehouse:\n  retention:\n    usage_records_days: 10\n")
    other = await Store.open(cfg.store)
    try:
        await asyncio.gather(
            retention.roll_up_usage(store, cfg, NOW, batch_rows=61),
            privacy.erase(other.pool, EMAIL, KEY, NOW),
            retention.roll_up_usage(other, cfg, NOW, batch_rows=89),
        )
        await retention.roll_up_usage(store, cfg, NOW)
    finally:
        await other.close()
    assert await db.fetchval(total) == before
    assert ANN not in await dump(db)
    assert await db.fetchval("SELECT count(*) FROM usage_records WHERE ts < $1", NOW - timedelta(days=11)) == 0
