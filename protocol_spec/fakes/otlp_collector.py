"""A scriptable OTLP/HTTP collector on loopback: the far side of a gateway's telemetry relay.

One :class:`OtlpCollector` holds several *sinks*, each its own listener on
its own port, so each can stand for one ``telemetry.forward_to`` destination
of the gateway under test and fail on its own. A sink accepts ``POST`` on any
path (a gateway that builds the wrong ``/v1/<signal>`` URL is seen, not
refused), records every request as it arrived (path, query, headers in wire
order, the raw bytes: gzip bodies are not decompressed) with the answer it
got, and answers 200 with an empty body unless scripted otherwise:

* a *script* of answers taken one per request: a status (with an optional
  ``Retry-After``), or a stall that holds the request until released (or
  :data:`STALL_MAX_S` passes) and then answers its status;
* a *down* status answered to every request no script covers, until *up*.

Everything is driven from a separate control listener, so a check in
another process scripts and reads the sinks over HTTP (:class:`RemoteCollector`):

* ``POST /_fake/script`` ``{"sink": S, "answers": [{"status": 400}, {"stall": true}, ...]}``
* ``POST /_fake/down`` ``{"sink": S, "status": 503, "retry_after": null}``
* ``POST /_fake/up`` ``{"sink": S}``: back to 200, held requests released
* ``POST /_fake/release`` ``{"sink": S}``: held requests answered
* ``POST /_fake/reset``: every sink forgets its log, script and outage
* ``GET /_fake/received[?sink=S]``: the log, oldest first
* ``GET /_fake/wait?sink=S&count=N&timeout=T[&status=200]``: the sink's log once
  it holds N records (with that answer, when given), or at the timeout,
  whichever is first; ``complete`` says which

A record's ``status`` is None while its request is held, and ``abandoned``
is true when the gateway hung up before the answer (its own timeout).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

__all__ = ["Answer", "OtlpCollector", "RemoteCollector", "Sink"]

# A held request is answered after this long even if nobody releases it: below the
# 10 s both gateways give a collector, so a forgotten stall never turns into a failure.
STALL_MAX_S = 8.0
# Longer than any wait a check asks for; bounds a /_fake/wait call.
WAIT_MAX_S = 30.0
# OTLP exports the real client sends are kilobytes; gateways accept tens of megabytes.
MAX_BODY_BYTES = 64 * 1024 * 1024


class Answer(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How a sink answers one request."""

    status: int = 200
    retry_after: str | None = None
    stall: bool = False


class _Script(msgspec.Struct, forbid_unknown_fields=True):
    sink: str
    answers: list[Answer]


class _Down(msgspec.Struct, forbid_unknown_fields=True):
    sink: str
    status: int = 503
    retry_after: str | None = None


class _Named(msgspec.Struct, forbid_unknown_fields=True):
    sink: str


@dataclass(eq=False)
class Record:
    seq: int
    sink: str
    path: str
    query_string: str
    headers: list[tuple[str, str]]
    body: bytes
    at: float = field(default_factory=time.monotonic)
    status: int | None = None
    abandoned: bool = False

    def as_plain(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "sink": self.sink,
            "path": self.path,
            "query_string": self.query_string,
            "headers": [list(pair) for pair in self.headers],
            "body_b64": base64.b64encode(self.body).decode(),
            "status": self.status,
            "abandoned": self.abandoned,
        }


