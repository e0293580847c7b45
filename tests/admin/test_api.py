"""The admin API against a real in-process gateway and a real PostgreSQL.

Spend is simulated by writing ``principals`` and ``spend_counters`` rows
directly (the schema of 0004_spend.sql), so these tests do not depend on the
relay's spend path.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from gateway.admin import retention
from gateway.admin.docs import spend_string
from gateway.app.build import build, parser_limits
from gateway.app.jobs import JOBS
from gateway.config.load import ConfigError
from gateway.http.admin import ADMIN, AdminContext
from gateway.http.keys import RUNTIME
from gateway.http.routes import add_routes
from gateway.spend.caps import period_bounds
from tests.harness import RunningGateway, make_config, upstream_block

WRITE_KEY = "gh-admin-write-0123456789abcdef0123456789"
READ_KEY = "gh-admin-read-0123456789abcdef01234567890"
ADMIN_GROUP = "platform-admins"
BASE = "/v1/organizations/spend_limits"
REQUEST_ID = re.compile(r"^req_[0-9a-f]{32}$")


def admin_yaml(mode: str = "min", extra: str = "") -> str:
    return f"""
admin:
  write_keys:
    - id: ops
      key: {WRITE_KEY}
  read_keys:
    - id: viewer
      key: {READ_KEY}
  admin_groups: [{ADMIN_GROUP}]
  group_limit_mode: {mode}
{extra}
"""


class Clock:
    """Unix seconds that only move when a test says so (starts at the real time)."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)


async def start_admin_gateway(
    pg_url: str, clock: Callable[[], float], *, mode: str = "min", with_admin: bool = True, store: Any = None
) -> RunningGateway:
    """Like tests.harness.start_gateway, with the admin routes registered before the router freezes."""
    cfg = make_config(pg_url, [upstream_block("http://127.0.0.1:9")], admin_yaml(mode) if with_admin else "")
    app = build(cfg, clock=clock)
    if with_admin:
        app[ADMIN] = AdminContext(cfg, clock=clock, store=store)
        add_routes(app, "admin")
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        shutdown_timeout=5,
        access_log=None,
        auto_decompress=False,
        **parser_limits(cfg),  # type: ignore[arg-type]
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", cfg.listen.port).start()
    return RunningGateway(f"http://127.0.0.1:{cfg.listen.port}", app, runner)


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
async def gw(pg_url: str, clock: Clock):
    gateway = await start_admin_gateway(pg_url, clock)
    try:
        yield gateway
    finally:
        await gateway.close()


@pytest.fixture
async def db(pg_url: str, gw: RunningGateway):
    conn = await asyncpg.connect(pg_url)
    await conn.execute("TRUNCATE spend_limits, admin_audit, principals, spend_counters, spend_reservations")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


W = {"x-api-key": WRITE_KEY}
R = {"x-api-key": READ_KEY}


async def call(
    http: aiohttp.ClientSession, gw: RunningGateway, method: str, path: str, *, headers=None, **kw
) -> tuple[int, Any, Any]:
    async with http.request(
        method, gw.url + BASE + path, headers=headers if headers is not None else W, **kw
    ) as r:
        text = await r.text()
        return r.status, (json.loads(text) if text else None), r.headers


async def upsert(http, gw, scope: dict, amount: str | None, period: str, **extra) -> dict:
    status, body, _ = await call(
        http, gw, "POST", "", json={"scope": scope, "amount": amount, "period": period, **extra}
    )
    assert status == 200, body
    return body


def audit_events(capfd, name: str) -> list[dict]:
    err = capfd.readouterr().err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [e for e in events if e.get("evt") == name]


def assert_error(status: int, body: Any, headers: Any, expected_status: int, error_type: str) -> None:
    assert status == expected_status, body
    assert list(body) == ["type", "error", "request_id"]
    assert body["type"] == "error" and body["error"]["type"] == error_type
    assert REQUEST_ID.match(headers["request-id"]) and body["request_id"] == headers["request-id"]


ORG = {"type": "organization"}


def user(sub: str) -> dict:
    return {"type": "user", "user_id": sub}


def group(name: str) -> dict:
    return {"type": "rbac_group", "rbac_group_id": name}


# ---------------------------------------------------------------- authorization


async def test_write_key_can_read_and_write(gw, db, http):
    created = await upsert(http, gw, ORG, "50000", "monthly")
    status, body, headers = await call(http, gw, "GET", "")
    assert status == 200 and [d["id"] for d in body["data"]] == [created["id"]]
    assert REQUEST_ID.match(headers["request-id"]) and headers["Cache-Control"] == "no-store"


