"""load_test_mode end to end (SPEC §10.10, MSG-49 to MSG-54): real PostgreSQL, real clients, and real
upstream fakes on loopback that must receive nothing. Requests are authenticated, admitted,
translated and signed as usual; the reply is canned."""

from __future__ import annotations

import asyncio
import json
import subprocess

import aiohttp
import anthropic
import asyncpg
import pytest

from gateway.db.store import SpentDatabase
from gateway.upstreams.load_test import canned
from protocol_spec.fakes.sts import FakeSts
from tests.harness import make_config, start_gateway, upstream_block
from tests.http.test_bedrock_relay import REGION, ROLE, aws_env, bedrock, bedrock_block  # noqa: F401 (fixtures)
from tests.http.test_cloud_relay import google, loopback_only, vertex, vertex_block  # noqa: F401 (fixtures)
from tests.http.test_relay import usage_row
from tests.system.test_process import ENV, GATEHOUSE, free_port, write_config

PROMPT = [{"role": "user", "content": "hi"}]
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": PROMPT}


def load_test(tokens: int = 60, seconds: float = 0) -> str:
    return f"load_test_mode:\n  enabled: true\n  reply_tokens: {tokens}\n  reply_seconds: {seconds}\n"


def client(gw, **headers: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=gw.url, auth_token=gw.token(), api_key=None, max_retries=0, default_headers=headers
    )


async def post(gw, body: dict, *, path: str = "/v1/messages", headers: dict | None = None, auth: bool = True):
    hdrs = {"content-type": "application/json", **(gw.auth() if auth else {}), **(headers or {})}
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + path, data=json.dumps(body), headers=hdrs) as r:
            return r.status, r.headers, await r.read()


def inference_events(capfd: pytest.CaptureFixture[str]) -> list[dict]:
    return [json.loads(line) for line in capfd.readouterr().err.splitlines() if '"evt":"inference"' in line]


# ---------------------------------------------------------------- replies


async def test_a_json_request_gets_the_canned_reply_and_nothing_is_sent(gateway_factory, fake_upstream, pg_url, capfd):
    gw = await gateway_factory([fake_upstream.url], load_test(tokens=120))
    reply = await client(gw).messages.with_raw_response.create(**BODY)
    message = await reply.parse()
    assert (message.id, message.model, message.role) == ("msg_loadtest", "load-test", "assistant")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (0, 0)
    assert "canned reply" in message.content[0].text
    assert 400 <= len(message.content[0].text) <= 480  # about 120 tokens at four characters each
    assert fake_upstream.received == []
    request_id = reply.headers["request-id"]
    row = await usage_row(pg_url, request_id)
    assert (row["status"], row["upstream"], row["input_tokens"], row["output_tokens"]) == (200, "anthropic", 0, 0)
    (event,) = [e for e in inference_events(capfd) if e["request_id"] == request_id]
    assert event["load_test"] is True and event["status"] == 200 and event["model"] == "claude-sonnet-4-6"


async def test_a_stream_is_valid_sse_the_sdk_reads_to_the_end(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url], load_test(tokens=300, seconds=0))
    async with client(gw).messages.stream(**BODY) as stream:
        texts = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert len(texts) == 100  # three tokens to a delta
    assert "".join(texts) == final.content[0].text and final.id == "msg_loadtest"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 0
    assert fake_upstream.received == []


async def test_a_paced_stream_arrives_whole_in_the_scheduled_parts(gateway_factory, fake_upstream):
    # Pacing itself runs on an injected clock in the unit tests; here only that a
    # paced stream reaches a client complete, with its events in order.
    gw = await gateway_factory([fake_upstream.url], load_test(tokens=60, seconds=0.1))
    expected = b"".join(part for _, part in canned(60, 0.1).stream)
    status, headers, body = await post(gw, {**BODY, "stream": True})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert body == expected
    assert fake_upstream.received == []


async def test_count_tokens_is_canned_too(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url], load_test())
    status, _, body = await post(gw, BODY, path="/v1/messages/count_tokens")
    assert (status, json.loads(body)) == (200, {"input_tokens": 0})
    assert fake_upstream.received == []


async def test_a_request_without_a_session_token_is_still_refused(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url], load_test())
    status, _, body = await post(gw, BODY, auth=False)
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
    assert fake_upstream.received == []


async def test_the_role_allowlist_still_applies(gateway_factory, fake_upstream):
    managed = """
managed:
  policies:
    - match: {}
      cli:
        availableModels: [claude-haiku-4-5]
"""
    gw = await gateway_factory([fake_upstream.url], load_test() + managed)
    status, _, body = await post(gw, BODY)
    assert status == 400 and "allowlist" in json.loads(body)["error"]["message"]
    assert fake_upstream.received == []


