"""Traces of the request path, exported over OTLP (``gatehouse.telemetry.traces``).

Theory of operation: one server span per Messages request, made when the
request has ended, from what it recorded (start and end times, route, model,
upstream, status, tokens; never prompt or reply content), with the serving
upstream's call as a child span and each failed upstream attempt as an event.
Building the spans after the fact keeps the hot path free of tracing calls
until the request is over; the span times are the request's own.

* A W3C ``traceparent`` from the client is continued (the span is its child,
  same trace id), read with the SDK's ``TraceContextTextMapPropagator``.
* Sampling: ``ParentBased(TraceIdRatioBased(sample_ratio))``: a client's
  sampled flag is followed either way; a request without one is traced at
  ``sample_ratio``. An unsampled request creates no recording span.
* Spans leave through a ``BatchSpanProcessor`` (its own thread, bounded queue:
  spans are dropped, never waited for, when a collector is slow).
* With no ``traces.otlp`` there is no :class:`RequestTracer` at all, so
  tracing off costs nothing.

The provider is the gateway's own, never the process-wide global one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Attributes = Mapping[str, str | int | float | bool]
_PROPAGATOR = TraceContextTextMapPropagator()


class UpstreamCall(NamedTuple):
    """The serving upstream's call, as a child span: from its start to its response headers."""

    name: str
    start_ns: int
    end_ns: int
    attributes: Attributes


class RequestSpan(NamedTuple):
    name: str
    start_ns: int
    end_ns: int
    attributes: Attributes
    error: bool  # the request failed on the gateway's or an upstream's side (5xx)
    upstream: UpstreamCall | None = None
    failures: Sequence[tuple[str, str]] = ()  # (upstream, kind) of each failed attempt, as events


class RequestTracer:
    def __init__(self, exporter: SpanExporter, sample_ratio: float, res: Resource, *, version: str) -> None:
        sampler = ParentBased(TraceIdRatioBased(sample_ratio))
        self.provider = TracerProvider(sampler=sampler, resource=res)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("gatehouse", version)

    def record(self, carrier: Mapping[str, str], span: RequestSpan) -> None:
        """Make and end the spans of one finished request (continuing the client's trace in ``carrier``)."""
        parent = _PROPAGATOR.extract(carrier)
        server = self.tracer.start_span(
            span.name, context=parent, kind=SpanKind.SERVER, attributes=span.attributes, start_time=span.start_ns
        )
        if server.is_recording():
            for upstream, kind in span.failures:
                server.add_event("upstream failed", {"gatehouse.upstream": upstream, "gatehouse.error.kind": kind})
            call = span.upstream
            if call is not None:
                child = self.tracer.start_span(
                    call.name,
                    context=trace.set_span_in_context(server),
                    kind=SpanKind.CLIENT,
                    attributes=call.attributes,
                    start_time=call.start_ns,
                )
                child.end(end_time=call.end_ns)
            if span.error:
                server.set_status(Status(StatusCode.ERROR))
        server.end(end_time=span.end_ns)

    def shutdown(self) -> None:
        """Send what is queued, then stop (blocks: call it off the event loop)."""
        self.provider.shutdown()


def carrier_of(headers: Any) -> dict[str, str]:
    """The trace-context headers of a request, for :meth:`RequestTracer.record`."""
    out = {}
    for name in ("traceparent", "tracestate"):
        value = headers.get(name)
        if value is not None:
            out[name] = value
    return out
