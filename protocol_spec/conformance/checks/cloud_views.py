"""What the cloud checks share: the fakes, and ways to read streams and errors the same way for every gateway.

A gateway may re-serialise what a cloud sent (Anthropic's gateway writes each
Bedrock chunk and each Vertex event as compact JSON); SPEC asks for the same
events, not the same bytes, so streams are compared as (event name, parsed
data) pairs, and the gateway's own pings are set apart.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
from botocore.eventstream import EventStreamBuffer

from protocol_spec.conformance.checks.streaming import events_of
from protocol_spec.conformance.context import Ctx, obj
from protocol_spec.conformance.target import Answer
from protocol_spec.conformance.verdicts import Skip
from protocol_spec.fakes.bedrock_remote import RemoteBedrock
from protocol_spec.fakes.bedrock_replies import BedrockReply, render
from protocol_spec.fakes.remote import RemoteFake

# An AWS account and role in Bedrock's error texts: none of it may reach a client (BEDROCK-6).
ACCOUNT = "123456789012"
SECRET_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/conformance-bedrock-secret"
Event = tuple[str | None, Any]


def bedrock(c: Ctx) -> RemoteBedrock:
    if c.suite.bedrock is None:
        raise Skip("the fixtures run no fake Bedrock (started with --no-cloud-upstreams)")
    return c.suite.bedrock


def vertex(c: Ctx) -> RemoteFake:
    if c.suite.vertex is None:
        raise Skip("the fixtures run no fake Vertex (started with --no-cloud-upstreams)")
    return c.suite.vertex


class RemoteSts:
    """The fake STS's AssumeRole log and script (protocol_spec/conformance/cloud_fixtures.py, StsControl)."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self._session = session

    async def received(self) -> list[dict[str, Any]]:
        async with self._session.get(self.url + "/_fake/received") as response:
            response.raise_for_status()
            calls: list[dict[str, Any]] = await response.json()
            return calls

    async def script(self, *outcomes: str) -> None:
        await self._post("/_fake/script", json.dumps(list(outcomes)).encode())

    async def reset(self) -> None:
        await self._post("/_fake/reset", b"")

    async def _post(self, path: str, body: bytes) -> None:
        async with self._session.post(self.url + path, data=body, headers={"Content-Type": "application/json"}) as response:
            response.raise_for_status()


def sts(c: Ctx) -> RemoteSts:
    if not c.state.sts_control_url:
        raise Skip("the fixtures run no fake STS (started with --no-cloud-upstreams)")
    return RemoteSts(c.state.sts_control_url, c.suite.session)


async def reset_all(c: Ctx) -> None:
    """Every fake forgets what it received and its scripts."""
    await c.fake.reset()
    for fake in (c.suite.bedrock, c.suite.vertex):
        if fake is not None:
            await fake.reset()
    if c.state.sts_control_url:
        await sts(c).reset()


def parsed_events(raw: bytes) -> list[Event]:
    """(event name, data as JSON, or the text when it is not JSON) of each event in an SSE body."""
    out: list[Event] = []
    for name, data in events_of(raw):
        try:
            out.append((name, json.loads(data)))
        except ValueError:
            out.append((name, data))
    return out


def without_pings(events: list[Event]) -> list[Event]:
    return [event for event in events if event[0] != "ping"]


def bedrock_stream_events(reply: BedrockReply, model_id: str) -> list[Event]:
    """The Anthropic events the fake Bedrock sends for ``reply``, decoded from its event-stream frames."""
    frames = EventStreamBuffer()
    for _, frame in render(reply, "stream", model_id).frames:
        frames.add_data(frame)
    events: list[Event] = []
    for message in frames:
        if message.headers.get(":event-type") == "chunk":
            data = json.loads(base64.b64decode(json.loads(message.payload)["bytes"]))
            events.append((data.get("type"), data))
    return events


def error_of(answer: Answer) -> dict[str, Any]:
    """``error`` of an envelope answer ({} when the body is not one)."""
    body = obj(answer.json())
    return obj(body.get("error")) if body.get("type") == "error" else {}


def leaked(answer: Answer, *secrets: str) -> list[str]:
    """Which of ``secrets`` appear in the answer's body or headers."""
    text = answer.body.decode("utf-8", "replace") + "\n" + "\n".join(f"{k}: {v}" for k, v in answer.raw_headers)
    return [secret for secret in secrets if secret and secret in text]


def cloud_headers(answer_headers: list[tuple[str, str]] | dict[str, str]) -> list[str]:
    """Response header names a cloud sets and a client must not get (``x-amzn-*``)."""
    names = answer_headers.keys() if isinstance(answer_headers, dict) else [k for k, _ in answer_headers]
    return [name for name in names if name.lower().startswith("x-amzn")]
