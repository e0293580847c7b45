"""The OTLP relay: exports the clients send to ``/v1/{metrics,logs,traces}``
forwarded verbatim to each ``telemetry.forward_to`` destination (reference
§9.1), each through its own bounded queue and sender so nothing that fits the
bound is lost while a collector restarts.

``destinations`` and ``queue`` are pure (where to send, what to keep, when to
try again); ``relay`` is the edge that owns the sender tasks.
"""
