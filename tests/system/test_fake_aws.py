"""The fake Bedrock runtime and fake STS do what a script says, seen from plain clients.

The conformance suite, the bench and the signer tests trust these fakes: their
streams must decode with botocore's own event-stream parser (and a corrupted
frame must not), their signature checks must refuse what AWS refuses, and each
scripted failure must look like Bedrock's.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiobotocore.session import AioSession
from botocore.credentials import ReadOnlyCredentials
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer, EventStreamMessage
from botocore.exceptions import ClientError

from gateway.upstreams.outbound import Outbound
from gateway.upstreams.sigv4 import sign
from protocol_spec.fakes.aws_auth import AwsKeyring
from protocol_spec.fakes.bedrock import FakeBedrock
from protocol_spec.fakes.bedrock_replies import (
    ACCESS_DENIED,
    INTERNAL,
    NOT_FOUND,
    THROTTLING,
    TOO_LONG,
    UNAVAILABLE,
    BedrockReply,
    stream_exception,
)
from protocol_spec.fakes.replies import DEFAULT_TEXT, Reply, Usage, message_events
from protocol_spec.fakes.sts import FakeSts

REPO = Path(__file__).resolve().parents[2]
REGION = "us-west-2"
KEY, SECRET = "AKIAFAKEBEDROCK00001", "fake/bedrock+secret"
MODEL = "us.anthropic.claude-sonnet-4-6"
ARN = "arn:aws:bedrock:us-west-2:123456789012:application-inference-profile/labprofile01"
BODY: dict[str, Any] = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.fixture
def keyring() -> AwsKeyring:
    ring = AwsKeyring()
    ring.add(KEY, SECRET)
    return ring


@pytest.fixture
async def fake(keyring):
    async with FakeBedrock(keyring, region=REGION, bearer_tokens=["api-key-1"]) as server:
        yield server


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def _signed(url: str, body: bytes, secret: str = SECRET) -> Outbound:
    out = Outbound(url, {"content-type": "application/json", "accept": "application/json"}, body)
    return sign(out, service="bedrock", region=REGION, creds=ReadOnlyCredentials(KEY, secret, None, None))


def _path(model_id: str, operation: str) -> str:
    return f"/model/{model_id.replace('/', '%2F')}/{operation}"


async def _call(http, fake, operation: str = "invoke", model_id: str = MODEL, body: Any = BODY, **kw):
    raw = body if isinstance(body, bytes) else msgspec.json.encode(body)
    out = _signed(fake.url + _path(model_id, operation), raw, **kw)
    async with http.post(out.url, headers=out.headers, data=out.body) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def _frames(raw: bytes) -> list[EventStreamMessage]:
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    return list(buffer)


def _events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for frame in _frames(raw):
        assert frame.headers[":event-type"] == "chunk"
        out.append(msgspec.json.decode(base64.b64decode(msgspec.json.decode(frame.payload)["bytes"])))
    return out


# -- successful answers ----------------------------------------------------


async def test_invoke_answers_anthropic_json_naming_the_path_model(fake, http):
    status, headers, raw = await _call(http, fake)
    reply = msgspec.json.decode(raw)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert reply["model"] == MODEL and reply["content"] == [{"type": "text", "text": DEFAULT_TEXT}]
    assert headers["X-Amzn-Bedrock-Input-Token-Count"] == "12"
    assert "x-amzn-RequestId" in headers
    rec = fake.received[0]
    assert (rec.operation, rec.model_id, rec.principal, rec.payload) == ("invoke", MODEL, KEY, BODY)


async def test_arn_model_id_keeps_its_encoded_slash(fake, http):
    status, _, raw = await _call(http, fake, model_id=ARN)
    assert status == 200 and msgspec.json.decode(raw)["model"] == ARN
    assert fake.received[0].path == "/model/" + ARN.replace("/", "%2F") + "/invoke"
    assert fake.received[0].model_id == ARN


async def test_stream_is_one_crc_checked_chunk_per_event(fake, http):
    usage = Usage(input_tokens=30, output_tokens=9, cache_read_input_tokens=5)
    fake.script(BedrockReply(answer=Reply(usage=usage, deltas=3)))
    status, headers, raw = await _call(http, fake, "invoke-with-response-stream")
    assert status == 200 and headers["Content-Type"] == "application/vnd.amazon.eventstream"
    events = _events(raw)
    expected = [e.data for e in message_events(model=MODEL, usage=usage, deltas=3, ping_event=False)]
    assert [e["type"] for e in events] == [e["type"] for e in expected]  # no pings: Bedrock sends none
    assert events[:-1] == expected[:-1]
    assert events[-1]["amazon-bedrock-invocationMetrics"] == {
        "inputTokenCount": 30,
        "outputTokenCount": 9,
        "invocationLatency": 420,
        "firstByteLatency": 210,
        "cacheReadInputTokenCount": 5,
    }
    assert events[0]["message"]["model"] == MODEL


async def test_count_tokens_answers_input_tokens(fake, http):
    inner = msgspec.json.encode({**BODY, "max_tokens": 1})
    body = {"input": {"invokeModel": {"body": base64.b64encode(inner).decode()}}}
    status, _, raw = await _call(http, fake, "count-tokens", "anthropic.claude-sonnet-4-6", body)
    assert status == 200 and msgspec.json.decode(raw) == {"inputTokens": max(1, len(inner) // 4)}
    assert fake.received[0].payload == {**BODY, "max_tokens": 1}
    fake.script(BedrockReply(input_tokens=4321))
    _, _, raw = await _call(http, fake, "count-tokens", "anthropic.claude-sonnet-4-6", body)
    assert msgspec.json.decode(raw) == {"inputTokens": 4321}


# -- scripted failures -----------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "status", "error_type", "message"),
    [
        (THROTTLING, 429, "ThrottlingException", "Too many requests, please wait before trying again."),
        (TOO_LONG, 400, "ValidationException", "Input is too long for requested model."),
        (ACCESS_DENIED, 403, "AccessDeniedException", None),
        (NOT_FOUND, 404, "ResourceNotFoundException", None),
        (UNAVAILABLE, 503, "ServiceUnavailableException", None),
        (INTERNAL, 500, "InternalServerException", None),
    ],
)
async def test_scripted_errors_have_bedrocks_shape(fake, http, reply, status, error_type, message):
    for operation in ("invoke", "invoke-with-response-stream"):
        fake.script(reply)
        got, headers, raw = await _call(http, fake, operation)
        assert got == status
        assert headers["x-amzn-ErrorType"].split(":")[0] == error_type
        body = msgspec.json.decode(raw)
        assert set(body) == {"message"} and (message is None or body["message"] == message)


async def test_exception_frame_ends_the_stream(fake, http):
    fake.script(stream_exception(3, "internalServerException", "The system encountered an error."))
    _, _, raw = await _call(http, fake, "invoke-with-response-stream")
    frames = _frames(raw)
    assert [f.headers[":message-type"] for f in frames] == ["event", "event", "event", "exception"]
    assert frames[-1].headers[":exception-type"] == "internalServerException"
    assert msgspec.json.decode(frames[-1].payload) == {"message": "The system encountered an error."}


async def test_corrupted_frame_fails_botocores_crc_check(fake, http):
    fake.script(BedrockReply(corrupt_at=2))
    _, _, raw = await _call(http, fake, "invoke-with-response-stream")
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    assert next(buffer).headers[":event-type"] == "chunk"
    assert next(buffer).headers[":event-type"] == "chunk"
    with pytest.raises(ChecksumMismatch):
        next(buffer)


async def test_connection_breaks_mid_stream(fake, http):
    fake.script(BedrockReply(answer=Reply(reset_after=3)))
    out = _signed(fake.url + _path(MODEL, "invoke-with-response-stream"), msgspec.json.encode(BODY))
    received = b""
    with pytest.raises(aiohttp.ClientError):
        async with http.post(out.url, headers=out.headers, data=out.body) as resp:
            async for chunk in resp.content.iter_any():
                received += chunk
    assert len(_frames(received)) == 3
    assert fake.received[0].reset


async def test_silence_before_a_frame(fake, http):
    fake.script(BedrockReply(answer=Reply(stall_after=2, stall_seconds=0.3)))
    out = _signed(fake.url + _path(MODEL, "invoke-with-response-stream"), msgspec.json.encode(BODY))
    arrivals: list[float] = []  # when each frame was decoded
    buffer = EventStreamBuffer()
    async with http.post(out.url, headers=out.headers, data=out.body) as resp:
        async for chunk in resp.content.iter_any():
            buffer.add_data(chunk)
            arrivals.extend(time.monotonic() for _ in buffer)
    assert len(arrivals) == 9  # start, block start, 4 deltas, block stop, delta, stop
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    assert gaps[1] >= 0.28 and max(gaps[:1] + gaps[2:]) < 0.2


# -- what the fake refuses -------------------------------------------------


async def test_bodies_bedrock_would_refuse(fake, http):
    for body, needle in [
        ({**BODY, "model": "claude-sonnet-4-6"}, "extraneous key [model]"),
        ({**BODY, "stream": True}, "extraneous key [stream]"),
        ({k: v for k, v in BODY.items() if k != "anthropic_version"}, "required key [anthropic_version]"),
        (b"not json", "Malformed input request"),
    ]:
        status, headers, raw = await _call(http, fake, body=body)
        assert status == 400 and headers["x-amzn-ErrorType"].startswith("ValidationException")
        assert needle in msgspec.json.decode(raw)["message"]


async def test_unsigned_wrongly_signed_and_bearer_requests(fake, http):
    url = fake.url + _path(MODEL, "invoke")
    async with http.post(url, data=msgspec.json.encode(BODY)) as resp:
        assert resp.status == 403 and resp.headers["x-amzn-ErrorType"].startswith(
            "MissingAuthenticationToken"
        )
    status, headers, _ = await _call(http, fake, secret="wrong")
    assert status == 403 and headers["x-amzn-ErrorType"].startswith("InvalidSignatureException")
    for token, expected in (("api-key-1", 200), ("api-key-2", 403)):
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        async with http.post(url, headers=headers, data=msgspec.json.encode(BODY)) as resp:
            assert resp.status == expected
    assert [r.principal for r in fake.received] == [None, None, "bearer:api-key-1", None]
    assert [r.refused for r in fake.received][:2] == [
        "MissingAuthenticationTokenException",
        "InvalidSignatureException",
    ]


async def test_time_moves_with_the_injected_clock(keyring, http):
    now = [time.time()]
    keyring.add("ASIATEMPORARY0000001", "temp", "tok", datetime.fromtimestamp(now[0] + 30, UTC))
    async with FakeBedrock(keyring, region=REGION, clock=lambda: now[0]) as fake:
        out = Outbound(fake.url + _path(MODEL, "invoke"), {}, msgspec.json.encode(BODY))
        creds = ReadOnlyCredentials("ASIATEMPORARY0000001", "temp", "tok", None)
        signed = sign(out, service="bedrock", region=REGION, creds=creds)
        async with http.post(signed.url, headers=signed.headers, data=signed.body) as resp:
            assert resp.status == 200
        now[0] += 31
        async with http.post(signed.url, headers=signed.headers, data=signed.body) as resp:
            assert resp.status == 403 and resp.headers["x-amzn-ErrorType"].startswith("ExpiredTokenException")


# -- the fake STS ----------------------------------------------------------


async def test_sts_issues_credentials_for_the_duration_asked(keyring, monkeypatch):
    now = [time.time()]
    async with FakeSts(keyring, region=REGION, clock=lambda: now[0]) as sts:
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts.url)
        session = AioSession()
        async with session.create_client(
            "sts", region_name=REGION, aws_access_key_id=KEY, aws_secret_access_key=SECRET
        ) as client:
            reply = await client.assume_role(
                RoleArn="arn:aws:iam::123456789012:role/r", RoleSessionName="dev=40x", DurationSeconds=900
            )
            with pytest.raises(ClientError) as caught:
                await client.assume_role(
                    RoleArn="arn:aws:iam::123456789012:role/r", RoleSessionName="bad name"
                )
            assert caught.value.response["Error"]["Code"] == "ValidationError"
            sts.script("access_denied")
            with pytest.raises(ClientError) as caught:
                await client.assume_role(RoleArn="arn:aws:iam::123456789012:role/r", RoleSessionName="ok")
            assert caught.value.response["Error"]["Code"] == "AccessDenied"
    creds = reply["Credentials"]
    expected = datetime.fromtimestamp(now[0], UTC).replace(microsecond=0) + timedelta(seconds=900)
    assert abs(creds["Expiration"] - expected) <= timedelta(seconds=1)
    assert keyring[creds["AccessKeyId"]].session_token == creds["SessionToken"]
    assert reply["AssumedRoleUser"]["Arn"].endswith(":assumed-role/r/dev=40x")
    assert [c.outcome for c in sts.calls] == ["ok", "invalid", "access_denied"]
    assert sts.calls[0].principal == KEY and sts.calls[0].duration == 900


# -- as a process ------------------------------------------------------------


async def test_runs_as_a_process_driven_through_fake_control(http):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "protocol_spec.fakes.bedrock", "--port", "0", "--region", REGION,
        "--access-key", KEY, "--secret", SECRET,
        stdout=asyncio.subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        assert line.startswith("listening on http://127.0.0.1:")

        class Remote:
            url = line.split()[-1]

        status, _, _ = await _call(http, Remote)
        assert status == 200
        async with http.post(Remote.url + "/_fake/script", data=msgspec.json.encode([THROTTLING])) as resp:
            assert resp.status == 200
        assert (await _call(http, Remote))[0] == 429
        key = {"access_key_id": "AKIASECONDKEY0000001", "secret": "second"}
        async with http.post(Remote.url + "/_fake/keys", data=msgspec.json.encode(key)) as resp:
            assert resp.status == 200
        second = sign(
            Outbound(Remote.url + _path(MODEL, "invoke"), {}, msgspec.json.encode(BODY)),
            service="bedrock",
            region=REGION,
            creds=ReadOnlyCredentials("AKIASECONDKEY0000001", "second", None, None),
        )
        async with http.post(second.url, headers=second.headers, data=second.body) as resp:
            assert resp.status == 200
        async with http.get(Remote.url + "/_fake/received") as resp:
            records = await resp.json()
        assert [r["status"] for r in records] == [200, 429, 200]
        assert [r["principal"] for r in records] == [KEY, KEY, "AKIASECONDKEY0000001"]
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
