"""Time the gateway's own telemetry per request, apart from the rest of the request.

    python -m bench.own_metrics        # prints one JSON line per measurement

What one Messages request costs the gateway at its end (``gateway.http.own_telemetry.request_ended``)
with metrics on, with tracing on (a sampled request, and one the sampler drops), and for comparison
one OpenTelemetry ``Counter.add`` and ``Histogram.record`` with four attributes (what counting
through the SDK on the hot path would cost per call). Also one Prometheus scrape's rendering
with the series a busy gateway has. Pinned to one core; medians of several timed batches (µs).
Spans go to an exporter that keeps nothing, so only the gateway's side is timed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from bench.stats import per_call_us
from gateway.http.own_telemetry import request_ended
from gateway.telemetry.instruments import Instruments, resource
from gateway.telemetry.own_metrics import OwnMetrics, Unmetered
from gateway.telemetry.tracing import RequestTracer
from gateway.upstreams.sse import UsageTotals

SAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class _Discard(SpanExporter):
    def export(self, spans: Sequence[object]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def outcome() -> SimpleNamespace:
    now = time.monotonic()
    return SimpleNamespace(
        status=200, model="claude-sonnet-4-6", upstream="anthropic", upstream_model="claude-sonnet-4-6",
        billing_group=None, usage=UsageTotals(12, 8, 0, 0, 0, 0, False), attempts=1, ms_headers=1.2,
        attempt_at=now - 0.002, first_byte_at=now - 0.001, failures=[],
    )


class _Request(dict):
    """What request_ended reads of an aiohttp request: path, headers, the request id."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__()
        self.path = "/v1/messages"
        self.headers = headers


def runtime(metrics: OwnMetrics, tracer: RequestTracer | None = None) -> Any:
    """The three fields of a Runtime that request_ended reads (a stand-in, hence Any)."""
    return SimpleNamespace(metrics=metrics, tracer=tracer, pricing=None)


def main() -> None:
    from gateway.http.keys import REQUEST_ID

    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[0]})
    res = resource("bench", "bench")
    o = outcome()
    req: Any = _Request({})  # stands in for an aiohttp request
    req[REQUEST_ID] = "req_bench"
    sampled: Any = _Request({"traceparent": SAMPLED})
    sampled[REQUEST_ID] = "req_bench"
    rows = []

    off = runtime(Unmetered())
    rows.append(("request_ended, nothing configured", per_call_us(lambda: request_ended(off, req, None, o, 0.0), 20000)))
    on = runtime(OwnMetrics())
    rows.append(("request_ended, metrics on", per_call_us(lambda: request_ended(on, req, None, o, 0.0), 20000)))
    traced = runtime(Unmetered(), RequestTracer(_Discard(), 1.0, res, version="bench"))
    rows.append(("request_ended, tracing on, sampled", per_call_us(lambda: request_ended(traced, req, None, o, 0.0), 3000)))
    dropped = runtime(Unmetered(), RequestTracer(_Discard(), 0.0, res, version="bench"))
    rows.append(("request_ended, tracing on, not sampled", per_call_us(lambda: request_ended(dropped, req, None, o, 0.0), 10000)))
    rows.append(("request_ended, tracing on, client's sampled traceparent",
                 per_call_us(lambda: request_ended(dropped, sampled, None, o, 0.0), 3000)))

    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    meter = provider.get_meter("bench")
    counter, histogram = meter.create_counter("c"), meter.create_histogram("h")
    attrs = {"route": "/v1/messages", "status": "200", "model": "claude-sonnet-4-6", "upstream": "anthropic"}
    rows.append(("SDK Counter.add, 4 attributes", per_call_us(lambda: counter.add(1, attrs), 20000)))
    rows.append(("SDK Histogram.record, 4 attributes", per_call_us(lambda: histogram.record(0.1, attrs), 20000)))

    # A scrape of a gateway that has seen 3 routes x 5 statuses x 10 models x 3 upstreams.
    busy = OwnMetrics()
    for i in range(450):
        b = outcome()
        b.model, b.upstream, b.status = f"model-{i % 10}", f"up-{i % 3}", 200 + (i // 30) % 5
        request_ended(runtime(busy), req, None, b, 0.0)
    instruments = Instruments(busy, res, version="bench", prometheus=True)
    text, _ = instruments.prometheus_text()
    scrape = per_call_us(instruments.prometheus_text, 20)
    for name, us in rows:
        print(json.dumps({"measure": name, "us_per_call": round(us, 2)}))
    print(json.dumps({"measure": "Prometheus scrape", "series_lines": text.count(b"\n"), "us_per_call": round(scrape, 1)}))
    instruments.shutdown(1.0)


if __name__ == "__main__":
    main()
