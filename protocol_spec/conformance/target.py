"""Talking to the gateway under test: plain HTTP, raw request heads, answers as values.

Every request goes through :meth:`Target.request`, which reads the whole
answer into an :class:`Answer` (status, headers in wire order, body bytes,
timings) and never follows redirects: a redirect is itself something the
protocol forbids on most endpoints (SPEC ROLE-3), so it must be seen.

Some requirements are about what a gateway does *before* it reads a body
(411, 413): aiohttp would always send one, so :func:`raw_exchange` writes a
request head by hand on a plain socket and reads whatever comes back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# A single answer never takes this long from a healthy gateway on loopback;
# checks that wait on purpose pass their own timeout.
DEFAULT_TIMEOUT_S = 15.0
USER_AGENT = "gatehouse-conformance/1"
HeaderList = Sequence[tuple[str, str]]


@dataclass
class Answer:
    method: str
    url: str
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    # Seconds from sending the request to the status line, and to the last byte.
    ttfb_s: float = 0.0
    total_s: float = 0.0
    raw_headers: list[tuple[str, str]] = field(default_factory=list)

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    def summary(self) -> str:
        """A one-line description for FAIL reports."""
        text = self.body[:200].decode("utf-8", "replace")
        return f"{self.status} {self.content_type or '-'} {text!r}"


class Target:
    """The gateway at ``base_url``, reached with one aiohttp session (cookies off)."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        url = URL(self.base_url)
        self.host = url.host or "127.0.0.1"
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.origin = str(url.origin())

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base_url + path

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | HeaderList | None = None,
        body: bytes | None = None,
        form: Mapping[str, str] | None = None,
        bearer: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        decompress: bool = True,
    ) -> Answer:
        sent: CIMultiDict[str] = CIMultiDict()
        sent["User-Agent"] = USER_AGENT
        pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
        for name, value in pairs:
            if name.lower() == "user-agent":
                sent.popall("User-Agent", None)
            sent.add(name, value)
        if bearer is not None:
            sent["Authorization"] = f"Bearer {bearer}"
        data: Any = body
        if form is not None:
            data = aiohttp.FormData(dict(form))
        started = time.monotonic()
        async with self.session.request(
            method,
            URL(self.url(path), encoded=True),
            headers=sent,
            data=data,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            auto_decompress=decompress,
        ) as resp:
            ttfb = time.monotonic() - started
            content = await resp.read()
            return Answer(
                method,
                self.url(path),
                resp.status,
                resp.headers,
                content,
                ttfb,
                time.monotonic() - started,
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.raw_headers],
            )

    async def get(self, path: str, **kw: Any) -> Answer:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Answer:
        return await self.request("POST", path, **kw)

    async def post_json(self, path: str, value: Any, **kw: Any) -> Answer:
        headers = dict(kw.pop("headers", None) or {})
        headers.setdefault("Content-Type", "application/json")
        return await self.request("POST", path, body=json.dumps(value).encode(), headers=headers, **kw)


@dataclass
class RawAnswer:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def summary(self) -> str:
        return f"{self.status} {self.headers.get('Content-Type', '-')} {self.body[:200]!r}"


async def raw_exchange(host: str, port: int, head: bytes, body: bytes = b"", timeout_s: float = 5.0) -> RawAnswer:
    """Send ``head`` (request line and headers, ending in a blank line) and ``body``; read one answer.

    The answer is read until the connection closes, Content-Length bytes have
    arrived, or ``timeout_s`` passes, whichever is first: a gateway that
    answers early and keeps the connection open is fine.
    """
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    try:
        writer.write(head + body)
        await writer.drain()
        return await asyncio.wait_for(_read_answer(reader), timeout_s)
    finally:
        writer.close()


async def _read_answer(reader: asyncio.StreamReader) -> RawAnswer:
    status_line = await reader.readline()
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"no HTTP status line, got {status_line[:80]!r}")
    headers: CIMultiDict[str] = CIMultiDict()
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.add(name.strip(), value.strip())
    length = headers.get("Content-Length")
    body = b""
    if length is not None and length.isdigit():
        body = await reader.readexactly(int(length)) if int(length) else b""
    elif "chunked" in headers.get("Transfer-Encoding", "").lower():
        body = await _read_chunked(reader)
    return RawAnswer(int(parts[1]), headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = b""
    while True:
        size_line = await reader.readline()
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await reader.readline()
            return out
        out += await reader.readexactly(size)
        await reader.readline()


def request_head(method: str, target: str, host: str, headers: HeaderList) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
