"""private_key_jwt end to end: the gateway authenticates to the IdP's token
endpoint with a signed client assertion instead of a client secret.

The scripted IdP (tests/scripted_idp.py) plays Microsoft Entra: it finds the
registered certificate by the assertion's x5t thumbprint, verifies the
signature, iss/sub/aud/exp, and refuses a jti it has seen before. The key and
certificate are made here, the way an operator makes them, and handed to the
gateway as files through ``${file:...}``. (oidc-provider-mock, the other test
IdP, has no private_key_jwt.)
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest

from gateway.auth.oidc import IdpUnavailable, OidcClient
from gateway.config.schema import ClientAssertion, ClientAssertionGatehouse, Oidc
from tests.auth.test_signin import ALICE, refresh, sign_in
from tests.client_certs import ClientCert, certificate_pem, client_cert, key_pem, new_private_key
from tests.harness import BASE_CONFIG, Clock, make_config, start_gateway, upstream_block
from tests.scripted_idp import DROP, ScriptedIdp

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLIENT_ID = "gatehouse-tests"
REDIRECT = "https://gw.example.com/oauth/callback"


def claims_of(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return json.loads(base64.urlsafe_b64decode(header + "==")), json.loads(base64.urlsafe_b64decode(payload + "=="))


def entra_idp(cert: ClientCert | None, **kw: Any) -> ScriptedIdp:
    """An IdP that takes only private_key_jwt, with ``cert`` registered for our client."""
    return ScriptedIdp(
        client_id=CLIENT_ID,
        accept_auth={"private_key_jwt"},
        client_certificates=[cert.cert_pem.encode()] if cert else [],
        users={"alice": dict(ALICE)},
        **kw,
    )


def assertion_cfg(idp: ScriptedIdp, cert: ClientCert, key_id: str | None = None) -> Oidc:
    return Oidc(
        issuer=idp.issuer,
        client_id=CLIENT_ID,
        token_endpoint_auth_method="private_key_jwt",
        client_assertion=ClientAssertion(
            private_key_pem=cert.key_pem,
            certificate_pem=cert.cert_pem,
            gatehouse=ClientAssertionGatehouse(key_id=key_id),
        ),
    )


@pytest.fixture
def logs() -> list[tuple[str, str]]:
    return []


@pytest.fixture
async def make_client(logs):
    started: list[OidcClient] = []

    async def factory(cfg: Oidc, clock: Any = time.time) -> OidcClient:
        client = OidcClient(cfg, allow_loopback=True, clock=clock, log=lambda level, msg: logs.append((level, msg)))
        await client.start()
        started.append(client)
        return client

    yield factory
    for client in started:
        await client.close()


async def authorize(client: OidcClient) -> str:
    """The code the scripted IdP hands back at once."""
    await client.discover()
    url = client.authorization_url(redirect_uri=REDIRECT, state="st", nonce="n-1", code_challenge=None)
    async with aiohttp.ClientSession() as http, http.get(url, allow_redirects=False) as resp:
        return dict(parse_qsl(urlsplit(resp.headers["Location"]).query))["code"]


# ====================================================================== the OIDC client against the IdP


async def test_code_exchange_and_refresh_each_carry_a_fresh_assertion(make_client):
    cert = client_cert("RSA")
    async with entra_idp(cert) as idp:
        client = await make_client(assertion_cfg(idp, cert))
        tokens = await client.exchange_code(await authorize(client), redirect_uri=REDIRECT, code_verifier=None)
        identity, _ = await client.recheck(tokens.refresh_token)
        assert identity.email == "alice@example.com"
        calls = idp.requests_to("/token")
        assert [c.auth_method for c in calls] == ["private_key_jwt", "private_key_jwt"]
        jtis = set()
        for call in calls:
            assert "Authorization" not in call.headers and "client_secret" not in call.form
            assert call.form["client_id"] == CLIENT_ID
            assert call.form["client_assertion_type"] == ASSERTION_TYPE
            header, claims = claims_of(call.form["client_assertion"])
            assert header["alg"] == "RS256" and set(header) == {"alg", "typ", "x5t", "x5t#S256"}
            assert claims["iss"] == claims["sub"] == CLIENT_ID
            assert claims["aud"] == f"{idp.issuer}/token"
            assert claims["exp"] - claims["iat"] == 300
            jtis.add(claims["jti"])
        assert len(jtis) == 2
        assert idp.assertion_rejections == []


async def test_the_assertion_times_come_from_the_injected_clock(make_client):
    cert = client_cert("EC")
    clock = Clock()
    async with entra_idp(cert, clock=clock) as idp:
        clock.advance(-3600)  # both sides an hour behind the wall clock
        client = await make_client(assertion_cfg(idp, cert), clock=clock)
        await client.exchange_code(await authorize(client), redirect_uri=REDIRECT, code_verifier=None)
        header, claims = claims_of(idp.requests_to("/token")[-1].form["client_assertion"])
        assert header["alg"] == "ES256"
        assert claims["iat"] == int(clock.now) and claims["exp"] == int(clock.now) + 300


async def test_a_registered_key_id_serves_idps_that_match_on_kid(make_client):
    cert = client_cert("RSA")
    from joserfc.jwk import RSAKey

    async with entra_idp(None) as idp:
        idp.client_keys["okta-key-1"] = RSAKey.import_key(cert.key.public_key())
        client = await make_client(assertion_cfg(idp, cert, key_id="okta-key-1"))
        tokens = await client.exchange_code(await authorize(client), redirect_uri=REDIRECT, code_verifier=None)
        assert tokens.id_token and idp.assertion_rejections == []
        assert claims_of(idp.requests_to("/token")[-1].form["client_assertion"])[0]["kid"] == "okta-key-1"


async def test_a_certificate_the_idp_does_not_know_is_invalid_client_pointing_at_client_assertion(make_client):
    registered, ours = client_cert("RSA"), client_cert("RSA")
    async with entra_idp(registered) as idp:
        client = await make_client(assertion_cfg(idp, ours))
        with pytest.raises(IdpUnavailable, match=r"invalid_client; check oidc.client_id / client_assertion"):
            await client.exchange_code(await authorize(client), redirect_uri=REDIRECT, code_verifier=None)
        assert idp.assertion_rejections == ["unknown key"]


async def test_a_replayed_assertion_is_refused_by_the_idp(make_client):
    cert = client_cert("EC")
    async with entra_idp(cert) as idp:
        client = await make_client(assertion_cfg(idp, cert))
        tokens = await client.exchange_code(await authorize(client), redirect_uri=REDIRECT, code_verifier=None)
        sent = idp.requests_to("/token")[-1].form
        # Someone who captured the call replays its assertion with a grant of their own.
        replay = {k: sent[k] for k in ("client_id", "client_assertion_type", "client_assertion")}
        replay.update(grant_type="refresh_token", refresh_token=tokens.refresh_token)
        async with aiohttp.ClientSession() as http, http.post(f"{idp.issuer}/token", data=replay) as resp:
            assert (resp.status, (await resp.json())["error"]) == (401, "invalid_client")
        assert idp.assertion_rejections == ["replayed jti"]
        await client.recheck(tokens.refresh_token)  # the gateway's own next call signs a new one
        assert idp.assertion_rejections == ["replayed jti"]


async def test_discovery_refuses_an_idp_that_does_not_take_private_key_jwt(make_client, logs):
    cert = client_cert("RSA")
    async with entra_idp(cert) as idp:
        idp.accept_auth = {"client_secret_basic", "client_secret_post"}
        client = await make_client(assertion_cfg(idp, cert))
        with pytest.raises(IdpUnavailable) as info:
            await client.discover()
        message = str(info.value)
        assert "does not accept private_key_jwt" in message
        assert "lists client_secret_basic, client_secret_post" in message
        assert not client.discovered and idp.requests_to("/token") == []
        # An IdP that does not say which methods it takes is given the benefit of the doubt.
        idp.discovery_overrides["token_endpoint_auth_methods_supported"] = DROP
        idp.accept_auth = {"private_key_jwt"}
        await client.discover()
        assert client.discovered


async def test_an_expired_certificate_is_warned_about_at_start(make_client, logs):
    key = new_private_key("RSA")
    cert = ClientCert(key_pem(key), certificate_pem(key, days=-1), key)
    async with entra_idp(cert) as idp:
        await make_client(assertion_cfg(idp, cert))
    assert any(level == "warn" and "certificate has expired" in msg for level, msg in logs)


# ====================================================================== through the gateway


def pkjwt_base(tmp_path: Path, cert: ClientCert) -> str:
    """BASE_CONFIG with the key and certificate, read from files, in place of the secret."""
    (tmp_path / "client.key").write_text(cert.key_pem)
    (tmp_path / "client.crt").write_text(cert.cert_pem)
    assertion = (
        "  token_endpoint_auth_method: private_key_jwt\n"
        "  client_assertion:\n"
        f"    private_key_pem: ${{{{file:{tmp_path}/client.key}}}}\n"
        f"    certificate_pem: ${{{{file:{tmp_path}/client.crt}}}}\n"
    )
    base = BASE_CONFIG.replace("  client_secret: gatehouse-tests-secret\n", assertion)
    assert base != BASE_CONFIG
    return base


@pytest.fixture
async def pkjwt_gateway(tmp_path, pg_cluster, fake_upstream):
    """``await make(idp, cert)`` → a gateway signing in at ``idp`` with ``cert``."""
    started = []

    async def make(idp: ScriptedIdp, cert: ClientCert):
        db = pg_cluster.create_database("pkjwt_" + uuid.uuid4().hex[:10])
        cfg = make_config(db, [upstream_block(fake_upstream.url)], issuer=idp.issuer, base=pkjwt_base(tmp_path, cert))
        gw = await start_gateway(cfg)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        await gw.close()


def events(err: str, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if f'"{name}"' in line and line.startswith("{")]


async def test_device_sign_in_and_refresh_with_a_certificate(pkjwt_gateway):
    cert = client_cert("RSA")
    async with entra_idp(cert, rotate_refresh_tokens=True) as idp:
        gw = await pkjwt_gateway(idp, cert)
        _, page, status, doc = await sign_in(gw)
        assert page.status == 200 and status == 200, doc
        status, _, renewed = await refresh(gw, doc["refresh_token"])
        assert status == 200, renewed
        calls = idp.requests_to("/token")
        assert [c.form["grant_type"] for c in calls] == ["authorization_code", "refresh_token"]
        assert [c.auth_method for c in calls] == ["private_key_jwt", "private_key_jwt"]
        jtis = {claims_of(c.form["client_assertion"])[1]["jti"] for c in calls}
        assert len(jtis) == 2 and idp.assertion_rejections == []
        async with aiohttp.ClientSession() as s:
            body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 1})
            async with s.post(gw.url + "/v1/messages", data=body, headers={"Authorization": f"Bearer {renewed['access_token']}"}) as r:
                assert r.status == 200


async def test_a_certificate_the_idp_refuses_fails_sign_in_clearly(pkjwt_gateway, capfd):
    registered, ours = client_cert("RSA"), client_cert("RSA")
    async with entra_idp(registered) as idp:
        gw = await pkjwt_gateway(idp, ours)
        capfd.readouterr()
        _, page, status, doc = await sign_in(gw)
        assert page.status == 503 and "Try again later" in page.text
        assert (status, doc["error"]) == (400, "authorization_pending")
        err = capfd.readouterr().err
        assert "invalid_client; check oidc.client_id / client_assertion" in err
        (mint,) = events(err, "session.mint")
        assert mint["result"] == "fail" and mint["err"] == "idp_unavailable"
        assert "invalid_client" in mint["detail"]
        assert idp.assertion_rejections == ["unknown key"]


async def test_a_refresh_the_idp_refuses_keeps_the_session_for_a_retry(pkjwt_gateway, capfd):
    """invalid_client is the gateway's own registration at fault, not the person's grant:
    the CLI is told to retry (temporarily_unavailable), and the same refresh token works
    once the IdP knows the certificate again."""
    cert = client_cert("RSA")
    async with entra_idp(cert) as idp:
        gw = await pkjwt_gateway(idp, cert)
        _, _, status, doc = await sign_in(gw)
        assert status == 200, doc
        idp.client_certificates = [client_cert("EC").cert_pem.encode()]  # the IdP's registration changed
        capfd.readouterr()
        status, _, err_doc = await refresh(gw, doc["refresh_token"])
        assert (status, err_doc["error"]) == (503, "temporarily_unavailable")
        (event,) = events(capfd.readouterr().err, "session.refresh")
        assert event["result"] == "fail" and event["reason"] == "idp_unavailable"
        assert "invalid_client; check oidc.client_id / client_assertion" in event["detail"]
        idp.client_certificates = [cert.cert_pem.encode()]
        status, _, renewed = await refresh(gw, doc["refresh_token"])
        assert status == 200, renewed


async def test_an_idp_without_private_key_jwt_stops_sign_in_at_discovery(pkjwt_gateway, capfd):
    cert = client_cert("RSA")
    async with entra_idp(cert) as idp:
        idp.accept_auth = {"client_secret_basic"}
        gw = await pkjwt_gateway(idp, cert)
        capfd.readouterr()
        _, page, _, _ = await sign_in(gw)
        assert page.status == 503
        assert "does not accept private_key_jwt" in capfd.readouterr().err
        assert idp.requests_to("/token") == []



# ====================================================================== the shipped example

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "examples" / "cag" / "entra-certificate-groups.yaml"


async def test_the_entra_certificate_example_boots_and_signs_in(tmp_path, pg_url, fake_upstream):
    """conf/examples/cag/entra-certificate-groups.yaml under `gatehouse serve`, only its
    addresses moved to loopback: a member of an allowed group signs in with the
    certificate, refreshes, and calls the API."""
    import os

    import yaml

    from tests.harness import JWT_SECRET, free_port
    from tests.system.test_process import spawn, wait_ready

    doc = yaml.safe_load(EXAMPLE.read_text())
    cert = client_cert("RSA")
    member = {**ALICE, "groups": ["33333333-3333-3333-3333-333333333333"]}
    idp = ScriptedIdp(
        client_id=doc["oidc"]["client_id"],
        accept_auth={"private_key_jwt"},
        client_certificates=[cert.cert_pem.encode()],
        users={"alice": member},
    )
    async with idp:
        port = free_port()
        doc["listen"].update(host="127.0.0.1", port=port, public_url=f"http://127.0.0.1:{port}")
        doc["oidc"]["issuer"] = idp.issuer
        doc["upstreams"][0]["base_url"] = fake_upstream.url
        config = tmp_path / "gateway.yaml"
        config.write_text(yaml.safe_dump(doc, sort_keys=False))
        env = {
            **os.environ, "CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1",
            "ENTRA_PRIVATE_KEY_PEM": cert.key_pem, "ENTRA_CERTIFICATE_PEM": cert.cert_pem,
            "GATEWAY_JWT_SECRET": JWT_SECRET, "GATEWAY_POSTGRES_URL": pg_url, "ANTHROPIC_API_KEY": "sk-ant-example",
        }
        proc = spawn("serve", "--config", str(config), env=env)
        try:
            await wait_ready(port, proc, timeout=60)

            class Served:
                url = f"http://127.0.0.1:{port}"

            _, page, status, doc_ = await sign_in(Served)
            assert page.status == 200 and status == 200, (page.text, doc_)
            status, _, renewed = await refresh(Served, doc_["refresh_token"])
            assert status == 200, renewed
            assert [c.auth_method for c in idp.requests_to("/token")] == ["private_key_jwt"] * 2
            assert idp.assertion_rejections == []
            async with aiohttp.ClientSession() as s:
                body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 1})
                headers = {"Authorization": f"Bearer {renewed['access_token']}"}
                async with s.post(Served.url + "/v1/messages", data=body, headers=headers) as r:
                    assert r.status == 200
        finally:
            proc.terminate()
            proc.wait(timeout=30)
