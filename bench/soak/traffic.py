"""Clients of the soak: a paced mix of streaming and JSON Messages requests, and their tallies.

Every request is judged by what a client can see. A stream is ``ok`` only if it
ended with ``message_stop``; ``sse_error`` if an ``event: error`` came instead;
``cut`` if the connection closed mid-stream (what a killed replica looks like
through a load balancer); a stream that ends cleanly with neither is
``truncated``, which no fault excuses. A JSON answer is ``ok`` when it is a
whole Messages object; a non-200 answer is ``status`` and must carry the
Anthropic error envelope (``bad_envelope`` otherwise) unless HAProxy itself made it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.soak.lab import JWT_SECRET
from gateway.auth.tokens import TokenService

MODEL = "claude-sonnet-4-6"


def body(stream: bool, max_tokens: int = 200) -> bytes:
    doc = {"model": MODEL, "max_tokens": max_tokens, "stream": stream,
           "messages": [{"role": "user", "content": "soak " * 20}]}
    return json.dumps(doc, separators=(",", ":")).encode()


class Tokens:
    def __init__(self, public_url: str) -> None:
        self.svc = TokenService((JWT_SECRET,), public_url, 3600)

    def __call__(self, sub: str, groups: tuple[str, ...] = ("soak",)) -> str:
        return self.svc.mint(sub=sub, email=f"{sub}@example.com", groups=list(groups), now=int(time.time()))


@dataclass
class Outcome:
    start: float  # monotonic
    end: float
    stream: bool
    kind: str  # ok | cut | sse_error | status | conn_error | truncated | bad_envelope
    status: int | None = None
    request_id: str | None = None
    server: str | None = None  # which replica HAProxy chose (x-soak-server)
    error: str | None = None  # error.type, or the exception's class

    @property
    def label(self) -> str:
        if self.kind == "status":
            return f"{self.status} {self.error or ''}".strip()
        if self.kind == "sse_error":
            return f"sse error {self.error or ''}".strip()
        if self.kind in ("cut", "conn_error") and self.error:
            return f"{self.kind} ({self.error})"
        return self.kind


async def one(session: aiohttp.ClientSession, url: str, token: str, stream: bool,
              timeout: float = 30.0) -> Outcome:
    t0 = time.monotonic()
    out = Outcome(t0, t0, stream, "conn_error")
    headers = {"Authorization": f"Bearer {token}", "anthropic-version": "2023-06-01",
               "Content-Type": "application/json"}
    try:
        async with asyncio.timeout(timeout):
            async with session.post(url + "/v1/messages", data=body(stream), headers=headers) as r:
                out.status = r.status
                out.request_id = r.headers.get("request-id")
                out.server = r.headers.get("x-soak-server")
                raw = await r.read()
                if r.status != 200:
                    out.kind, out.error = "status", _error_type(raw, r.headers.get("x-soak-server") is None)
                    if out.error is None:
                        out.kind = "bad_envelope"
                elif stream:
                    out.kind, out.error = _judge_stream(raw)
                else:
                    doc = json.loads(raw)
                    out.kind = "ok" if doc.get("type") == "message" and "usage" in doc else "truncated"
    except TimeoutError:
        out.kind, out.error = "conn_error", "client timeout"
    except aiohttp.ClientPayloadError as exc:
        out.kind, out.error = "cut", type(exc).__name__
    except (aiohttp.ClientError, OSError, json.JSONDecodeError) as exc:
        out.kind, out.error = "conn_error", type(exc).__name__
    out.end = time.monotonic()
    return out


def _error_type(raw: bytes, from_lb: bool) -> str | None:
    try:
        doc = json.loads(raw)
        if doc.get("type") == "error" and isinstance(doc.get("error"), dict):
            return str(doc["error"].get("type"))
    except (ValueError, AttributeError):
        pass
    # HAProxy's own answers (503 no server, 502 bad gateway) are HTML and carry no x-soak-server.
    return "haproxy" if from_lb else None


def _judge_stream(raw: bytes) -> tuple[str, str | None]:
    events = [line[len(b"event: "):].strip() for line in raw.split(b"\n") if line.startswith(b"event: ")]
    if b"message_stop" in events:
        return "ok", None
    if b"error" in events:
        tail = raw[raw.rfind(b"event: error"):]
        try:
            data = tail.split(b"data: ", 1)[1].split(b"\n", 1)[0]
            return "sse_error", str(json.loads(data)["error"]["type"])
        except (IndexError, ValueError, KeyError, TypeError):
            return "sse_error", None
    return "truncated", None


@dataclass
class Load:
    """``rate`` requests a second (half streaming), from ``users`` signed-in people, until stopped."""

    url: str
    tokens: list[str]
    rate: float = 30.0
    stream_share: float = 0.5
    outcomes: list[Outcome] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> Load:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        connector = aiohttp.TCPConnector(limit=0)
        pending: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=connector) as s:
            n = 0
            t0 = time.monotonic()
            mix = random.Random(17)  # the same mix every run
            while not self._stop.is_set():
                stream = mix.random() < self.stream_share
                token = self.tokens[n % len(self.tokens)]
                task = asyncio.create_task(self._keep(s, token, stream))
                pending.add(task)
                task.add_done_callback(pending.discard)
                n += 1
                # Open loop on a fixed schedule: a fault does not slow the offered load.
                delay = t0 + n / self.rate - time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(self._stop.wait(), delay)
                    except TimeoutError:
                        pass
            if pending:
                await asyncio.gather(*pending)

    async def _keep(self, s: aiohttp.ClientSession, token: str, stream: bool) -> None:
        self.outcomes.append(await one(s, self.url, token, stream))


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * q))] * 1000, 1)


def tally(outcomes: list[Outcome]) -> dict[str, Any]:
    """Counts by outcome, and latency of the served ones (whole reply) by kind: streams of about
    0.7 s and JSON answers of a few ms mix badly in one percentile."""
    kinds = collections.Counter(o.label for o in outcomes)
    out: dict[str, Any] = {
        "requests": len(outcomes),
        "served": sum(1 for o in outcomes if o.kind == "ok"),
        "failed": {k: v for k, v in sorted(kinds.items()) if k != "ok"},
    }
    for name, stream in (("stream", True), ("json", False)):
        lat = [o.end - o.start for o in outcomes if o.kind == "ok" and o.stream is stream]
        out[f"{name}_ms_p50"], out[f"{name}_ms_p99"] = _pct(lat, 0.5), _pct(lat, 0.99)
    return out


def recovery_s(outcomes: list[Outcome], fault_at: float) -> float:
    """Seconds from the fault to the end of the last failed request that started after it (0: none failed)."""
    bad = [o.end for o in outcomes if o.start >= fault_at - 2.0 and o.kind != "ok" and o.end >= fault_at]
    return round(max(bad) - fault_at, 2) if bad else 0.0
