"""Amazon Bedrock behind the gateway, end to end: the anthropic SDK talks to Gatehouse,
Gatehouse signs for the fake Bedrock runtime, which checks every SigV4 signature with
botocore and answers real event-stream frames (SPEC §22)."""

from __future__ import annotations

import json
import os

import aiohttp
import anthropic
import msgspec
import pytest

from protocol_spec.fakes import Reply
from protocol_spec.fakes.aws_auth import AwsKeyring
from protocol_spec.fakes.bedrock import FakeBedrock
from protocol_spec.fakes.bedrock_replies import (
    INTERNAL,
    THROTTLING,
    TOO_LONG,
    BedrockReply,
    bedrock_error,
    stream_exception,
)
from protocol_spec.fakes.sts import FakeSts
from tests.harness import free_port

REGION = "us-east-1"
KEY, SECRET = "AKIAGATEHOUSETEST001", "gatehouse/test+secret"
ROLE = "arn:aws:iam::123456789012:role/gatehouse-bedrock"
PROMPT = [{"role": "user", "content": "hi"}]


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> pytest.MonkeyPatch:
    """No AWS credentials but the configured ones, and no instance metadata lookups."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    return monkeypatch


@pytest.fixture
async def bedrock(aws_env):
    ring = AwsKeyring()
    ring.add(KEY, SECRET)
    async with FakeBedrock(ring, region=REGION) as fake:
        yield fake


def bedrock_block(url: str, *, name: str = "bedrock", extra: str = "", auth: str | None = None) -> str:
    auth = auth or f"      aws_access_key_id: {KEY}\n      aws_secret_access_key: {SECRET}"
    block = f"  - provider: bedrock\n    name: {name}\n    region: {REGION}\n    base_url: {url}\n    auth:\n{auth}"
    return block + ("\n" + extra if extra else "")


def client(gw) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, auth_token=gw.token(), api_key=None, max_retries=0)


async def raw_post(gw, body: dict, path: str = "/v1/messages", headers: dict | None = None):
    hdrs = {"content-type": "application/json", **gw.auth(), **(headers or {})}
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + path, data=json.dumps(body), headers=hdrs) as r:
            return r.status, r.headers, await r.read()


# ---------------------------------------------------------------- the happy paths


async def test_a_json_request_is_translated_signed_and_answered(gateway_factory, bedrock):
    gw = await gateway_factory([bedrock_block(bedrock.url)])
    reply = await client(gw).messages.create(
        model="claude-sonnet-4-6",
        max_tokens=32,
        messages=PROMPT,
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14,request-tags-2026-08-21"},
    )
    assert reply.content[0].text
    got = bedrock.received[-1]
    assert (got.operation, got.model_id, got.principal, got.refused) == (
        "invoke", "us.anthropic.claude-sonnet-4-6", KEY, None,
    )
    assert got.payload["anthropic_version"] == "bedrock-2023-05-31"
    assert got.payload["anthropic_beta"] == ["interleaved-thinking-2025-05-14"]
    assert "model" not in got.payload and "stream" not in got.payload
    headers = {k.lower() for k, _ in got.headers}
    assert "x-stainless-lang" not in headers and "anthropic-beta" not in headers  # nothing of the client's


async def test_a_stream_is_re_emitted_as_sse_the_sdk_reads(gateway_factory, bedrock):
    gw = await gateway_factory([bedrock_block(bedrock.url)])
    async with client(gw).messages.stream(model="claude-opus-4-7", max_tokens=32, messages=PROMPT) as stream:
        text = await stream.get_final_text()
        final = await stream.get_final_message()
    assert text == "Hello from the simulated upstream."
    assert final.usage.output_tokens > 0
    assert bedrock.received[-1].operation == "stream"
    assert bedrock.received[-1].model_id == "us.anthropic.claude-opus-4-7"


async def test_a_silent_stream_gets_pings_and_no_x_amzn_header_leaks(gateway_factory, bedrock):
    gw = await gateway_factory(
        [bedrock_block(bedrock.url)], "gatehouse:\n  upstream:\n    ping_interval_seconds: 1\n"
    )
    bedrock.script(BedrockReply(answer=Reply(stall_after=2, stall_seconds=2.5)))
    status, headers, body = await raw_post(
        gw, {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": PROMPT, "stream": True}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert not [h for h in headers if h.lower().startswith("x-amzn")]
    events = [line for line in body.decode().split("\n") if line.startswith("event: ")]
    assert "event: ping" in events
    assert events[-1] == "event: message_stop"
    # Pings fall between events, never inside one.
    for block in body.decode().split("\n\n"):
        if block.startswith("event: ping"):
            assert block == 'event: ping\ndata: {"type": "ping"}'


# ---------------------------------------------------------------- errors and failover


async def test_a_too_long_prompt_is_a_capability_rejection_without_bedrock_text(gateway_factory, bedrock):
    gw = await gateway_factory([bedrock_block(bedrock.url)])
    bedrock.script(TOO_LONG)
    status, _, body = await raw_post(gw, {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": PROMPT})
    assert status == 400
    err = json.loads(body)
    assert err["error"] == {"type": "invalid_request_error", "message": "capability_rejected: prompt_too_long"}
    assert err["request_id"]


async def test_other_bedrock_errors_keep_their_status_but_not_their_words(gateway_factory, bedrock):
    gw = await gateway_factory([bedrock_block(bedrock.url)])
    account = "arn:aws:iam::123456789012:role/secret-role"
    bedrock.script(bedrock_error(400, "ValidationException", f"{account} may not use this"))
    status, _, body = await raw_post(gw, {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": PROMPT})
    assert (status, json.loads(body)["error"]["message"]) == (400, "upstream rejected the request")
    assert b"123456789012" not in body
    bedrock.script(THROTTLING)
    status, _, body = await raw_post(gw, {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": PROMPT})
    assert status == 429
    assert json.loads(body)["error"] == {"type": "rate_limit_error", "message": "upstream rate limit exceeded"}


async def test_throttling_fails_over_to_the_next_upstream(gateway_factory, bedrock, fake_upstream):
    gw = await gateway_factory([bedrock_block(bedrock.url), fake_upstream.url])
    bedrock.script(THROTTLING)
    reply = await client(gw).messages.create(model="claude-sonnet-4-6", max_tokens=16, messages=PROMPT)
    assert reply.content[0].text
    assert fake_upstream.received[-1].path == "/v1/messages"
    assert json.loads(fake_upstream.received[-1].body)["model"] == "claude-sonnet-4-6"


async def test_every_upstream_failing_gives_the_preferred_answer(gateway_factory, bedrock, fake_upstream):
    from protocol_spec.fakes import error_reply

    gw = await gateway_factory([bedrock_block(bedrock.url), fake_upstream.url])
    bedrock.script(INTERNAL)
    fake_upstream.script(error_reply(503, "overloaded_error", "busy"))
    status, _, body = await raw_post(gw, {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": PROMPT})
    assert (status, json.loads(body)["error"]["message"]) == (502, "all upstreams failed (2 attempted)")


async def test_an_exception_frame_mid_stream_ends_it_with_an_error_event(gateway_factory, bedrock, pg_url):
    gw = await gateway_factory([bedrock_block(bedrock.url)])
    # The reply has started (a pause after the first event lets it reach the client
    # first); before that, a broken stream simply fails over.
    broken = stream_exception(at=3)
    bedrock.script(msgspec.structs.replace(broken, answer=Reply(stall_after=1, stall_seconds=0.3)))
    status, headers, body = await raw_post(
        gw, {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": PROMPT, "stream": True}
    )
    assert status == 200
    text = body.decode()
    assert text.rstrip().endswith('"message":"upstream error"}}')
    assert "event: error" in text and "message_stop" not in text
    from tests.http.test_relay import usage_row

    row = await usage_row(pg_url, headers["request-id"])
    assert row["upstream"] == "bedrock" and row["input_tokens"] > 0  # message_start's usage was metered


async def test_a_frame_failing_its_checksum_interrupts_the_stream(gateway_factory, bedrock):
    gw = await gateway_factory([bedrock_block(bedrock.url)])
    bedrock.script(BedrockReply(corrupt_at=3, answer=Reply(stall_after=1, stall_seconds=0.3)))
    status, _, body = await raw_post(
        gw, {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": PROMPT, "stream": True}
    )
    assert status == 200
    assert "upstream stream interrupted" in body.decode()
    assert "message_stop" not in body.decode()


async def test_a_stream_that_breaks_before_it_started_fails_over(gateway_factory, bedrock, fake_upstream):
    gw = await gateway_factory([bedrock_block(bedrock.url), fake_upstream.url])
    bedrock.script(stream_exception(at=0))
    async with client(gw).messages.stream(model="claude-sonnet-4-6", max_tokens=16, messages=PROMPT) as stream:
        assert await stream.get_final_text() == "Hello from the simulated upstream."
    assert fake_upstream.received[-1].path == "/v1/messages"


async def test_a_guarded_upstream_refuses_bedrock_fields_in_the_body(gateway_factory, bedrock):
    guard = '    guardrail:\n      id: gr-123\n      version: "1"'
    gw = await gateway_factory([bedrock_block(bedrock.url, extra=guard)])
    before = len(bedrock.received)
    status, _, body = await raw_post(
        gw,
        {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": PROMPT, "amazon-bedrock-guardrailConfig": {}},
    )
    assert status == 400 and "amazon-bedrock-guardrailConfig" in json.loads(body)["error"]["message"]
    assert len(bedrock.received) == before
    await client(gw).messages.create(model="claude-sonnet-4-6", max_tokens=16, messages=PROMPT)
    sent = {k.lower(): v for k, v in bedrock.received[-1].headers}
    assert (sent["x-amzn-bedrock-guardrailidentifier"], sent["x-amzn-bedrock-guardrailversion"]) == ("gr-123", "1")


# ---------------------------------------------------------------- token counting


async def test_counting_uses_count_tokens_on_the_foundation_model(gateway_factory, bedrock):
    gw = await gateway_factory([bedrock_block(bedrock.url)])
    bedrock.script(BedrockReply(input_tokens=42))
    count = await client(gw).messages.count_tokens(
        model="claude-opus-4-7",
        messages=PROMPT,
        thinking={"type": "enabled", "budget_tokens": 2048},
    )
    assert count.input_tokens == 42
    got = bedrock.received[-1]
    assert (got.operation, got.model_id) == ("count", "anthropic.claude-opus-4-7")
    assert got.payload["max_tokens"] == 2049 and "anthropic_beta" not in got.payload


async def test_a_failed_count_falls_through_and_only_then_is_not_supported(gateway_factory, bedrock, fake_upstream):
    alone = await gateway_factory([bedrock_block(bedrock.url)])
    bedrock.script(bedrock_error(403, "AccessDeniedException", "no bedrock:CountTokens for arn:aws:iam::1:role/x"))
    status, headers, body = await raw_post(alone, {"model": "claude-opus-4-7", "messages": PROMPT}, "/v1/messages/count_tokens")
    assert (status, headers.get("x-should-retry"), json.loads(body)["error"]["type"]) == (501, "false", "not_supported")
    both = await gateway_factory([bedrock_block(bedrock.url), fake_upstream.url])
    bedrock.script(bedrock_error(403, "AccessDeniedException", "no"))
    status, _, body = await raw_post(both, {"model": "claude-opus-4-7", "messages": PROMPT}, "/v1/messages/count_tokens")
    assert status == 200 and "input_tokens" in json.loads(body)
    assert fake_upstream.received[-1].path == "/v1/messages/count_tokens"


# ---------------------------------------------------------------- credentials


async def test_an_assumed_role_signs_and_sts_down_fails_over_without_the_base_keys(
    gateway_factory, bedrock, fake_upstream, aws_env
):
    async with FakeSts(bedrock.keyring, region=REGION) as sts:
        aws_env.setenv("AWS_ENDPOINT_URL_STS", sts.url)
        role = f"    assume_role:\n      role_arn: {ROLE}\n      session_name: email"
        gw = await gateway_factory([bedrock_block(bedrock.url, extra=role), fake_upstream.url])
        await client(gw).messages.create(model="claude-sonnet-4-6", max_tokens=16, messages=PROMPT)
        assert sts.count == 1 and sts.calls[-1].session_name == "dev@example.com"
        assert bedrock.received[-1].principal not in (None, KEY)  # the role's key, never the base key
        sts.script("down")
        second = await gateway_factory([bedrock_block(bedrock.url, extra=role), fake_upstream.url])
        served = len(bedrock.received)
        reply = await client(second).messages.create(model="claude-sonnet-4-6", max_tokens=16, messages=PROMPT)
        assert reply.content[0].text and len(bedrock.received) == served
        assert fake_upstream.received[-1].path == "/v1/messages"


async def test_a_bedrock_api_key_goes_as_a_bearer(gateway_factory, aws_env):
    async with FakeBedrock(AwsKeyring(), region=REGION, bearer_tokens=["bedrock-key-1"]) as fake:
        gw = await gateway_factory([bedrock_block(fake.url, auth="      aws_bearer_token: bedrock-key-1")])
        await client(gw).messages.create(model="claude-sonnet-4-6", max_tokens=16, messages=PROMPT)
        assert fake.received[-1].principal == "bearer:bedrock-key-1"


# ---------------------------------------------------------------- health


async def test_a_dead_upstream_is_skipped_after_failures_in_a_row(gateway_factory, fake_upstream, aws_env):
    dead = f"http://127.0.0.1:{free_port()}"
    gw = await gateway_factory([bedrock_block(dead), fake_upstream.url])
    for _ in range(3):
        await client(gw).messages.create(model="claude-sonnet-4-6", max_tokens=16, messages=PROMPT)
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/readyz?verbose") as r:
            detail = await r.json()
    assert detail["upstreams"]["bedrock"]["state"] == "cooling"
    assert detail["upstreams"]["anthropic"] == {"state": "ok", "failures_in_a_row": 0}


async def test_a_client_that_hangs_up_mid_stream_cancels_the_bedrock_call(gateway_factory, bedrock, pg_url):
    import asyncio

    from tests.http.test_relay import usage_row

    gw = await gateway_factory([bedrock_block(bedrock.url)])
    bedrock.script(BedrockReply(answer=Reply(deltas=50, gap=0.2)))
    async with aiohttp.ClientSession() as s:
        r = await s.post(
            gw.url + "/v1/messages",
            json={"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": PROMPT, "stream": True},
            headers=gw.auth(),
        )
        request_id = r.headers["request-id"]
        await r.content.readuntil(b"\n\n")
        r.close()  # hang up mid-stream
    await asyncio.wait_for(bedrock.received[-1].cancelled.wait(), 2.0)
    row = await usage_row(pg_url, request_id)
    assert (row["status"], row["upstream"]) == (499, "bedrock")


async def test_a_request_abandoned_before_any_usage_is_counted_with_count_tokens(gateway_factory, bedrock, pg_url):
    """SPEC BEDROCK-9: Bedrock bills the input of a request the client left; CountTokens,
    which is free, prices it."""
    import asyncio

    import asyncpg

    gw = await gateway_factory([bedrock_block(bedrock.url)])
    bedrock.script(BedrockReply(answer=Reply(headers_delay=1.0)), BedrockReply(input_tokens=77))
    async with aiohttp.ClientSession() as s:
        pending = asyncio.ensure_future(
            s.post(
                gw.url + "/v1/messages",
                json={"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": PROMPT, "stream": True},
                headers=gw.auth(),
            )
        )
        await bedrock.wait_received(1)
        pending.cancel()  # hang up while Bedrock has not answered yet
        with pytest.raises(asyncio.CancelledError):
            await pending
    counted = await bedrock.wait_received(2)
    assert [r.operation for r in counted] == ["stream", "count"]
    assert counted[1].model_id == "anthropic.claude-sonnet-4-6"
    conn = await asyncpg.connect(pg_url)
    try:
        for _ in range(100):
            row = await conn.fetchrow(
                "SELECT * FROM usage_records WHERE status = 499 AND upstream = 'bedrock' ORDER BY ts DESC LIMIT 1"
            )
            if row is not None and row["input_tokens"] == 77:
                break
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    assert row is not None and row["input_tokens"] == 77
