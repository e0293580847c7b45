"""SPEC §12 (streaming) and the client-disconnect rule of §10.7.

Streams are read chunk by chunk with their arrival times, so "unbuffered"
is judged by the clock: the first event must arrive while the fake upstream
is still deliberately holding back the rest.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import aiohttp

from protocol_spec.conformance.context import Ctx, small_request
from protocol_spec.conformance.verdicts import check
from protocol_spec.fakes import Reply, SseEvent, comment, error_event, message_events, ping, sse_bytes

GAP_S = 0.6
INTERRUPTED = {"type": "error", "error": {"type": "api_error", "message": "upstream stream interrupted"}}


@dataclass
class Stream:
    status: int
    headers: dict[str, str]
    chunks: list[tuple[float, bytes]]
    # How the connection ended when it did not end cleanly (a reset, a cut), else None.
    broken: str | None = None

    @property
    def body(self) -> bytes:
        return b"".join(chunk for _, chunk in self.chunks)

    @property
    def first_at(self) -> float | None:
        return self.chunks[0][0] if self.chunks else None

    @property
    def last_at(self) -> float | None:
        return self.chunks[-1][0] if self.chunks else None


async def read_stream(c: Ctx, body: dict, *, timeout_s: float = 15.0) -> Stream:
    token = await c.bearer()
    started = time.monotonic()
    headers = {"Content-Type": "application/json", "anthropic-version": "2023-06-01", "Authorization": f"Bearer {token}"}
    chunks: list[tuple[float, bytes]] = []
    status, seen_headers, broken = 0, {}, None
    try:
        async with c.t.session.post(
            c.t.url("/v1/messages"), data=json.dumps(body).encode(), headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            status, seen_headers = resp.status, {k.lower(): v for k, v in resp.headers.items()}
            async for chunk in resp.content.iter_any():
                chunks.append((time.monotonic() - started, chunk))
    except aiohttp.ClientError as err:
        # A reset or a cut stream: what arrived before it is what counts.
        broken = f"{type(err).__name__}: {err}"
    except TimeoutError:
        # A stream held open is an observation too, judged like any other, not a crash of the check.
        broken = f"no end within {timeout_s} s"
    return Stream(status, seen_headers, chunks, broken)


def events_of(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) of each complete SSE event in ``raw``."""
    found = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = None, []
        for line in block.decode("utf-8", "replace").split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if name or data:
            found.append((name, "\n".join(data)))
    return found


@check("unbuffered, byte-identical streams", "SSE-1", "SSE-3", "SSE-8", "MSG-26")
async def unbuffered(c: Ctx) -> None:
    await c.fake.reset()
    reply = Reply(stream=True, text="One two three four five six.", deltas=4, gap=GAP_S)
    await c.fake.script(reply)
    stream = await read_stream(c, small_request(stream=True))
    c.equal("SSE-1", stream.status, 200, "stream status")
    c.expect("SSE-1", stream.headers.get("content-type", "").startswith("text/event-stream"), "text/event-stream", observed=stream.headers.get("content-type"))
    expected = sse_bytes(reply, "claude-sonnet-4-6")
    c.expect("SSE-3", stream.body == expected, "the stream arrives byte for byte", observed=stream.body, expected=expected)
    held_back = GAP_S * 3
    first, last = stream.first_at, stream.last_at
    c.expect("SSE-1", first is not None and last is not None and last - first >= held_back * 0.8,
             "the first event arrives before the upstream has finished", observed=(first, last), expected=f"first chunk at least {held_back * 0.8:.1f} s before the last")
    c.expect("SSE-1", first is not None and first < GAP_S, "the first event is not held back", observed=first, expected=f"< {GAP_S} s")
    c.expect("SSE-8", "content-length" not in stream.headers, "no Content-Length on a stream", observed=stream.headers.get("content-length"))


