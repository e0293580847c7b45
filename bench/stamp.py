"""Time server-side identity stamping of one relayed export (gateway/telemetry/stamp.py).

    python -m bench.stamp             # the machine, then one JSON line per case

What ``gatehouse.telemetry.stamp_identity: true`` adds to each export the gateway
relays: decode, write the identity on the resources and check every attribute
list below them (each point and record carries the client's ``user.id``, so each
is looked at), encode (and inflate and compress again for gzip). The exports are shaped like what the real client sends
(cag-telemetry.md §5: one metrics export of about 2.8 kB with 4 metrics and 7
data points, one logs export of about 5 kB with 7 records), as protobuf, OTLP/JSON
and gzip, plus a 100-resource export for the per-resource cost. Pinned to one
core; the median of several timed batches, in µs per export.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import platform
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from bench.stats import per_call_us
from gateway.auth.tokens import Principal
from gateway.telemetry.stamp import stamp

CALLER = Principal("00u1a2b3c4d5e6f7g8h9", "ada.lovelace@example.com", "Ada", ("eng", "ml-platform"), None, 0)
INSTALLATION = "9f2c" * 16  # the client's per-point user.id: a 64-hex installation hash
SESSION = "6d1f3a52-8c0e-4b7a-9a55-1f0c3e2d4b6a"
START_NS, NOW_NS = 1_765_100_000_000_000_000, 1_765_100_060_000_000_000


def _attrs(target: Any, pairs: dict[str, str | bool | float]) -> None:
    for key, value in pairs.items():
        kv: KeyValue = target.add(key=key)
        if isinstance(value, bool):
            kv.value.bool_value = value
        elif isinstance(value, float):
            kv.value.double_value = value
        else:
            kv.value.string_value = value


def _resource(target: Any) -> None:
    _attrs(target.resource.attributes, {
        "host.arch": "x64", "os.type": "linux", "os.version": "6.8.0-49-generic",
        "service.name": "claude-code", "service.version": "2.1.328",
    })


def _point_attrs(**extra: str) -> dict[str, str | bool | float]:
    return {"user.id": INSTALLATION, "session.id": SESSION, "terminal.type": "non-interactive",
            "anthropic.provider": "firstParty", "anthropic.custom_base_url": True, **extra}


def claude_code_metrics(resources: int = 1) -> ExportMetricsServiceRequest:
    """A metrics export like the real client's: session count, cost, tokens (by type), active time."""
    request = ExportMetricsServiceRequest()
    for _ in range(resources):
        rm = request.resource_metrics.add()
        _resource(rm)
        scope = rm.scope_metrics.add()
        scope.scope.name, scope.scope.version = "com.anthropic.claude_code", "2.1.328"
        cost_attrs = {"model": "claude-sonnet-4-6", "query_source": "repl_main_thread", "effort": "medium"}
        points: list[tuple[str, str, str, list[tuple[dict[str, str], float]]]] = [
            ("claude_code.session.count", "Count of CLI sessions started", "1", [({}, 1.0)]),
            ("claude_code.cost.usage", "Cost of the Claude Code session", "USD", [(cost_attrs, 0.0123)]),
            ("claude_code.token.usage", "Number of tokens used", "tokens", [
                ({"type": t, "model": "claude-sonnet-4-6"}, v)
                for t, v in (("input", 1834.0), ("output", 212.0), ("cacheRead", 15620.0), ("cacheCreation", 0.0))
            ]),
            ("claude_code.active_time.total", "Total active time in seconds", "s", [({}, 3.4)]),
        ]
        for name, description, unit, values in points:
            metric = scope.metrics.add(name=name, description=description, unit=unit)
            metric.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
            metric.sum.is_monotonic = True
            for extra, value in values:
                point = metric.sum.data_points.add(start_time_unix_nano=START_NS, time_unix_nano=NOW_NS, as_double=value)
                _attrs(point.attributes, _point_attrs(**extra))
    return request


def claude_code_logs() -> ExportLogsServiceRequest:
    """A logs export like the real client's: seven events of one prompt."""
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    _resource(rl)
    scope = rl.scope_logs.add()
    scope.scope.name, scope.scope.version = "com.anthropic.claude_code.events", "2.1.328"
    events = [
        ("managed_settings_resolved", {"source": "gateway", "keys": "7"}),
        ("plugin_loaded", {"plugin.name": "builtin", "plugin.version": "2.1.328"}),
        ("user_prompt", {"prompt_length": "8", "prompt": "<REDACTED>"}),
        ("api_request", {"model": "claude-sonnet-4-6", "cost_usd": "0.0123", "duration_ms": "1840",
                         "input_tokens": "1834", "output_tokens": "212", "cache_read_tokens": "15620"}),
        ("assistant_response", {"model": "claude-sonnet-4-6", "stop_reason": "end_turn"}),
        ("tool_decision", {"tool_name": "Bash", "decision": "accept", "source": "config"}),
        ("tool_result", {"tool_name": "Bash", "success": "true", "duration_ms": "412"}),
    ]
    for i, (event, extra) in enumerate(events):
        record = scope.log_records.add(time_unix_nano=NOW_NS + i * 1_000_000, observed_time_unix_nano=NOW_NS + i * 1_000_000)
        record.body.string_value = f"claude_code.{event}"
        record.event_name = f"claude_code.{event}"
        _attrs(record.attributes, _point_attrs(**{"event.name": event, "event.timestamp": "2026-12-07T12:00:00.000Z", **extra}))
    return request


def as_otlp_json(message: Message, *, proto_names: bool = False) -> bytes:
    """OTLP/JSON as the JavaScript exporters write it (lowerCamelCase, enums as
    numbers, trace and span ids in hex), or with the proto field names."""
    from google.protobuf.json_format import MessageToDict

    document = MessageToDict(message, use_integers_for_enums=True, preserving_proto_field_name=proto_names)
    _hex_ids(document)
    return json.dumps(document, separators=(",", ":")).encode()


_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


def _hex_ids(node: object) -> None:
    """protobuf's JSON mapping writes bytes in base64; OTLP/JSON writes ids in hex."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids(item)


def measure(case: str, signal: str, body: bytes, content_type: str, encoding: str | None, calls: int) -> dict[str, object]:
    us = per_call_us(lambda: stamp(signal, body, content_type, encoding, CALLER), calls)
    return {"case": case, "bytes": len(body), "stamp_us": round(us, 1)}


def machine() -> dict[str, object]:
    model = "unknown"
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from google.protobuf.internal import api_implementation

    return {"nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "protobuf": api_implementation.Type()}


def main() -> None:
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[0]})
    print(json.dumps({"machine": machine()}))
    metrics, logs, wide = claude_code_metrics(), claude_code_logs(), claude_code_metrics(resources=100)
    proto = "application/x-protobuf"
    cases = [
        ("metrics protobuf", "metrics", metrics.SerializeToString(), proto, None, 3000),
        ("metrics OTLP/JSON", "metrics", as_otlp_json(metrics), "application/json", None, 1000),
        ("metrics protobuf gzip", "metrics", gzip.compress(metrics.SerializeToString()), proto, "gzip", 1000),
        ("logs protobuf", "logs", logs.SerializeToString(), proto, None, 3000),
        ("logs OTLP/JSON gzip", "logs", gzip.compress(as_otlp_json(logs)), "application/json", "gzip", 1000),
        ("metrics protobuf, 100 resources", "metrics", wide.SerializeToString(), proto, None, 100),
    ]
    for case in cases:
        print(json.dumps(measure(*case)))


if __name__ == "__main__":
    main()
