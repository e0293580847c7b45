"""The fake upstream does what a script says, seen from a plain aiohttp client.

The conformance suite and the benchmarks trust this fake, so each scripting
feature is checked here against real sockets.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import aiohttp
import msgspec
import pytest
import yarl

from protocol_spec.fakes import (
    DEFAULT_TEXT,
    FakeUpstream,
    Reply,
    SseEvent,
    Usage,
    comment,
    error_event,
    error_reply,
    message_events,
    ping,
    sse_bytes,
    tool_use_events,
)
from protocol_spec.fakes.remote import RemoteFake

REPO = Path(__file__).resolve().parents[2]
MESSAGE = {"model": "claude-test-1", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def _body(stream: bool) -> bytes:
    return json.dumps({**MESSAGE, "stream": stream}, separators=(",", ":")).encode()


@pytest.fixture
async def fake():
    async with FakeUpstream() as server:
        yield server


@pytest.fixture
async def client():
    # No automatic decompression: several tests look at the bytes on the wire.
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def _post(client: aiohttp.ClientSession, fake: FakeUpstream, body: bytes, **kw):
    return client.post(fake.url + "/v1/messages?beta=true", data=body, **kw)


# -- default answers -------------------------------------------------------


async def test_default_json_answer_has_messages_shape(fake, client):
    async with await _post(client, fake, _body(False)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.headers["request-id"].startswith("req_")
        assert any(name.lower().startswith("anthropic-ratelimit-") for name in resp.headers)
        reply = await resp.json()
    assert reply["type"] == "message"
    assert reply["model"] == "claude-test-1"
    assert reply["content"] == [{"type": "text", "text": DEFAULT_TEXT}]
    usage = reply["usage"]
    assert set(usage) >= {
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cache_creation",
    }
    assert set(usage["cache_creation"]) == {"ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"}


async def test_default_stream_is_byte_exact_and_in_real_order(fake, client):
    async with await _post(client, fake, _body(True)) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        raw = await resp.read()
    assert raw == sse_bytes(Reply(), model="claude-test-1")
    assert raw == fake.sse_bytes(Reply(), model="claude-test-1")
    names = [line[len("event: ") :] for line in raw.decode().splitlines() if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = json.loads(raw.decode().split("\n")[1][len("data: ") :])
    assert set(start["message"]["usage"]["cache_creation"]) == {
        "ephemeral_5m_input_tokens",
        "ephemeral_1h_input_tokens",
    }
    text = "".join(
        json.loads(line[6:])["delta"]["text"]
        for line in raw.decode().splitlines()
        if line.startswith("data: ") and '"text_delta"' in line
    )
    assert text == DEFAULT_TEXT


async def test_count_tokens_models_and_unknown_paths(fake, client):
    async with client.post(fake.url + "/v1/messages/count_tokens", data=_body(False)) as resp:
        assert resp.status == 200
        assert (await resp.json())["input_tokens"] > 0
    async with client.get(fake.url + "/v1/models?limit=20") as resp:
        models = await resp.json()
        assert models["data"] and models["has_more"] is False
    async with client.get(fake.url + "/nowhere") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["type"] == "not_found_error"


# -- recording -------------------------------------------------------------


async def test_records_method_path_query_headers_in_wire_order_and_exact_body(fake, client):
    body = b'{"model":"m",  "stream":false}'
    headers = [
        ("X-First", "1"),
        ("anthropic-beta", "a,b"),
        ("X-Mixed-Case", "v"),
        ("x-dup", "1"),
        ("x-dup", "2"),
    ]
    # encoded=True keeps yarl from normalising the escape before it is sent.
    url = yarl.URL(fake.url + "/v1/messages?beta=true&x=%41", encoded=True)
    async with client.post(url, data=body, headers=headers) as resp:
        await resp.read()
    (rec,) = fake.received
    assert (rec.method, rec.path, rec.query_string) == ("POST", "/v1/messages", "beta=true&x=%41")
    assert rec.body == body
    sent = [pair for pair in rec.headers if pair[0] in {name for name, _ in headers}]
    assert sent == headers
    assert rec.header("anthropic-BETA") == "a,b"
    assert rec.header_values("x-dup") == ["1", "2"]
    assert rec.json() == {"model": "m", "stream": False}
    assert rec.finished.is_set() and not rec.cancelled.is_set()


# -- scripted answers --------------------------------------------------------


async def test_script_is_fifo_then_default(fake, client):
    fake.script(
        error_reply(
            429,
            "rate_limit_error",
            "slow down",
            retry_after=1,
            should_retry=False,
            headers={"X-Extra": "yes"},
        ),
        Reply(status=201, body=b"not json", content_type="text/plain"),
    )
    async with await _post(client, fake, _body(False)) as resp:
        assert resp.status == 429
        assert resp.headers["retry-after"] == "1"
        assert resp.headers["x-should-retry"] == "false"
        assert resp.headers["X-Extra"] == "yes"
        body = await resp.json()
        assert body["error"] == {"type": "rate_limit_error", "message": "slow down"}
        assert body["request_id"] == resp.headers["request-id"]
    async with await _post(client, fake, _body(False)) as resp:
        assert resp.status == 201
        assert resp.headers["Content-Type"] == "text/plain"
        assert await resp.read() == b"not json"
    async with await _post(client, fake, _body(False)) as resp:
        assert resp.status == 200
    assert fake.pending == 0


async def test_scripted_headers_override_defaults_and_ratelimit_can_be_dropped(fake, client):
    fake.script(
        Reply(
            headers={"request-id": "req_fixed", "content-type": "application/x-test"}, ratelimit_headers=False
        )
    )
    async with await _post(client, fake, _body(False)) as resp:
        assert resp.headers.getall("request-id") == ["req_fixed"]
        assert resp.headers["Content-Type"] == "application/x-test"
        assert not any(name.lower().startswith("anthropic-ratelimit-") for name in resp.headers)


async def test_generated_answer_can_force_stream_and_usage(fake, client):
    usage = Usage(input_tokens=5, output_tokens=7, cache_read_input_tokens=3, ephemeral_1h_input_tokens=2)
    reply = Reply(stream=True, usage=usage, text="abc", model="claude-x")
    fake.script(reply)
    async with await _post(client, fake, _body(False)) as resp:
        raw = await resp.read()
    assert raw == sse_bytes(reply)
    delta = [line for line in raw.decode().splitlines() if '"message_delta"' in line][0]
    assert json.loads(delta[6:])["usage"] == {
        "input_tokens": 5,
        "cache_creation_input_tokens": 2,
        "cache_read_input_tokens": 3,
        "output_tokens": 7,
    }


async def test_gzip_and_deflate_bodies(fake, client):
    payload = {"hello": "world" * 50}
    fake.script(Reply(json=payload, encoding="gzip"), Reply(json=payload, encoding="deflate"))
    async with await _post(client, fake, _body(False)) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert json.loads(gzip.decompress(await resp.read())) == payload
    async with await _post(client, fake, _body(False)) as resp:
        assert resp.headers["Content-Encoding"] == "deflate"
        assert json.loads(zlib.decompress(await resp.read())) == payload


async def test_auto_encoding_follows_accept_encoding(fake, client):
    fake.script(Reply(encoding="auto"), Reply(encoding="auto"))
    async with await _post(client, fake, _body(True), headers={"Accept-Encoding": "gzip, deflate"}) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(await resp.read()) == sse_bytes(Reply(), "claude-test-1")
    async with await _post(client, fake, _body(False), headers={"Accept-Encoding": "identity"}) as resp:
        assert "Content-Encoding" not in resp.headers
        assert (await resp.json())["type"] == "message"


async def test_gzip_stream_decodes_with_a_normal_client(fake):
    fake.script(Reply(stream=True, encoding="gzip"))
    async with aiohttp.ClientSession() as decoding:
        async with decoding.post(fake.url + "/v1/messages", data=_body(True)) as resp:
            assert await resp.read() == sse_bytes(Reply(), "claude-test-1")


async def test_pings_comments_and_error_events_are_exact(fake, client):
    events = (comment(), ping(), comment("still here"), error_event(), SseEvent(raw=b"data: raw\n\n"))
    fake.script(Reply(events=events))
    async with await _post(client, fake, _body(True)) as resp:
        raw = await resp.read()
    assert raw == sse_bytes(Reply(events=events))
    assert raw.startswith(b': keep-alive\n\nevent: ping\ndata: {"type":"ping"}\n\n: still here\n\n')
    assert b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"' in raw


async def test_tool_use_stream_shape(fake, client):
    reply = Reply(events=tool_use_events("Read", {"file_path": "/tmp/x"}))
    fake.script(reply)
    async with await _post(client, fake, _body(True)) as resp:
        raw = await resp.read()
    partial = "".join(
        json.loads(line[6:])["delta"]["partial_json"]
        for line in raw.decode().splitlines()
        if "input_json_delta" in line
    )
    assert json.loads(partial) == {"file_path": "/tmp/x"}
    assert b'"stop_reason":"tool_use"' in raw


async def test_stream_can_end_without_message_delta(fake, client):
    reply = Reply(stream=True, message_delta=False)
    fake.script(reply)
    async with await _post(client, fake, _body(True)) as resp:
        raw = await resp.read()
    assert b"message_delta" not in raw
    assert raw.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert raw == sse_bytes(reply, "claude-test-1")


# -- timing and failures -----------------------------------------------------


async def test_per_event_delays_are_observed(fake, client):
    reply = Reply(stream=True, ttft=0.2, gap=0.05, deltas=3)
    fake.script(reply)
    started = time.monotonic()
    async with await _post(client, fake, _body(True)) as resp:
        first = await resp.content.readuntil(b"\n\n")
        first_at = time.monotonic() - started
        raw = first + await resp.content.read()
    total = time.monotonic() - started
    assert first.startswith(b"event: message_start")
    assert first_at < 0.15
    assert total >= 0.2 + 2 * 0.05 - 0.01
    assert raw == sse_bytes(reply, "claude-test-1")


async def test_delay_before_headers(fake, client):
    fake.script(Reply(headers_delay=0.25))
    started = time.monotonic()
    async with await _post(client, fake, _body(False)) as resp:
        assert time.monotonic() - started >= 0.24
        assert resp.status == 200


async def test_first_byte_timeout_cancels_the_upstream_request(fake, client):
    fake.script(Reply(headers_delay=30))
    with pytest.raises(asyncio.TimeoutError):
        async with await _post(client, fake, _body(False), timeout=aiohttp.ClientTimeout(total=0.2)):
            pass
    (rec,) = fake.received
    await asyncio.wait_for(rec.cancelled.wait(), 2)
    assert rec.cancelled_at is not None and not rec.finished.is_set()


async def test_reset_mid_stream_is_a_client_error_after_n_events(fake, client):
    reply = Reply(stream=True, reset_after=3)
    fake.script(reply)
    expected_prefix = b"".join(event.frame() for event in message_events(model="claude-test-1")[:3])
    got = b""
    with pytest.raises(aiohttp.ClientError):
        async with await _post(client, fake, _body(True)) as resp:
            async for chunk in resp.content.iter_any():
                got += chunk
    assert got == expected_prefix
    (rec,) = fake.received
    assert rec.reset and not rec.finished.is_set() and not rec.cancelled.is_set()


async def test_reset_before_json_body(fake, client):
    fake.script(Reply(json={"x": 1}, reset_after=0))
    with pytest.raises(aiohttp.ClientError):
        async with await _post(client, fake, _body(False)) as resp:
            await resp.read()


async def test_stall_mid_stream_then_client_gives_up(fake, client):
    fake.script(Reply(stream=True, stall_after=2, stall_seconds=30))
    expected_prefix = b"".join(event.frame() for event in message_events(model="claude-test-1")[:2])
    got = b""
    timeout = aiohttp.ClientTimeout(sock_read=0.3)
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        async with await _post(client, fake, _body(True), timeout=timeout) as resp:
            async for chunk in resp.content.iter_any():
                got += chunk
    assert 0.25 <= time.monotonic() - started < 3
    assert got == expected_prefix
    (rec,) = fake.received
    await asyncio.wait_for(rec.cancelled.wait(), 2)


async def test_stall_ends_and_the_stream_completes(fake, client):
    reply = Reply(stream=True, stall_after=1, stall_seconds=0.2)
    fake.script(reply)
    started = time.monotonic()
    async with await _post(client, fake, _body(True)) as resp:
        raw = await resp.read()
    assert time.monotonic() - started >= 0.19
    assert raw == sse_bytes(reply, "claude-test-1")


async def test_client_disconnect_sets_cancelled_promptly(fake, client):
    fake.script(Reply(stream=True, stall_after=4, stall_seconds=30))
    async with await _post(client, fake, _body(True)) as resp:
        await resp.content.readuntil(b"event: ping")
        resp.close()  # drop the connection mid-stream
    closed_at = time.monotonic()
    (rec,) = fake.received
    await asyncio.wait_for(rec.cancelled.wait(), 2)
    assert rec.cancelled_at - closed_at < 0.5


async def test_wait_received(fake, client):
    async def late_request():
        await asyncio.sleep(0.05)
        async with await _post(client, fake, _body(False)) as resp:
            await resp.read()

    task = asyncio.create_task(late_request())
    (rec,) = await fake.wait_received(1, timeout=2)
    assert rec.path == "/v1/messages"
    await task
    with pytest.raises(TimeoutError):
        await fake.wait_received(5, timeout=0.05)


# -- out-of-process control ---------------------------------------------------


async def test_control_endpoints(fake, client):
    replies = [
        Reply(status=503, json={"a": 1}),
        Reply(body=b"\x00\xff", content_type="application/octet-stream"),
    ]
    async with client.post(fake.url + "/_fake/script", data=msgspec.json.encode(replies)) as resp:
        assert (await resp.json())["queued"] == 2
    async with await _post(client, fake, _body(False), headers={"X-Probe": "1"}) as resp:
        assert resp.status == 503
    async with await _post(client, fake, _body(False)) as resp:
        assert await resp.read() == b"\x00\xff"
    async with client.get(fake.url + "/_fake/received") as resp:
        records = await resp.json()
    assert len(records) == 2  # control calls are not recorded
    assert ["X-Probe", "1"] in records[0]["headers"]
    assert records[0]["body"] == _body(False).decode()
    assert records[0]["query_string"] == "beta=true"
    async with client.post(fake.url + "/_fake/script", data=b'{"status": "nope"}') as resp:
        assert resp.status == 400
    async with client.post(fake.url + "/_fake/reset") as resp:
        assert resp.status == 200
    assert fake.received == [] and fake.pending == 0


async def test_remote_client_round_trips_replies(fake):
    stream_reply = Reply(events=message_events("via json", deltas=2) + (comment(),))
    async with aiohttp.ClientSession() as session:
        remote = RemoteFake(fake.url, session)
        await remote.script(stream_reply)
        await remote.set_default(Reply(text="new default", model="m-default"))
        async with session.post(fake.url + "/v1/messages", data=_body(True)) as resp:
            assert await resp.read() == sse_bytes(stream_reply)
        async with session.post(fake.url + "/v1/messages", data=_body(False)) as resp:
            reply = await resp.json()
            assert reply["content"][0]["text"] == "new default" and reply["model"] == "m-default"
        records = await remote.received()
        assert [r["body"] for r in records] == [_body(True), _body(False)]
        await remote.reset()
        assert await remote.received() == []


def test_runs_as_a_process():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "protocol_spec.fakes.upstream", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.split()[-1]

        async def ask() -> dict:
            async with aiohttp.ClientSession() as session:
                async with session.post(url + "/v1/messages", data=_body(False)) as resp:
                    return await resp.json()

        assert asyncio.run(ask())["content"][0]["text"] == DEFAULT_TEXT
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
