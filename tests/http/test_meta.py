"""Probes, landing page, models list and the endpoints that are stubs for now."""

import json

import aiohttp
import msgspec

import gateway
from tests.harness import make_config, start_gateway, upstream_block


async def get(gw, path, **kw):
    async with aiohttp.ClientSession() as s:
        async with s.request(kw.pop("method", "GET"), gw.url + path, **kw) as r:
            return r.status, r.headers, await r.read()


async def test_health_ready_and_landing(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    assert (await get(gw, "/healthz"))[::2] == (200, b"ok")
    assert (await get(gw, "/readyz"))[::2] == (200, b"ready")
    status, _, body = await get(gw, "/")
    assert status == 200 and json.loads(body) == {"name": "gatehouse", "version": gateway.__version__, "protocol": "/protocol"}


async def test_models_lists_the_catalog_in_anthropics_shape(gateway_factory, fake_upstream):
    extra = "models:\n  - id: team-model\n    label: Team Model\n    description: for the team\n    upstream_model:\n      anthropic: claude-sonnet-4-6\n"
    gw = await gateway_factory([fake_upstream.url], extra)
    status, _, body = await get(gw, "/v1/models?limit=1000", headers=gw.auth())
    doc = json.loads(body)
    assert status == 200 and doc["has_more"] is False
    ids = [m["id"] for m in doc["data"]]
    assert "claude-opus-4-7" in ids and "claude-haiku-4-5-20251001" in ids and "team-model" in ids
    assert doc["first_id"] == ids[0] and doc["last_id"] == ids[-1]
    team = next(m for m in doc["data"] if m["id"] == "team-model")
    assert team == {"id": "team-model", "display_name": "Team Model", "type": "model", "description": "for the team"}
    assert (await get(gw, "/v1/models"))[0] == 401


async def test_builtin_models_can_be_switched_off(gateway_factory, fake_upstream):
    extra = "auto_include_builtin_models: false\nmodels:\n  - id: only-one\n    upstream_model:\n      anthropic: claude-sonnet-4-6\n"
    gw = await gateway_factory([fake_upstream.url], extra)
    _, _, body = await get(gw, "/v1/models", headers=gw.auth())
    assert [m["id"] for m in json.loads(body)["data"]] == ["only-one"]
    status, _, _ = await get(gw, "/v1/messages", method="POST", data=b'{"model":"claude-opus-4-7"}', headers=gw.auth())
    assert status == 400


async def test_telemetry_endpoints_accept_and_discard(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    for path in ("/v1/metrics", "/v1/logs", "/v1/traces"):
        status, _, body = await get(gw, path, method="POST", data=b"\x0a\x00", headers={**gw.auth(), "content-type": "application/x-protobuf"})
        assert (status, body) == (200, b"")
        assert (await get(gw, path, method="POST", data=b"{}"))[0] == 401


async def test_managed_settings_not_configured(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    status, headers, body = await get(gw, "/managed/settings", headers=gw.auth())
    assert status == 404
    assert json.loads(body)["error"] == {"type": "not_found_error", "message": "not configured"}
    assert headers["x-cc-gateway-version"] == gateway.__version__
    assert headers["Cache-Control"] == "no-store"


async def test_unknown_paths_and_methods_get_the_envelope(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    status, headers, body = await get(gw, "/v1/complete", method="POST", headers=gw.auth())
    assert status == 404 and json.loads(body)["error"]["type"] == "not_found_error"
    status, _, body = await get(gw, "/v1/messages")
    assert status == 405 and json.loads(body)["type"] == "error"


async def test_access_control_lists(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url], "access_control:\n  allow_cidrs: [10.0.0.0/8]\n")
    assert (await get(gw, "/healthz"))[0] == 200  # exempt from the allow list
    status, _, body = await get(gw, "/v1/models", headers=gw.auth())
    assert status == 403 and json.loads(body)["error"]["type"] == "permission_error"
    gw2 = await gateway_factory([fake_upstream.url], "access_control:\n  deny_cidrs: [127.0.0.1/32]\n")
    assert (await get(gw2, "/healthz"))[0] == 403  # a deny holds everywhere


async def test_the_first_public_client_is_audited_once_and_still_served(pg_url, fake_upstream, capfd):
    """SPEC NET-7. The test client is on loopback (private), so it reaches the gateway as a
    trusted proxy and names the client in X-Forwarded-For."""
    cfg = make_config(pg_url, [upstream_block(fake_upstream.url)])
    cfg = msgspec.structs.replace(cfg, listen=msgspec.structs.replace(cfg.listen, trusted_proxies=("127.0.0.1/32",)))
    gw = await start_gateway(cfg)
    try:
        capfd.readouterr()
        for client in ("10.0.0.7", "fd00::7", "203.0.113.7", "198.51.100.4", "203.0.113.7"):
            status, _, _ = await get(gw, "/v1/models", headers={**gw.auth(), "X-Forwarded-For": client})
            assert status == 200
        events = [json.loads(line) for line in capfd.readouterr().err.splitlines() if '"access.public_client"' in line]
        assert [(e["client_ip"], e["path"]) for e in events] == [("203.0.113.7", "/v1/models")]
    finally:
        await gw.close()


async def test_no_public_client_event_under_an_allow_list(pg_url, fake_upstream, capfd):
    cfg = make_config(pg_url, [upstream_block(fake_upstream.url)], "access_control:\n  allow_cidrs: [0.0.0.0/0]\n")
    cfg = msgspec.structs.replace(cfg, listen=msgspec.structs.replace(cfg.listen, trusted_proxies=("127.0.0.1/32",)))
    gw = await start_gateway(cfg)
    try:
        status, _, _ = await get(gw, "/v1/models", headers={**gw.auth(), "X-Forwarded-For": "203.0.113.7"})
        assert status == 200 and '"access.public_client"' not in capfd.readouterr().err
    finally:
        await gw.close()


async def test_protocol_documents(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    status, headers, body = await get(gw, "/protocol")
    assert status == 200 and headers["Content-Type"].startswith("text/markdown")
    assert b"MSG-1" in body
    status, _, body = await get(gw, "/protocol.json")
    doc = json.loads(body)
    assert status == 200 and any(r["id"] == "MSG-1" for r in doc["requirements"])


async def test_managed_settings_401_still_carries_the_version(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    status, headers, _ = await get(gw, "/managed/settings")
    assert status == 401 and headers["x-cc-gateway-version"] == gateway.__version__