async def test_read_key_reads_but_may_not_write(gw, db, http, capfd):
    created = await upsert(http, gw, ORG, "50000", "monthly")
    for path in ("", "/effective", "/audit", "/" + created["id"]):
        status, body, _ = await call(http, gw, "GET", path, headers=R)
        assert status == 200, (path, body)
    status, body, headers = await call(
        http, gw, "POST", "", headers=R, json={"scope": ORG, "amount": "1", "period": "daily"}
    )
    assert_error(status, body, headers, 403, "permission_error")
    status, body, headers = await call(http, gw, "DELETE", "/" + created["id"], headers=R)
    assert_error(status, body, headers, 403, "permission_error")
    # Nothing changed.
    status, body, _ = await call(http, gw, "GET", "/" + created["id"])
    assert body["amount"] == "50000"
    denied = audit_events(capfd, "admin.denied")
    assert [d["reason"] for d in denied] == ["read_only_key", "read_only_key"]


async def test_admin_group_bearer_has_full_access(gw, db, http):
    token = gw.token(sub="carol", email="carol@example.com", groups=["eng", ADMIN_GROUP])
    bearer = {"Authorization": f"Bearer {token}"}
    status, body, _ = await call(
        http, gw, "POST", "", headers=bearer, json={"scope": ORG, "amount": "7", "period": "daily"}
    )
    assert status == 200, body
    status, trail, _ = await call(http, gw, "GET", "/audit", headers=bearer)
    assert status == 200 and trail["data"][0]["actor"] == "oidc:carol"
    status, _, _ = await call(http, gw, "DELETE", "/" + body["id"], headers=bearer)
    assert status == 200


@pytest.mark.parametrize(
    "headers_for, reason",
    [
        (lambda gw: {"Authorization": f"Bearer {gw.token(sub='dave', groups=['eng'])}"}, "bearer_rejected"),
        (lambda gw: {"Authorization": "Bearer not-a-token"}, "bearer_rejected"),
        (lambda gw: {"x-api-key": "x" * 40}, "invalid_key"),
        (lambda gw: {"x-api-key": WRITE_KEY[:-1]}, "invalid_key"),
        (lambda gw: {"x-api-key": ""}, "invalid_key"),
        # A wrong key is not rescued by an admin bearer sent alongside.
        (
            lambda gw: {"x-api-key": "y" * 40, "Authorization": f"Bearer {gw.token(groups=[ADMIN_GROUP])}"},
            "invalid_key",
        ),
        (lambda gw: {}, "no_credentials"),
    ],
)
async def test_refusals_are_401_with_one_message(gw, db, http, capfd, headers_for, reason):
    capfd.readouterr()
    for method, path, kw in (
        ("GET", "", {}),
        ("POST", "", {"json": {"scope": ORG, "amount": "1", "period": "daily"}}),
    ):
        status, body, headers = await call(http, gw, method, path, headers=headers_for(gw), **kw)
        assert_error(status, body, headers, 401, "authentication_error")
        assert body["error"]["message"] == "missing or invalid admin credentials"
    out = capfd.readouterr().err
    denied = [json.loads(line) for line in out.splitlines() if '"admin.denied"' in line]
    assert [d["reason"] for d in denied] == [reason, reason]
    assert (
        denied[0]["method"] == "GET" and denied[0]["path"] == BASE and denied[0]["client_ip"] == "127.0.0.1"
    )
    assert "x" * 40 not in out and "y" * 40 not in out and WRITE_KEY[:-1] not in out
    status, body, _ = await call(http, gw, "GET", "")
    assert body["data"] == []  # the refused POSTs wrote nothing


def test_short_admin_key_is_a_config_error(pg_url):
    short = admin_yaml().replace(READ_KEY, "r" * 31)
    with pytest.raises(ConfigError) as err:
        make_config(pg_url, [upstream_block("http://127.0.0.1:9")], short)
    assert [path for path, _ in err.value.issues] == ["admin.read_keys[0].key"]


async def test_without_admin_section_every_admin_path_is_404(pg_url, http):
    plain = await start_admin_gateway(pg_url, Clock(), with_admin=False)
    try:
        for method, path in (("GET", ""), ("POST", ""), ("GET", "/effective"), ("DELETE", "/spl_x")):
            status, body, headers = await call(http, plain, method, path)
            assert_error(status, body, headers, 404, "not_found_error")
    finally:
        await plain.close()


# ---------------------------------------------------------------- validation


