"""Destinations from ``telemetry.forward_to``: URLs, opt-in, headers (reference §9.1)."""

from gateway.config.schema import ForwardTo, ForwardToGatehouse, Telemetry
from gateway.telemetry.destinations import (
    DEFAULT_CONTENT_TYPE,
    destinations,
    grpc_metadata,
    grpc_url,
    outbound_headers,
    shown,
    signal_url,
    url_warnings,
)


def test_signal_path_is_appended_to_the_bare_base():
    assert signal_url("https://otel.example.com", "metrics") == "https://otel.example.com/v1/metrics"
    assert signal_url("https://otel.example.com/", "logs") == "https://otel.example.com/v1/logs"
    assert signal_url("https://otel.example.com:4318/otlp/", "traces") == "https://otel.example.com:4318/otlp/v1/traces"
    assert signal_url("https://otel.example.com/otlp?tenant=a", "logs") == "https://otel.example.com/otlp/v1/logs?tenant=a"


def test_defaults_are_metrics_only():
    (dest,) = destinations(Telemetry(forward_to=(ForwardTo(url="https://c.example.com"),)))
    assert dict(dest.urls) == {"metrics": "https://c.example.com/v1/metrics"}
    assert dest.url_for("logs") is None and dest.url_for("traces") is None


def test_each_signal_opts_in_on_its_own():
    dest = destinations(
        Telemetry(forward_to=(ForwardTo(url="https://c.example.com", metrics=False, logs=False, traces=True),))
    )[0]
    assert set(dest.urls) == {"traces"}
    dest = destinations(Telemetry(forward_to=(ForwardTo(url="https://c.example.com", logs=True),)))[0]
    assert set(dest.urls) == {"metrics", "logs"}


def test_no_telemetry_means_no_destinations():
    assert destinations(None) == ()
    assert destinations(Telemetry()) == ()


def test_names_are_unique_and_never_show_userinfo_or_query():
    cfg = Telemetry(
        forward_to=(
            ForwardTo(url="https://user:secret@c.example.com/otlp?key=hush"),
            ForwardTo(url="https://user:secret@c.example.com/otlp?key=hush"),
        )
    )
    first, second = destinations(cfg)
    assert first.name != second.name
    assert "secret" not in first.name and "hush" not in first.name
    assert first.name == "forward_to[0] https://c.example.com/otlp"
    assert shown("http://[::1]:4318/") == "http://[::1]:4318/"


def test_headers_are_the_destinations_and_the_exports_type_and_encoding():
    dest = destinations(
        Telemetry(forward_to=(ForwardTo(url="https://c.example.com", headers={"DD-API-KEY": "k", "Authorization": "Bearer collector"}),))
    )[0]
    assert outbound_headers(dest, "application/json; charset=utf-8", "gzip") == {
        "DD-API-KEY": "k",
        "Authorization": "Bearer collector",
        "Content-Type": "application/json; charset=utf-8",
        "Content-Encoding": "gzip",
    }
    # No type from the client → protobuf, the OTLP/HTTP default; no encoding → none sent.
    assert outbound_headers(dest, None, None)["Content-Type"] == DEFAULT_CONTENT_TYPE
    assert "Content-Encoding" not in outbound_headers(dest, "application/x-protobuf", "")


def test_a_configured_content_type_cannot_mislabel_the_body():
    dest = destinations(
        Telemetry(forward_to=(ForwardTo(url="https://c.example.com", headers={"content-type": "text/plain", "Content-Encoding": "br"}),))
    )[0]
    assert outbound_headers(dest, "application/x-protobuf", None) == {"Content-Type": "application/x-protobuf"}


def test_a_base_that_already_names_a_signal_path_is_warned_about():
    cfg = Telemetry(
        forward_to=(
            ForwardTo(url="https://c.example.com/v1/metrics"),
            ForwardTo(url="https://c.example.com/otlp/v1/"),
            ForwardTo(url="https://c.example.com/otlp"),
        )
    )
    warnings = url_warnings(cfg)
    assert len(warnings) == 2
    assert warnings[0].startswith("telemetry.forward_to[0].url ends in /v1/metrics")
    assert "https://c.example.com/v1/metrics/v1/metrics" in warnings[0]
    assert warnings[1].startswith("telemetry.forward_to[1].url ends in /v1")
    assert url_warnings(None) == []


def test_a_grpc_destination_calls_each_signals_export_method():
    entry = ForwardTo(url="https://otel.example.com:4317", logs=True, traces=True,
                      gatehouse=ForwardToGatehouse(protocol="grpc"))
    (dest,) = destinations(Telemetry(forward_to=(entry,)))
    assert dest.protocol == "grpc" and dest.name == "forward_to[0] https://otel.example.com:4317"
    assert dict(dest.urls) == {
        "metrics": "https://otel.example.com:4317/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        "logs": "https://otel.example.com:4317/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        "traces": "https://otel.example.com:4317/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    }
    assert grpc_url("http://[::1]:4317/", "metrics").startswith("http://[::1]:4317/opentelemetry.proto")
    assert destinations(Telemetry(forward_to=(ForwardTo(url="https://c.example.com"),)))[0].protocol == "http"


def test_grpc_metadata_is_the_headers_in_lower_case_without_reserved_names():
    metadata, left_out = grpc_metadata([
        ("Authorization", "Bearer collector-key"), ("X-Scope-OrgID", "tenant-1"), ("Host", "h"), ("TE", "trailers"),
        ("Connection", "close"), ("grpc-timeout", "1S"), ("User-Agent", "me"), ("X-Token-Bin", "AAEC"),
        ("X-Junk-Bin", "not base64!"),
    ])
    assert metadata == (
        ("authorization", "Bearer collector-key"), ("x-scope-orgid", "tenant-1"), ("x-token-bin", b"\x00\x01\x02"),
    )
    assert left_out == ["Host", "TE", "Connection", "grpc-timeout", "User-Agent", "X-Junk-Bin"]
