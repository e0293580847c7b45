"""GET /user/bootstrap end to end (SPEC §17.4): a real gateway on a loopback port, a real
HTTP client, tokens minted with the gateway's own key, the audit read from stderr."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

import gateway
from tests.harness import RunningGateway, make_config, start_gateway, upstream_block

POLICIES = """
managed:
  policies:
    - match: { groups: [contractors] }
      cli:
        availableModels: [claude-haiku-4-5]
        permissions: { deny: [WebFetch, "Bash(rm *)"] }
    - match: { groups: [eng] }
      cli:
        availableModels: [claude-opus-4-8, claude-sonnet-4-6]
        env: { OTEL_EXPORTER_OTLP_PROTOCOL: http/json }
        sandbox: { network: { allowedDomains: [github.com] } }
      desktop:
        chatTabEnabled: true
        disabledBuiltinTools: [WebSearch]
        builtinToolPolicy: { Bash: allow, Write: ask }
    - match: { email_domain: example.com }
      cli:
        availableModels: [claude-sonnet-4-6]
      desktop:
        coworkEgressAllowedHosts: ["*.example.com"]
"""
# The same, with a match: {} base that opts everyone in and which the others inherit from.
BASE = """
    - match: {}
      cli:
        permissions: { deny: [Task] }
      desktop:
        chatTabEnabled: false
        skillCreationEnabled: false
        builtinToolPolicy: { Bash: ask }
"""
TELEMETRY = """
telemetry:
  forward_to:
    - url: http://127.0.0.1:9
  resource_attributes: { deployment.environment: test }
