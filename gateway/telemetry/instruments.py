"""The edge of the gateway's own metrics: the OpenTelemetry SDK over :mod:`own_metrics`.

Theory of operation: nothing here runs per request. A :class:`MeterProvider`
holds one observable instrument per :data:`~gateway.telemetry.own_metrics.SPECS`
entry whose callback reads the in-process tables when a reader collects:

* Prometheus (``gatehouse.telemetry.metrics.prometheus.enabled``): the SDK's
  ``PrometheusMetricReader`` on a registry of our own (never the process-wide
  one, so two gateways in one process do not collide), rendered with
  ``prometheus_client.generate_latest`` when ``/metrics`` is scraped.
* OTLP (``metrics.otlp``): a ``PeriodicExportingMetricReader`` on the SDK's own
  thread, every ``export_interval_seconds``, to the gRPC or HTTP exporter.

Histograms: the SDK has no observable histogram, and one ``Histogram.record``
per value costs 7-13 µs here (three per request), so the buckets are counted
in-process and handed to the readers as ready-made cumulative histogram points:
both readers override ``MetricReader._receive_metrics`` (the SDK's documented
extension point) to add them to the collected batch. Exporters and the
Prometheus text see real histograms (``_bucket``/``_sum``/``_count``), always
cumulative from process start, whatever temporality an exporter prefers.

:meth:`Instruments.shutdown` exports one last time (blocking: call it off the
event loop) and stops the thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import (
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    CardinalityLimits,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.telemetry.own_metrics import OwnMetrics, Spec

SCOPE = "gatehouse"
# Series per instrument before the SDK folds the rest into one overflow point;
# the SDK's default (2,000) is below tokens by model x group x user with by_user.
MAX_SERIES = 50_000
EXPORT_TIMEOUT_S = 10.0
_CARDINALITY: CardinalityLimits = {ObservableCounter: MAX_SERIES, ObservableUpDownCounter: MAX_SERIES, ObservableGauge: MAX_SERIES}


def resource(version: str, instance_id: str) -> Resource:
    """service.name, service.version and service.instance.id, over OTEL_RESOURCE_ATTRIBUTES."""
    return Resource.create(
        {"service.name": "gatehouse", "service.version": version, "service.instance.id": instance_id}
    )


def otlp_exporter(endpoint: str, protocol: str, headers: Mapping[str, str], signal: str) -> Any:
    """The SDK's OTLP exporter for ``signal`` ("metrics" or "traces"): gRPC to the base URL, or
    HTTP to the base URL plus ``/v1/<signal>``; plaintext only for an ``http://`` endpoint."""
    if protocol == "grpc":
        insecure = urlsplit(endpoint).scheme == "http"
        if signal == "metrics":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc

            return Grpc(endpoint=endpoint, insecure=insecure, headers=dict(headers), timeout=EXPORT_TIMEOUT_S)
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans

        return GrpcSpans(endpoint=endpoint, insecure=insecure, headers=dict(headers), timeout=EXPORT_TIMEOUT_S)
    url = endpoint.rstrip("/") + f"/v1/{signal}"
    if signal == "metrics":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

        return Http(endpoint=url, headers=dict(headers), timeout=EXPORT_TIMEOUT_S)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans

    return HttpSpans(endpoint=url, headers=dict(headers), timeout=EXPORT_TIMEOUT_S)


# ------------------------------------------------------------------ histograms handed to the readers


def histogram_metrics(metrics: OwnMetrics, now_ns: int) -> list[Metric]:
    """Every histogram table as an SDK histogram metric (cumulative since the tables began)."""
    out = []
    for spec in metrics.specs:
        if spec.instrument != "histogram":
            continue
        points = [
            HistogramDataPoint(
                attributes=p.labels,
                start_time_unix_nano=metrics.started_ns,
                time_unix_nano=now_ns,
                count=p.total,
                sum=p.sum,
                bucket_counts=p.buckets,
                explicit_bounds=spec.bounds,
                min=p.min,
                max=p.max,
            )
            for p in metrics.histogram(spec)
        ]
        if points:
            data = Histogram(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE)
            out.append(Metric(name=spec.name, description=spec.description, unit=spec.unit, data=data))
    return out