BAD_BODIES = [
    ({"scope": ORG, "amount": "1.5", "period": "daily"}, "amount"),
    ({"scope": ORG, "amount": "-5", "period": "daily"}, "amount"),
    ({"scope": ORG, "amount": "", "period": "daily"}, "amount"),
    ({"scope": ORG, "amount": 100, "period": "daily"}, "amount"),
    ({"scope": ORG, "amount": "1" * 20, "period": "daily"}, "amount"),
    ({"scope": ORG, "period": "daily"}, "amount"),
    ({"scope": ORG, "amount": "100", "period": "hourly"}, "period"),
    ({"scope": ORG, "amount": "100"}, "period"),
    ({"scope": ORG, "amount": "100", "period": "daily", "currency": "EUR"}, "currency"),
    ({"scope": {"type": "workspace"}, "amount": "100", "period": "daily"}, "scope.type"),
    ({"scope": {}, "amount": "100", "period": "daily"}, "scope.type"),
    ({"scope": "org", "amount": "100", "period": "daily"}, "scope"),
    ({"amount": "100", "period": "daily"}, "scope"),
    ({"scope": {"type": "user"}, "amount": "100", "period": "daily"}, "scope.user_id"),
    ({"scope": {"type": "user", "user_id": 7}, "amount": "100", "period": "daily"}, "scope.user_id"),
    ({"scope": {"type": "rbac_group", "rbac_group_id": " "}, "amount": "1", "period": "daily"}, "scope.rbac_group_id"),
    ({"scope": ORG, "amount": "1", "period": "monthly", "pooled_limit_enabled": True, "pooled_monthly_credit_limit": "9"}, "pooled_limit_enabled"),
    ({"scope": group("eng"), "amount": "1", "period": "daily", "pooled_limit_enabled": True, "pooled_monthly_credit_limit": "9"}, "pooled_limit_enabled"),
    ({"scope": group("eng"), "amount": "1", "period": "monthly", "pooled_limit_enabled": True}, "pooled_monthly_credit_limit"),
    ({"scope": group("eng"), "amount": "1", "period": "monthly", "pooled_monthly_credit_limit": "9"}, "pooled_monthly_credit_limit"),
    ({"scope": group("eng"), "amount": "1", "period": "monthly", "pooled_limit_enabled": "yes"}, "pooled_limit_enabled"),
    ({"scope": ORG, "amount": "1", "period": "daily", "reason": 5}, "reason"),
    ([1, 2], "body"),
]  # fmt: skip


@pytest.mark.parametrize("body, field", BAD_BODIES)
async def test_post_validation_names_the_field(gw, db, http, body, field):
    status, answer, headers = await call(http, gw, "POST", "", json=body)
    assert_error(status, answer, headers, 400, "invalid_request_error")
    assert answer["error"]["message"].startswith(field + ":"), answer
    assert await db.fetchval("SELECT count(*) FROM spend_limits") == 0
    assert await db.fetchval("SELECT count(*) FROM admin_audit") == 0


async def test_post_rejects_broken_json(gw, db, http):
    status, body, headers = await call(
        http, gw, "POST", "", data=b"{x", headers={**W, "Content-Type": "application/json"}
    )
    assert_error(status, body, headers, 400, "invalid_request_error")
    assert "JSON" in body["error"]["message"]


@pytest.mark.parametrize(
    "query, field",
    [
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?limit=ten", "limit"),
        ("?scope_type=team", "scope_type"),
        ("?after_id=spl_a&before_id=spl_b", "before_id"),
        ("?after_id=spl_unknown", "after_id"),
    ],
)
async def test_list_validation(gw, db, http, query, field):
    status, body, headers = await call(http, gw, "GET", query)
    assert_error(status, body, headers, 400, "invalid_request_error")
    assert body["error"]["message"].startswith(field + ":")


# ---------------------------------------------------------------- caps


async def test_upsert_keeps_the_id_and_moves_updated_at(gw, db, http, clock):
    first = await upsert(http, gw, user("alice"), "100", "daily")
    assert re.fullmatch(r"spl_[0-9a-f]{32}", first["id"])
    assert list(first) == ["type", "id", "created_at", "updated_at", "scope", "amount", "currency", "period"]
    assert (
        first["scope"] == user("alice")
        and first["currency"] == "USD"
        and first["created_at"] == first["updated_at"]
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["created_at"])
    clock.advance(1.5)
    second = await upsert(http, gw, user("alice"), "250", "daily")
    assert second["id"] == first["id"] and second["created_at"] == first["created_at"]
    assert second["updated_at"] > first["updated_at"] and second["amount"] == "250"
    other = await upsert(http, gw, user("alice"), None, "weekly", currency="USD")
    assert other["id"] != first["id"] and other["amount"] is None
    status, got, _ = await call(http, gw, "GET", "/" + first["id"])
    assert status == 200 and got == second
    assert await db.fetchval("SELECT count(*) FROM spend_limits") == 2


