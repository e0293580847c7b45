"""When PostgreSQL stops answering: fail open by default, fail closed when configured."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.harness import make_config, start_gateway, upstream_block
from tests.netfaults import TcpProxy

BODY = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": []}).encode()
ADMIN = """
admin:
  write_keys: [{id: t, key: "admin-write-key-0123456789abcdef0123456789"}]
gatehouse:
  spend:
    store_timeout_ms: 300
"""


@pytest.mark.parametrize("fail_closed", [False, True])
async def test_store_down_during_the_spend_check(pg_cluster, fake_upstream, fail_closed):
    db = pg_cluster.create_database(f"failmode_{int(fail_closed)}")
    url = urlsplit(db)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied = url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}").geturl()
    extra = ADMIN + ("enforcement:\n  fail_closed_on_error: true\n" if fail_closed else "")
    gw = await start_gateway(make_config(proxied, [upstream_block(fake_upstream.url)], extra))
    try:
        async with aiohttp.ClientSession() as s:
            limit = {"scope": {"type": "organization"}, "amount": "100000", "period": "monthly"}
            async with s.post(gw.url + "/v1/organizations/spend_limits", json=limit, headers={"x-api-key": "admin-write-key-0123456789abcdef0123456789"}) as r:
                assert r.status == 200
            for _ in range(50):  # the new cap reaches the limits cache by NOTIFY
                async with s.post(gw.url + "/v1/messages", data=BODY, headers=gw.auth()) as r:
                    assert r.status == 200
                    if "anthropic-ratelimit-unified-status" in r.headers:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the cap never applied")
            await proxy.stop()  # PostgreSQL unreachable from here on
            async with s.post(gw.url + "/v1/messages", data=BODY, headers=gw.auth()) as r:
                doc = await r.read()
                if fail_closed:
                    assert r.status == 429
                    assert json.loads(doc)["error"] == {"type": "billing_error", "message": "spend limit unavailable"}
                    assert r.headers["x-should-retry"] == "false"
                    assert r.headers["anthropic-ratelimit-unified-overage-disabled-reason"] == "fetch_error"
                    unified = [h for h in r.headers if h.lower().startswith("anthropic-ratelimit-unified-")]
                    assert [h.lower() for h in unified] == ["anthropic-ratelimit-unified-overage-disabled-reason"]
                    assert "retry-after" not in r.headers
                else:
                    assert r.status == 200
                    assert not [h for h in r.headers if h.lower().startswith("anthropic-ratelimit-")]
            # count_tokens is never blocked, store or not.
            async with s.post(gw.url + "/v1/messages/count_tokens", data=BODY, headers=gw.auth()) as r:
                assert r.status == 200
            async with s.get(gw.url + "/api/oauth/usage", headers=gw.auth()) as r:
                assert r.status == 503
        await proxy.start()  # PostgreSQL is back: queued usage rows and settlements land
    finally:
        await gw.close()
