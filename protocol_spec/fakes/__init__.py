"""Test doubles that speak the upstream side of the protocol.

The fakes live here rather than under ``tests/`` so the conformance suite and
the benchmarks can drive the same server, in-process or as a separate process.
"""

from protocol_spec.fakes.replies import (
    DEFAULT_TEXT,
    Reply,
    SseEvent,
    Usage,
    comment,
    error_event,
    error_reply,
    message_events,
    ping,
    sse_bytes,
    tool_use_events,
)

_SERVER_NAMES = ("FakeUpstream", "Received")


def __getattr__(name: str):
    # The server module is imported on first use, not here: eager import would
    # make ``python -m protocol_spec.fakes.upstream`` load it twice.
    if name in _SERVER_NAMES:
        from protocol_spec.fakes import upstream

        return getattr(upstream, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_TEXT",
    "FakeUpstream",
    "Received",
    "Reply",
    "SseEvent",
    "Usage",
    "comment",
    "error_event",
    "error_reply",
    "message_events",
    "ping",
    "sse_bytes",
    "tool_use_events",
]