async def test_every_scope_type_and_leading_zeros(gw, db, http):
    org = await upsert(http, gw, ORG, "0050000", "monthly")
    grp = await upsert(http, gw, group("contractors"), "10000", "daily")
    assert org["amount"] == "50000" and org["scope"] == ORG
    assert grp["scope"] == group("contractors")


async def test_pooled_group_budget(gw, db, http):
    body = await upsert(
        http,
        gw,
        group("eng"),
        "5000",
        "monthly",
        pooled_limit_enabled=True,
        pooled_monthly_credit_limit="200000",
    )
    assert body["pooled_limit_enabled"] is True and body["pooled_monthly_credit_limit"] == "200000"
    row = await db.fetchrow("SELECT * FROM spend_limits WHERE id = $1", body["id"])
    assert row["pooled_limit_enabled"] and row["pooled_monthly_credit_limit_cents"] == 200000
    # Replacing without the pool fields switches the pool off: POST replaces the whole cap.
    plain = await upsert(http, gw, group("eng"), "5000", "monthly")
    assert plain["id"] == body["id"] and "pooled_limit_enabled" not in plain


async def test_get_and_delete(gw, db, http, capfd):
    created = await upsert(http, gw, group("eng"), "300", "weekly")
    status, body, headers = await call(http, gw, "DELETE", "/" + created["id"])
    assert status == 200 and body == {"type": "spend_limit_deleted", "id": created["id"]}
    assert REQUEST_ID.match(headers["request-id"])
    for method in ("DELETE", "GET"):
        status, body, headers = await call(http, gw, method, "/" + created["id"])
        assert_error(status, body, headers, 404, "not_found_error")
    events = audit_events(capfd, "admin.limit.delete")
    assert events == [
        {
            "ts": events[0]["ts"],
            "evt": "admin.limit.delete",
            "actor": "admin-key:ops",
            "scope_type": "rbac_group",
            "scope_id": "eng",
            "period": "weekly",
            "amount": "300",
            "target": created["id"],
        }
    ]


async def test_upsert_emits_audit_event(gw, db, http, capfd):
    capfd.readouterr()
    created = await upsert(http, gw, user("alice"), "100", "daily")
    (event,) = audit_events(capfd, "admin.limit.upsert")
    assert event["actor"] == "admin-key:ops" and event["target"] == created["id"]
    assert (event["scope_type"], event["scope_id"], event["period"], event["amount"]) == (
        "user",
        "alice",
        "daily",
        "100",
    )


async def test_mutations_notify_replicas(gw, db, http, pg_url):
    listener = await asyncpg.connect(pg_url)
    got: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("gatehouse_spend_limits", lambda *args: got.put_nowait(args[3]))
    try:
        created = await upsert(http, gw, ORG, "1", "daily")
        assert await asyncio.wait_for(got.get(), 5) == created["id"]
        await call(http, gw, "DELETE", "/" + created["id"])
        assert await asyncio.wait_for(got.get(), 5) == created["id"]
    finally:
        await listener.close()


async def test_concurrent_upserts_of_one_scope_make_one_cap(gw, db, http):
    bodies = await asyncio.gather(*(upsert(http, gw, user("zed"), str(n), "monthly") for n in range(1, 11)))
    assert len({b["id"] for b in bodies}) == 1
    rows = await db.fetch("SELECT before, after FROM admin_audit ORDER BY id")
    assert len(rows) == 10 and rows[0]["before"] is None
    # Each change's "before" is exactly the previous change's "after": the trail is a chain.
    for prev, cur in zip(rows, rows[1:], strict=False):
        assert json.loads(cur["before"]) == json.loads(prev["after"])


# ---------------------------------------------------------------- paging


