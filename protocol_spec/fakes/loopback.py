"""One aiohttp app on a loopback port: the lifecycle every fake server shares.

Subclasses say what they serve in :meth:`LoopbackServer._routes`; the base
binds the socket (port 0 picks a free one, read back into ``port``), starts
and stops the runner, and works as an async context manager.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
from collections.abc import Coroutine
from typing import Any, Self

from aiohttp import web


class LoopbackServer:
    scheme = "http"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def _routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def _app(self) -> web.Application:
        return web.Application()

    def _ssl_context(self) -> ssl.SSLContext | None:
        return None

    async def start(self) -> Self:
        app = self._app()
        self._routes(app)
        # handler_cancellation: a client that hangs up cancels the handler, as in real servers.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        sock = socket.create_server((self.host, self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, ssl_context=self._ssl_context()).start()
        return self

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


async def until_signalled() -> None:
    """Wait for SIGINT or SIGTERM: how every fake run as its own process ends."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def run(main: Coroutine[Any, Any, None], *, use_uvloop: bool) -> None:
    """Run a fake process's main coroutine, on uvloop when asked (the bench's fast mode)."""
    if use_uvloop:
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)
