"""conf/examples/cag/full.yaml, Anthropic's gateway's own format with every optional
section on, booted by `gatehouse serve` as shipped and serving each part: inference,
managed settings with the telemetry environment, the Claude Desktop bootstrap from the
base policy's `desktop: {}`, and the OTLP relay to the configured collector.

Only addresses change (the IdP, the database, the upstream and the collector become
loopback servers, and loopback joins `access_control.allow_cidrs`); every other value
is the example's."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
import anthropic
import yaml

from gateway.config.load import loads
from protocol_spec.fakes.upstream import FakeUpstream
from tests.harness import JWT_SECRET, free_port
from tests.telemetry.collector import Collector

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "examples" / "cag" / "full.yaml"
OTLP_TOKEN = "example-otlp-token"


async def test_the_full_example_boots_and_serves_each_section(pg_url, tmp_path):
    from tests.system.test_process import spawn, wait_ready

    collector = await Collector().start()
    try:
        async with FakeUpstream() as upstream:
            doc = yaml.safe_load(EXAMPLE.read_text())
            port = free_port()
            doc["listen"].update(host="127.0.0.1", port=port, public_url=f"http://127.0.0.1:{port}")
            doc["oidc"]["issuer"] = "http://127.0.0.1:9"  # discovery is retried at the first sign-in
            doc["store"] = {**doc["store"], "postgres_url": "${GATEWAY_POSTGRES_URL}"}
            del doc["store"]["password"]
            doc["upstreams"][0]["base_url"] = upstream.url
            doc["telemetry"]["forward_to"][0]["url"] = collector.url
            doc["access_control"]["allow_cidrs"].append("127.0.0.0/8")
            config = tmp_path / "gateway.yaml"
            config.write_text(yaml.safe_dump(doc, sort_keys=False))
            env = {
                **os.environ, "CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1", "PORT": str(port),
                "OIDC_CLIENT_SECRET": "s", "GATEWAY_JWT_SECRET": JWT_SECRET,
                "GATEWAY_JWT_SECRET_PREVIOUS": "previous-session-secret-0123456789abcdef",
                "GATEWAY_POSTGRES_URL": pg_url, "ANTHROPIC_API_KEY": "sk-ant-example", "OTLP_TOKEN": OTLP_TOKEN,
                "GATEWAY_ADMIN_WRITE_KEY": "example-admin-write-key-0123456789abcdef",
                "GATEWAY_ADMIN_READ_KEY": "example-admin-read-key-0123456789abcdef",
            }
            proc = spawn("serve", "--config", str(config), env=env)
            try:
                await wait_ready(port, proc, timeout=60)
                from gateway.app.build import token_service

                tokens = token_service(loads(config.read_text(), env, source=str(config)))
                # An engineer: the second policy (by group and domain), over the base.
                bearer = tokens.mint(
                    sub="user-eng", email="eng@corp.example.com", groups=("engineering",), now=int(time.time())
                )
                auth = {"Authorization": f"Bearer {bearer}"}
                base = f"http://127.0.0.1:{port}"
                sdk = anthropic.AsyncAnthropic(base_url=base, auth_token=bearer, api_key=None, max_retries=0, timeout=30)
                reply = await sdk.messages.create(model="claude-sonnet-4-6", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
                assert reply.content
                async with aiohttp.ClientSession() as s:
                    async with s.get(base + "/managed/settings", headers=auth) as r:
                        assert r.status == 200
                        env_pushed = (await r.json())["settings"]["env"]
                    assert env_pushed["OTEL_EXPORTER_OTLP_ENDPOINT"] == base
                    assert env_pushed["OTEL_METRICS_EXPORTER"] == env_pushed["OTEL_LOGS_EXPORTER"] == "otlp"
                    assert env_pushed["OTEL_RESOURCE_ATTRIBUTES"] == "deployment.environment=production"
                    async with s.get(base + "/user/bootstrap", headers=auth) as r:
                        assert r.status == 200, await r.text()
                        desktop = await r.json()
                    assert desktop["inferenceProvider"] == "gateway"
                    # The engineers' models (their policy), the base's denied tool, the relay as collector.
                    names = [m["name"] for m in desktop["inferenceModels"]]
                    assert names == ["claude-opus-4-8", "claude-sonnet-4-6", "claude-haiku-4-5-20251001"]
                    assert desktop["inferenceGatewayBaseUrl"] == desktop["otlpEndpoint"] == base
                    assert desktop["disabledBuiltinTools"] == ["WebFetch"]
                    assert desktop["otlpResourceAttributes"]["user.email"] == "eng@corp.example.com"
                    export = b"\x0a\x00"  # an (empty) ExportMetricsServiceRequest, as bytes
                    headers = {**auth, "Content-Type": "application/x-protobuf"}
                    async with s.post(base + "/v1/metrics", data=export, headers=headers) as r:
                        assert r.status == 200
                    for _ in range(200):
                        if collector.received:
                            break
                        await asyncio.sleep(0.05)
                got = collector.received[0]
                assert got.path == "/v1/metrics" and got.body == export
                assert got.header("Authorization") == f"Bearer {OTLP_TOKEN}"  # the collector's, never the developer's
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    finally:
        await collector.close()
