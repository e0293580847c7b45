"""A tiny HTTP/1.1 client that times each phase of one exchange.

Why not aiohttp's client: the bench needs the moment the first body byte and
the first text delta arrive, and the arrival time of every event of a
long-lived stream, without a buffering layer in between. This reads straight
from an asyncio stream over one kept-alive connection.

Only what the gateways under test answer is handled: Content-Length bodies
and chunked bodies. Anything else fails loudly.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

TOKEN_MARK = b"content_block_delta"
# One event of the simulated streams: the delta frames carry the text.
EVENT_MARK = b"event: content_block_delta"


@dataclass(slots=True)
class Exchange:
    """Times of one request, in seconds from when its first byte was sent."""

    status: int = 0
    headers_s: float | None = None
    first_byte_s: float | None = None  # first byte of the body
    first_token_s: float | None = None  # first text delta of a stream
    total_s: float | None = None
    body_bytes: int = 0
    event_s: list[float] = field(default_factory=list)  # arrival of each text delta
    error: str | None = None


def build_request(method: str, path: str, host: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    """One kept-alive connection; reopened transparently when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _ensure(self) -> None:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def exchange(self, request: bytes, *, keep_events: bool = False) -> Exchange:
        out = Exchange()
        try:
            await self._ensure()
            assert self._reader is not None and self._writer is not None
            t0 = time.perf_counter()
            self._writer.write(request)
            await self._read_reply(self._reader, out, t0, keep_events)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            out.error = type(exc).__name__
            self.close()
        return out

    async def _read_reply(self, reader: asyncio.StreamReader, out: Exchange, t0: float, keep_events: bool) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        now = time.perf_counter
        out.headers_s = now() - t0
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        out.status = int(status_line.split(" ", 2)[1])
        length: int | None = None
        chunked = False
        closing = False
        for line in header_lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection" and "close" in value.lower():
                closing = True
        tail = b""  # the last bytes seen, so a marker split across reads is still found

        def seen(data: bytes) -> None:
            nonlocal tail
            t = now() - t0
            if out.first_byte_s is None and data:
                out.first_byte_s = t
            window = tail + data
            if out.first_token_s is None and TOKEN_MARK in window:
                out.first_token_s = t
            if keep_events:
                out.event_s.extend([t] * window.count(EVENT_MARK))
            tail = data[-(len(EVENT_MARK) - 1):]
            out.body_bytes += len(data)

        if chunked:
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                remaining = size
                while remaining:
                    data = await reader.read(remaining)
                    if not data:
                        raise asyncio.IncompleteReadError(b"", remaining)
                    remaining -= len(data)
                    seen(data)
                await reader.readexactly(2)
        elif length is not None:
            remaining = length
            while remaining:
                data = await reader.read(remaining)
                if not data:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(data)
                seen(data)
        else:
            raise ValueError("reply has neither Content-Length nor chunked body")
        out.total_s = now() - t0
        if closing:
            self.close()