def with_histograms(data: MetricsData, extra: Sequence[Metric], scope: InstrumentationScope) -> MetricsData:
    """``data`` with ``extra`` added to ``scope``'s metrics (``data`` is frozen: rebuilt, not changed)."""
    if not extra:
        return data
    resources = []
    for rm in data.resource_metrics:
        scopes = [
            ScopeMetrics(sm.scope, [*sm.metrics, *extra], sm.schema_url) if sm.scope.name == scope.name else sm
            for sm in rm.scope_metrics
        ]
        if not any(sm.scope.name == scope.name for sm in rm.scope_metrics):
            scopes.append(ScopeMetrics(scope, list(extra), ""))
        resources.append(ResourceMetrics(rm.resource, scopes, rm.schema_url))
    return MetricsData(resources)


class _Histograms:
    """Adds the in-process histograms to what a reader collected (see the module doc)."""

    histograms: Callable[[], list[Metric]]
    scope: InstrumentationScope

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        extended = with_histograms(metrics_data, self.histograms(), self.scope)
        super()._receive_metrics(extended, timeout_millis, **kwargs)  # type: ignore[misc]


class _PrometheusReader(_Histograms, PrometheusMetricReader):
    pass


class _PeriodicReader(_Histograms, PeriodicExportingMetricReader):
    pass


class Instruments:
    """The MeterProvider and its readers for one gateway process."""

    def __init__(
        self,
        metrics: OwnMetrics,
        res: Resource,
        *,
        version: str,
        prometheus: bool,
        exporter: MetricExporter | None = None,
        export_interval_s: float = 60.0,
        clock_ns: Callable[[], int] | None = None,
    ) -> None:
        import time

        self.metrics = metrics
        self.registry: CollectorRegistry | None = None
        # The Prometheus reader hands each collection over through a queue of its own:
        # two scrapes at once would take each other's.
        self._scraping = threading.Lock()
        now = clock_ns or time.time_ns
        scope = InstrumentationScope(SCOPE, version)
        readers: list[MetricReader] = []
        if prometheus:
            self.registry = CollectorRegistry(auto_describe=False)
            prom = _PrometheusReader(
                disable_target_info=False,
                scope_info_enabled=False,
                registry=self.registry,
                cardinality_limits=dict(_CARDINALITY),
            )
            readers.append(self._extend(prom, scope, now))
        if exporter is not None:
            periodic = _PeriodicReader(
                exporter,
                export_interval_millis=export_interval_s * 1000,
                export_timeout_millis=EXPORT_TIMEOUT_S * 1000,
                cardinality_limits=dict(_CARDINALITY),
            )
            readers.append(self._extend(periodic, scope, now))
        self.provider = MeterProvider(metric_readers=readers, resource=res)
        meter = self.provider.get_meter(SCOPE, version)
        for spec in metrics.specs:
            if spec.instrument == "histogram":
                continue
            make = {
                "counter": meter.create_observable_counter,
                "updown": meter.create_observable_up_down_counter,
                "gauge": meter.create_observable_gauge,
            }[spec.instrument]
            make(spec.name, callbacks=[self._callback(spec)], unit=spec.unit, description=spec.description)

    def _extend(self, reader: _Histograms, scope: InstrumentationScope, now: Callable[[], int]) -> Any:
        reader.scope = scope
        reader.histograms = lambda: histogram_metrics(self.metrics, now())
        return reader

    def _callback(self, spec: Spec) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, labels) for labels, value in self.metrics.points(spec)]

        return observe

    def prometheus_text(self) -> tuple[bytes, str]:
        """The Prometheus text exposition now, and its content type."""
        assert self.registry is not None, "Prometheus is not enabled"
        with self._scraping:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def shutdown(self, timeout_s: float) -> None:
        """Export once more, then stop (blocks up to about ``timeout_s``)."""
        self.provider.shutdown(timeout_millis=timeout_s * 1000)
