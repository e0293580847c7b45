"""A scriptable OTLP/HTTP collector on a loopback port: records every export
(path, headers in wire order, raw bytes) and answers as scripted."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web


@dataclass
class Received:
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class Collector:
    """``answers``: statuses (or ``"stall"``) used one per request, then ``status``
    for the rest. ``stall`` holds an answer until :attr:`release` is set."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.received: list[Received] = []
        self.attempts = 0
        self.status = 200
        self.answers: list[int | str] = []
        self.retry_after: str | None = None
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Collector:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # The raw bytes, as sent: no decompression of gzip bodies.
        self._runner = web.AppRunner(app, handle_signals=False, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        answer = self.answers.pop(0) if self.answers else self.status
        if answer == "stall":
            await self.release.wait()
            answer = 200
        assert isinstance(answer, int)
        if 200 <= answer < 300:
            self.received.append(Received(request.path, request.query_string, list(request.headers.items()), body))
        headers = {"Retry-After": self.retry_after} if self.retry_after and answer >= 300 else None
        return web.Response(status=answer, text="" if answer < 300 else f"scripted {answer}", headers=headers)

    def bodies(self, path: str | None = None) -> list[bytes]:
        return [r.body for r in self.received if path is None or r.path == path]