# ---------------------------------------------------------------- simulated developers


async def test_x_load_test_user_stands_for_distinct_developers(gateway_factory, fake_upstream, pg_url, capfd):
    gw = await gateway_factory([fake_upstream.url], load_test())
    ids = {}
    for n in ("1", "2", "0002", "1234567"):
        reply = await client(gw, **{"x-load-test-user": n}).messages.with_raw_response.create(**BODY)
        ids[n] = reply.headers["request-id"]
    events = {e["request_id"]: e for e in inference_events(capfd)}
    subs = {n: events[rid]["sub"] for n, rid in ids.items()}
    assert subs == {
        "1": "load-test-user-1", "2": "load-test-user-2", "0002": "load-test-user-2", "1234567": "load-test-user-1234567",
    }
    assert events[ids["1"]]["email"] == "load-test-user-1@load-test.invalid"
    assert all(e["load_test"] is True for e in events.values())
    row = await usage_row(pg_url, ids["1234567"])
    assert (row["sub"], row["email"]) == ("load-test-user-1234567", "load-test-user-1234567@load-test.invalid")
    # Without the header, the token's own developer.
    reply = await client(gw).messages.with_raw_response.create(**BODY)
    assert (await usage_row(pg_url, reply.headers["request-id"]))["sub"] == "user-dev"
    assert fake_upstream.received == []


@pytest.mark.parametrize("value", ["12345678", "-3", "seven", "1.0", ""])
async def test_a_malformed_x_load_test_user_is_a_400(gateway_factory, fake_upstream, value):
    gw = await gateway_factory([fake_upstream.url], load_test())
    status, _, body = await post(gw, BODY, headers={"x-load-test-user": value})
    error = json.loads(body)["error"]
    assert status == 400 and error["type"] == "invalid_request_error" and "at most 7 digits" in error["message"]
    assert fake_upstream.received == []


# ---------------------------------------------------------------- signing without sending


async def test_bedrock_requests_are_signed_with_the_developers_role_session_but_never_sent(
    gateway_factory, bedrock, aws_env  # noqa: F811 (the fixtures imported above)
):
    async with FakeSts(bedrock.keyring, region=REGION) as sts:
        aws_env.setenv("AWS_ENDPOINT_URL_STS", sts.url)
        role = f"    assume_role:\n      role_arn: {ROLE}\n      session_name: email"
        gw = await gateway_factory([bedrock_block(bedrock.url, extra=role)], load_test())
        reply = await client(gw, **{"x-load-test-user": "5"}).messages.create(**BODY)
        assert reply.id == "msg_loadtest"
        # The role was assumed for the simulated developer (signing needs its keys) ...
        assert sts.count == 1 and sts.calls[-1].session_name == "load-test-user-5@load-test.invalid"
        async with client(gw, **{"x-load-test-user": "5"}).messages.stream(**BODY) as stream:
            await stream.get_final_message()
        # ... and Bedrock heard nothing, streaming or not.
        assert bedrock.received == []
        # Signing is real: without a credential the request fails as it would for real.
        sts.script("down")
        status, _, body = await post(gw, BODY, headers={"x-load-test-user": "6"})
        assert status == 502 and "all upstreams failed" in json.loads(body)["error"]["message"]
        assert bedrock.received == []


async def test_vertex_requests_get_a_google_token_but_are_never_sent(gateway_factory, google, vertex, tmp_path):  # noqa: F811
    # Every test here runs under test_cloud_relay's loopback_only: no lookup or connection
    # may leave 127.0.0.0/8, and no credential chain finds the machine's own.
    key_file = tmp_path / "sa.json"
    google.new_service_account(key_file)
    gw = await gateway_factory([vertex_block(vertex.url, key_file)], load_test())
    assert (await client(gw).messages.create(**BODY)).id == "msg_loadtest"
    count = await client(gw).messages.count_tokens(model="claude-opus-4-7", messages=PROMPT)
    assert count.input_tokens == 0
    assert google.grants == 1  # the token was fetched, as signing a real call needs
    assert vertex.received == []


