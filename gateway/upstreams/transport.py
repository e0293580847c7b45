"""The outbound HTTP edge: one aiohttp ClientSession for every upstream.

Timeouts are set per phase, never as a total (a stream lasts as long as it
lasts; SPEC "Timeouts"):

* connect: ``gatehouse.upstream.connect_timeout_ms``;
* first byte: ``timeouts.upstream_ttfb_ms`` from the call until response
  headers, *including* the time spent queued for a free connection, so a
  saturated gateway gives up and fails over instead of hanging;
* idle read: the socket may stay silent at most this long (≥ 300 s in
  production; the client's own watchdog is 300 s, so we must never be stricter).

Resolved addresses pass the same guard as config-time URLs: link-local and
cloud-metadata addresses are refused at run time too, because DNS can change
after boot.

aiohttp's exceptions are mapped here, at the boundary, to
:class:`UpstreamFailure` carrying an error :class:`~gateway.errors.Kind`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.errors import TABLE, Fault, Kind, Party


class UpstreamFailure(Fault):
    """One upstream attempt failed; the relay tries the next (no answer of its own)."""

    def __init__(self, kind: Kind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.fault = TABLE[kind].fault


class RefusedAddress(Fault, OSError):
    """A host name resolved only to addresses the gateway must not call.

    An OSError too, so aiohttp reports it as a failed connection like any other.
    """

    fault = Party.UPSTREAM


class GuardedResolver(AbstractResolver):
    """Wraps the default resolver and drops addresses the gateway must not reach."""

    def __init__(self, is_forbidden: Callable[[Any], bool]) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._is_forbidden = is_forbidden

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if not self._is_forbidden(ipaddress.ip_address(r["host"]))]
        if not allowed:
            raise RefusedAddress(f"{host} resolves only to addresses the gateway refuses to call")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class Transport:
    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout_s: float,
        idle_read_timeout_s: float,
        is_forbidden: Callable[[Any], bool] | None = None,
    ) -> None:
        self._limit = max_connections
        self._connect_s = connect_timeout_s
        self._idle_s = idle_read_timeout_s
        self._is_forbidden = is_forbidden
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        resolver = GuardedResolver(self._is_forbidden) if self._is_forbidden else None
        connector = aiohttp.TCPConnector(
            limit=self._limit,
            limit_per_host=0,
            resolver=resolver,
            ttl_dns_cache=60,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_s, sock_read=self._idle_s),
            # We set these ourselves or deliberately leave them out.
            skip_auto_headers=("User-Agent", "Content-Type", "Accept-Encoding"),
            auto_decompress=True,
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def open(
        self, method: str, url: str, headers: dict[str, str], body: bytes, ttfb_s: float
    ) -> aiohttp.ClientResponse:
        """Send the request and return once response headers arrived."""
        assert self._session is not None, "transport not started"
        try:
            async with asyncio.timeout(ttfb_s):
                return await self._session.request(method, url, headers=headers, data=body, allow_redirects=False)
        except TimeoutError:
            raise UpstreamFailure(Kind.UPSTREAM_TIMEOUT, f"no response headers within {ttfb_s:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(getattr(exc, "os_error", None), RefusedAddress)
            kind = Kind.UNSAFE_UPSTREAM_ADDRESS if refused else Kind.UPSTREAM_CONNECT
            raise UpstreamFailure(kind, f"connect failed: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamFailure(Kind.UPSTREAM_CONNECT, f"{type(exc).__name__}: {exc}") from None


def is_stream_failure(exc: BaseException) -> bool:
    """True for errors that mean the upstream's body broke off (not the client's)."""
    return isinstance(exc, (aiohttp.ClientError, TimeoutError, OSError))
