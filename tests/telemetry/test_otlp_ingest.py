"""The OTLP relay behind the gateway's own endpoints: an exporter posts to Gatehouse,
the export reaches the collector byte for byte, and the exporter never waits on it."""

from __future__ import annotations

import asyncio
import gzip
import json

import aiohttp

from tests.telemetry.collector import Collector

# An OTLP/HTTP protobuf export as the client sends it (any bytes: the relay never decodes them).
EXPORT = bytes(range(256)) * 8


async def post(gw, path: str, body: bytes, headers: dict[str, str]):
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.post(gw.url + path, data=body, headers=headers) as r:
            return r.status, await r.read()


async def wait_for(collector: Collector, count: int, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while len(collector.received) < count:
            await asyncio.sleep(0.01)


async def test_exports_reach_the_collector_verbatim_per_signal(gateway_factory, fake_upstream):
    collector = await Collector().start()
    try:
        extra = (
            "telemetry:\n  forward_to:\n"
            f"    - url: {collector.url}\n      logs: true\n"
            "      headers: {Authorization: Bearer collector-token-1}\n"
        )
        gw = await gateway_factory([fake_upstream.url], extra)
        zipped = gzip.compress(b'{"resourceMetrics":[]}')
        assert (await post(gw, "/v1/metrics", EXPORT, {**gw.auth(), "Content-Type": "application/x-protobuf"}))[0] == 200
        assert (await post(gw, "/v1/logs", zipped, {**gw.auth(), "Content-Type": "application/json", "Content-Encoding": "gzip"}))[0] == 200
        # traces are off by default: answered 200, forwarded nowhere
        assert (await post(gw, "/v1/traces", EXPORT, {**gw.auth(), "Content-Type": "application/x-protobuf"}))[0] == 200
        await wait_for(collector, 2)
        await asyncio.sleep(0.1)
        metrics, logs = collector.received
        assert (metrics.path, metrics.body, metrics.header("Content-Type")) == ("/v1/metrics", EXPORT, "application/x-protobuf")
        assert (logs.path, logs.body, logs.header("Content-Encoding")) == ("/v1/logs", zipped, "gzip")
        # The destination's own credential, never the developer's bearer.
        assert metrics.header("Authorization") == "Bearer collector-token-1"
        assert len(collector.received) == 2
    finally:
        await collector.close()


async def test_an_export_without_a_bearer_is_refused_and_one_too_large_is_a_413(gateway_factory, fake_upstream):
    collector = await Collector().start()
    try:
        extra = f"telemetry:\n  forward_to:\n    - url: {collector.url}\nlimits:\n  max_request_bytes: 1000\n"
        gw = await gateway_factory([fake_upstream.url], extra)
        status, body = await post(gw, "/v1/metrics", b"x", {"Content-Type": "application/x-protobuf"})
        assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
        status, body = await post(gw, "/v1/metrics", b"x" * 2000, {**gw.auth(), "Content-Type": "application/x-protobuf"})
        assert status == 413 and json.loads(body)["error"]["type"] == "request_too_large"
        await asyncio.sleep(0.1)
        assert collector.received == []
    finally:
        await collector.close()


async def test_a_collector_that_is_down_holds_the_exports_until_it_is_back(gateway_factory, fake_upstream):
    collector = await Collector().start()
    try:
        collector.answers = [503, 503]
        gw = await gateway_factory([fake_upstream.url], f"telemetry:\n  forward_to:\n    - url: {collector.url}\n")
        for i in range(3):
            assert (await post(gw, "/v1/metrics", bytes([i]) * 10, {**gw.auth(), "Content-Type": "application/x-protobuf"}))[0] == 200
        await wait_for(collector, 3, timeout=15)  # two refusals, backed off, then everything in order
        assert [r.body for r in collector.received] == [bytes([i]) * 10 for i in range(3)]
    finally:
        await collector.close()


async def test_a_google_destination_gets_a_bearer_from_the_gateways_own_credentials(
    gateway_factory, fake_upstream, monkeypatch, tmp_path
):
    from protocol_spec.fakes.google import FakeGoogleToken

    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    async with FakeGoogleToken() as google:
        google.new_service_account(tmp_path / "adc.json")
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "adc.json"))
        collector = await Collector().start()
        try:
            extra = f"telemetry:\n  forward_to:\n    - url: {collector.url}\n      auth: {{google: {{}}}}\n"
            gw = await gateway_factory([fake_upstream.url], extra)
            assert (await post(gw, "/v1/metrics", EXPORT, {**gw.auth(), "Content-Type": "application/x-protobuf"}))[0] == 200
            await wait_for(collector, 1)
            scheme, _, token = (collector.received[0].header("Authorization") or "").partition(" ")
            assert scheme == "Bearer" and google.is_live(token)
            assert collector.received[0].body == EXPORT
        finally:
            await collector.close()