async def test_spend_is_admitted_and_settled_at_zero_per_simulated_developer(gateway_factory, fake_upstream, pg_url):
    admin = 'admin:\n  write_keys: [{id: t, key: "admin-write-key-0123456789abcdef0123456789"}]\n'
    gw = await gateway_factory([fake_upstream.url], load_test() + admin)
    for n in ("1", "2", "3"):
        status, headers, _ = await post(gw, BODY, headers={"x-load-test-user": n})
        assert status == 200
    await usage_row(pg_url, headers["request-id"])
    conn = await asyncpg.connect(pg_url)
    try:
        for _ in range(100):  # settlements land off the request
            left = await conn.fetchval("SELECT coalesce(sum(reserved_micro), 0) FROM spend_counters")
            if left == 0:
                break
            await asyncio.sleep(0.05)
        rows = await conn.fetch("SELECT scope_id, spent_micro, reserved_micro FROM spend_counters WHERE scope_type = 'user'")
    finally:
        await conn.close()
    users = {r["scope_id"] for r in rows}
    assert {"load-test-user-1", "load-test-user-2", "load-test-user-3"} <= users
    assert all(r["spent_micro"] == 0 and r["reserved_micro"] == 0 for r in rows)
    assert fake_upstream.received == []


# ---------------------------------------------------------------- boot


async def _spend_recorded_database(pg_cluster, fake_upstream, name: str) -> str:
    """A database where one real request was served and recorded with its tokens."""
    db = pg_cluster.create_database(name)
    gw = await start_gateway(make_config(db, [upstream_block(fake_upstream.url)]))
    try:
        status, headers, _ = await post(gw, BODY)
        assert status == 200
        row = await usage_row(db, headers["request-id"])
        assert row["input_tokens"] > 0
    finally:
        await gw.close()
    return db


async def test_boot_refuses_a_database_where_spend_was_recorded(pg_cluster, fake_upstream):
    db = await _spend_recorded_database(pg_cluster, fake_upstream, "ltm_spent")
    with pytest.raises(SpentDatabase, match="its own empty database"):
        await start_gateway(make_config(db, [upstream_block(fake_upstream.url)], load_test()))
    # Rows with no tokens (a load test's own) do not count as spend.
    empty = pg_cluster.create_database("ltm_zero")
    first = await start_gateway(make_config(empty, [upstream_block(fake_upstream.url)], load_test()))
    try:
        assert (await post(first, BODY))[0] == 200
    finally:
        await first.close()
    again = await start_gateway(make_config(empty, [upstream_block(fake_upstream.url)], load_test()))
    await again.close()
    conn = await asyncpg.connect(empty)
    try:
        assert await conn.fetchval("SELECT count(*) FROM usage_records") == 1
    finally:
        await conn.close()


async def test_spend_only_in_the_daily_rollups_still_counts(pg_cluster, fake_upstream):
    db = await _spend_recorded_database(pg_cluster, fake_upstream, "ltm_rolled")
    conn = await asyncpg.connect(db)
    try:  # what the retention sweep does to old rows, by hand
        await conn.execute(
            "INSERT INTO usage_daily (day, sub, input_tokens, output_tokens, updated_at) "
            "SELECT ts::date, sub, input_tokens, output_tokens, now() FROM usage_records"
        )
        await conn.execute("DELETE FROM usage_records")
    finally:
        await conn.close()
    with pytest.raises(SpentDatabase):
        await start_gateway(make_config(db, [upstream_block(fake_upstream.url)], load_test()))


async def test_gatehouse_serve_warns_and_refuses_a_spent_database(tmp_path, pg_cluster, fake_upstream):
    db = await _spend_recorded_database(pg_cluster, fake_upstream, "ltm_cli")
    cfg = write_config(tmp_path, db, fake_upstream.url, free_port(), load_test())
    proc = await asyncio.create_subprocess_exec(
        *GATEHOUSE, "serve", "--config", str(cfg), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    stderr = err.decode()
    assert proc.returncode == 1
    assert any(" warn load_test_mode is on" in line for line in stderr.splitlines())
    assert "give load-test mode its own empty database" in stderr.splitlines()[-1]
    assert "listening" not in stderr


async def test_the_load_test_example_serves_with_no_upstream_reachable(pg_cluster):
    """conf/examples/cag/load-test.yaml as shipped (its upstream is the real Anthropic API,
    which nothing may reach from here) with only its IdP pointed at loopback."""
    import msgspec

    from gateway.config.load import load
    from tests.config.test_examples import EXAMPLE_ENV, EXAMPLES

    env = {**EXAMPLE_ENV, "GATEWAY_POSTGRES_URL": pg_cluster.create_database("ltm_example")}
    cfg = load(str(EXAMPLES / "cag" / "load-test.yaml"), env)
    assert cfg.oidc is not None and cfg.upstreams[0].base_url is None
    cfg = msgspec.structs.replace(cfg, oidc=msgspec.structs.replace(cfg.oidc, issuer="http://127.0.0.1:9"))
    gw = await start_gateway(cfg, bind_port=free_port())
    try:
        # JSON: the example paces streams over 9.5 s, and this test waits for nothing.
        status, _, body = await post(gw, BODY, headers={"x-load-test-user": "17"})
        assert status == 200 and body == canned(750, 9.5).json_body
    finally:
        await gw.close()
