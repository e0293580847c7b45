"""HTTP edge of managed settings: ``GET /managed/settings``, ``GET /user/bootstrap``
(the record of which settings checksums clients report holding is :mod:`gateway.http.sightings`).

Everything a response needs was computed at boot by :class:`gateway.policy.policies.Policies`;
these handlers authenticate, pick the caller's policy (a cached lookup) and
choose between 200, 304 and 404 (SPEC §17.1). Claude Desktop's bootstrap
(§17.4) is derived from the same policies by :mod:`gateway.policy.desktop`,
once per policy. No store access, so settings keep flowing while the database
is down (MANAGED-12).
"""

from __future__ import annotations

from aiohttp import web

import gateway
from gateway import audit
from gateway.errors import GatewayError, Kind
from gateway.http.keys import REQUEST_ID, RUNTIME, authenticate
from gateway.http.sightings import ChecksumSightings
from gateway.policy.desktop import Denied, DesktopBootstrap
from gateway.policy.policies import Policies

__all__ = [
    "POLICIES",
    "SIGHTINGS",
    "ChecksumSightings",
    "if_none_match_hits",
    "managed_settings",
    "user_bootstrap",
]

POLICIES: web.AppKey[Policies] = web.AppKey("policies", Policies)
# What each policy's Desktop bootstrap holds, decided at boot from the same policies.
DESKTOP: web.AppKey[DesktopBootstrap] = web.AppKey("desktop_bootstrap", DesktopBootstrap)
VERSION_HEADER = "x-cc-gateway-version"


def _version() -> dict[str, str]:
    return {VERSION_HEADER: gateway.__version__}


def if_none_match_hits(values: list[str], etag: str) -> bool:
    """True only when one comma-separated entry is exactly ``etag`` (the quoted checksum).

    ``*`` is deliberately no match: Claude Desktop probes with it and must get
    the document or a 404, never a 304 it would read as "mandatory settings
    exist" (MANAGED-7, MANAGED-16). Weak (``W/"…"``) and unquoted values miss too.
    """
    return any(part.strip() == etag for value in values for part in value.split(","))


async def managed_settings(request: web.Request) -> web.Response:
    # The client looks for the version header on every answer of this endpoint,
    # refusals included (MANAGED-11).
    try:
        principal = authenticate(request.app[RUNTIME], request.headers.get("Authorization"))
    except GatewayError as err:
        err.headers = {**(err.headers or {}), **_version()}
        raise
    matched = request.app[POLICIES].match(principal)
    if matched is None:
        # "No policy for you" must not be cached by anything in between: the same
        # person may match a policy after the next config change (MANAGED-10).
        raise GatewayError(
            Kind.NOT_CONFIGURED, "not configured", headers={**_version(), "Cache-Control": "no-store"}
        )
    headers = {"ETag": matched.etag, **_version()}
    if if_none_match_hits(request.headers.getall("If-None-Match", []), matched.etag):
        return web.Response(status=304, headers=headers)
    audit.emit(
        "managed.serve",
        request_id=request[REQUEST_ID],
        sub=principal.sub,
        email=principal.email,
        policy_index=matched.index,
        checksum=matched.checksum,
    )
    return web.Response(body=matched.body, content_type="application/json", headers=headers)


async def user_bootstrap(request: web.Request) -> web.Response:
    """Claude Desktop's configuration (SPEC §17.4): 200 with the caller's bootstrap, or 404
    when no policy of theirs opts in. Per person and carrying their identity, so never
    stored by anything in between, and audited either way."""
    rt = request.app[RUNTIME]
    try:
        principal = authenticate(rt, request.headers.get("Authorization"))
    except GatewayError as err:
        err.headers = {**(err.headers or {}), **_version()}
        raise
    answer = request.app[DESKTOP].answer(principal, f"{request.scheme}://{request.host}")
    headers = {**_version(), **NO_STORE}
    if isinstance(answer, Denied):
        audit.emit(
            "desktop_bootstrap.denied",
            request_id=request[REQUEST_ID],
            sub=principal.sub,
            email=principal.email,
            reason=answer.reason,
            policy_index=answer.policy_index,
        )
        raise GatewayError(Kind.NOT_CONFIGURED, answer.message, headers=headers)
    audit.emit(
        "desktop_bootstrap.serve",
        request_id=request[REQUEST_ID],
        sub=principal.sub,
        email=principal.email,
        policy_index=answer.policy_index,
    )
    return web.Response(body=answer.body, content_type="application/json", headers=headers)


NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


SIGHTINGS: web.AppKey[ChecksumSightings] = web.AppKey("checksum_sightings", ChecksumSightings)
