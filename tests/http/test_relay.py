"""The hot path end to end: real gateway, real fake upstream, real HTTP clients."""

from __future__ import annotations

import asyncio
import gzip
import json
import time

import aiohttp
import asyncpg
import pytest

from protocol_spec.fakes import Reply, SseEvent, Usage, error_reply, ping, sse_bytes

BODY = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


def raw(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def post(gw, path="/v1/messages", body=None, headers=None, **kw):
    hdrs = {"content-type": "application/json", **gw.auth(), **(headers or {})}
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + path, data=raw(BODY) if body is None else body, headers=hdrs, **kw) as r:
            return r.status, r.headers, await r.read()


async def usage_row(pg_url: str, request_id: str, timeout: float = 5.0):
    conn = await asyncpg.connect(pg_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = await conn.fetchrow("SELECT * FROM usage_records WHERE request_id = $1", request_id)
            if row is not None:
                return row
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise AssertionError(f"no usage record for {request_id}")


# ---------------------------------------------------------------- forwarding


async def test_json_reply_passes_through_and_body_is_forwarded_byte_identical(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    body = b'{"model":"claude-sonnet-4-6",  "max_tokens":64,"messages":[{"role":"user","content":"hi \\u00e9"}],"x_unknown":{"a":[1,2]}}'
    status, headers, reply = await post(gw, body=body)
    assert status == 200
    assert json.loads(reply)["content"][0]["text"] == "Hello from the simulated upstream."
    assert fake_upstream.received[-1].body == body
    assert headers["request-id"].startswith("req_")


async def test_query_string_is_forwarded(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    await post(gw, path="/v1/messages?beta=true")
    got = fake_upstream.received[-1]
    assert (got.path, got.query_string) == ("/v1/messages", "beta=true")


async def test_header_rules(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    sent = {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
        "x-claude-code-session-id": "sess-1",
        "x-stainless-lang": "js",
        "user-agent": "claude-cli/2.1.328 (external, sdk-cli)",
        "accept": "application/json",
        "x-api-key": "client-key-must-not-leak",
        "cookie": "a=b",
        "x-app": "cli",
        "x-custom": "team",
        "x-forwarded-for": "1.2.3.4",
        "accept-encoding": "br, zstd",
    }
    await post(gw, headers=sent)
    got = {k.lower(): v for k, v in fake_upstream.received[-1].headers}
    for name in ("anthropic-version", "anthropic-beta", "x-claude-code-session-id", "x-stainless-lang", "user-agent", "accept", "content-type"):
        assert got[name] == ({**sent, "content-type": "application/json"})[name], name
    assert got["x-api-key"] == "sk-ant-test-upstream-key"
    for name in ("cookie", "x-app", "x-custom", "x-forwarded-for", "authorization"):
        assert name not in got, name
    assert got["accept-encoding"] == "gzip, deflate"


async def test_oauth_credential_appends_the_oauth_beta(gateway_factory, fake_upstream):
    block = f"""  - provider: anthropic
    base_url: {fake_upstream.url}
    auth:
      oauth_token: sk-ant-oat-test"""
    gw = await gateway_factory([block])
    await post(gw, headers={"anthropic-beta": "claude-code-20250219"})
    got = {k.lower(): v for k, v in fake_upstream.received[-1].headers}
    assert got["authorization"] == "Bearer sk-ant-oat-test"
    assert got["anthropic-beta"] == "claude-code-20250219,oauth-2025-04-20"
    assert "x-api-key" not in got


async def test_alias_model_is_spliced_and_nothing_else_changes(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    body = b'{"messages":[{"role":"user","content":"hi"}], "model": "claude-haiku-4-5","max_tokens":5}'
    status, _, _ = await post(gw, body=body)
    assert status == 200
    assert fake_upstream.received[-1].body == body.replace(b'"claude-haiku-4-5"', b'"claude-haiku-4-5-20251001"')


async def test_custom_model_uses_upstream_model_map(gateway_factory, fake_upstream):
    extra = f"""
models:
  - id: team-model
    label: Team model
    upstream_model:
      anthropic: claude-sonnet-4-6
"""
    gw = await gateway_factory([fake_upstream.url], extra)
    status, _, _ = await post(gw, body=b'{"model":"team-model","max_tokens":1,"messages":[]}')
    assert status == 200
    assert fake_upstream.received[-1].body == b'{"model":"claude-sonnet-4-6","max_tokens":1,"messages":[]}'


async def test_unroutable_model_is_refused_before_any_upstream_call(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    status, _, body = await post(gw, body=b'{"model":"gpt-4o"}')
    assert status == 400
    assert json.loads(body)["error"] == {
        "type": "invalid_request_error",
        "message": "model gpt-4o is not in the operator's model allowlist",
    }
    assert fake_upstream.received == []


async def test_dated_form_of_a_catalog_model_is_routed_as_asked(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    body = b'{"model":"claude-sonnet-4-6-20260101","max_tokens":1}'
    assert (await post(gw, body=body))[0] == 200
    assert fake_upstream.received[-1].body == body


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{nope", "invalid JSON"),
        (b"[]", "request body must be a JSON object"),
        (b'{"max_tokens":1}', "model is required"),
        (b'{"model":7}', "model must be a string"),
    ],
)
async def test_bad_bodies_get_our_envelope(gateway_factory, fake_upstream, body, message):
    gw = await gateway_factory([fake_upstream.url])
    status, headers, reply = await post(gw, body=body)
    assert status == 400
    doc = json.loads(reply)
    assert doc["type"] == "error" and doc["error"] == {"type": "invalid_request_error", "message": message}
    assert doc["request_id"] == headers["request-id"]
    assert fake_upstream.received == []


# ---------------------------------------------------------------- responses


async def test_upstream_ratelimit_and_request_id_are_replaced_retry_headers_pass(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    fake_upstream.script(Reply(request_id="req_upstream_1", headers={"x-should-retry": "true", "retry-after": "7"}))
    status, headers, _ = await post(gw)
    assert status == 200
    assert not [h for h in headers if h.lower().startswith("anthropic-ratelimit-")]
    assert headers["request-id"] != "req_upstream_1"
    assert headers["x-should-retry"] == "true" and headers["retry-after"] == "7"


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_upstream_replies_are_relayed_decoded(gateway_factory, fake_upstream, encoding):
    gw = await gateway_factory([fake_upstream.url])
    fake_upstream.script(Reply(encoding=encoding, stream=False))
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.post(gw.url + "/v1/messages", data=raw(BODY), headers={**gw.auth(), "accept-encoding": "identity"}) as r:
            assert r.status == 200
            assert "Content-Encoding" not in r.headers
            assert json.loads(await r.read())["type"] == "message"


async def test_stream_bytes_are_identical(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    reply = Reply(stream=True, deltas=6, usage=Usage(input_tokens=11, output_tokens=21))
    fake_upstream.script(reply)
    status, headers, body = await post(gw, body=raw({**BODY, "stream": True}))
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert body == fake_upstream.sse_bytes(reply, model="claude-sonnet-4-6")


async def test_first_event_arrives_before_the_upstream_finishes(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    fake_upstream.script(Reply(stream=True, deltas=3, gap=0.4))
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/v1/messages", data=raw({**BODY, "stream": True}), headers=gw.auth()) as r:
            first = await r.content.readuntil(b"\n\n")
            assert b"message_start" in first
            # The upstream is still sleeping between deltas: it has not finished.
            assert not fake_upstream.received[-1].finished.is_set()
            rest = await r.read()
    assert b"message_stop" in rest


async def test_pings_and_comments_are_relayed(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    events = (SseEvent(comment="keep-alive"), ping(), ping(delay=0.05))
    reply = Reply(events=events)
    fake_upstream.script(reply)
    _, _, body = await post(gw, body=raw({**BODY, "stream": True}))
    assert body == fake_upstream.sse_bytes(reply)
    assert b": keep-alive" in body and body.count(b"event: ping") == 2


# ---------------------------------------------------------------- usage tap


async def test_usage_is_recorded_from_the_stream(gateway_factory, fake_upstream, pg_url):
    gw = await gateway_factory([fake_upstream.url])
    fake_upstream.script(
        Reply(stream=True, usage=Usage(input_tokens=100, output_tokens=42, cache_read_input_tokens=7, ephemeral_5m_input_tokens=3, ephemeral_1h_input_tokens=4))
    )
    _, headers, _ = await post(gw, body=raw({**BODY, "stream": True}))
    row = await usage_row(pg_url, headers["request-id"])
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_input_tokens"]) == (100, 42, 7)
    assert (row["cache_creation_5m"], row["cache_creation_1h"], row["cache_creation_input_tokens"]) == (3, 4, 7)
    assert row["estimated_output"] is False and row["status"] == 200 and row["upstream"] == "anthropic"


async def test_usage_of_a_cut_off_stream_is_estimated(gateway_factory, fake_upstream, pg_url):
    gw = await gateway_factory([fake_upstream.url])
    reply = Reply(stream=True, deltas=4, text="x" * 400, message_delta=False, message_stop=False)
    fake_upstream.script(reply)
    _, headers, _ = await post(gw, body=raw({**BODY, "stream": True}))
    row = await usage_row(pg_url, headers["request-id"])
    assert row["estimated_output"] is True
    assert row["output_tokens"] >= 100  # 400 characters of text, plus JSON framing, ÷ 4


async def test_usage_is_recorded_from_json(gateway_factory, fake_upstream, pg_url):
    gw = await gateway_factory([fake_upstream.url])
    fake_upstream.script(Reply(stream=False, usage=Usage(input_tokens=5, output_tokens=9)))
    _, headers, _ = await post(gw)
    row = await usage_row(pg_url, headers["request-id"])
    assert (row["input_tokens"], row["output_tokens"]) == (5, 9)


# ---------------------------------------------------------------- failover


def two(fake_a, fake_b):
    from tests.harness import upstream_block

    return [upstream_block(fake_a.url, name="first"), upstream_block(fake_b.url, name="second")]


@pytest.fixture
async def second_upstream():
    from protocol_spec.fakes import FakeUpstream

    fake = FakeUpstream()
    await fake.start()
    yield fake
    await fake.close()


@pytest.mark.parametrize("status", [500, 529, 503, 429, 401, 403, 404, 501])
async def test_fails_over_on_eligible_statuses(gateway_factory, fake_upstream, second_upstream, status):
    gw = await gateway_factory(two(fake_upstream, second_upstream))
    fake_upstream.script(error_reply(status, "api_error", "first is unhappy"))
    code, _, body = await post(gw)
    assert code == 200 and json.loads(body)["type"] == "message"
    assert len(fake_upstream.received) == 1 and len(second_upstream.received) == 1


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_other_4xx_are_relayed_unchanged_without_failover(gateway_factory, fake_upstream, second_upstream, status):
    gw = await gateway_factory(two(fake_upstream, second_upstream))
    reply = error_reply(status, "invalid_request_error", "prompt is too long")
    fake_upstream.script(reply)
    code, _, body = await post(gw)
    assert code == status
    assert json.loads(body)["error"]["message"] == "prompt is too long"
    assert second_upstream.received == []


async def test_connection_refused_fails_over(gateway_factory, second_upstream):
    from tests.harness import upstream_block

    gw = await gateway_factory([upstream_block("http://127.0.0.1:9", name="dead"), upstream_block(second_upstream.url, name="live")])
    assert (await post(gw))[0] == 200


@pytest.mark.parametrize(
    "first, second, expected",
    [
        (429, 500, 429),
        (500, 429, 429),
        (401, 404, 401),
        (404, 403, 403),
        (404, 501, 404),
        (501, 500, 501),
        (500, 529, 502),
    ],
)
async def test_final_error_preference(gateway_factory, fake_upstream, second_upstream, first, second, expected):
    gw = await gateway_factory(two(fake_upstream, second_upstream))
    fake_upstream.script(error_reply(first, "api_error", f"from first {first}"))
    second_upstream.script(error_reply(second, "api_error", f"from second {second}"))
    code, _, body = await post(gw)
    assert code == expected
    doc = json.loads(body)
    if expected == 502:
        assert doc["error"] == {"type": "api_error", "message": "all upstreams failed (2 attempted)"}
    else:
        which = "first" if expected == first else "second"
        assert doc["error"]["message"] == f"from {which} {expected}"  # relayed unchanged


async def test_ttfb_timeout_fails_over_then_502(gateway_factory, fake_upstream, second_upstream):
    gw = await gateway_factory(two(fake_upstream, second_upstream), "timeouts:\n  upstream_ttfb_ms: 300\n")
    fake_upstream.script(Reply(headers_delay=2))
    second_upstream.script(Reply(headers_delay=2))
    started = time.monotonic()
    code, _, body = await post(gw)
    assert code == 502 and json.loads(body)["error"]["message"] == "all upstreams failed (2 attempted)"
    assert time.monotonic() - started < 1.8


async def test_stream_dying_before_the_first_byte_fails_over(gateway_factory, fake_upstream, second_upstream):
    gw = await gateway_factory(two(fake_upstream, second_upstream))
    fake_upstream.script(Reply(stream=True, reset_after=0))
    code, _, body = await post(gw, body=raw({**BODY, "stream": True}))
    assert code == 200 and b"message_stop" in body
    assert len(second_upstream.received) == 1


async def test_failure_after_the_first_byte_becomes_an_error_event(gateway_factory, fake_upstream, second_upstream):
    gw = await gateway_factory(two(fake_upstream, second_upstream))
    fake_upstream.script(Reply(stream=True, deltas=4, reset_after=3))
    code, _, body = await post(gw, body=raw({**BODY, "stream": True}))
    assert code == 200
    assert body.endswith(
        b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"upstream stream interrupted"}}\n\n'
    )
    assert second_upstream.received == []


# ---------------------------------------------------------------- timeouts and disconnects


async def test_idle_timeout_applies_between_chunks_not_to_the_whole_stream(gateway_factory, fake_upstream):
    # Injected 0.5 s idle timeout (production: ≥ 300 s): a 1.6 s stream whose gaps
    # are 0.2 s is never cut, because the rule is about silence, not duration.
    gw = await gateway_factory([fake_upstream.url], idle_read_timeout_s=0.5)
    fake_upstream.script(Reply(stream=True, deltas=8, gap=0.2))
    code, _, body = await post(gw, body=raw({**BODY, "stream": True}))
    assert code == 200 and body.rstrip().endswith(b'{"type":"message_stop"}')


async def test_silence_longer_than_the_idle_timeout_ends_the_stream_with_an_error(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url], idle_read_timeout_s=0.5)
    fake_upstream.script(Reply(stream=True, deltas=4, stall_after=3, stall_seconds=5))
    code, _, body = await post(gw, body=raw({**BODY, "stream": True}))
    assert code == 200 and b"upstream stream interrupted" in body


async def test_client_disconnect_cancels_the_upstream_request(gateway_factory, fake_upstream, pg_url):
    gw = await gateway_factory([fake_upstream.url])
    fake_upstream.script(Reply(stream=True, deltas=50, gap=0.2))
    async with aiohttp.ClientSession() as s:
        r = await s.post(gw.url + "/v1/messages", data=raw({**BODY, "stream": True}), headers=gw.auth())
        request_id = r.headers["request-id"]
        await r.content.readuntil(b"\n\n")
        r.close()  # hang up mid-stream
    got = fake_upstream.received[-1]
    await asyncio.wait_for(got.cancelled.wait(), 2.0)
    row = await usage_row(pg_url, request_id)
    assert row["status"] == 499


# ---------------------------------------------------------------- limits and auth


async def test_413_is_decided_from_content_length_before_reading(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url], "limits:\n  max_request_bytes: 100\n")
    code, headers, body = await post(gw, body=b"{" + b" " * 200 + b"}")
    assert code == 413
    assert json.loads(body)["error"]["type"] == "request_too_large"
    assert headers["x-should-retry"] == "false"


async def test_411_for_chunked_bodies(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])

    async def gen():
        yield raw(BODY)

    code, _, body = await post(gw, body=gen())
    assert code == 411
    assert json.loads(body)["type"] == "error"


async def test_414_and_431_in_our_envelope(gateway_factory, fake_upstream):
    gw = await gateway_factory(
        [fake_upstream.url], "limits:\n  max_url_length: 200\n  max_request_header_bytes: 2000\n"
    )
    code, _, body = await post(gw, path="/v1/messages?x=" + "a" * 300)
    assert code == 414 and json.loads(body)["type"] == "error"
    code, _, body = await post(gw, headers={"x-big": "b" * 3000})
    assert code == 431 and json.loads(body)["type"] == "error"
    # Far above aiohttp's own 8 KiB line limit: still ours.
    code, _, body = await post(gw, headers={"x-huge": "c" * 20000})
    assert code == 431 and json.loads(body)["type"] == "error"


@pytest.mark.parametrize("auth", [None, "Basic abc", "Bearer nope", "Bearer a.b.c"])
async def test_bearer_refusals_are_401_without_retry(gateway_factory, fake_upstream, auth):
    gw = await gateway_factory([fake_upstream.url])
    headers = {"content-type": "application/json"}
    if auth:
        headers["Authorization"] = auth
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/v1/messages", data=raw(BODY), headers=headers) as r:
            doc = json.loads(await r.read())
            assert r.status == 401 and r.headers["x-should-retry"] == "false"
            assert doc["error"]["type"] == "authentication_error"
    assert fake_upstream.received == []


async def test_expired_token_is_401(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    token = gw.token(ttl_seconds=-120)
    code, headers, body = await post(gw, headers={"Authorization": f"Bearer {token}"})
    assert code == 401 and headers["x-should-retry"] == "false"


async def test_billing_group_tags_are_stripped_and_recorded(gateway_factory, fake_upstream, capfd):
    extra = "admin:\n  billing_group_tag: cost_center\n"
    gw = await gateway_factory([fake_upstream.url], extra)
    body = b'{"model":"claude-sonnet-4-6","tags":{"cost_center":"eng"},"max_tokens":1}'
    token = gw.token(groups=["eng"])
    claims = __import__("json").loads(__import__("base64").urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["billing_group_tag"] == "cost_center"
    status, _, _ = await post(gw, body=body, headers={"Authorization": f"Bearer {token}", "anthropic-beta": "claude-code-20250219,request-tags-2026-08-21"})
    assert status == 200
    got = fake_upstream.received[-1]
    assert got.body == b'{"model":"claude-sonnet-4-6","max_tokens":1}'
    assert dict((k.lower(), v) for k, v in got.headers)["anthropic-beta"] == "claude-code-20250219"
    events = [json.loads(l) for l in capfd.readouterr().err.splitlines() if '"evt":"inference"' in l]
    assert events[-1]["billing_group"] == "eng"


async def test_tags_pass_through_without_a_billing_group_tag(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    body = b'{"model":"claude-sonnet-4-6","tags":{"cost_center":"eng"},"max_tokens":1}'
    assert (await post(gw, body=body))[0] == 200
    assert fake_upstream.received[-1].body == body
