"""What every handler shares: the app and request keys, bearer authentication,
body reading and the security headers.

Kept apart from the hot path (``messages``) so the other handlers, the
composition and the server import these few names without importing the relay.
``authenticate`` and ``read_body`` are the one bearer check and the one size
check every endpoint uses (SPEC "Messages" steps 1 and 2).
"""

from __future__ import annotations

import os

from aiohttp import web

from gateway.auth.tokens import Principal, bearer_token
from gateway.errors import GatewayError, Kind
from gateway.http.runtime import Runtime

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
CLIENT_IP: web.RequestKey[str | None] = web.RequestKey("client_ip", object)  # type: ignore[arg-type]
# On every response, against sniffing, framing, referrer leaks and opener access
# (SPEC ROLE-5). The middleware adds them; streams, prepared by the relay, add their own.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def authenticate(rt: Runtime, authorization: str | None) -> Principal:
    """The principal of a bearer token; the one check every bearer endpoint uses.

    Verification is pure and cached; a revoked sign-in family is refused from
    the in-memory set the revocation watcher keeps (no database per request).
    """
    principal = rt.tokens.verify(bearer_token(authorization), int(rt.clock()))
    if rt.revocations is not None and rt.revocations.is_revoked(principal.sid):
        raise GatewayError(Kind.AUTH_INVALID, "session revoked")
    return principal


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is None:
        if request.headers.get("Transfer-Encoding", "").lower().find("chunked") >= 0:
            raise GatewayError(Kind.LENGTH_REQUIRED, "a Content-Length header is required")
        return b""
    if request.content_length > limit:
        raise GatewayError(Kind.TOO_LARGE, f"request body is larger than the limit of {limit} bytes")
    return await request.read()


def new_request_id() -> str:
    return "req_" + os.urandom(16).hex()