async def test_list_paging(gw, db, http, clock):
    ids = []
    for n, (scope, period) in enumerate(
        [
            (ORG, "monthly"),
            (group("a"), "daily"),
            (user("u1"), "daily"),
            (ORG, "weekly"),
            (user("u2"), "monthly"),
        ]
    ):
        clock.advance(0.01)
        ids.append((await upsert(http, gw, scope, str(n), period))["id"])

    status, page, _ = await call(http, gw, "GET", "?limit=2")
    assert [d["id"] for d in page["data"]] == ids[:2]
    assert (page["has_more"], page["first_id"], page["last_id"]) == (True, ids[0], ids[1])
    status, page, _ = await call(http, gw, "GET", f"?limit=2&after_id={ids[1]}")
    assert [d["id"] for d in page["data"]] == ids[2:4] and page["has_more"] is True
    status, page, _ = await call(http, gw, "GET", f"?limit=2&after_id={ids[3]}")
    assert [d["id"] for d in page["data"]] == ids[4:] and page["has_more"] is False
    # Backwards: the page just before, still in creation order; has_more looks further back.
    status, page, _ = await call(http, gw, "GET", f"?limit=2&before_id={ids[4]}")
    assert [d["id"] for d in page["data"]] == ids[2:4] and page["has_more"] is True
    status, page, _ = await call(http, gw, "GET", f"?limit=2&before_id={ids[2]}")
    assert [d["id"] for d in page["data"]] == ids[:2] and page["has_more"] is False
    status, page, _ = await call(http, gw, "GET", "?scope_type=user")
    assert [d["id"] for d in page["data"]] == [ids[2], ids[4]]
    status, page, _ = await call(http, gw, "GET", "?scope_type=rbac_group&after_id=" + ids[1])
    assert page == {"data": [], "has_more": False, "first_id": None, "last_id": None}
    status, page, _ = await call(http, gw, "GET", "")
    assert len(page["data"]) == 5 and page["has_more"] is False


# ---------------------------------------------------------------- audit trail


async def test_audit_trail_newest_first_with_snapshots(gw, db, http, clock):
    a = await upsert(http, gw, user("alice"), "100", "daily", reason="trial budget")
    clock.advance(1)
    await upsert(http, gw, user("alice"), "200", "daily")
    clock.advance(1)
    await call(http, gw, "DELETE", f"/{a['id']}?reason=left+the+team")
    status, trail, headers = await call(http, gw, "GET", "/audit")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    events = trail["data"]
    assert trail["has_more"] is False
    assert [e["action"] for e in events] == ["spend_limit.delete", "spend_limit.upsert", "spend_limit.upsert"]
    assert [int(e["id"]) for e in events] == sorted((int(e["id"]) for e in events), reverse=True)
    delete, update, create = events
    assert list(create) == [
        "type",
        "id",
        "created_at",
        "actor",
        "action",
        "target_id",
        "before",
        "after",
        "reason",
    ]
    assert (
        create["type"] == "audit_event"
        and create["actor"] == "admin-key:ops"
        and create["target_id"] == a["id"]
    )
    assert create["before"] is None and create["reason"] == "trial budget"
    assert create["after"] == {
        "id": a["id"],
        "scope": user("alice"),
        "amount": "100",
        "period": "daily",
        "currency": "USD",
        "created_at": a["created_at"],
        "updated_at": a["updated_at"],
    }
    assert list(create["after"]) == [
        "id",
        "scope",
        "amount",
        "period",
        "currency",
        "created_at",
        "updated_at",
    ]
    assert (
        update["before"] == create["after"]
        and update["after"]["amount"] == "200"
        and update["reason"] is None
    )
    assert (
        delete["before"] == update["after"]
        and delete["after"] is None
        and delete["reason"] == "left the team"
    )

    status, page, _ = await call(http, gw, "GET", "/audit?limit=2")
    assert [e["id"] for e in page["data"]] == [delete["id"], update["id"]] and page["has_more"] is True
    status, page, _ = await call(http, gw, "GET", f"/audit?limit=1&after_id={update['id']}")
    assert [e["id"] for e in page["data"]] == [create["id"]] and page["has_more"] is False  # exact
    status, page, _ = await call(http, gw, "GET", "/audit?limit=3")
    assert len(page["data"]) == 3 and page["has_more"] is False
    for bad in ("?limit=0", "?after_id=abc", "?after_id=-1"):
        status, body, headers = await call(http, gw, "GET", "/audit" + bad)
        assert_error(status, body, headers, 400, "invalid_request_error")


# ---------------------------------------------------------------- effective


async def seen(db, sub: str, email: str | None, name: str | None, groups: list[str], now: datetime) -> None:
    await db.execute(
        "INSERT INTO principals (sub, email, name, groups, updated_at) VALUES ($1, $2, $3, $4::jsonb, $5)",
        sub, email, name, json.dumps(groups), now,
    )  # fmt: skip


