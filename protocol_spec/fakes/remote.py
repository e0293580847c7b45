"""Drive a fake upstream that runs in another process, through ``/_fake/*``."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import msgspec

from protocol_spec.fakes.replies import Reply


class RemoteFake:
    """The scripting half of :class:`FakeUpstream`, over HTTP.

    ``received()`` returns the plain records of ``GET /_fake/received``, with
    ``body`` turned back into the exact bytes.
    """

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self._session = session

    async def script(self, *replies: Reply) -> None:
        await self._post("/_fake/script", msgspec.json.encode(list(replies)))

    async def set_default(self, reply: Reply | None) -> None:
        await self._post("/_fake/default", msgspec.json.encode([reply] if reply else []))

    async def reset(self) -> None:
        await self._post("/_fake/reset", b"")

    async def received(self) -> list[dict[str, Any]]:
        async with self._session.get(self.url + "/_fake/received") as response:
            response.raise_for_status()
            records = await response.json()
        for record in records:
            record["headers"] = [tuple(pair) for pair in record["headers"]]
            record["body"] = base64.b64decode(record.pop("body_b64"))
        return records

    async def _post(self, path: str, body: bytes) -> None:
        headers = {"Content-Type": "application/json"}
        async with self._session.post(self.url + path, data=body, headers=headers) as response:
            response.raise_for_status()
