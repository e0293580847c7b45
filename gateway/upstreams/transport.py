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

Through a proxy (``open(..., proxy=...)``, chosen per upstream at boot by
:class:`~gateway.upstreams.egress.Egress`) aiohttp resolves only the proxy's
name, so :class:`TargetGuard` checks the target first: resolved here and
refused if *any* of its addresses is forbidden (the proxy picks one itself), or
in proxy-only egress judged by name alone and handed over unresolved. The
proxy's own address is the operator's choice and is not checked. Without a
proxy the request path is as it was.

aiohttp's exceptions are mapped here, at the boundary, to
:class:`UpstreamFailure` carrying an error :class:`~gateway.errors.Kind`.

Concurrency: at most ``gatehouse.upstream.max_connections`` requests hold an
upstream connection at once (a stream until it ends); more wait inside aiohttp
for a free one. :class:`Saturation` counts them (from the call until the
connection is released) so the log says when requests queue, at most once a
minute; the boot log states the limit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway import audit
from gateway.errors import TABLE, Fault, Kind, Party
from gateway.upstreams.egress import DEFAULT_PORTS, Egress

# How long a proxied target's address check holds, as the connector's DNS cache.
TARGET_CHECK_TTL_S = 60.0
# A bound on remembered targets; they come from config and IdP discovery, so
# reaching it means something odd, and starting over is the safe answer.
TARGET_CHECK_MAX_HOSTS = 1024


# The saturation warning repeats at most this often while requests queue (SPEC MSG-48).
SATURATION_WARNING_EVERY_S = 60.0


class Saturation:
    """Upstream requests open in this process against the limit, and the warning to log,
    at most once every ``every_s``, while some have to wait for a free connection.

    Pure: the transport calls :meth:`opening` as a request starts and :meth:`closed`
    once its connection is released (or it failed).
    """

    def __init__(
        self, limit: int, *, clock: Callable[[], float] = time.monotonic, every_s: float = SATURATION_WARNING_EVERY_S
    ) -> None:
        self.limit = limit
        self.open = 0
        self._clock = clock
        self._every_s = every_s
        self._quiet_until = -math.inf

    def opening(self) -> str | None:
        """One more request; the warning when it has to queue and none was given lately."""
        self.open += 1
        if self.open <= self.limit:
            return None
        now = self._clock()
        if now < self._quiet_until:
            return None
        self._quiet_until = now + self._every_s
        return (
            f"upstream requests are saturated: {self.limit} are open, the most this process sends at once, "
            f"and {self.open - self.limit} more wait for one; their client requests are open meanwhile "
            "(gatehouse.upstream.max_connections sets the limit; said at most once a minute)"
        )

    def closed(self) -> None:
        self.open -= 1

    def startup_line(self) -> str:
        return (
            f"upstream requests: at most {self.limit} at once in this process, more wait for a free one "
            "(gatehouse.upstream.max_connections sets it)"
        )