async def spent(
    db, sub: str, period: str, micro: int, now: datetime, *, start: datetime | None = None
) -> None:
    await db.execute(
        "INSERT INTO spend_counters (scope_type, scope_id, period, period_start, spent_micro, updated_at)"
        " VALUES ('user', $1, $2, $3, $4, $5)",
        sub, period, start or period_bounds(period, now)[0], micro, now,
    )  # fmt: skip


async def test_effective_resolves_user_group_and_org_caps(gw, db, http, clock):
    now = clock.now()
    org_month = await upsert(http, gw, ORG, "50000", "monthly")
    org_week = await upsert(http, gw, ORG, "100000", "weekly")
    contractors = await upsert(http, gw, group("contractors"), "10000", "daily")
    alice_day = await upsert(http, gw, user("alice"), "100", "daily")
    eve_month = await upsert(http, gw, user("eve"), None, "monthly")
    await seen(db, "alice", "alice@example.com", "Alice Example", ["eng", "platform-finops"], now)
    await seen(db, "bob", "bob@example.com", "Bob Contractor", ["contractors"], now)
    await seen(db, "eve", "eve@evil.test", "Eve", ["eng"], now)
    for period in ("daily", "weekly", "monthly"):
        await spent(db, "alice", period, 1_050_770, now)
    await spent(db, "bob", "daily", 110, now)
    # Last month's spend is not this month's.
    await spent(
        db, "bob", "monthly", 999_999, now, start=period_bounds("monthly", now)[0] - timedelta(days=40)
    )

    status, doc, headers = await call(http, gw, "GET", "/effective")
    assert status == 200 and headers["Cache-Control"] == "no-store" and doc["next_page"] is None
    rows = {(r["actor"]["user_id"], r["period"]): r for r in doc["data"]}
    assert [(r["actor"]["user_id"], r["period"]) for r in doc["data"]] == [
        (u, p) for u in ("alice", "bob", "eve") for p in ("daily", "weekly", "monthly")
    ]
    alice = rows["alice", "daily"]
    assert alice == {
        "scope": {"type": "user", "user_id": "alice"},
        "groups": ["eng", "platform-finops"],
        "actor": {
            "type": "user_actor",
            "user_id": "alice",
            "name": "Alice Example",
            "email_address": "alice@example.com",
            "deleted": False,
        },
        "amount": "100",
        "currency": "USD",
        "period": "daily",
        "source": {"type": "user", "user_id": "alice"},
        "spend_limit_id": alice_day["id"],
        "period_to_date_spend": "105.077",
    }
    assert (
        rows["alice", "weekly"]["source"] == ORG
        and rows["alice", "weekly"]["spend_limit_id"] == org_week["id"]
    )
    assert rows["alice", "monthly"]["spend_limit_id"] == org_month["id"]
    bob = rows["bob", "daily"]
    assert bob["source"] == group("contractors") and bob["spend_limit_id"] == contractors["id"]
    assert bob["amount"] == "10000" and bob["period_to_date_spend"] == "0.011"
    assert rows["bob", "monthly"]["period_to_date_spend"] == "0.000"
    # No daily cap anywhere for eve; her own unlimited monthly cap beats the org's.
    assert (
        rows["eve", "daily"]["amount"],
        rows["eve", "daily"]["source"],
        rows["eve", "daily"]["spend_limit_id"],
    ) == (
        None,
        None,
        None,
    )
    eve = rows["eve", "monthly"]
    assert eve["amount"] is None and eve["source"] == user("eve") and eve["spend_limit_id"] == eve_month["id"]

    status, doc, _ = await call(http, gw, "GET", "/effective?user_ids[]=alice&period[]=daily")
    assert [r["period_to_date_spend"] for r in doc["data"]] == ["105.077"]
    # Someone never seen: listed when asked for, with empty identity and no spend.
    status, doc, _ = await call(http, gw, "GET", "/effective?user_ids[]=nobody&period[]=monthly")
    (row,) = doc["data"]
    assert row["actor"]["name"] is None and row["groups"] == [] and row["period_to_date_spend"] == "0.000"
    assert row["spend_limit_id"] == org_month["id"]
    status, doc, _ = await call(http, gw, "GET", "/effective?q=EXAMPLE.COM&period[]=weekly")
    assert [r["actor"]["user_id"] for r in doc["data"]] == ["alice", "bob"]
    status, doc, _ = await call(http, gw, "GET", "/effective?q=contractor&period[]=weekly")
    assert [r["actor"]["user_id"] for r in doc["data"]] == ["bob"]


