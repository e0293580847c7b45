"""``gatehouse limits`` against a running in-process gateway.

The CLI is blocking (urllib), so each run happens in a worker thread while the
gateway keeps serving on the test's event loop.
"""

from __future__ import annotations

import asyncio
import io
import json
import textwrap
import time

import asyncpg
import pytest

from gateway.app import limits_cli
from tests.admin.test_api import READ_KEY, WRITE_KEY, Clock, admin_yaml, start_admin_gateway
from tests.harness import BASE_CONFIG, JWT_SECRET, free_port, upstream_block


@pytest.fixture(scope="module")
async def gw(pg_url):
    gateway = await start_admin_gateway(pg_url, time.time)
    try:
        yield gateway
    finally:
        await gateway.close()


@pytest.fixture(autouse=True)
async def clean(pg_url, gw):
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("TRUNCATE spend_limits, admin_audit, principals, spend_counters")
    finally:
        await conn.close()


async def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(limits_cli.run, list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def config_file(tmp_path, gw, *, with_admin: bool = True) -> str:
    port = int(gw.url.rsplit(":", 1)[1])
    text = BASE_CONFIG.format(
        jwt_secret=JWT_SECRET,
        pg_url="postgresql://postgres@127.0.0.1:5432/unused",
        upstreams=upstream_block("http://127.0.0.1:9"),
        extra=textwrap.dedent(admin_yaml()) if with_admin else "",
        issuer="http://127.0.0.1:9",
        port=port,
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return str(path)


async def test_set_list_effective_audit_delete(gw):
    conn = ["--url", gw.url, "--key", WRITE_KEY]
    code, out, err = await cli(
        "set", *conn, "--scope", "user:alice", "--period", "daily", "--amount", "12345"
    )
    assert code == 0, err
    limit_id = out.split(":")[0]
    assert limit_id.startswith("spl_") and "user:alice daily $123.45" in out

    code, out, err = await cli(*conn, "set", "--scope", "org", "--period", "monthly", "--amount", "unlimited")
    assert code == 0 and "org monthly unlimited" in out, err
    code, out, err = await cli(
        *conn,
        "set",
        "--scope",
        "group:eng",
        "--period",
        "monthly",
        "--amount",
        "5000",
        "--pooled-cents",
        "100000",
    )
    assert code == 0 and "pooled $1,000.00" in out, err

    code, out, err = await cli("list", *conn)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "SCOPE", "PERIOD", "AMOUNT", "POOL", "UPDATED"]
    assert [line.split()[1] for line in lines[1:]] == ["user:alice", "org", "group:eng"]

    code, out, err = await cli("list", *conn, "--scope-type", "group", "--json")
    assert code == 0 and [d["scope"]["rbac_group_id"] for d in json.loads(out)["data"]] == ["eng"]

    code, out, err = await cli("effective", *conn, "--user", "alice", "--period", "daily")
    assert code == 0, err
    # alice has never signed in: no email column value.
    assert out.splitlines()[1].split() == ["alice", "daily", "$123.45", "$0.00", "user:alice"]

    code, out, err = await cli("delete", *conn, limit_id, "--reason", "offboarded")
    assert code == 0 and out.strip() == f"deleted {limit_id}"
    code, out, err = await cli("delete", *conn, limit_id)
    assert code == 1 and "404" in err and "not_found_error" in err and "request-id req_" in err

    code, out, err = await cli("audit", *conn, "--limit", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert "spend_limit.delete" in lines[1] and "offboarded" in lines[1] and "admin-key:ops" in lines[1]
    assert "spend_limit.upsert" in lines[2] and len(lines) == 3


async def test_key_from_environment(gw, monkeypatch):
    monkeypatch.setenv(limits_cli.KEY_ENV, READ_KEY)
    code, out, err = await cli("list", "--url", gw.url)
    assert code == 0 and out.strip() == "no spend limits", err
    code, out, err = await cli("set", "--url", gw.url, "--scope", "org", "--period", "daily", "--amount", "1")
    assert code == 1 and "403" in err and "permission_error" in err and "write key" in err


async def test_url_and_key_from_config(gw, tmp_path, monkeypatch):
    monkeypatch.delenv(limits_cli.KEY_ENV, raising=False)
    path = config_file(tmp_path, gw)
    code, out, err = await cli(
        "--config", path, "set", "--scope", "group:ops", "--period", "weekly", "--amount", "700"
    )
    assert code == 0 and "group:ops weekly $7.00" in out, err
    code, out, err = await cli("effective", "--config", path)
    assert code == 0 and out.strip() == "nobody matched", err


async def test_clear_errors(gw, tmp_path, monkeypatch):
    monkeypatch.delenv(limits_cli.KEY_ENV, raising=False)
    code, _, err = await cli("list", "--url", gw.url, "--key", "z" * 40)
    assert code == 1 and "401" in err and "authentication_error" in err and limits_cli.KEY_ENV in err
    assert "z" * 40 not in err
    code, _, err = await cli("list", "--url", f"http://127.0.0.1:{free_port()}", "--key", WRITE_KEY)
    assert code == 1 and "cannot reach the gateway" in err
    code, _, err = await cli("list", "--url", gw.url)
    assert code == 2 and "no admin key" in err
    code, _, err = await cli("list", "--key", WRITE_KEY)
    assert code == 2 and "--config" in err
    code, _, err = await cli(
        "set", "--url", gw.url, "--key", WRITE_KEY, "--scope", "team:x", "--period", "daily", "--amount", "1"
    )
    assert code == 2 and "--scope" in err
    code, _, err = await cli(
        "set", "--url", gw.url, "--key", WRITE_KEY, "--scope", "org", "--period", "daily", "--amount", "1.50"
    )
    assert code == 2 and "--amount" in err
    code, _, err = await cli("list", "--config", str(tmp_path / "missing.yaml"), "--key", WRITE_KEY)
    assert code == 2 and "cannot read" in err
    # A gateway without admin: the API is not there at all.
    no_admin = config_file(tmp_path, gw, with_admin=False)
    code, _, err = await cli(
        "list", "--config", no_admin, "--url", gw.url + "/nothing-here", "--key", WRITE_KEY
    )
    assert code == 1 and "404" in err and "admin: section" in err


async def test_effective_sorted_by_spend(gw, pg_url):
    from gateway.spend.caps import period_bounds

    conn = await asyncpg.connect(pg_url)
    try:
        now = Clock().now()
        for sub, micro in (("amy", 10_000), ("bo", 2_000_000)):
            await conn.execute(
                "INSERT INTO principals (sub, email, groups, updated_at) VALUES ($1, $2, '[]', $3)",
                sub, f"{sub}@example.com", now,
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO spend_counters (scope_type, scope_id, period, period_start, spent_micro, updated_at)"
                " VALUES ('user', $1, 'monthly', $2, $3, $4)",
                sub, period_bounds("monthly", now)[0], micro, now,
            )  # fmt: skip
    finally:
        await conn.close()
    code, out, err = await cli(
        "effective", "--url", gw.url, "--key", WRITE_KEY, "--period", "monthly", "--sort", "spend_desc"
    )
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [(r[0], r[4]) for r in rows] == [("bo", "$2.00"), ("amy", "$0.01")]