"""


async def _gateway(pg_url: str, extra: str) -> AsyncIterator[RunningGateway]:
    gw = await start_gateway(make_config(pg_url, [upstream_block("http://127.0.0.1:9")], extra))
    try:
        yield gw
    finally:
        await gw.close()


@pytest.fixture
async def gw(pg_url: str) -> AsyncIterator[RunningGateway]:
    async for g in _gateway(pg_url, POLICIES):
        yield g


@pytest.fixture
async def gw_base(pg_url: str) -> AsyncIterator[RunningGateway]:
    async for g in _gateway(pg_url, POLICIES + BASE + TELEMETRY):
        yield g


async def bootstrap(gw: RunningGateway, headers: dict[str, str]) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/user/bootstrap", headers=headers) as r:
            return r.status, r.headers, json.loads(await r.read())


def audit(capfd: pytest.CaptureFixture[str], evt: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capfd.readouterr().err.splitlines() if f'"{evt}"' in line]


def assert_headers(headers: Any) -> None:
    # Per person and carrying their identity: nothing in between may keep it.
    assert headers["Cache-Control"] == "no-store"
    assert headers["Pragma"] == "no-cache"
    assert headers["x-cc-gateway-version"] == gateway.__version__
    assert headers["Content-Type"].startswith("application/json")
    assert "ETag" not in headers


async def test_an_opted_in_policy_gets_its_bootstrap_and_is_audited(gw, capfd):
    capfd.readouterr()
    status, headers, doc = await bootstrap(gw, gw.auth(email="ada@corp.test", sub="00u-ada", groups=["eng"]))
    assert status == 200
    assert_headers(headers)
    assert doc == {
        "builtinToolPolicy": {"Bash": "allow", "Write": "ask"},
        "chatTabEnabled": True,
        "coworkEgressAllowedHosts": ["github.com"],
        "disabledBuiltinTools": ["WebSearch"],
        "inferenceGatewayBaseUrl": gw.url,
        "inferenceModels": [{"name": "claude-opus-4-8"}, {"name": "claude-sonnet-4-6"}],
        "inferenceProvider": "gateway",
    }
    (event,) = audit(capfd, "desktop_bootstrap.serve")
    assert (event["sub"], event["email"], event["policy_index"]) == ("00u-ada", "ada@corp.test", 1)
    assert event["request_id"] == headers["request-id"]


async def test_a_policy_without_desktop_and_no_base_is_404_policy_not_opted_in(gw, capfd):
    capfd.readouterr()
    status, headers, doc = await bootstrap(gw, gw.auth(sub="00u-c", groups=["contractors"]))
    assert status == 404
    assert_headers(headers)
    assert doc["error"]["type"] == "not_found_error" and "desktop:" in doc["error"]["message"]
    (event,) = audit(capfd, "desktop_bootstrap.denied")
    assert (event["reason"], event["sub"], event["policy_index"]) == ("policy_not_opted_in", "00u-c", 0)
    assert event["request_id"] == doc["request_id"]


async def test_a_caller_no_policy_matches_is_404_no_policy_matched(gw, capfd):
    capfd.readouterr()
    status, headers, doc = await bootstrap(gw, gw.auth(email="x@elsewhere.test", groups=["sales"]))
    assert status == 404
    assert_headers(headers)
    (event,) = audit(capfd, "desktop_bootstrap.denied")
    assert (event["reason"], event["email"], event["policy_index"]) == ("no_policy_matched", "x@elsewhere.test", None)


async def test_without_any_desktop_block_it_is_404_not_configured(pg_url, capfd):
    async for gw in _gateway(pg_url, "managed:\n  policies:\n    - match: {}\n      cli: {}\n"):
        capfd.readouterr()
        status, headers, doc = await bootstrap(gw, gw.auth())
        assert status == 404
        assert_headers(headers)
        assert "not configured" in doc["error"]["message"]
        (event,) = audit(capfd, "desktop_bootstrap.denied")
        assert event["reason"] == "not_configured"


async def test_unauthenticated_is_401_with_version_and_no_desktop_event(gw, capfd):
    capfd.readouterr()
    for headers in ({}, {"Authorization": "Bearer nope"}):
        status, got, doc = await bootstrap(gw, headers)
        assert status == 401
        assert got["x-cc-gateway-version"] == gateway.__version__
        assert doc["error"]["type"] == "authentication_error"
    err = capfd.readouterr().err
    assert "desktop_bootstrap" not in err


async def test_base_inheritance_and_telemetry_over_http(gw_base, capfd):
    gw = gw_base
    capfd.readouterr()
    # Contractors have no block of their own: the base opts them in, and their own cli rules.
    status, headers, doc = await bootstrap(gw, gw.auth(email="c@corp.test", sub="00u-c", groups=["contractors"]))
    assert status == 200
    assert_headers(headers)
    assert doc["chatTabEnabled"] is False and doc["skillCreationEnabled"] is False
    assert doc["disabledBuiltinTools"] == ["Task", "WebFetch"]  # bare deny entries, base first
    assert [m["name"] for m in doc["inferenceModels"]] == ["claude-haiku-4-5-20251001"]
    assert doc["otlpEndpoint"] == gw.url and doc["otlpProtocol"] == "http/protobuf"
    assert doc["otlpResourceAttributes"] == {
        "deployment.environment": "test",
        "user.email": "c@corp.test",
        "user.groups": "contractors",
        "enduser.id": "c@corp.test",
        "enduser.sub": "00u-c",
    }
    # Engineers' block is laid over the base's: their chat tab wins, the base's ask on Bash holds,
    # and their policy env asks for JSON exports.
    status, _, doc = await bootstrap(gw, gw.auth(email="e@corp.test", sub="00u-e", groups=["eng"]))
    assert status == 200
    assert (doc["chatTabEnabled"], doc["skillCreationEnabled"]) == (True, False)
    assert doc["builtinToolPolicy"] == {"Bash": "ask", "Write": "ask"}
    assert doc["disabledBuiltinTools"] == ["Task", "WebSearch"]
    assert doc["otlpProtocol"] == "http/json"
    # Nobody in particular falls to the base itself.
    status, _, doc = await bootstrap(gw, gw.auth(email="n@nowhere.test", sub="00u-n", groups=[]))
    assert status == 200 and doc["otlpResourceAttributes"]["enduser.sub"] == "00u-n"
    assert "user.groups" not in doc["otlpResourceAttributes"]
    served = audit(capfd, "desktop_bootstrap.serve")
    assert [e["policy_index"] for e in served] == [0, 1, 3]
