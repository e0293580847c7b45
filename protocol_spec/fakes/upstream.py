"""A scriptable fake Anthropic API: a real aiohttp server on a loopback port.

Tests queue :class:`~protocol_spec.fakes.replies.Reply` values with
``script()``; each request takes the next one (or a default answer) and is
recorded byte for byte in ``received``. A fake in another process is driven
through ``/_fake/*``: ``POST /_fake/script`` (a JSON list of replies),
``GET /_fake/received``, ``POST /_fake/reset`` and ``POST /_fake/default``.

Run it on its own with ``python -m protocol_spec.fakes.upstream --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from protocol_spec.fakes.loopback import run, until_signalled
from protocol_spec.fakes.replies import (
    Prepared,
    Reply,
    Usage,
    error_body,
    new_request_id,
    prepare,
    sse_bytes,
)

__all__ = ["FakeUpstream", "Received", "main", "serve"]

CONTROL_PREFIX = "/_fake/"
# Large enough for any real prompt; aiohttp's own default (1 MiB) is not.
MAX_BODY_BYTES = 256 * 1024 * 1024

DEFAULT_MODELS = (
    ("claude-opus-4-7", "Claude Opus 4.7"),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5"),
)


class _RequestView(msgspec.Struct):
    """The two body fields the generated answer depends on."""

    model: Any = None
    stream: Any = None


_view_decoder = msgspec.json.Decoder(_RequestView)


def _read_view(body: bytes) -> _RequestView:
    try:
        return _view_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _RequestView()


@dataclass(eq=False)
class Received:
    """One request as it arrived, plus what became of it.

    ``cancelled`` is set when the client went away before the answer was
    complete; ``finished`` when the whole answer was written; ``reset`` is
    True when the script itself broke the connection.
    """

    method: str
    path: str
    query_string: str
    headers: list[tuple[str, str]]
    body: bytes
    at: float = field(default_factory=time.monotonic)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled_at: float | None = None
    reset: bool = False
    status: int | None = None

    def header(self, name: str) -> str | None:
        """The first value of a header, matched without regard to case."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def json(self) -> Any:
        return msgspec.json.decode(self.body)

    def mark_cancelled(self) -> None:
        if not self.cancelled.is_set():
            self.cancelled_at = time.monotonic()
            self.cancelled.set()

    def as_plain(self) -> dict[str, Any]:
        """The JSON form served at ``GET /_fake/received``."""
        try:
            text: str | None = self.body.decode()
        except UnicodeDecodeError:
            text = None
        return {
            "method": self.method,
            "path": self.path,
            "query_string": self.query_string,
            "headers": [list(pair) for pair in self.headers],
            "body": text,
            "body_b64": base64.b64encode(self.body).decode(),
            "status": self.status,
            "cancelled": self.cancelled.is_set(),
            "finished": self.finished.is_set(),
            "reset": self.reset,
        }


def _record(request: web.Request, body: bytes) -> Received:
    # raw_path and raw_headers keep what the client actually sent: no
    # percent-decoding, original case, original order, duplicates intact.
    path, _, query = request.raw_path.partition("?")
    headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.raw_headers]
    return Received(request.method, path, query, headers, body)