class UpstreamFailure(Fault):
    """One upstream attempt failed; the relay tries the next (no answer of its own)."""

    def __init__(self, kind: Kind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.fault = TABLE[kind].fault


class RefusedAddress(Fault, OSError):
    """A target the gateway must not call: its name resolved only to refused
    addresses (direct), to any refused address (through a proxy), or is local on
    its face (proxy-only egress).

    An OSError too, so aiohttp reports it as a failed connection like any other.
    """

    fault = Party.UPSTREAM


class UnresolvedTarget(Fault, OSError):
    """A proxied target the gateway could not resolve to check its address."""

    fault = Party.UPSTREAM


class GuardedResolver(AbstractResolver):
    """Wraps the default resolver and drops addresses the gateway must not reach.

    ``exempt`` holds the (host, port) of each configured proxy: the operator
    chose it, and a proxy on loopback (a sidecar) is an ordinary setup.
    """

    def __init__(
        self, is_forbidden: Callable[[Any], bool], exempt: frozenset[tuple[str, int]] = frozenset()
    ) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._is_forbidden = is_forbidden
        self._exempt = exempt

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._exempt and (host.lower(), port) in self._exempt:
            return results
        allowed = [r for r in results if not self._is_forbidden(ipaddress.ip_address(r["host"]))]
        if not allowed:
            raise RefusedAddress(f"{host} resolves only to addresses the gateway refuses to call")
        return allowed

    async def check_every(self, host: str, port: int) -> None:
        """Refuse ``host`` if any address it resolves to is forbidden: a proxy
        will pick among them on its own, so dropping the bad ones is not enough."""
        literal = _literal_ip(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                results = await self._inner.resolve(host, port, socket.AF_UNSPEC)
            except OSError as exc:
                raise UnresolvedTarget(
                    f"cannot resolve {host} to check its address before asking the proxy "
                    f"({exc.strerror or exc}); where only the proxy can resolve names, "
                    "set CLAUDE_GATEWAY_PROXY_IS_EGRESS_BOUNDARY=1"
                ) from None
            addresses = [ipaddress.ip_address(r["host"]) for r in results]
        for ip in addresses:
            if self._is_forbidden(ip):
                raise RefusedAddress(f"{host} resolves to {ip}, an address the gateway refuses to call")

    async def close(self) -> None:
        await self._inner.close()


def _literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


class TargetGuard:
    """Checks a proxied request's target before the proxy is asked to reach it.

    Default mode: the host is resolved here (through ``resolver``) and its
    verdict kept for :data:`TARGET_CHECK_TTL_S`, like the connector's DNS
    cache. Proxy-only egress: judged by name (``egress.target_refusal``), never
    resolved. Without a resolver (tests that switch the guard off) only the
    proxy-only rule applies.
    """

    def __init__(
        self,
        egress: Egress,
        resolver: GuardedResolver | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        ttl_s: float = TARGET_CHECK_TTL_S,
    ) -> None:
        self._egress = egress
        self._resolver = resolver
        self._clock = clock
        self._ttl_s = ttl_s
        # host → (good until, the refusal to raise again or None); the class and
        # text, not the instance, so raising it again does not grow a traceback.
        self._verdicts: dict[str, tuple[float, tuple[type[OSError], str] | None]] = {}

    async def check(self, url: str) -> None:
        """Raises RefusedAddress or UnresolvedTarget (both OSErrors)."""
        if self._egress.boundary:
            refusal = self._egress.target_refusal(url)
            if refusal is not None:
                raise RefusedAddress(refusal)
            return
        if self._resolver is None:
            return
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".")
        now = self._clock()
        cached = self._verdicts.get(host)
        if cached is None or cached[0] <= now:
            verdict: tuple[type[OSError], str] | None = None
            try:
                await self._resolver.check_every(host, parts.port or DEFAULT_PORTS.get(parts.scheme, 443))
            except (RefusedAddress, UnresolvedTarget) as exc:
                verdict = (type(exc), str(exc))
            if len(self._verdicts) >= TARGET_CHECK_MAX_HOSTS:
                self._verdicts.clear()
            cached = self._verdicts[host] = (now + self._ttl_s, verdict)
        if cached[1] is not None:
            kind, text = cached[1]
            raise kind(text)


def guarded_session(
    egress: Egress,
    forbidden: Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool],
    *,
    total_s: float,
    connect_s: float = 5.0,
    limit: int,
    ssl_ctx: ssl.SSLContext | bool = True,
    user_agent: str,
) -> tuple[aiohttp.ClientSession, TargetGuard]:
    """A client session for the gateway's own calls outside the hot path (the IdP,
    Google's Directory API), and the guard for its proxied targets: every address it
    resolves passes ``forbidden`` (the configured proxies exempt), it never reads the
    environment's proxy variables (``egress`` decides), and it never raises for status."""
    resolver = GuardedResolver(forbidden, egress.proxy_endpoints)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=resolver, ssl=ssl_ctx, limit=limit, ttl_dns_cache=60),
        timeout=aiohttp.ClientTimeout(total=total_s, sock_connect=min(connect_s, total_s)),
        headers={"User-Agent": user_agent},
        raise_for_status=False,
        trust_env=False,
    )
    return session, TargetGuard(egress, resolver)


async def read_bounded(resp: aiohttp.ClientResponse, limit: int, too_large: Callable[[], Exception]) -> bytes:
    """The body of one of the gateway's own calls, refusing (``too_large()`` raised) past
    ``limit`` bytes, announced or not, so a hostile or broken server cannot make us buffer
    without bound."""
    if resp.content_length is not None and resp.content_length > limit:
        raise too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(16384):
        size += len(chunk)
        if size > limit:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def proxy_failure(exc: BaseException, proxy: str, shown: str) -> str | None:
    """What went wrong with the proxy itself, for a log line, or None when ``exc``
    is about the target. ``shown`` is the proxy without its userinfo."""
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        hint = "; check the credentials in the proxy URL" if exc.status == 407 else ""
        return f"proxy {shown} refused the tunnel: CONNECT answered {exc.status} {exc.message}{hint}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        try:
            parts = urlsplit(proxy)
            is_proxy = (exc.host, exc.port) == (parts.hostname, parts.port or 80)
        except ValueError:
            is_proxy = False
        if is_proxy or isinstance(exc, aiohttp.ClientProxyConnectionError):
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            return f"proxy {shown} unreachable ({reason})"
    return None


