"""Where each export goes: the ``telemetry.forward_to`` entries made into
per-signal URLs and the headers a destination gets (reference §9.1).

Rules:

* ``url`` is the bare OTLP base: ``/v1/metrics``, ``/v1/logs`` or ``/v1/traces``
  is always appended (after any path the base has, without doubling a trailing
  slash). A base that already ends in a signal path is therefore a mistake, and
  :func:`url_warnings` says so at boot rather than this module guessing.
* A signal reaches a destination only if it opted in: ``metrics`` defaults to
  on, ``logs`` and ``traces`` to off (the schema's defaults).
* A destination gets its configured headers (already expanded by config), the
  client's ``Content-Type`` (``application/x-protobuf`` when the client sent
  none, as Anthropic's gateway does) and ``Content-Encoding`` when sent. Nothing
  else of the client's request travels: never its bearer, its User-Agent or its
  query string.
* A gRPC destination (``gatehouse.protocol: grpc``) is named by its origin alone
  (config refuses a path): each signal goes to its collector service's
  ``Export`` method, so its "URL" is the origin plus that method's path. Its
  configured headers become gRPC metadata under lower-case names; the names
  gRPC or HTTP/2 reserve for themselves cannot be metadata and are left out
  (:func:`grpc_metadata` says which).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from gateway.config.schema import ForwardTo, Telemetry

SIGNALS = ("metrics", "logs", "traces")
DEFAULT_CONTENT_TYPE = "application/x-protobuf"
# Headers the relay sets itself from the export; a configured header of the
# same name loses to them (the body's own type and encoding must stay true).
_EXPORT_HEADERS = frozenset({"content-type", "content-encoding"})
# The OTLP collector services' unary Export methods (opentelemetry-proto's
# collector/*/v1/*_service.proto).
GRPC_METHODS = {
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
}
# Header names that cannot travel as gRPC metadata: HTTP/2 forbids the
# connection-specific ones (RFC 9113 §8.2.2) and gRPC sets host, te,
# content-type and user-agent itself (dropping ours without a word).
_NOT_METADATA = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host", "te", "user-agent"}
)


@dataclass(frozen=True, slots=True)
class Destination:
    """One collector: its name for logs and counters, the URL of each signal it
    takes, and the static headers it gets."""

    name: str
    urls: Mapping[str, str]
    headers: tuple[tuple[str, str], ...]
    protocol: Literal["http", "grpc"] = "http"

    def url_for(self, signal: str) -> str | None:
        return self.urls.get(signal)


def destinations(telemetry: Telemetry | None) -> tuple[Destination, ...]:
    if telemetry is None:
        return ()
    return tuple(destination(entry, i) for i, entry in enumerate(telemetry.forward_to))


def destination(entry: ForwardTo, index: int) -> Destination:
    wanted = {"metrics": entry.metrics, "logs": entry.logs, "traces": entry.traces}
    headers = tuple((k, v) for k, v in entry.headers.items() if k.lower() not in _EXPORT_HEADERS)
    protocol = entry.gatehouse.protocol
    url_of = grpc_url if protocol == "grpc" else signal_url
    return Destination(
        name=f"forward_to[{index}] {shown(entry.url)}",
        urls={s: url_of(entry.url, s) for s in SIGNALS if wanted[s]},
        headers=headers,
        protocol=protocol,
    )


def signal_url(base: str, signal: str) -> str:
    parts = urlsplit(base)
    path = parts.path.rstrip("/") + "/v1/" + signal
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def grpc_url(origin: str, signal: str) -> str:
    """The URL of ``signal``'s Export call at a gRPC collector: scheme, host and
    port of ``origin``, then the method path (any path of ``origin`` is dropped;
    config refuses one)."""
    parts = urlsplit(origin)
    return urlunsplit((parts.scheme, parts.netloc, GRPC_METHODS[signal], "", ""))


def grpc_metadata(headers: Iterable[tuple[str, str]]) -> tuple[tuple[tuple[str, str | bytes], ...], list[str]]:
    """A destination's headers as gRPC metadata, and the names left out.

    Names are lower-cased (gRPC refuses others). ``*-bin`` names carry binary
    values, base64 on the wire: the configured value is that base64 text, so it
    is decoded here and the wire shows what was written; one that is not
    base64 is left out."""
    metadata: list[tuple[str, str | bytes]] = []
    left_out = []
    for name, value in headers:
        key = name.lower()
        if key in _NOT_METADATA or key.startswith("grpc-"):
            left_out.append(name)
        elif key.endswith("-bin"):
            try:
                metadata.append((key, base64.b64decode(value + "=" * (-len(value) % 4), validate=True)))
            except binascii.Error:
                left_out.append(name)
        else:
            metadata.append((key, value))
    return tuple(metadata), left_out


def shown(url: str) -> str:
    """``url`` fit for a log line: scheme, host, port and path, never userinfo or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def outbound_headers(dest: Destination, content_type: str | None, content_encoding: str | None) -> dict[str, str]:
    headers = dict(dest.headers)
    headers["Content-Type"] = content_type or DEFAULT_CONTENT_TYPE
    if content_encoding:
        headers["Content-Encoding"] = content_encoding
    return headers


def url_warnings(telemetry: Telemetry | None) -> list[str]:
    """Boot warnings: a base URL that already ends in a signal path gets the path
    appended again (the rule of §9.1), which no collector serves."""
    warnings = []
    for i, entry in enumerate(telemetry.forward_to if telemetry else ()):
        path = urlsplit(entry.url).path.rstrip("/")
        if any(path.endswith("/v1/" + s) for s in SIGNALS) or path.endswith("/v1"):
            warnings.append(
                f"telemetry.forward_to[{i}].url ends in {path[path.rfind('/v1'):]}: the url is the bare "
                f"OTLP base and /v1/<signal> is appended to it, so exports go to {shown(signal_url(entry.url, 'metrics'))}"
            )
    return warnings
