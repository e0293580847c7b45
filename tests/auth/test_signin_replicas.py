"""Sign-in across replicas and through outages: separate processes, secret rotation, IdP down."""

from __future__ import annotations

import json
import signal
import uuid

import aiohttp

from protocol_spec.browser import ScriptedBrowser
from protocol_spec.idp_process import IdpProcess
from tests.auth.test_signin import ALICE, DEVICE_GRANT, cli_post, refresh, sign_in
from tests.scripted_idp import ScriptedIdp, TokenReply
from tests.system.test_process import free_port, spawn, wait_exit, wait_ready


async def test_two_processes_one_database(tmp_path, pg_cluster, fake_upstream):
    """Device authorization and the page on one replica, the IdP callback on the other, polls alternating."""
    db = pg_cluster.create_database("replicas_" + uuid.uuid4().hex[:8])
    ports = [free_port(), free_port()]
    with IdpProcess([ALICE]) as idp:
        procs = []
        for port in ports:
            cfg = tmp_path / f"replica-{port}.yaml"
            cfg.write_text(
                f"""
listen: {{host: 127.0.0.1, port: {port}, public_url: "http://127.0.0.1:{ports[0]}"}}
oidc: {{issuer: "{idp.issuer}", client_id: gatehouse, client_secret: "${{OIDC_SECRET}}"}}
session: {{jwt_secret: "${{JWT}}"}}
store: {{postgres_url: "{db}"}}
upstreams: [{{provider: anthropic, base_url: "{fake_upstream.url}", auth: {{api_key: "${{UPSTREAM_KEY}}"}}}}]
"""
            )
            procs.append(spawn("serve", "--config", str(cfg)))
        try:
            for port, proc in zip(ports, procs, strict=True):
                await wait_ready(port, proc)
            a, b = (f"http://127.0.0.1:{p}" for p in ports)
            _, _, dev = await cli_post(a + "/oauth/device_authorization", {"surface": "claude_code"})
            browser = ScriptedBrowser()
            try:
                page = await browser.get(dev["verification_uri_complete"])  # replica a
                idp_page = await browser.submit(page, follow=True)  # → the IdP's form
                redirect = await browser.submit(idp_page, form_index=0, fields={"sub": "alice"}, follow=False)
                callback = redirect.location.replace(a, b)  # the IdP's answer lands on replica b
                done = await browser.get(callback)
                assert done.status == 200, done.text
            finally:
                await browser.close()
            answers = []
            for base in (b, a):  # polls alternate between the replicas
                status, _, doc = await cli_post(base + "/oauth/token", {"grant_type": DEVICE_GRANT, "device_code": dev["device_code"]})
                answers.append((status, doc))
            assert answers[0][0] == 200 and "access_token" in answers[0][1]
            assert answers[1] == (400, {"error": "expired_token"})
            token = answers[0][1]["access_token"]
            async with aiohttp.ClientSession() as s:
                for base in (a, b):
                    async with s.post(base + "/v1/messages", data=json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 1}), headers={"Authorization": f"Bearer {token}"}) as r:
                        assert r.status == 200
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                await wait_exit(proc)


