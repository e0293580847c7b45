"""SPEC §9: bearer tokens, on every bearer endpoint.

The fixtures know the session secret, so the suite can also forge the tokens
a gateway must refuse (wrong issuer, audience, algorithm, expired) and mint
one it must accept (a token is valid wherever the secret and public_url are
the same, SPEC BEARER-4).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from protocol_spec.conformance.context import Ctx, small_request
from protocol_spec.conformance.verdicts import check

# Every bearer endpoint, with a request that would succeed given a good token.
BEARER_ENDPOINTS: tuple[tuple[str, str, Any], ...] = (
    ("POST", "/v1/messages", small_request()),
    ("POST", "/v1/messages/count_tokens", {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hi"}]}),
    ("GET", "/v1/models", None),
    ("GET", "/managed/settings", None),
    ("GET", "/api/oauth/usage", None),
    ("POST", "/v1/metrics", {"resourceMetrics": []}),
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(secret: str, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """An HS256 JWT over ``claims`` (``header`` replaces the default one)."""
    head = header if header is not None else {"alg": "HS256", "typ": "JWT", "kid": hashlib.sha256(secret.encode()).hexdigest()[:16]}
    signing_input = _b64(json.dumps(head).encode()) + "." + _b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


def claims_for(c: Ctx, **changes: Any) -> dict[str, Any]:
    user = c.suite.user("normal")
    now = int(time.time())
    claims = {
        "iss": c.state.public_url,
        "aud": "claude-gateway",
        "sub": user["sub"],
        "email": user["email"],
        "name": user["name"],
        "groups": user["groups"],
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


@check("bearer required on every bearer endpoint", "BEARER-1", "BEARER-6", "BEARER-11", "MSG-2", "RETRY-2", "ERR-1", "ERR-2", "ROLE-4")
async def bearer_required(c: Ctx) -> None:
    token = await c.bearer()
    for method, path, body in BEARER_ENDPOINTS:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "anthropic-version": "2023-06-01"}
        missing = await c.t.request(method, path, body=data, headers=headers)
        if path == "/v1/messages":
            c.envelope("MSG-2", missing, 401, "authentication_error", what=f"{method} {path} without a credential")
        c.envelope("BEARER-6", missing, 401, "authentication_error", no_retry=True, what=f"{method} {path} without a credential")
        as_api_key = await c.t.request(method, path, body=data, headers={**headers, "x-api-key": token})
        c.envelope("BEARER-1", as_api_key, 401, "authentication_error", what=f"{method} {path} with the token in x-api-key")
        c.envelope("BEARER-6", as_api_key, 401, "authentication_error", no_retry=True, what=f"{method} {path} with the token in x-api-key")
    lower = await c.t.get("/v1/models", headers={"Authorization": f"bearer {token}"})
    c.status("BEARER-11", lower, 200, "the scheme matches without case")


@check("refused tokens", "BEARER-4", "BEARER-5", "BEARER-6", "RETRY-2")
async def refused_tokens(c: Ctx) -> None:
    secret = c.state.jwt_secret
    now = int(time.time())
    good = mint(secret, claims_for(c))
    accepted = await c.t.get("/v1/models", bearer=good)
    c.status("BEARER-4", accepted, 200, "a token signed with the configured secret and its kid")
    no_kid = mint(secret, claims_for(c), {"alg": "HS256", "typ": "JWT"})
    c.status("BEARER-4", await c.t.get("/v1/models", bearer=no_kid), 200, "a token without kid is tried against the secrets")
    unknown_kid = mint(secret, claims_for(c), {"alg": "HS256", "typ": "JWT", "kid": "0000000000000000"})
    c.envelope("BEARER-4", await c.t.get("/v1/models", bearer=unknown_kid), 401, "authentication_error", what="a kid matching no secret")
    header_none = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    refused = {
        "alg none": header_none + "." + _b64(json.dumps(claims_for(c)).encode()) + ".",
        "another secret": mint("conformance-some-other-secret-0123456789abcdef", claims_for(c), {"alg": "HS256", "typ": "JWT"}),
        "a tampered signature": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
        "another issuer": mint(secret, claims_for(c, iss="http://elsewhere.example")),
        "another audience": mint(secret, claims_for(c, aud="someone-else")),
        "expired two minutes ago": mint(secret, claims_for(c, iat=now - 3720, exp=now - 120)),
        "not a JWT": "conformance-not-a-jwt",
    }
    for what, token in refused.items():
        answer = await c.t.get("/v1/models", bearer=token)
        c.envelope("BEARER-5", answer, 401, "authentication_error", what=what)
        c.envelope("BEARER-6", answer, 401, "authentication_error", no_retry=True, what=what)
