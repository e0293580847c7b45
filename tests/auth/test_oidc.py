"""The OIDC relying party against real IdPs: the scripted one in
``tests/scripted_idp.py`` for everything an honest IdP never does, and the
``oidc-provider-mock`` process for the ordinary sign-in and refresh paths."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import aiohttp
import pytest

from gateway.auth.identity import Identity, IdentityRejected
from gateway.auth.oidc import (
    JWKS_REFETCH_COOLDOWN_S,
    IdpRejected,
    IdpUnavailable,
    IdTokenInvalid,
    OidcClient,
    TokenSet,
)
from gateway.config.schema import Oidc
from tests.harness import self_signed_cert
from tests.scripted_idp import DROP, ScriptedIdp, TokenReply

REDIRECT = "https://gw.example.com/oauth/callback"
ALICE = Identity(sub="alice", email="alice@example.com", name="Alice Example", groups=("eng",))


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def idp() -> AsyncIterator[ScriptedIdp]:
    async with ScriptedIdp() as server:
        yield server


@pytest.fixture
def logs() -> list[tuple[str, str]]:
    return []


@pytest.fixture
async def make_client(logs):
    started: list[OidcClient] = []

    async def factory(
        issuer_idp: ScriptedIdp | None = None,
        *,
        allow_loopback: bool = True,
        clock: Any = time.time,
        call_timeout_s: float = 15.0,
        **overrides: Any,
    ) -> OidcClient:
        fields: dict[str, Any] = {}
        if isinstance(clock, Clock) and issuer_idp is not None:
            issuer_idp.clock = clock  # one timeline for both sides: iat never lands in the future
        if issuer_idp is not None:
            fields = {
                "issuer": issuer_idp.issuer,
                "client_id": issuer_idp.client_id,
                "client_secret": issuer_idp.client_secret,
            }
        fields.update(overrides)
        client = OidcClient(
            Oidc(**fields),
            allow_loopback=allow_loopback,
            clock=clock,
            log=lambda level, msg: logs.append((level, msg)),
            call_timeout_s=call_timeout_s,
        )
        await client.start()
        started.append(client)
        return client

    yield factory
    for client in started:
        await client.close()


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def verify(client: OidcClient, token: str, nonce: str | None = "n-1") -> Identity:
    return await client.identity_from_tokens(TokenSet("access", None, token), nonce=nonce)


async def rejected(client: OidcClient, token: str, nonce: str | None = "n-1") -> str:
    with pytest.raises(IdTokenInvalid) as info:
        await verify(client, token, nonce)
    return info.value.reason


async def sign_in(client: OidcClient, idp_url_session: aiohttp.ClientSession | None = None) -> TokenSet:
    """Authorize at the scripted IdP (it redirects straight back) and exchange the code."""
    await client.discover()
    verifier, challenge = pkce_pair()
    url = client.authorization_url(redirect_uri=REDIRECT, state="st-1", nonce="n-1", code_challenge=challenge)
    async with aiohttp.ClientSession() as http, http.get(url, allow_redirects=False) as resp:
        location = resp.headers["Location"]
    back = dict(parse_qsl(urlsplit(location).query))
    assert back["state"] == "st-1"
    return await client.exchange_code(back["code"], redirect_uri=REDIRECT, code_verifier=verifier)


# ====================================================================== id_token matrix


async def test_valid_rs256_id_token_is_accepted(idp, make_client):
    client = await make_client(idp)
    assert await verify(client, idp.id_token(nonce="n-1")) == ALICE


async def test_es256_id_token_accepted_when_configured(idp, make_client):
    client = await make_client(idp, id_token_signed_response_alg="ES256")
    assert await verify(client, idp.id_token(nonce="n-1", alg="ES256")) == ALICE


async def test_alg_none_is_rejected(idp, make_client):
    client = await make_client(idp)
    assert await rejected(client, idp.id_token(nonce="n-1", alg="none")) == "algorithm not allowed"


async def test_hs256_keyed_with_the_rsa_public_key_is_rejected(idp, make_client):
    client = await make_client(idp)
    forged = idp.id_token(nonce="n-1", alg="HS256", kid="rsa-1")
    assert await rejected(client, forged) == "algorithm not allowed"


async def test_hmac_algorithm_is_refused_even_when_configured(idp, make_client):
    client = await make_client(idp, id_token_signed_response_alg="HS256")
    assert await rejected(client, idp.id_token(nonce="n-1", alg="HS256")) == "algorithm not allowed"


async def test_es256_token_refused_when_rs256_is_configured(idp, make_client):
    client = await make_client(idp)
    assert await rejected(client, idp.id_token(nonce="n-1", alg="ES256")) == "algorithm not allowed"


async def test_tampered_payload_is_a_bad_signature(idp, make_client):
    client = await make_client(idp)
    header, _, signature = idp.id_token(nonce="n-1").split(".")
    evil = idp.claims_for("mallory", nonce="n-1")
    payload = base64.urlsafe_b64encode(json.dumps(evil).encode()).rstrip(b"=").decode()
    assert await rejected(client, f"{header}.{payload}.{signature}") == "bad signature"


async def test_unpublished_key_claiming_a_published_kid_is_a_bad_signature(idp, make_client):
    client = await make_client(idp)
    impostor = idp.new_key(kid="rsa-1")
    assert await rejected(client, idp.id_token(nonce="n-1", key=impostor)) == "bad signature"


async def test_wrong_issuer_is_rejected(idp, make_client):
    client = await make_client(idp)
    assert await rejected(client, idp.id_token(nonce="n-1", iss="https://evil.example")) == "wrong issuer"


async def test_wrong_audience_is_rejected(idp, make_client):
    client = await make_client(idp)
    assert await rejected(client, idp.id_token(nonce="n-1", aud="someone-else")) == "wrong audience"


async def test_wrong_azp_is_rejected(idp, make_client):
    client = await make_client(idp)
    assert await rejected(client, idp.id_token(nonce="n-1", azp="other-app")) == "wrong azp"


async def test_azp_listed_in_additional_authorized_parties_is_accepted(idp, make_client):
    client = await make_client(idp, additional_authorized_parties=("cli-app",))
    token = idp.id_token(nonce="n-1", aud=[idp.client_id, "cli-app"], azp="cli-app")
    assert await verify(client, token) == ALICE


async def test_several_audiences_without_azp_are_rejected(idp, make_client):
    client = await make_client(idp)
    assert await rejected(client, idp.id_token(nonce="n-1", aud=[idp.client_id, "x"])) == "wrong azp"


async def test_nonce_mismatch_is_rejected(idp, make_client):
    client = await make_client(idp)
    assert await rejected(client, idp.id_token(nonce="other")) == "nonce mismatch"


async def test_missing_nonce_is_rejected_when_one_was_sent(idp, make_client):
    client = await make_client(idp)
    assert await rejected(client, idp.id_token()) == "nonce mismatch"


async def test_expired_id_token_is_rejected(idp, make_client):
    clock = Clock()
    client = await make_client(idp, clock=clock)
    token = idp.id_token(nonce="n-1", iat=int(clock.now) - 600, exp=int(clock.now) - 10)
    assert await rejected(client, token) == "expired"


async def test_expiry_within_clock_skew_is_accepted(idp, make_client):
    clock = Clock()
    client = await make_client(idp, clock=clock, clock_skew_seconds=30)
    token = idp.id_token(nonce="n-1", iat=int(clock.now) - 600, exp=int(clock.now) - 10)
    assert await verify(client, token) == ALICE


async def test_id_token_issued_in_the_future_is_rejected(idp, make_client):
    clock = Clock()
    client = await make_client(idp, clock=clock)
    token = idp.id_token(nonce="n-1", iat=int(clock.now) + 120, exp=int(clock.now) + 900)
    assert await rejected(client, token) == "issued in the future"


async def test_future_iat_within_clock_skew_is_accepted(idp, make_client):
    clock = Clock()
    client = await make_client(idp, clock=clock, clock_skew_seconds=300)
    token = idp.id_token(nonce="n-1", iat=int(clock.now) + 120, exp=int(clock.now) + 900)
    assert await verify(client, token) == ALICE


async def test_missing_exp_is_malformed(idp, make_client):
    client = await make_client(idp)
    assert await rejected(client, idp.id_token(nonce="n-1", exp=DROP)) == "malformed token"


async def test_garbage_is_malformed(idp, make_client):
    client = await make_client(idp)
    assert await rejected(client, "not-a-jwt") == "malformed token"
    assert await rejected(client, "e30.e30.") == "algorithm not allowed"  # {} header: no alg


async def test_missing_id_token_is_rejected(idp, make_client):
    client = await make_client(idp)
    with pytest.raises(IdTokenInvalid, match="missing id_token"):
        await client.identity_from_tokens(TokenSet("access", "refresh", None), nonce="n-1")


async def test_single_key_without_kid_is_used(idp, make_client):
    idp.published = [idp.rsa_key]
    client = await make_client(idp)
    assert await verify(client, idp.id_token(nonce="n-1", kid=DROP)) == ALICE


async def test_rotated_key_is_fetched_once_and_accepted(idp, make_client):
    clock = Clock()
    client = await make_client(idp, clock=clock)
    assert await verify(client, idp.id_token(nonce="n-1")) == ALICE
    assert len(idp.requests_to("/jwks")) == 1
    rotated = idp.new_key(kid="rsa-2")
    idp.published = [rotated, idp.rsa_key]
    assert await verify(client, idp.id_token(nonce="n-1", key=rotated)) == ALICE
    assert len(idp.requests_to("/jwks")) == 2
    # Cached from now on.
    assert await verify(client, idp.id_token(nonce="n-1", key=rotated)) == ALICE
    assert len(idp.requests_to("/jwks")) == 2


async def test_first_jwks_lacks_the_kid_and_the_refetch_has_it(idp, make_client):
    rotated = idp.new_key(kid="rsa-2")
    idp.script_jwks([idp.rsa_key])  # the first fetch is stale (a CDN, say)
    idp.published = [idp.rsa_key, rotated]
    client = await make_client(idp)
    assert await verify(client, idp.id_token(nonce="n-1", key=rotated)) == ALICE
    assert len(idp.requests_to("/jwks")) == 2


async def test_unknown_kid_without_rotation_is_rejected_without_refetch_loops(idp, make_client):
    clock = Clock()
    client = await make_client(idp, clock=clock)
    ghost = idp.new_key(kid="ghost")
    assert await rejected(client, idp.id_token(nonce="n-1", key=ghost)) == "unknown key"
    assert len(idp.requests_to("/jwks")) == 2  # the first load, and one refetch
    for _ in range(5):
        assert await rejected(client, idp.id_token(nonce="n-1", key=ghost)) == "unknown key"
    assert len(idp.requests_to("/jwks")) == 2  # the cooldown holds
    clock.now += JWKS_REFETCH_COOLDOWN_S + 1
    assert await rejected(client, idp.id_token(nonce="n-1", key=ghost)) == "unknown key"
    assert len(idp.requests_to("/jwks")) == 3


async def test_jwks_without_usable_keys_is_unavailable(idp, make_client):
    idp.published = []
    client = await make_client(idp)
    with pytest.raises(IdpUnavailable, match="signing keys"):
        await verify(client, idp.id_token(nonce="n-1"))


# ====================================================================== discovery


async def test_discovery_reads_endpoints_and_origin(idp, make_client):
    client = await make_client(idp)
    assert not client.discovered and client.authorization_endpoint_origin is None
    await client.discover()
    assert client.discovered
    assert client.authorization_endpoint_origin == idp.issuer


async def test_discovery_issuer_mismatch_is_unavailable(idp, make_client):
    idp.discovery_overrides["issuer"] = "https://impostor.example"
    client = await make_client(idp)
    with pytest.raises(IdpUnavailable, match="does not match oidc.issuer"):
        await client.discover()
    assert not client.discovered


async def test_discovery_tolerates_a_trailing_slash_on_the_configured_issuer(idp, make_client):
    client = await make_client(idp, issuer=idp.issuer + "/", client_id=idp.client_id, client_secret="x")
    await client.discover()
    assert client.discovered


async def test_discovery_http_error_is_unavailable(idp, make_client):
    idp.discovery_status = 500
    client = await make_client(idp)
    with pytest.raises(IdpUnavailable, match="HTTP 500"):
        await client.discover()


async def test_discovery_redirect_is_not_followed(idp, make_client):
    idp.discovery_status = 302
    client = await make_client(idp)
    with pytest.raises(IdpUnavailable, match="redirect"):
        await client.discover()


async def test_discovery_missing_jwks_uri_is_unavailable(idp, make_client):
    idp.discovery_overrides["jwks_uri"] = DROP
    client = await make_client(idp)
    with pytest.raises(IdpUnavailable, match="jwks_uri is missing"):
        await client.discover()


async def test_discovery_oversized_document_is_unavailable(idp, make_client):
    idp.discovery_overrides["padding"] = "x" * (300 * 1024)
    client = await make_client(idp)
    with pytest.raises(IdpUnavailable, match="larger than"):
        await client.discover()


async def test_discovery_endpoint_at_metadata_address_is_refused(idp, make_client):
    idp.discovery_overrides["jwks_uri"] = "http://169.254.169.254/latest/meta-data/"
    client = await make_client(idp)
    with pytest.raises(IdpUnavailable, match="jwks_uri points at a cloud metadata"):
        await client.discover()


async def test_loopback_issuer_refused_without_allow_loopback(idp, make_client):
    client = await make_client(idp, allow_loopback=False)
    with pytest.raises(IdpUnavailable, match="loopback"):
        await client.discover()
    assert idp.requests == []


async def test_discovery_connection_refused_is_unavailable(make_client):
    port = free_port()
    client = await make_client(issuer=f"http://127.0.0.1:{port}", client_id="c", client_secret="s")
    with pytest.raises(IdpUnavailable, match="cannot connect"):
        await client.discover()


async def test_discovery_timeout_is_unavailable(idp, make_client):
    idp.delays["/.well-known/openid-configuration"] = 2.0
    client = await make_client(idp, call_timeout_s=0.3)
    with pytest.raises(IdpUnavailable, match="no answer within"):
        await client.discover()


async def test_discovery_url_overrides_the_derived_location(idp, make_client):
    # A proxy in front of the IdP: the issuer names the real host, discovery is fetched elsewhere.
    idp.discovery_overrides["issuer"] = "https://login.example.com"
    client = await make_client(
        issuer="https://login.example.com",
        client_id=idp.client_id,
        client_secret=idp.client_secret,
        discovery_url=f"{idp.issuer}/.well-known/openid-configuration",
    )
    await client.discover()
    token = idp.id_token(nonce="n-1", iss="https://login.example.com")
    assert await verify(client, token) == ALICE


async def test_google_issuer_without_scheme_is_accepted(idp, make_client):
    google = "https://accounts.google.com"
    idp.discovery_overrides["issuer"] = google
    client = await make_client(
        issuer=google,
        client_id=idp.client_id,
        client_secret=idp.client_secret,
        discovery_url=f"{idp.issuer}/.well-known/openid-configuration",
    )
    assert await verify(client, idp.id_token(nonce="n-1", iss="accounts.google.com")) == ALICE
    assert await rejected(client, idp.id_token(nonce="n-1", iss="google.com")) == "wrong issuer"


async def test_discovery_is_lazy_and_retried_after_a_failure(idp, make_client):
    idp.discovery_status = 503
    client = await make_client(idp)
    with pytest.raises(IdpUnavailable):
        await verify(client, idp.id_token(nonce="n-1"))
    idp.discovery_status = 200
    assert await verify(client, idp.id_token(nonce="n-1")) == ALICE


async def test_custom_ca_replaces_the_trust_store(make_client, tmp_path):
    cert_pem, key_pem = self_signed_cert("127.0.0.1")
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "k.pem").write_bytes(key_pem)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    async with ScriptedIdp(ssl_context=server_ctx) as tls_idp:
        untrusting = await make_client(tls_idp)
        with pytest.raises(IdpUnavailable):
            await untrusting.discover()
        trusting = await make_client(tls_idp, ca_cert_pem=cert_pem.decode())
        await trusting.discover()
        assert trusting.authorization_endpoint_origin == tls_idp.issuer


# ====================================================================== authorization URL


async def test_authorization_url_carries_every_managed_parameter_in_order(idp, make_client):
    client = await make_client(idp, extra_auth_params={"access_type": "offline", "prompt": "consent"})
    await client.discover()
    url = client.authorization_url(redirect_uri=REDIRECT, state="s t", nonce="n-1", code_challenge="ch")
    assert url.startswith(f"{idp.issuer}/authorize?")
    pairs = parse_qsl(urlsplit(url).query)
    assert pairs == [
        ("client_id", idp.client_id),
        ("scope", "openid profile email offline_access"),
        ("response_type", "code"),
        ("redirect_uri", REDIRECT),
        ("state", "s t"),
        ("nonce", "n-1"),
        ("code_challenge", "ch"),
        ("code_challenge_method", "S256"),
        ("response_mode", "query"),
        ("access_type", "offline"),
        ("prompt", "consent"),
    ]
    assert "%20" in url and "+" not in url


async def test_authorization_url_without_pkce(idp, make_client):
    client = await make_client(idp, use_pkce=False, scopes=("openid", "email"))
    await client.discover()
    query = parse_qs(
        urlsplit(
            client.authorization_url(redirect_uri=REDIRECT, state="s", nonce="n", code_challenge=None)
        ).query
    )
    assert "code_challenge" not in query and "code_challenge_method" not in query
    assert query["scope"] == ["openid email"]


async def test_extra_auth_params_cannot_override_managed_ones(idp, make_client):
    client = await make_client(idp, extra_auth_params={"state": "evil", "domain_hint": "example.com"})
    await client.discover()
    query = parse_qs(
        urlsplit(
            client.authorization_url(redirect_uri=REDIRECT, state="s", nonce="n", code_challenge=None)
        ).query
    )
    assert query["state"] == ["s"] and query["domain_hint"] == ["example.com"]


async def test_authorization_endpoint_query_is_kept(idp, make_client):
    idp.discovery_overrides["authorization_endpoint"] = f"{idp.issuer}/authorize?p=B2C_1_signin"
    client = await make_client(idp)
    await client.discover()
    url = client.authorization_url(redirect_uri=REDIRECT, state="s", nonce="n", code_challenge=None)
    assert parse_qsl(urlsplit(url).query)[:2] == [("p", "B2C_1_signin"), ("client_id", idp.client_id)]


async def test_authorization_url_before_discovery_is_unavailable(idp, make_client):
    client = await make_client(idp)
    with pytest.raises(IdpUnavailable):
        client.authorization_url(redirect_uri=REDIRECT, state="s", nonce="n", code_challenge=None)


# ====================================================================== code exchange and client auth


async def test_code_exchange_with_pkce_and_basic_auth(idp, make_client):
    client = await make_client(idp)
    tokens = await sign_in(client)
    assert tokens.access_token and tokens.refresh_token and tokens.id_token
    assert await client.identity_from_tokens(tokens, nonce="n-1") == ALICE
    [call] = idp.requests_to("/token")
    assert call.auth_method == "client_secret_basic"
    assert call.form["grant_type"] == "authorization_code" and call.form["redirect_uri"] == REDIRECT
    assert len(call.form["code_verifier"]) >= 43
    assert "client_secret" not in call.form


async def test_client_secret_post_when_configured(idp, make_client):
    client = await make_client(idp, token_endpoint_auth_method="client_secret_post")
    await sign_in(client)
    [call] = idp.requests_to("/token")
    assert call.auth_method == "client_secret_post" and "Authorization" not in call.headers
    assert call.form["client_id"] == idp.client_id


async def test_basic_auth_form_encodes_id_and_secret(make_client):
    async with ScriptedIdp(client_id="app id", client_secret="p+a:s s/%") as odd:
        client = await make_client(odd, token_endpoint_auth_method="client_secret_basic")
        assert (await sign_in(client)).id_token
        [call] = odd.requests_to("/token")
        raw = base64.b64decode(call.headers["Authorization"][6:]).decode()
        assert raw == "app%20id:p%2Ba%3As%20s%2F%25"


async def test_auto_auth_falls_back_to_post_once_and_remembers(idp, make_client):
    idp.accept_auth = {"client_secret_post"}
    idp.discovery_overrides["token_endpoint_auth_methods_supported"] = DROP
    client = await make_client(idp)
    await sign_in(client)
    assert [c.auth_method for c in idp.requests_to("/token")] == ["client_secret_basic", "client_secret_post"]
    await sign_in(client)
    assert [c.auth_method for c in idp.requests_to("/token")][2:] == ["client_secret_post"]


async def test_auto_auth_follows_discovery_when_only_post_is_listed(idp, make_client):
    idp.accept_auth = {"client_secret_post"}
    client = await make_client(idp)
    await sign_in(client)
    assert [c.auth_method for c in idp.requests_to("/token")] == ["client_secret_post"]


async def test_wrong_client_secret_is_unavailable_after_one_retry(idp, make_client, logs):
    # A gateway configuration problem, not the person's: sessions must survive it.
    client = await make_client(
        idp, issuer=idp.issuer, client_id=idp.client_id, client_secret="wrong-secret-xyz"
    )
    with pytest.raises(IdpUnavailable, match="invalid_client; check oidc.client_id") as info:
        await sign_in(client)
    assert len(idp.requests_to("/token")) == 2
    assert "wrong-secret-xyz" not in str(info.value) and not any("wrong-secret-xyz" in m for _, m in logs)


async def test_wrong_pkce_verifier_is_rejected(idp, make_client):
    client = await make_client(idp)
    await client.discover()
    _, challenge = pkce_pair()
    url = client.authorization_url(redirect_uri=REDIRECT, state="s", nonce="n", code_challenge=challenge)
    async with aiohttp.ClientSession() as http, http.get(url, allow_redirects=False) as resp:
        code = parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]
    with pytest.raises(IdpRejected) as info:
        await client.exchange_code(code, redirect_uri=REDIRECT, code_verifier="not-the-verifier" * 3)
    assert info.value.error == "invalid_grant" and code not in str(info.value)


async def test_replayed_code_is_rejected(idp, make_client):
    client = await make_client(idp)
    await sign_in(client)
    code = idp.requests_to("/token")[0].form["code"]
    with pytest.raises(IdpRejected):
        await client.exchange_code(code, redirect_uri=REDIRECT, code_verifier=None)


async def test_authorize_form_mode_posts_back_then_redirects(idp):
    idp.authorize_mode = "form"
    url = f"{idp.issuer}/authorize?client_id={idp.client_id}&redirect_uri={REDIRECT}&state=s"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as page:
            assert '<form method="post"' in await page.text()
        async with http.post(url, data={"sub": "alice"}, allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"].startswith(REDIRECT + "?code=")


# ====================================================================== token endpoint failures


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (TokenReply(status=400, json={"error": "invalid_grant"}), IdpRejected),
        (TokenReply(status=401, json={"error": "invalid_client"}), IdpUnavailable),
        (TokenReply(status=400, json={"error": "invalid_scope"}), IdpUnavailable),
        (TokenReply(status=400, json={}), IdpRejected),
        (TokenReply(status=400, json={"error": "temporarily_unavailable"}), IdpUnavailable),
        (TokenReply(status=500), IdpUnavailable),
        (TokenReply(status=503, json={"error": "server_error"}), IdpUnavailable),
        (TokenReply(status=429, json={"error": "slow_down"}), IdpUnavailable),
        (TokenReply(status=404), IdpUnavailable),
        (TokenReply(status=200, raw=b"<html>oops</html>"), IdpUnavailable),
        (TokenReply(status=200, json={"access_token": 12}), IdpUnavailable),
        (TokenReply(status=200, raw=b'{"access_token":"' + b"a" * 300_000 + b'"}'), IdpUnavailable),
    ],
    ids=[
        "invalid_grant",
        "invalid_client",
        "invalid_scope",
        "400-without-error",
        "temporarily_unavailable",
        "500",
        "503",
        "429",
        "404",
        "not-json",
        "wrong-types",
        "oversized",
    ],
)
async def test_token_endpoint_answers_map_to_rejected_or_unavailable(idp, make_client, reply, expected):
    client = await make_client(idp, token_endpoint_auth_method="client_secret_basic")
    idp.script_token(reply)
    with pytest.raises(expected):
        await client.recheck("some-refresh-token")


async def test_token_endpoint_connection_refused_is_unavailable(idp, make_client):
    idp.discovery_overrides["token_endpoint"] = f"http://127.0.0.1:{free_port()}/token"
    client = await make_client(idp)
    with pytest.raises(IdpUnavailable, match="cannot connect"):
        await client.recheck("rt")


async def test_slow_token_endpoint_is_unavailable(idp, make_client):
    client = await make_client(idp, call_timeout_s=0.3)
    await client.discover()
    idp.script_token(TokenReply(delay=2.0))
    with pytest.raises(IdpUnavailable, match="no answer within"):
        await client.recheck("rt")


# ====================================================================== refresh re-check


async def test_recheck_without_id_token_uses_userinfo(idp, make_client):
    client = await make_client(idp)
    tokens = await sign_in(client)
    assert tokens.refresh_token
    identity, rotated = await client.recheck(tokens.refresh_token)
    assert identity == ALICE and rotated is None
    refresh = idp.requests_to("/token")[-1]
    assert refresh.form["grant_type"] == "refresh_token" and "scope" not in refresh.form
    assert len(idp.requests_to("/userinfo")) == 1


async def test_scope_on_refresh_sends_scope_and_uses_the_id_token(idp, make_client):
    client = await make_client(idp, scope_on_refresh=True)
    tokens = await sign_in(client)
    assert tokens.refresh_token
    identity, _ = await client.recheck(tokens.refresh_token)
    assert identity == ALICE
    assert idp.requests_to("/token")[-1].form["scope"] == "openid profile email offline_access"
    assert idp.requests_to("/userinfo") == []


async def test_recheck_returns_the_rotated_refresh_token(idp, make_client):
    idp.rotate_refresh_tokens = True
    client = await make_client(idp)
    tokens = await sign_in(client)
    assert tokens.refresh_token
    _, rotated = await client.recheck(tokens.refresh_token)
    assert rotated and rotated != tokens.refresh_token
    with pytest.raises(IdpRejected):
        await client.recheck(tokens.refresh_token)  # the old one is spent


async def test_recheck_after_deprovisioning_is_rejected(idp, make_client):
    client = await make_client(idp)
    tokens = await sign_in(client)
    assert tokens.refresh_token
    idp.revoke("alice")
    with pytest.raises(IdpRejected):
        await client.recheck(tokens.refresh_token)


async def test_recheck_applies_the_rules_again(idp, make_client):
    client = await make_client(idp, allowed_groups=("eng",))
    tokens = await sign_in(client)
    assert tokens.refresh_token
    idp.users["alice"]["groups"] = ["sales"]
    with pytest.raises(IdentityRejected, match="not in an allowed group"):
        await client.recheck(tokens.refresh_token)


async def test_recheck_with_idp_down_is_unavailable(idp, make_client):
    client = await make_client(idp)
    tokens = await sign_in(client)
    assert tokens.refresh_token
    await idp.close()
    with pytest.raises(IdpUnavailable):
        await client.recheck(tokens.refresh_token)


async def test_recheck_userinfo_refusal_is_unavailable_and_names_the_fix(idp, make_client):
    client = await make_client(idp)
    tokens = await sign_in(client)
    assert tokens.refresh_token
    idp.userinfo_status = 401
    with pytest.raises(IdpUnavailable, match="scope_on_refresh"):
        await client.recheck(tokens.refresh_token)


async def test_recheck_with_a_bad_refreshed_id_token_is_rejected(idp, make_client):
    client = await make_client(idp)
    await client.discover()
    idp.script_token(TokenReply(json={"access_token": "a", "id_token": idp.id_token(aud="someone-else")}))
    with pytest.raises(IdpRejected, match="wrong audience"):
        await client.recheck("rt")


async def test_recheck_ignores_nonce_on_refreshed_id_token(idp, make_client):
    client = await make_client(idp)
    idp.script_token(TokenReply(json={"access_token": "a", "id_token": idp.id_token(nonce="from-sign-in")}))
    identity, rotated = await client.recheck("rt")
    assert identity == ALICE and rotated is None


# ====================================================================== userinfo fallback at sign-in


async def test_userinfo_fallback_fills_missing_groups(idp, make_client):
    client = await make_client(idp, userinfo_fallback=True)
    idp.users["alice"]["groups"] = ["eng", "ops"]
    access = (await sign_in(client)).access_token
    token = idp.id_token(nonce="n-1", groups=DROP)
    identity = await client.identity_from_tokens(TokenSet(access, None, token), nonce="n-1")
    assert identity.groups == ("eng", "ops")


async def test_without_userinfo_fallback_missing_groups_stay_missing(idp, make_client):
    client = await make_client(idp)
    identity = await verify(client, idp.id_token(nonce="n-1", groups=DROP))
    assert identity.groups == () and idp.requests_to("/userinfo") == []


async def test_entra_overage_logs_the_fix(idp, make_client, logs):
    client = await make_client(idp)
    token = idp.id_token(nonce="n-1", groups=DROP, _claim_names={"groups": "src1"})
    assert (await verify(client, token)).groups == ()
    assert any(level == "warn" and "overage" in msg for level, msg in logs)


# ====================================================================== oidc-provider-mock (a real IdP process)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mock_idp() -> Iterator[str]:
    exe = Path(sys.executable).with_name("oidc-provider-mock")
    port = free_port()
    users = {"sub": "alice", "email": "alice@example.com", "email_verified": True, "groups": ["eng"]}
    proc = subprocess.Popen(
        [str(exe), "--port", str(port), "--user-claims", json.dumps(users)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    issuer = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("oidc-provider-mock did not start") from None
                time.sleep(0.05)
        yield issuer
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


async def mock_sign_in(client: OidcClient, sub: str) -> TokenSet:
    await client.discover()
    verifier, challenge = pkce_pair()
    url = client.authorization_url(redirect_uri=REDIRECT, state="st", nonce="nn", code_challenge=challenge)
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as page:
            assert page.status == 200 and 'name="sub"' in await page.text()
        # The form has no action: it posts back to the same authorize URL.
        async with http.post(url, data={"sub": sub}, allow_redirects=False) as resp:
            assert resp.status == 302, await resp.text()
            back = parse_qs(urlsplit(resp.headers["Location"]).query)
    assert back["state"] == ["st"]
    tokens = await client.exchange_code(back["code"][0], redirect_uri=REDIRECT, code_verifier=verifier)
    return tokens


async def put_user(issuer: str, sub: str, claims: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as http, http.put(f"{issuer}/users/{sub}", json=claims) as resp:
        assert resp.status == 204


async def test_mock_idp_sign_in_and_refresh(mock_idp, make_client):
    client = await make_client(issuer=mock_idp, client_id="gatehouse", client_secret="anything")
    tokens = await mock_sign_in(client, "alice")
    identity = await client.identity_from_tokens(tokens, nonce="nn")
    assert identity == Identity(sub="alice", email="alice@example.com", name=None, groups=("eng",))
    assert tokens.refresh_token
    again, _ = await client.recheck(tokens.refresh_token)
    assert again.sub == "alice" and again.email == "alice@example.com" and again.groups == ("eng",)


async def test_mock_idp_revoked_tokens_end_the_next_refresh(mock_idp, make_client):
    await put_user(mock_idp, "bob", {"email": "bob@example.com", "email_verified": True})
    client = await make_client(issuer=mock_idp, client_id="gatehouse", client_secret="anything")
    tokens = await mock_sign_in(client, "bob")
    assert (await client.identity_from_tokens(tokens, nonce="nn")).email == "bob@example.com"
    assert tokens.refresh_token
    async with aiohttp.ClientSession() as http, http.post(f"{mock_idp}/users/bob/revoke-tokens") as resp:
        assert resp.status == 204
    with pytest.raises(IdpRejected):
        await client.recheck(tokens.refresh_token)


async def test_mock_idp_unverified_email_is_rejected_on_next_refresh(mock_idp, make_client):
    await put_user(mock_idp, "carol", {"email": "carol@example.com", "email_verified": True})
    client = await make_client(issuer=mock_idp, client_id="gatehouse", client_secret="anything")
    tokens = await mock_sign_in(client, "carol")
    await client.identity_from_tokens(tokens, nonce="nn")
    assert tokens.refresh_token
    await put_user(mock_idp, "carol", {"email": "carol@example.com", "email_verified": False})
    with pytest.raises(IdentityRejected, match="email not verified"):
        await client.recheck(tokens.refresh_token)


async def test_mock_idp_domain_rule(mock_idp, make_client):
    await put_user(mock_idp, "dave", {"email": "dave@elsewhere.test", "email_verified": True})
    client = await make_client(
        issuer=mock_idp,
        client_id="gatehouse",
        client_secret="anything",
        allowed_email_domains=("example.com",),
    )
    tokens = await mock_sign_in(client, "dave")
    with pytest.raises(IdentityRejected, match="email domain not allowed"):
        await client.identity_from_tokens(tokens, nonce="nn")
