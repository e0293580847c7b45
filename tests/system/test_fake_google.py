"""The fake Google token endpoint, GCE metadata server and Vertex refuse what Google
refuses, seen from plain HTTP clients.

The signer tests trust them: an assertion is only granted when its RS256
signature, issuer, audience, scope and lifetime are right; a metadata request
without ``Metadata-Flavor: Google`` is refused; Vertex serves only its
Anthropic publisher paths, to live tokens.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from protocol_spec.fakes.google import (
    CLOUD_PLATFORM,
    GOOGLE_TOKEN_URI,
    JWT_BEARER,
    FakeGceMetadata,
    FakeGoogleToken,
    FakeVertex,
    ServiceAccount,
)

EMAIL = "gatehouse@lab-proj.iam.gserviceaccount.com"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def google():
    async with FakeGoogleToken(clock=Clock()) as fake:
        yield fake


def assertion(account: ServiceAccount, now: float, **changes: Any) -> str:
    claims: dict[str, Any] = {
        "iss": account.client_email,
        "aud": GOOGLE_TOKEN_URI,
        "scope": f"{CLOUD_PLATFORM} https://www.googleapis.com/auth/userinfo.email",
        "iat": int(now),
        "exp": int(now) + 3600,
    }
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    key = RSAKey.import_key(account.private_key_pem)
    return jwt.encode({"alg": "RS256", "kid": account.private_key_id}, claims, key)


async def grant(fake: FakeGoogleToken, token: str, grant_type: str = JWT_BEARER) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        form = {"grant_type": grant_type, "assertion": token}
        async with http.post(fake.token_uri, data=form) as resp:
            return resp.status, await resp.json()


async def test_a_well_formed_assertion_gets_a_token_with_the_scripted_lifetime(google):
    account = google.new_service_account()
    google.expires_in = 120
    status, body = await grant(google, assertion(account, google.clock()))
    assert status == 200 and body["token_type"] == "Bearer" and body["expires_in"] == 120
    assert google.is_live(body["access_token"]) and google.grants == 1
    google.clock.now += 121
    assert not google.is_live(body["access_token"])


async def test_its_own_token_uri_is_accepted_as_audience_too(google):
    account = google.new_service_account()
    assert (await grant(google, assertion(account, google.clock(), aud=google.token_uri)))[0] == 200


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"aud": "https://example.com/token"}, "audience"),
        ({"scope": "https://www.googleapis.com/auth/userinfo.email"}, "scope"),
        ({"scope": None}, "scope"),
        ({"exp": None}, "iat and exp"),
        ({"exp_offset": 3601}, "short-lived"),  # claims more than an hour
        ({"age": 4000}, "short-lived"),  # expired
        ({"age": -1000}, "short-lived"),  # issued in the future
        ({"iss": "stranger@lab-proj.iam.gserviceaccount.com"}, "unknown issuer"),
    ],
)
async def test_assertions_google_would_refuse_are_refused(google, change, reason):
    account = google.new_service_account()
    now = google.clock() - change.pop("age", 0)
    if "exp_offset" in change:
        change["exp"] = int(now) + change.pop("exp_offset")
    status, body = await grant(google, assertion(account, now, **change))
    assert status == 400 and body["error"] == "invalid_grant" and reason in body["error_description"]
    assert google.grants == 0 and len(google.refusals) == 1


async def test_a_signature_by_another_key_is_refused(google):
    account = google.new_service_account()
    forger = ServiceAccount.generate(account.client_email)
    status, body = await grant(google, assertion(forger, google.clock()))
    assert (status, body["error_description"]) == (400, "Invalid JWT Signature.")


async def test_garbage_wrong_grant_type_down_and_refuse(google):
    account = google.new_service_account()
    assert (await grant(google, "not.a.jwt"))[0] == 400
    assert (await grant(google, assertion(account, google.clock()), "client_credentials"))[1]["error"] == (
        "unsupported_grant_type"
    )
    google.down = True
    assert (await grant(google, assertion(account, google.clock())))[0] == 503
    google.down, google.refuse = False, True
    assert (await grant(google, assertion(account, google.clock())))[1]["error"] == "invalid_grant"
    assert google.attempts == 4 and google.grants == 0


async def test_the_key_file_is_what_google_auth_reads(google, tmp_path):
    from google.oauth2 import service_account

    key_file = tmp_path / "sa.json"
    account = google.new_service_account(key_file)
    creds = service_account.Credentials.from_service_account_file(str(key_file), scopes=[CLOUD_PLATFORM])
    assert creds.service_account_email == account.client_email and creds._token_uri == google.token_uri


async def test_the_metadata_server_wants_its_flavor_header(google):
    async with FakeGceMetadata(google) as metadata, aiohttp.ClientSession() as http:
        base = f"http://{metadata.address}/computeMetadata/v1/instance/service-accounts/default/token"
        async with http.get(base) as resp:
            assert resp.status == 403
        async with http.get(base, headers={"Metadata-Flavor": "Google"}) as resp:
            assert resp.status == 200 and resp.headers["Metadata-Flavor"] == "Google"
            assert google.is_live((await resp.json())["access_token"])
        metadata.down = True
        async with http.get(base, headers={"Metadata-Flavor": "Google"}) as resp:
            assert resp.status == 503
        async with http.get(f"http://{metadata.address}/", headers={"Metadata-Flavor": "Google"}) as resp:
            assert resp.status == 200
    async with FakeGceMetadata(google, present=False) as elsewhere, aiohttp.ClientSession() as http:
        async with http.get(f"http://{elsewhere.address}/", headers={"Metadata-Flavor": "Google"}) as resp:
            assert resp.status == 404 and "Metadata-Flavor" not in resp.headers


async def test_vertex_serves_only_its_paths_and_post(google):
    token, _ = google.issue(EMAIL)
    auth = {"Authorization": f"Bearer {token}"}
    async with FakeVertex(google) as vertex, aiohttp.ClientSession() as http:
        models = vertex.url + "/v1/projects/p/locations/global/publishers/anthropic/models/"
        async with http.post(models + "claude-opus-4-7:predict", headers=auth, json={}) as resp:
            assert resp.status == 404 and (await resp.json())["error"]["status"] == "NOT_FOUND"
        async with http.get(models + "claude-opus-4-7:rawPredict", headers=auth) as resp:
            assert resp.status == 404
        async with http.post(models + "count-tokens:rawPredict", headers=auth, data=b"x" * 400) as resp:
            assert (resp.status, await resp.json()) == (200, {"input_tokens": 100})
        google.revoke_all()
        async with http.post(models + "count-tokens:rawPredict", headers=auth, data=b"{}") as resp:
            assert resp.status == 401