@check("pings, comments and upstream error events relayed", "SSE-2", "SSE-7", "ERR-5")
async def relayed_events(c: Ctx) -> None:
    await c.fake.reset()
    base = list(message_events("Hi there.", model="claude-sonnet-4-6", deltas=2))
    events = tuple(base[:2] + [comment("conformance keep-alive"), ping(), SseEvent(raw=b": bare comment\n\n")] + base[2:])
    reply = Reply(events=events)
    await c.fake.script(reply)
    stream = await read_stream(c, small_request(stream=True))
    c.expect("SSE-2", stream.body == sse_bytes(reply), "pings and comment lines relayed as sent", observed=stream.body, expected=sse_bytes(reply))
    await c.fake.reset()
    failing = Reply(events=tuple(base[:3]) + (error_event("overloaded_error", "Overloaded"),))
    await c.fake.script(failing)
    stream = await read_stream(c, small_request(stream=True))
    c.expect("SSE-7", stream.body == sse_bytes(failing), "an upstream error event is relayed unchanged", observed=stream.body, expected=sse_bytes(failing))
    errors = [json.loads(data) for name, data in events_of(stream.body) if name == "error"]
    c.expect("ERR-5", bool(errors) and set(errors[-1]) >= {"type", "error"} and errors[-1]["type"] == "error", "error events carry the envelope", observed=errors)


# The commit point is judged in two checks, not one: the failover before the first
# byte is Gatehouse's decision (MSG-32, SSE-5), and a gateway that does not make it may
# hold the stream or break it, which must not keep the protocol's ERR-5 from being judged.
# Under --profile protocol the first check is not run at all.
@check("failover before the first stream byte", "SSE-5", "MSG-32")
async def before_commit(c: Ctx) -> None:
    await c.fake.reset()
    await c.fake.script(Reply(stream=True, reset_after=0))
    stream = await read_stream(c, small_request(stream=True))
    calls = await c.received()
    c.expect("MSG-32", stream.status == 200 and len(calls) == 2 and stream.broken is None, "a stream that breaks before its first byte fails over",
             observed=(stream.status, f"{len(calls)} upstream calls", stream.broken))
    c.expect("SSE-5", stream.status == 200 and events_of(stream.body)[-1:] == [("message_stop", '{"type":"message_stop"}')],
             "nothing was committed before the first chunk", observed=stream.broken or stream.body[-120:])


@check("an upstream break after the commit", "SSE-6", "ERR-5")
async def after_commit(c: Ctx) -> None:
    await c.fake.reset()
    await c.fake.script(Reply(stream=True, reset_after=3))
    stream = await read_stream(c, small_request(stream=True))
    found = events_of(stream.body)
    last = found[-1] if found else (None, "")
    c.expect("SSE-6", last[0] == "error", "the stream ends with an error event", observed=stream.broken or stream.body[-160:], expected="event: error")
    try:
        data = json.loads(last[1])
    except ValueError:
        data = None
    c.equal("SSE-6", data, INTERRUPTED, "the error event's data")
    c.expect("ERR-5", isinstance(data, dict) and data.get("type") == "error" and isinstance(data.get("error"), dict), "error event shape",
             observed=data if data is not None else stream.broken or stream.body[-160:], expected='{"type":"error","error":{"type","message"}}')
    c.equal("SSE-6", len(await c.received()), 1, "no failover after the commit")


@check("client disconnect cancels the upstream request", "MSG-36")
async def client_disconnect(c: Ctx) -> None:
    await c.fake.reset()
    await c.fake.script(Reply(stream=True, deltas=4, gap=5.0))
    token = await c.bearer()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as own:
        async with own.post(c.t.url("/v1/messages"), data=json.dumps(small_request(stream=True)).encode(), headers=headers) as resp:
            await resp.content.readuntil(b"\n\n")
            left_at = time.monotonic()
            # close() drops the connection itself (release() would keep reading it).
            resp.close()
    deadline = left_at + 3.0
    cancelled = False
    while time.monotonic() < deadline and not cancelled:
        records = await c.received()
        cancelled = bool(records) and bool(records[-1].get("cancelled"))
        if not cancelled:
            await asyncio.sleep(0.1)
    c.expect("MSG-36", cancelled, "the upstream request is closed when the client leaves", observed="still open after 3 s" if not cancelled else None)