def _reset_connection(request: web.Request) -> None:
    """Break the connection with a TCP reset, so the client cannot mistake it for an end."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0 turns close() into an RST instead of an orderly FIN.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class FakeUpstream:
    """The fake server. Use as ``async with FakeUpstream() as fake:`` or start()/close()."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, default: Reply | None = None, record: bool = True
    ) -> None:
        self.host = host
        self.port = port
        self.record = record
        self.received: list[Received] = []
        self._queue: collections.deque[Reply] = collections.deque()
        self._default = default or Reply()
        # Prepared answers for the default reply, keyed by what they depend on,
        # so repeated requests (a benchmark) cost only the writes.
        self._prepared: dict[tuple[str | None, bool, str], Prepared] = {}
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> FakeUpstream:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get(CONTROL_PREFIX + "received", self._control_received)
        app.router.add_post(CONTROL_PREFIX + "script", self._control_script)
        app.router.add_post(CONTROL_PREFIX + "reset", self._control_reset)
        app.router.add_post(CONTROL_PREFIX + "default", self._control_default)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: the handler is cancelled when the client goes
        # away, which is how a test learns that the gateway gave up on us.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        # Binding the socket here tells us the port when port=0 asked for any.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self.port), family=family)
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- scripting ---------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue replies; each request takes the oldest one."""
        self._queue.extend(replies)

    def set_default(self, reply: Reply | None) -> None:
        """What ``/v1/messages`` answers once the queue is empty."""
        self._default = reply or Reply()
        self._prepared.clear()

    def clear(self) -> None:
        """Forget queued replies and recorded requests."""
        self._queue.clear()
        self.received.clear()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def sse_bytes(self, reply: Reply, model: str | None = None) -> bytes:
        return sse_bytes(reply, model)

    async def wait_received(self, count: int = 1, timeout: float = 5.0) -> list[Received]:
        """Wait until at least ``count`` requests have arrived."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(self.received)} of {count} requests arrived within {timeout}s")
            await asyncio.sleep(0.005)
        return list(self.received)

    # -- request handling --------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rec = _record(request, await request.read())
        if self.record:
            self.received.append(rec)
        prepared = self._answer_for(request, rec)
        rec.status = prepared.status
        try:
            return await self._send(request, rec, prepared)
        except asyncio.CancelledError:
            if not rec.reset:
                rec.mark_cancelled()
            raise
        except ConnectionError:
            # A write failed because the client left mid-answer. Ending as a
            # cancellation keeps aiohttp from logging it as a server error.
            rec.mark_cancelled()
            raise asyncio.CancelledError from None

    def _answer_for(self, request: web.Request, rec: Received) -> Prepared:
        accept = request.headers.get("Accept-Encoding", "")
        if self._queue:
            reply = self._queue.popleft()
            view = _read_view(rec.body) if reply.is_generated else _RequestView()
            return prepare(
                reply,
                model=_str_or_none(view.model),
                wants_stream=view.stream is True,
                accept_encoding=accept,
            )
        return self._default_answer(request, rec, accept)

    def _default_answer(self, request: web.Request, rec: Received, accept: str) -> Prepared:
        path = rec.path
        if request.method == "POST" and path.endswith("/v1/messages/count_tokens"):
            # Roughly one token per four bytes, so bigger prompts count more.
            return prepare(Reply(json={"input_tokens": max(1, len(rec.body) // 4)}))
        if request.method == "GET" and path.rstrip("/").endswith("/v1/models"):
            return prepare(Reply(json=_models_list()))
        if request.method == "POST" and path.endswith("/v1/messages"):
            view = _read_view(rec.body)
            model = _str_or_none(view.model)
            key = (model, view.stream is True, accept)
            answer = self._prepared.get(key)
            if answer is None:
                answer = prepare(self._default, model=model, wants_stream=key[1], accept_encoding=accept)
                if len(self._prepared) < 1024:
                    self._prepared[key] = answer
            return answer
        request_id = new_request_id()
        return prepare(
            Reply(
                status=404,
                json=error_body("not_found_error", f"{request.method} {path} is not served here", request_id),
                request_id=request_id,
            )
        )

    async def _send(self, request: web.Request, rec: Received, answer: Prepared) -> web.StreamResponse:
        if answer.headers_delay:
            await asyncio.sleep(answer.headers_delay)
        headers = CIMultiDict(answer.headers)
        if answer.fresh_request_id:
            headers["request-id"] = new_request_id()
        if answer.plain:
            rec.finished.set()
            return web.Response(status=answer.status, headers=headers, body=answer.frames[0][1])

        response = web.StreamResponse(status=answer.status, headers=headers)
        if not answer.streaming:
            response.content_length = answer.body_length
        await response.prepare(request)
        for index, (delay, chunk) in enumerate(answer.frames):
            if await self._interrupt(request, rec, answer, index):
                return response
            if delay:
                await asyncio.sleep(delay)
            await response.write(chunk)
        if await self._interrupt(request, rec, answer, len(answer.frames)):
            return response
        await response.write_eof()
        rec.finished.set()
        return response

    async def _interrupt(self, request: web.Request, rec: Received, answer: Prepared, index: int) -> bool:
        """Apply a scripted stall or reset at frame ``index``; True when the answer is over."""
        if answer.stall_after == index:
            await asyncio.sleep(answer.stall_seconds)
        if answer.reset_after == index:
            rec.reset = True
            _reset_connection(request)
            # Give up the slot; aiohttp notices the dead transport and does not write more.
            raise asyncio.CancelledError
        return False

    # -- control endpoints -------------------------------------------------

    async def _control_received(self, request: web.Request) -> web.Response:
        return web.Response(
            body=msgspec.json.encode([r.as_plain() for r in self.received]), content_type="application/json"
        )

    async def _control_script(self, request: web.Request) -> web.Response:
        try:
            replies = _decode_replies(await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            return web.json_response({"error": str(err)}, status=400)
        self.script(*replies)
        return web.json_response({"queued": len(replies), "pending": self.pending})

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.clear()
        self.set_default(None)
        return web.json_response({"ok": True})

    async def _control_default(self, request: web.Request) -> web.Response:
        try:
            replies = _decode_replies(await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            return web.json_response({"error": str(err)}, status=400)
        self.set_default(replies[0] if replies else None)
        return web.json_response({"ok": True})


def _decode_replies(body: bytes) -> list[Reply]:
    """Accept one reply object or a list of them."""
    # Decoding straight into the types (not via convert) turns base64 strings
    # back into the ``bytes`` of raw bodies.
    decoded = msgspec.json.decode(body, type=list[Reply] | Reply)
    return decoded if isinstance(decoded, list) else [decoded]


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _models_list() -> dict[str, Any]:
    data = [
        {"type": "model", "id": model_id, "display_name": name, "created_at": "2026-01-01T00:00:00Z"}
        for model_id, name in DEFAULT_MODELS
    ]
    return {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}


# ---------------------------------------------------------------------------
# Running as a process (make dev, the bench, out-of-process conformance runs).


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m protocol_spec.fakes.upstream", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--text", default=None, help="the answer text of /v1/messages")
    parser.add_argument("--model", default=None, help="model named in answers (default: the request's)")
    parser.add_argument("--deltas", type=int, default=4, help="text deltas per stream")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="wait before the first text delta")
    parser.add_argument("--gap-ms", type=float, default=0.0, help="wait between later deltas")
    parser.add_argument("--input-tokens", type=int, default=12)
    parser.add_argument("--output-tokens", type=int, default=8)
    parser.add_argument("--no-record", action="store_true", help="keep no request log (long benchmarks)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    return parser.parse_args(argv)


def _default_from_args(args: argparse.Namespace) -> Reply:
    fields: dict[str, Any] = {
        "deltas": args.deltas,
        "ttft": args.ttft_ms / 1000,
        "gap": args.gap_ms / 1000,
        "usage": Usage(input_tokens=args.input_tokens, output_tokens=args.output_tokens),
    }
    if args.text is not None:
        fields["text"] = args.text
    if args.model is not None:
        fields["model"] = args.model
    return Reply(**fields)


async def serve(args: argparse.Namespace) -> None:
    fake = FakeUpstream(args.host, args.port, default=_default_from_args(args), record=not args.no_record)
    await fake.start()
    print(f"listening on {fake.url}", flush=True)
    try:
        await until_signalled()
    finally:
        await fake.close()


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    run(serve(args), use_uvloop=args.uvloop)


if __name__ == "__main__":
    main()
