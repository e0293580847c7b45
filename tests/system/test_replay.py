"""Recorded real-client requests, replayed through the gateway, arrive upstream unchanged."""

from __future__ import annotations

import json

import aiohttp
import anthropic
import pytest

from protocol_spec import transcripts

FORWARDED_PREFIXES = ("anthropic-", "x-claude-code-", "x-stainless-")
FORWARDED_EXACT = {"content-type", "accept", "user-agent"}

REPLAYED = [
    (name, i)
    for name in ("cli/s01_authtoken_json", "cli/s02_authtoken_streamjson", "cli/t_tool", "cli/s03_apikey", "cli/x_custom_headers", "cli/ctx_cmd")
    for i, ex in enumerate(transcripts.load(name))
    if ex.method == "POST" and ex.path.startswith("/v1/messages")
][:40]


def _forwarded(name: str) -> bool:
    lower = name.lower()
    return lower in FORWARDED_EXACT or lower.startswith(FORWARDED_PREFIXES)


@pytest.mark.parametrize("name, index", REPLAYED)
async def test_replayed_client_request_is_forwarded_byte_identical(gateway_factory, fake_upstream, name, index):
    extra = "models:\n  - id: my-gw-alias\n    upstream_model:\n      anthropic: my-gw-alias\n"
    gw = await gateway_factory([fake_upstream.url], extra)
    ex = transcripts.load(name)[index]
    body = ex.request_body()
    headers = [(k, v) for k, v in ex.request_headers() if k.lower() not in ("authorization", "x-api-key")]
    headers.append(("Authorization", f"Bearer {gw.token()}"))
    url = gw.url + ex.path + (f"?{ex.query}" if ex.query else "")
    async with aiohttp.ClientSession(auto_decompress=True) as s:
        async with s.post(url, data=body, headers=headers, skip_auto_headers=("User-Agent", "Content-Type")) as r:
            assert r.status == 200, await r.text()
            await r.read()
    got = fake_upstream.received[-1]
    assert got.body == body
    assert (got.path, got.query_string) == (ex.path, ex.query or "")
    expected = [(k, v) for k, v in headers if _forwarded(k)]
    received = [(k, v) for k, v in got.headers if _forwarded(k)]
    assert sorted((k.lower(), v) for k, v in received) == sorted((k.lower(), v) for k, v in expected)


async def test_anthropic_sdk_json_and_streaming(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    client = anthropic.AsyncAnthropic(base_url=gw.url, auth_token=gw.token(), api_key=None, max_retries=0)
    msg = await client.messages.create(model="claude-sonnet-4-6", max_tokens=32, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "Hello from the simulated upstream."
    assert msg.usage.input_tokens > 0
    async with client.messages.stream(model="claude-sonnet-4-6", max_tokens=32, messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join([t async for t in stream.text_stream])
    assert text == "Hello from the simulated upstream."
    count = await client.messages.count_tokens(model="claude-sonnet-4-6", messages=[{"role": "user", "content": "hi"}])
    assert count.input_tokens > 0
    assert fake_upstream.received[-1].path == "/v1/messages/count_tokens"


async def test_anthropic_sdk_sees_auth_errors_as_such(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    client = anthropic.AsyncAnthropic(base_url=gw.url, auth_token="not-a-token", api_key=None, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        await client.messages.create(model="claude-sonnet-4-6", max_tokens=1, messages=[])
    assert info.value.response.headers["x-should-retry"] == "false"
    assert fake_upstream.received == []
