"""The OTLP relay: exports the clients send to ``/v1/{metrics,logs,traces}``
forwarded verbatim to each ``telemetry.forward_to`` destination (reference
§9.1), each through its own bounded queue and sender so nothing that fits the
bound is lost while a collector restarts.

``destinations`` and ``queue`` are pure (where to send, what to keep, when to
try again); ``relay`` is the edge that owns the sender tasks.

The gateway's own telemetry (``gatehouse.telemetry.metrics`` and ``traces``):
``own_metrics`` is pure (the in-process counters and histograms the hot path
feeds, and the list of what is exported); ``instruments`` is the edge that
publishes them through the OpenTelemetry SDK (Prometheus text, OTLP);
``tracing`` makes each request's span and exports it over OTLP.
"""