async def test_rotated_jwt_secret(pg_url, fake_upstream):
    from tests.harness import BASE_CONFIG, make_config, start_gateway, upstream_block

    new = "rotated-secret-0123456789abcdef0123456789"
    old_gw = await start_gateway(make_config(pg_url, [upstream_block(fake_upstream.url)]))
    token = old_gw.token()
    cfg_both = make_config(
        pg_url, [upstream_block(fake_upstream.url)], base=BASE_CONFIG.replace("jwt_secret: {jwt_secret}", f"jwt_secret: [{new}, {{jwt_secret}}]"),
        port=int(old_gw.url.rsplit(":", 1)[1]),
    )
    cfg_new = make_config(
        pg_url, [upstream_block(fake_upstream.url)], base=BASE_CONFIG.replace("jwt_secret: {jwt_secret}", f"jwt_secret: {new}"),
        port=int(old_gw.url.rsplit(":", 1)[1]),
    )
    await old_gw.close()
    body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 1})
    for cfg, expected in ((cfg_both, 200), (cfg_new, 401)):
        gw = await start_gateway(cfg)
        try:
            async with aiohttp.ClientSession() as s:
                async with s.post(gw.url + "/v1/messages", data=body, headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == expected
        finally:
            await gw.close()


async def test_idp_down_during_refresh_keeps_the_token(pg_cluster, fake_upstream):
    from tests.harness import make_config, start_gateway, upstream_block

    db = pg_cluster.create_database("idpdown_" + uuid.uuid4().hex[:8])
    idp = ScriptedIdp(client_id="gatehouse-tests", client_secret="gatehouse-tests-secret", users={"alice": dict(ALICE)})
    async with idp:
        gw = await start_gateway(make_config(db, [upstream_block(fake_upstream.url)], issuer=idp.issuer))
        try:
            _, _, status, doc = await sign_in(gw)
            assert status == 200, doc
            idp.script_token(TokenReply(status=503, json={"error": "temporarily_unavailable"}))
            status, _, err = await refresh(gw, doc["refresh_token"])
            assert (status, err["error"]) == (503, "temporarily_unavailable")
            status, _, ok = await refresh(gw, doc["refresh_token"])  # the IdP is back: same token works
            assert status == 200 and ok["refresh_token"] != doc["refresh_token"]
        finally:
            await gw.close()


async def test_callback_sends_the_pkce_verifier_and_checks_the_nonce(pg_cluster, fake_upstream):
    """oidc-provider-mock enforces neither; the scripted IdP does, and records what we sent."""
    from tests.harness import make_config, start_gateway, upstream_block

    db = pg_cluster.create_database("pkce_" + uuid.uuid4().hex[:8])
    idp = ScriptedIdp(client_id="gatehouse-tests", client_secret="gatehouse-tests-secret", users={"alice": dict(ALICE)})
    async with idp:
        gw = await start_gateway(make_config(db, [upstream_block(fake_upstream.url)], issuer=idp.issuer))
        try:
            _, _, status, _ = await sign_in(gw)
            assert status == 200
            exchange = idp.requests_to("/token")[-1]
            assert len(exchange.form["code_verifier"]) >= 43
        finally:
            await gw.close()


async def test_sessions_cli_lists_and_revokes(tmp_path, pg_cluster, fake_upstream):
    import os
    import subprocess
    import sys

    from tests.harness import BASE_CONFIG, JWT_SECRET, free_port, make_config, start_gateway, upstream_block

    db = pg_cluster.create_database("sessions_cli_" + uuid.uuid4().hex[:8])
    with IdpProcess([ALICE]) as idp:
        port = free_port()
        text = BASE_CONFIG.format(
            jwt_secret=JWT_SECRET, pg_url=db, upstreams=upstream_block(fake_upstream.url), extra="", issuer=idp.issuer, port=port
        )
        path = tmp_path / "gateway.yaml"
        path.write_text(text)
        gw = await start_gateway(make_config(db, [upstream_block(fake_upstream.url)], issuer=idp.issuer, port=port))
        try:
            _, _, status, doc = await sign_in(gw)
            assert status == 200
            env = dict(os.environ, CLAUDE_GATEWAY_ALLOW_LOOPBACK="1")
            cli = [sys.executable, "-m", "gateway", "sessions"]
            def run(*args: str) -> str:
                done = subprocess.run([*cli, *args, "--config", str(path)], env=env, capture_output=True, text=True, timeout=60)
                assert done.returncode == 0, done.stderr
                return done.stdout

            # A table like `gatehouse limits`: a header, one aligned row per family, no Python reprs.
            header, row, *rest = run("list", "--email", "ALICE@example.com").splitlines()
            assert header.split()[:5] == ["FAMILY", "STATE", "SUB", "EMAIL", "GROUPS"] and rest == []
            assert row.split()[1:4] == ["active", ALICE["sub"], "alice@example.com"]
            assert "datetime" not in row and "(" not in row
            (family,) = json.loads(run("list", "--email", "alice@example.com", "--json"))["data"]
            assert family["state"] == "active" and family["email"] == "alice@example.com"
            assert family["refreshable"] is True and family["refresh_count"] == 0
            assert family["created_at"].endswith("Z") and family["last_refresh_at"] is None
            assert json.loads(run("revoke", "--email", "alice@example.com", "--json")) == {"email": "alice@example.com", "revoked": 1}
            status, _, err = await refresh(gw, doc["refresh_token"])
            assert (status, err["error"]) == (401, "invalid_grant")
            (family,) = json.loads(run("list", "--email", "alice@example.com", "--json"))["data"]
            assert (family["state"], family["revoke_reason"]) == ("revoked", "admin_revoke")
            assert "revoked (admin_revoke)" in run("list", "--email", "alice@example.com")
            assert run("list", "--email", "nobody@example.com") == "no sign-in sessions for nobody@example.com\n"
            assert "revoked 0 sign-in session(s)" in run("revoke", "--email", "nobody@example.com")
        finally:
            await gw.close()