class Sink:
    """One destination: a listener, its script and outage, and its log."""

    def __init__(self, name: str, collector: OtlpCollector, host: str) -> None:
        self.name = name
        self.host = host
        self.port = 0
        self._collector = collector
        self._runner: web.AppRunner | None = None
        self.script: collections.deque[Answer] = collections.deque()
        self.down: Answer | None = None
        self.released = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # The bytes as sent (no gzip decoding); a gateway that gives up cancels the handler.
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, auto_decompress=False, handler_cancellation=True)
        await self._runner.setup()
        sock = socket.create_server((self.host, self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        self.released.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def forget(self) -> None:
        self.script.clear()
        self.recover()

    def recover(self) -> None:
        self.down = None
        self.release()

    def release(self) -> None:
        # Wake every held request, and start a new generation for later stalls.
        self.released.set()
        self.released = asyncio.Event()

    def _next_answer(self) -> Answer:
        if self.script:
            return self.script.popleft()
        return self.down or Answer()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        record = self._collector.record(self.name, request, body)
        answer = self._next_answer()
        try:
            if answer.stall:
                released = self.released
                try:
                    await asyncio.wait_for(released.wait(), STALL_MAX_S)
                except TimeoutError:
                    pass
        except asyncio.CancelledError:
            record.abandoned = True
            self._collector.changed()
            raise
        record.status = answer.status
        self._collector.changed()
        headers = {"Retry-After": answer.retry_after} if answer.retry_after else None
        text = "" if answer.status < 300 else f"scripted {answer.status}"
        return web.Response(status=answer.status, text=text, headers=headers)


class OtlpCollector:
    """Sinks named by ``names``, each on its own port, and the control listener."""

    def __init__(self, names: tuple[str, ...] | list[str], host: str = "127.0.0.1") -> None:
        self.host = host
        self.sinks = {name: Sink(name, self, host) for name in names}
        self.records: list[Record] = []
        self._seq = 0
        self._changed = asyncio.Condition()
        self._notifying: set[asyncio.Task[None]] = set()
        self._control: web.AppRunner | None = None
        self.control_port = 0

    @property
    def control_url(self) -> str:
        return f"http://{self.host}:{self.control_port}"

    def url(self, sink: str) -> str:
        return self.sinks[sink].url

    async def start(self) -> OtlpCollector:
        for sink in self.sinks.values():
            await sink.start()
        app = web.Application()
        app.router.add_post("/_fake/script", self._script)
        app.router.add_post("/_fake/down", self._down)
        app.router.add_post("/_fake/up", self._up)
        app.router.add_post("/_fake/release", self._release)
        app.router.add_post("/_fake/reset", self._reset)
        app.router.add_get("/_fake/received", self._received)
        app.router.add_get("/_fake/wait", self._wait)
        self._control = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._control.setup()
        sock = socket.create_server((self.host, 0))
        self.control_port = sock.getsockname()[1]
        await web.SockSite(self._control, sock).start()
        return self

    async def close(self) -> None:
        for sink in self.sinks.values():
            await sink.close()
        if self._control is not None:
            runner, self._control = self._control, None
            await runner.cleanup()

    async def __aenter__(self) -> OtlpCollector:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the log ----------------------------------------------------------------

    def record(self, sink: str, request: web.Request, body: bytes) -> Record:
        self._seq += 1
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        record = Record(self._seq, sink, request.path, request.query_string, headers, body)
        self.records.append(record)
        self.changed()
        return record

    def changed(self) -> None:
        # Held here until done: the loop keeps only a weak reference to a task.
        task = asyncio.get_running_loop().create_task(self._notify())
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def of(self, sink: str | None, status: int | None = None) -> list[Record]:
        return [r for r in self.records if (sink is None or r.sink == sink) and (status is None or r.status == status)]

    async def wait_for(self, sink: str, count: int, timeout_s: float, status: int | None = None) -> bool:
        """Whether ``sink`` logged ``count`` records (with ``status``) within ``timeout_s``."""
        try:
            async with asyncio.timeout(min(timeout_s, WAIT_MAX_S)):
                async with self._changed:
                    await self._changed.wait_for(lambda: len(self.of(sink, status)) >= count)
            return True
        except TimeoutError:
            return False

    # -- control ------------------------------------------------------------------

    def _sink(self, name: str) -> Sink:
        if name not in self.sinks:
            raise web.HTTPBadRequest(text=f"no sink {name!r}; sinks: {', '.join(self.sinks)}")
        return self.sinks[name]

    async def _script(self, request: web.Request) -> web.Response:
        order = _decode(await request.read(), _Script)
        self._sink(order.sink).script.extend(order.answers)
        return web.json_response({"queued": len(order.answers)})

    async def _down(self, request: web.Request) -> web.Response:
        order = _decode(await request.read(), _Down)
        self._sink(order.sink).down = Answer(status=order.status, retry_after=order.retry_after)
        return web.json_response({"ok": True})

    async def _up(self, request: web.Request) -> web.Response:
        self._sink(_decode(await request.read(), _Named).sink).recover()
        return web.json_response({"ok": True})

    async def _release(self, request: web.Request) -> web.Response:
        self._sink(_decode(await request.read(), _Named).sink).release()
        return web.json_response({"ok": True})

    async def _reset(self, request: web.Request) -> web.Response:
        for sink in self.sinks.values():
            sink.forget()
        self.records.clear()
        return web.json_response({"ok": True})

    async def _received(self, request: web.Request) -> web.Response:
        sink = request.query.get("sink")
        return web.json_response([r.as_plain() for r in self.of(sink)])

    async def _wait(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            sink = self._sink(query["sink"]).name
            count = int(query["count"])
            timeout_s = float(query.get("timeout", "5"))
            status = int(query["status"]) if "status" in query else None
        except (KeyError, ValueError) as err:
            raise web.HTTPBadRequest(text=f"sink, count, timeout and status: {err}") from None
        complete = await self.wait_for(sink, count, timeout_s, status)
        return web.json_response({"complete": complete, "records": [r.as_plain() for r in self.of(sink)]})


def _decode(raw: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(raw, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise web.HTTPBadRequest(text=str(err)) from None


class RemoteCollector:
    """The control side of an :class:`OtlpCollector` in another process, over HTTP.

    Records come back as dicts with ``headers`` as (name, value) pairs and
    ``body`` as the exact bytes received.
    """

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self._session = session

    async def script(self, sink: str, *answers: Answer) -> None:
        await self._post("/_fake/script", {"sink": sink, "answers": [msgspec.to_builtins(a) for a in answers]})

    async def down(self, sink: str, status: int = 503, retry_after: str | None = None) -> None:
        await self._post("/_fake/down", {"sink": sink, "status": status, "retry_after": retry_after})

    async def up(self, sink: str) -> None:
        await self._post("/_fake/up", {"sink": sink})

    async def release(self, sink: str) -> None:
        await self._post("/_fake/release", {"sink": sink})

    async def reset(self) -> None:
        await self._post("/_fake/reset", {})

    async def received(self, sink: str | None = None) -> list[dict[str, Any]]:
        params = {"sink": sink} if sink else {}
        async with self._session.get(self.url + "/_fake/received", params=params) as response:
            response.raise_for_status()
            return _records(await response.json())

    async def wait(self, sink: str, count: int, timeout_s: float, status: int | None = None) -> tuple[bool, list[dict[str, Any]]]:
        """(reached, the sink's records): ``count`` records (answered ``status``) within ``timeout_s``."""
        params = {"sink": sink, "count": str(count), "timeout": str(timeout_s)}
        if status is not None:
            params["status"] = str(status)
        timeout = aiohttp.ClientTimeout(total=min(timeout_s, WAIT_MAX_S) + 5)
        async with self._session.get(self.url + "/_fake/wait", params=params, timeout=timeout) as response:
            response.raise_for_status()
            doc = await response.json()
        return bool(doc["complete"]), _records(doc["records"])

    async def _post(self, path: str, doc: dict[str, Any]) -> None:
        async with self._session.post(self.url + path, json=doc) as response:
            response.raise_for_status()


def _records(plain: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for record in plain:
        record["headers"] = [tuple(pair) for pair in record["headers"]]
        record["body"] = base64.b64decode(record.pop("body_b64"))
    return plain
