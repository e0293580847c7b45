"""Starting and stopping the gateway's own metrics and traces (``gatehouse.telemetry``).

Order (driven by :mod:`gateway.app.build`): :func:`metrics_for` at boot (the
in-process tables, or the do-nothing ones when nothing is configured); the
store opens with the tables' statement hook; :func:`open_publishers` makes the
SDK edges before the runtime; :func:`watch_runtime` has the tables read the
runtime's own state at export time; :func:`serve_scrapes` opens the Prometheus
listener of its own when ``prometheus.listen`` is set. At shutdown,
:func:`close` runs after the requests, the usage recorder and the relay have
drained, so the last export counts everything: the SDK's blocking flushes run
in a thread, bounded.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from aiohttp import web

from gateway import __version__, audit
from gateway.telemetry.own_metrics import (
    DB_CONNECTIONS,
    DB_CONNECTIONS_MAX,
    INFLIGHT_REQUESTS,
    INFLIGHT_STREAMS,
    RELAY_DROPPED_BYTES,
    RELAY_EXPORTS,
    RELAY_QUEUE_BYTES,
    RELAY_QUEUE_EXPORTS,
    UPSTREAM_COOLDOWNS,
    UPSTREAM_COOLING,
    OwnMetrics,
    Unmetered,
    per_upstream,
    pool_table,
    relay_tables,
)

if TYPE_CHECKING:
    from gateway.config.schema import Config
    from gateway.http.runtime import Boot, Runtime
    from gateway.telemetry.instruments import Instruments
    from gateway.telemetry.relay import Relay
    from gateway.telemetry.tracing import RequestTracer

# The last export and the span queue's flush at shutdown; past this they are given up.
FLUSH_TIMEOUT_S = 5.0


class Publishers(NamedTuple):
    instruments: Instruments | None
    tracer: RequestTracer | None


def metrics_for(cfg: Config) -> OwnMetrics:
    """Counting tables when any metrics reader is configured, else the do-nothing ones."""
    m = cfg.gatehouse.telemetry.metrics
    if m.prometheus.enabled or m.otlp is not None:
        return OwnMetrics(by_user=m.by_user)
    return Unmetered()


def prometheus_on_main_listener(cfg: Config) -> bool:
    p = cfg.gatehouse.telemetry.metrics.prometheus
    return p.enabled and p.listen is None


class _SdkLog(logging.Handler):
    """The SDK's own warnings (an export that failed, spans dropped) as gateway log lines,
    one line each, without the traceback the SDK attaches."""

    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= logging.ERROR else "warn"
        audit.log(level, f"opentelemetry: {record.getMessage()}")


def _route_sdk_log() -> None:
    logger = logging.getLogger("opentelemetry")
    if not any(isinstance(h, _SdkLog) for h in logger.handlers):
        logger.addHandler(_SdkLog(logging.WARNING))
        logger.propagate = False


def open_publishers(boot: Boot) -> Publishers:
    """The MeterProvider (with its readers) and the tracer, as configured; None when off.

    The SDK is imported only here and only when something is configured.
    """
    tel = boot.config.gatehouse.telemetry
    if not boot.metrics.enabled and tel.traces.otlp is None:
        return Publishers(None, None)
    from gateway.telemetry.instruments import Instruments, otlp_exporter, resource

    _route_sdk_log()
    res = resource(__version__, uuid.uuid4().hex)
    instruments = tracer = None
    if boot.metrics.enabled:
        otlp = tel.metrics.otlp
        exporter = otlp_exporter(otlp.endpoint, otlp.protocol, otlp.headers, "metrics") if otlp else None
        instruments = Instruments(
            boot.metrics,
            res,
            version=__version__,
            prometheus=tel.metrics.prometheus.enabled,
            exporter=exporter,
            export_interval_s=tel.metrics.export_interval_seconds,
        )
    if tel.traces.otlp is not None:
        from gateway.telemetry.tracing import RequestTracer

        t = tel.traces.otlp
        exporter = otlp_exporter(t.endpoint, t.protocol, t.headers, "traces")
        tracer = RequestTracer(exporter, tel.traces.sample_ratio, res, version=__version__)
    return Publishers(instruments, tracer)


def watch_runtime(metrics: OwnMetrics, rt: Runtime) -> None:
    """Values other parts keep already, read at export time rather than counted twice."""
    if not metrics.enabled:
        return
    metrics.watch(INFLIGHT_REQUESTS, lambda: {(): rt.inflight})
    metrics.watch(INFLIGHT_STREAMS, lambda: {(): rt.streams})
    health = rt.health
    metrics.watch(UPSTREAM_COOLDOWNS, lambda: per_upstream(health.names, health.cooldowns[:]))
    metrics.watch(
        UPSTREAM_COOLING,
        lambda: {(name,): float(d["state"] != "ok") for name, d in health.detail().items()},
    )
    pool = rt.store.pool
    metrics.watch(DB_CONNECTIONS, lambda: pool_table(pool.get_size(), pool.get_idle_size()))
    metrics.watch(DB_CONNECTIONS_MAX, lambda: {(): pool.get_max_size()})
    relay = rt.relay
    if relay is not None:
        for spec in (RELAY_QUEUE_EXPORTS, RELAY_QUEUE_BYTES, RELAY_EXPORTS, RELAY_DROPPED_BYTES):
            metrics.watch(spec, functools.partial(_relay_table, relay, spec.name))


def _relay_table(relay: Relay, name: str) -> dict[tuple[str, ...], float]:
    return relay_tables(relay.counters())[name]


async def serve_scrapes(rt: Runtime) -> web.AppRunner | None:
    """The ``prometheus.listen`` listener, when configured: GET /metrics only, no auth.

    A port already taken (another ``--workers`` process holds it) is logged and
    skipped: the gateway serves on, and that process's metrics still go over OTLP.
    """
    from gateway.http.own_telemetry import scrape_app

    prometheus = rt.config.gatehouse.telemetry.metrics.prometheus
    listen = prometheus.listen
    if not prometheus.enabled or listen is None or rt.instruments is None:
        return None
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(scrape_app(rt.instruments), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
    except OSError as exc:
        await runner.cleanup()
        audit.log("error", f"gatehouse.telemetry.metrics.prometheus.listen {listen}: cannot listen ({exc}); /metrics is not served")
        return None
    audit.log("info", f"Prometheus metrics on http://{listen}/metrics")
    return runner


async def close(rt: Runtime, scrapes: web.AppRunner | None) -> None:
    """The last export and span flush (in a thread, bounded), then the scrape listener."""
    flushes: list[tuple[str, Callable[[], None]]] = []
    if rt.instruments is not None:
        flushes.append(("metrics", functools.partial(rt.instruments.shutdown, FLUSH_TIMEOUT_S)))
    if rt.tracer is not None:
        flushes.append(("traces", rt.tracer.shutdown))
    for name, flush in flushes:
        try:
            await asyncio.wait_for(asyncio.to_thread(flush), FLUSH_TIMEOUT_S + 1)
        except Exception as exc:
            audit.log("warn", f"the gateway's own {name} were not flushed at shutdown: {exc!r}")
    if scrapes is not None:
        await scrapes.cleanup()
