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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from gateway.config.schema import ForwardTo, Telemetry

SIGNALS = ("metrics", "logs", "traces")
DEFAULT_CONTENT_TYPE = "application/x-protobuf"
# Headers the relay sets itself from the export; a configured header of the
# same name loses to them (the body's own type and encoding must stay true).
_EXPORT_HEADERS = frozenset({"content-type", "content-encoding"})


@dataclass(frozen=True, slots=True)
class Destination:
    """One collector: its name for logs and counters, the URL of each signal it
    takes, and the static headers it gets."""

    name: str
    urls: Mapping[str, str]
    headers: tuple[tuple[str, str], ...]

    def url_for(self, signal: str) -> str | None:
        return self.urls.get(signal)


def destinations(telemetry: Telemetry | None) -> tuple[Destination, ...]:
    if telemetry is None:
        return ()
    return tuple(destination(entry, i) for i, entry in enumerate(telemetry.forward_to))


def destination(entry: ForwardTo, index: int) -> Destination:
    wanted = {"metrics": entry.metrics, "logs": entry.logs, "traces": entry.traces}
    headers = tuple((k, v) for k, v in entry.headers.items() if k.lower() not in _EXPORT_HEADERS)
    return Destination(
        name=f"forward_to[{index}] {shown(entry.url)}",
        urls={s: signal_url(entry.url, s) for s in SIGNALS if wanted[s]},
        headers=headers,
    )


def signal_url(base: str, signal: str) -> str:
    parts = urlsplit(base)
    path = parts.path.rstrip("/") + "/v1/" + signal
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


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