class Transport:
    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout_s: float,
        idle_read_timeout_s: float,
        is_forbidden: Callable[[Any], bool] | None = None,
        egress: Egress | None = None,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = max_connections
        self.saturation = Saturation(max_connections, clock=clock)
        self._connect_s = connect_timeout_s
        self._idle_s = idle_read_timeout_s
        self._is_forbidden = is_forbidden
        self._egress = egress or Egress()
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._guard: TargetGuard | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        resolver = (
            GuardedResolver(self._is_forbidden, self._egress.proxy_endpoints) if self._is_forbidden else None
        )
        self._guard = TargetGuard(self._egress, resolver)
        connector = aiohttp.TCPConnector(
            limit=self._limit,
            limit_per_host=0,
            resolver=resolver,
            ttl_dns_cache=60,
            enable_cleanup_closed=True,
            ssl=self._ssl,
        )
        audit.log("info", self.saturation.startup_line())
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
        self, method: str, url: str, headers: dict[str, str], body: bytes, ttfb_s: float, proxy: str | None = None
    ) -> aiohttp.ClientResponse:
        """Send the request and return once response headers arrived.

        ``proxy``: the proxy URL for this upstream (``Egress.proxy_for``, decided at boot).
        """
        assert self._session is not None, "transport not started"
        warning = self.saturation.opening()
        if warning is not None:
            audit.log("warn", warning)
        try:
            if proxy is not None:
                resp = await self._open_proxied(method, url, headers, body, ttfb_s, proxy)
            else:
                resp = await self._open_direct(method, url, headers, body, ttfb_s)
        except BaseException:
            self.saturation.closed()
            raise
        # Counted until aiohttp hands the connection back (a stream: at its end or close).
        connection = resp.connection
        if connection is None:
            self.saturation.closed()
        else:
            connection.add_callback(self.saturation.closed)
        return resp

    async def _open_direct(
        self, method: str, url: str, headers: dict[str, str], body: bytes, ttfb_s: float
    ) -> aiohttp.ClientResponse:
        assert self._session is not None
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

    async def check_target(self, url: str) -> None:
        """Judge ``url``'s host as a proxied target is judged (every address it
        resolves to must pass; in proxy-only egress, its name alone), for a client
        that resolves and connects by itself (gRPC). Raises :class:`RefusedAddress`
        or :class:`UnresolvedTarget`; a verdict holds for :data:`TARGET_CHECK_TTL_S`."""
        assert self._guard is not None, "transport not started"
        await self._guard.check(url)

    async def _open_proxied(
        self, method: str, url: str, headers: dict[str, str], body: bytes, ttfb_s: float, proxy: str
    ) -> aiohttp.ClientResponse:
        assert self._session is not None and self._guard is not None
        shown = self._egress.shown(proxy)
        try:
            async with asyncio.timeout(ttfb_s):
                await self._guard.check(url)
                resp = await self._session.request(
                    method, url, headers=headers, data=body, allow_redirects=False, proxy=proxy
                )
        except TimeoutError:
            raise UpstreamFailure(
                Kind.UPSTREAM_TIMEOUT, f"no response headers within {ttfb_s:g}s (through proxy {shown})"
            ) from None
        except RefusedAddress as exc:
            raise UpstreamFailure(Kind.UNSAFE_UPSTREAM_ADDRESS, str(exc)) from None
        except UnresolvedTarget as exc:
            raise UpstreamFailure(Kind.UPSTREAM_CONNECT, str(exc)) from None
        except (aiohttp.ClientError, OSError) as exc:
            detail = proxy_failure(exc, proxy, shown) or f"{type(exc).__name__} through proxy {shown}: {exc}"
            # Belt and braces: no aiohttp message should quote the proxy URL, but
            # if one ever does, its password stays out of the log.
            raise UpstreamFailure(Kind.UPSTREAM_CONNECT, detail.replace(proxy, shown)) from None
        if resp.status == 407:
            # Only a proxy says 407: a plain http:// target is asked in absolute
            # form over the proxy's own connection, so its refusal is an answer.
            resp.close()
            raise UpstreamFailure(
                Kind.UPSTREAM_CONNECT,
                f"proxy {shown} answered 407 (proxy authentication required); check the credentials in the proxy URL",
            )
        return resp


def is_stream_failure(exc: BaseException) -> bool:
    """True for errors that mean the upstream's body broke off (not the client's)."""
    return isinstance(exc, (aiohttp.ClientError, TimeoutError, OSError))
