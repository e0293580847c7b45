"""OTLP/gRPC delivery: one unary ``Export`` call per export, over one channel per
destination (grpcio's asyncio API).

* The request is the serialized ``Export*ServiceRequest`` made by
  :mod:`gateway.telemetry.otlp_body`; the call sends those bytes as they are (no
  request serializer), so a client's protobuf body is never decoded. The answer
  is read only for a ``partial_success``.
* Metadata is the destination's own headers (and the gateway's bearer for an
  ``auth: {google: {}}`` destination), never the client's. Each call has a
  deadline of the relay's send timeout.
* ``https://`` destinations get a TLS channel trusting what the HTTPS ones trust
  (:func:`system_roots`); ``http://`` a plaintext one (config allows it only for
  loopback collectors).
* Outcomes follow the OTLP specification's table for gRPC codes
  (:func:`~gateway.telemetry.queue.classify_grpc`); a RetryInfo in the status
  details sets the wait before the next try.

Egress, as far as grpcio lets us: grpcio resolves and connects by itself, so
before every call the host is judged as the HTTP relay judges a proxied target
(:meth:`Transport.check_target`: every address it resolves to must pass the
address guard; in proxy-only egress, its name alone). The verdict holds a
minute; grpcio resolves again only when it reconnects, so a DNS answer that
changes to a refused address can be reached by one reconnect within that
minute, the same window the HTTP relay has through a proxy. The proxy
:class:`~gateway.upstreams.egress.Egress` chose for the URL is handed to the
channel (``grpc.http_proxy``: ``CONNECT host:port`` with the name unresolved,
userinfo sent as Basic proxy credentials); without one, grpcio's own reading of
the proxy variables is switched off so the choice stays Egress's. One gap
remains: grpcio still reads ``no_proxy`` itself, and a host it matches there
goes direct even where Egress chose the proxy (the address guard applies
either way).

After an UNAVAILABLE the channel is closed, so the next try connects afresh
(after the guard's check) instead of waiting out grpcio's own reconnect backoff,
which would otherwise override the relay's.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from gateway.telemetry.destinations import GRPC_METHODS
from gateway.telemetry.otlp_body import partial_success
from gateway.telemetry.queue import Attempt, Outcome, classify_grpc
from gateway.upstreams.egress import DEFAULT_PORTS
from gateway.upstreams.transport import RefusedAddress, UnresolvedTarget

Metadata = Sequence[tuple[str, str | bytes]]
_DETAILS_KEY = "grpc-status-details-bin"
# Where Google's own client libraries (and the OpenTelemetry Python exporter) look too.
_RETRY_INFO_KEY = "google.rpc.retryinfo-bin"


class GrpcExport:
    """One gRPC destination: its channel, made on first use, and its Export calls.

    ``url`` is any URL of the destination (its scheme, host and port name the
    collector; the method comes from the signal); ``check_target`` raises
    :class:`RefusedAddress` or :class:`UnresolvedTarget` for a host that must not
    be called; ``roots`` are the PEM CA certificates of a TLS channel.
    """

    def __init__(
        self,
        url: str,
        *,
        check_target: Callable[[str], Awaitable[None]],
        timeout_s: float,
        proxy: str | None = None,
        roots: bytes | None = None,
    ) -> None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or DEFAULT_PORTS[parts.scheme]
        self._url = url
        self._target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # grpcio's host:port
        self._tls = parts.scheme == "https"
        self._check_target = check_target
        self._timeout_s = timeout_s
        self._proxy = proxy
        self._roots = roots
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[str, Any] = {}

    async def send(self, signal: str, metadata: Metadata, request: bytes) -> Attempt:
        """One Export call of the serialized ``request``."""
        refusal = await self._guard()
        if refusal is not None:
            return refusal
        try:
            answer = await self._call(signal)(request, metadata=tuple(metadata), timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            return await self._failed(exc)
        partial = partial_success(signal, answer) if isinstance(answer, bytes) else None
        if partial is not None and (partial[0] or partial[1]):
            rejected, message = partial
            return Attempt(Outcome.DELIVERED, f"{rejected} item(s) refused: {message[:200]!r}", partial=True)
        return Attempt(Outcome.DELIVERED, "")

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        self._calls.clear()
        if channel is not None:
            await channel.close()

    # ------------------------------------------------------------ the steps

    async def _guard(self) -> Attempt | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._check_target(self._url)
        except RefusedAddress as exc:
            return Attempt(Outcome.FAILED, f"the address guard refused it: {exc}")
        except UnresolvedTarget as exc:
            if self._proxy is None:
                return Attempt(Outcome.FAILED, f"cannot resolve {self._target} to check its addresses")
            return Attempt(Outcome.FAILED, str(exc))
        except TimeoutError:
            return Attempt(Outcome.FAILED, f"no DNS answer for {self._target} within {self._timeout_s:g}s")
        return None

    def _call(self, signal: str) -> Any:
        call = self._calls.get(signal)
        if call is None:
            # No request serializer: the bytes are the request as it goes on the wire.
            call = self._calls[signal] = self._open().unary_unary(
                GRPC_METHODS[signal], request_serializer=None, response_deserializer=None
            )
        return call

    def _open(self) -> grpc.aio.Channel:
        if self._channel is None:
            options: list[tuple[str, str | int]] = (
                [("grpc.http_proxy", self._proxy)] if self._proxy else [("grpc.enable_http_proxy", 0)]
            )
            if self._tls:
                credentials = grpc.ssl_channel_credentials(root_certificates=self._roots)
                self._channel = grpc.aio.secure_channel(self._target, credentials, options=options)
            else:
                self._channel = grpc.aio.insecure_channel(self._target, options=options)
        return self._channel

    async def _failed(self, exc: grpc.aio.AioRpcError) -> Attempt:
        code = exc.code().name
        retry_delay = _retry_delay(exc.trailing_metadata() or ())
        outcome = classify_grpc(code, retry_delay is not None)
        if code == "UNAVAILABLE":
            await self.close()
        detail = f"gRPC {code}" + (f": {(exc.details() or '')[:200]!r}" if exc.details() else "")
        return Attempt(outcome, detail, retry_delay or None)


def _retry_delay(trailers: Sequence[tuple[str, str | bytes]]) -> float | None:
    """The RetryInfo delay in seconds the collector's status carried (0.0 for one
    without a delay), or None when it carried none."""
    for key, value in trailers:
        if not isinstance(value, bytes):
            continue
        try:
            if key == _DETAILS_KEY:
                status = status_pb2.Status.FromString(value)
                for detail in status.details:
                    if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                        info = error_details_pb2.RetryInfo()
                        detail.Unpack(info)
                        return _seconds(info)
            elif key == _RETRY_INFO_KEY:
                return _seconds(error_details_pb2.RetryInfo.FromString(value))
        except DecodeError:
            continue
    return None


def _seconds(info: error_details_pb2.RetryInfo) -> float:
    return max(info.retry_delay.seconds + info.retry_delay.nanos / 1e9, 0.0)


def system_roots() -> bytes | None:
    """The CA bundle Python's ``ssl`` trusts by default (``SSL_CERT_FILE``, else
    OpenSSL's own file), so a TLS collector is trusted over gRPC exactly as over
    HTTPS (grpcio would otherwise use the roots it ships, ignoring a private CA
    the operator added to the system's store). None leaves grpcio to its own
    choice: when ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` is set (the operator chose
    for gRPC), or no bundle file is found."""
    if os.environ.get("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"):
        return None
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            try:
                return Path(candidate).read_bytes()
            except OSError:
                continue
    return None