async def test_group_limit_mode_min_and_max(gw, db, http, clock, pg_url):
    now = clock.now()
    small = await upsert(http, gw, group("eng"), "500", "daily")
    big = await upsert(http, gw, group("research"), "9000", "daily")
    unlimited = await upsert(http, gw, group("exec"), None, "daily")
    await seen(db, "mia", None, None, ["eng", "research", "exec"], now)
    await seen(db, "max", None, None, ["research"], now)
    status, doc, _ = await call(http, gw, "GET", "/effective?period[]=daily")
    chosen = {r["actor"]["user_id"]: r["spend_limit_id"] for r in doc["data"]}
    assert chosen == {"mia": small["id"], "max": big["id"]}  # min: smallest cap; a cap beats unlimited

    max_gw = await start_admin_gateway(pg_url, clock, mode="max")
    try:
        status, doc, _ = await call(http, max_gw, "GET", "/effective?period[]=daily")
    finally:
        await max_gw.close()
    chosen = {r["actor"]["user_id"]: (r["spend_limit_id"], r["amount"]) for r in doc["data"]}
    assert chosen == {"mia": (unlimited["id"], None), "max": (big["id"], "9000")}


async def test_effective_sort_and_pages(gw, db, http, clock):
    now = clock.now()
    await upsert(http, gw, ORG, "100000", "monthly")
    spends = {"ann": 500, "ben": 90_000, "cat": 90_000, "dan": 0, "eli": 7_000_000}
    for sub, micro in spends.items():
        await seen(db, sub, f"{sub}@example.com", sub.title(), [], now)
        await spent(db, sub, "monthly", micro, now)

    order, page = [], None
    while True:
        status, doc, _ = await call(
            http,
            gw,
            "GET",
            "/effective?sort=spend_desc&period[]=monthly&limit=2" + (f"&page={page}" if page else ""),
        )
        assert status == 200, doc
        order += [r["actor"]["user_id"] for r in doc["data"]]
        page = doc["next_page"]
        if page is None:
            break
    assert order == ["eli", "ben", "cat", "ann", "dan"]

    # Unsorted pages count rows (person × period) and may split one person's periods.
    rows, page = [], None
    while True:
        status, doc, _ = await call(http, gw, "GET", "/effective?limit=4" + (f"&page={page}" if page else ""))
        assert status == 200 and len(doc["data"]) <= 4
        rows += [(r["actor"]["user_id"], r["period"]) for r in doc["data"]]
        page = doc["next_page"]
        if page is None:
            break
    assert rows == [(u, p) for u in sorted(spends) for p in ("daily", "weekly", "monthly")]

    status, doc, _ = await call(http, gw, "GET", "/effective?period[]=monthly&limit=2")
    cursor = doc["next_page"]
    status, body, headers = await call(http, gw, "GET", f"/effective?period[]=daily&limit=2&page={cursor}")
    assert_error(status, body, headers, 400, "invalid_request_error")
    assert body["error"]["message"] == "cursor does not match current query parameters"
    status, body, _ = await call(http, gw, "GET", f"/effective?period[]=monthly&q=a&page={cursor}")
    assert body["error"]["message"] == "cursor does not match current query parameters"
    # A different page size is not a different query.
    status, doc, _ = await call(http, gw, "GET", f"/effective?period[]=monthly&limit=3&page={cursor}")
    assert status == 200 and [r["actor"]["user_id"] for r in doc["data"]] == ["cat", "dan", "eli"]


@pytest.mark.parametrize(
    "query, field",
    [
        ("?sort=spend_desc", "sort"),
        ("?sort=spend_desc&period[]=daily&period[]=weekly", "sort"),
        ("?sort=name", "sort"),
        ("?period[]=hourly", "period[]"),
        ("?limit=0", "limit"),
        ("?page=%%%", "page"),
        ("?page=eyJ4IjoxfQ", "page"),
    ],
)
async def test_effective_validation(gw, db, http, query, field):
    status, body, headers = await call(http, gw, "GET", "/effective" + query)
    assert_error(status, body, headers, 400, "invalid_request_error")
    assert body["error"]["message"].startswith(field + ":")


def test_spend_string_rounds_to_thousandths_of_a_cent():
    assert spend_string(0) == "0.000"
    assert spend_string(1_050_770) == "105.077"
    assert spend_string(14) == "0.001"  # 0.0014 cent
    assert spend_string(15) == "0.002"
    assert spend_string(10_000) == "1.000"


# ---------------------------------------------------------------- retention


async def test_retention_prune(gw, db, http, clock):
    now = clock.now()
    cfg = gw.app[RUNTIME].config  # 365 days of audit, 13 months of spend, 90 days of identity
    await upsert(http, gw, ORG, "1", "daily")  # a fresh audit row
    await db.execute(
        "INSERT INTO admin_audit (at, actor, action, target) VALUES ($1, 'admin-key:ops', 'spend_limit.upsert', 'spl_old')",
        now - timedelta(days=366),
    )
    await seen(db, "gone", None, None, [], now - timedelta(days=91))
    await seen(db, "back", None, None, [], now - timedelta(days=89))
    month = retention.months_before(now, 0)
    await spent(db, "old", "monthly", 5, now, start=retention.months_before(now, 14))
    await spent(db, "kept", "monthly", 5, now, start=retention.months_before(now, 13))
    await spent(db, "kept", "daily", 5, now, start=month)

    removed = await retention.prune(gw.app[RUNTIME].store, cfg, now)
    assert removed == {"admin_audit": 1, "principals": 1, "spend_counters": 1}
    assert await db.fetchval("SELECT count(*) FROM admin_audit") == 1
    assert {r["sub"] for r in await db.fetch("SELECT sub FROM principals")} == {"back"}
    assert {r["scope_id"] for r in await db.fetch("SELECT scope_id FROM spend_counters")} == {"kept"}
    assert await retention.prune(gw.app[RUNTIME].store, cfg, now) == {
        "admin_audit": 0,
        "principals": 0,
        "spend_counters": 0,
    }


def test_months_before_crosses_years():
    now = datetime(2027, 2, 14, 9, tzinfo=UTC)
    assert retention.months_before(now, 0) == datetime(2027, 2, 1, tzinfo=UTC)
    assert retention.months_before(now, 13) == datetime(2026, 1, 1, tzinfo=UTC)
    assert retention.months_before(now, 2) == datetime(2026, 12, 1, tzinfo=UTC)


async def test_the_app_schedules_the_retention_sweep_hourly(gw, db, clock):
    now = clock.now()
    await db.execute(
        "INSERT INTO admin_audit (at, actor, action, target) VALUES ($1, 'x', 'spend_limit.upsert', 'spl_old')",
        now - timedelta(days=400),
    )
    registered = {j.name: j for j in gw.app[JOBS].jobs}
    assert {"sightings", "retention", "spend"} <= set(registered)
    assert registered["spend"].wake is gw.app[RUNTIME].spend.wake  # a limit change runs it at once
    job = registered["retention"]
    assert job.every_s == retention.PRUNE_EVERY_S == 3600
    await job.run()  # one round of the job the app runs (its timing: tests/app/test_jobs.py)
    assert await db.fetchval("SELECT count(*) FROM admin_audit") == 0


async def test_a_change_whose_audit_row_fails_is_rolled_back(gw, db, http):
    kept = await upsert(http, gw, ORG, "100", "daily")
    # Make every further audit insert fail, as a full disk or a bug would.
    await db.execute("ALTER TABLE admin_audit ADD CONSTRAINT test_refuse CHECK (false) NOT VALID")
    try:
        status, body, headers = await call(
            http, gw, "POST", "", json={"scope": user("ann"), "amount": "5", "period": "daily"}
        )
        assert_error(status, body, headers, 500, "api_error")
        status, body, headers = await call(
            http, gw, "POST", "", json={"scope": ORG, "amount": "999", "period": "daily"}
        )
        assert_error(status, body, headers, 500, "api_error")
        status, body, headers = await call(http, gw, "DELETE", "/" + kept["id"])
        assert_error(status, body, headers, 500, "api_error")
    finally:
        await db.execute("ALTER TABLE admin_audit DROP CONSTRAINT test_refuse")
    rows = await db.fetch("SELECT id, amount_cents FROM spend_limits")
    assert [(r["id"], r["amount_cents"]) for r in rows] == [(kept["id"], 100)]
    assert await db.fetchval("SELECT count(*) FROM admin_audit") == 1


async def test_database_outage_is_503_in_the_envelope(pg_url, http):
    from gateway.db.store import Store

    cfg = make_config(pg_url, [upstream_block("http://127.0.0.1:9")])
    gone = await Store.open(cfg.store)
    await gone.close()  # every use now fails the way a lost database does
    down = await start_admin_gateway(pg_url, Clock(), store=gone)
    try:
        for method, path, kw in (
            ("GET", "", {}),
            ("POST", "", {"json": {"scope": ORG, "amount": "1", "period": "daily"}}),
        ):
            status, body, headers = await call(http, down, method, path, **kw)
            assert_error(status, body, headers, 503, "api_error")
    finally:
        await down.close()
