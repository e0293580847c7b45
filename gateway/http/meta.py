"""Small endpoints around the hot path: probes, landing, models, stubs.

* ``/healthz``: the process is alive (never touches the store).
* ``/readyz``: 200 only while the store answers, or within
  ``store.readiness_grace_seconds`` of its last answer; ``?verbose`` adds, as
  JSON, the upstreams this replica is skipping for now.
* ``/``: name and version.
* ``/v1/models``: the catalog, in the Anthropic list shape.
* ``/v1/metrics|logs|traces``: OTLP exports, queued for ``telemetry.forward_to``
  (gateway/telemetry/relay.py) and answered 200 at once; with
  ``gatehouse.telemetry.stamp_identity`` the caller's identity is stamped on
  them first (gateway/telemetry/stamp.py).
* ``/managed/settings``: "not configured" until policy lands.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from aiohttp import web

import gateway
from gateway.auth.tokens import Principal
from gateway.errors import GatewayError, Kind
from gateway.http.keys import RUNTIME, authenticate, read_body
from protocol_spec.wire import ModelInfo, ModelList, ServerInfo, encoder

if TYPE_CHECKING:
    from gateway.telemetry.relay import Relay

JSON = "application/json"
# Name and version are fixed for the life of the process: encoded once.
_LANDING = encoder.encode(ServerInfo(gateway.NAME, gateway.__version__))


def _authenticate(request: web.Request) -> Principal:
    return authenticate(request.app[RUNTIME], request.headers.get("Authorization"))


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def readyz(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    if rt.draining:
        status, text = 503, "draining"
    elif not await rt.store.ready(timeout=2.0):
        status, text = 503, "store unavailable"
    else:
        status, text = 200, "ready"
    if "verbose" not in request.query:
        return web.Response(status=status, text=text)
    # For people, not probes: which upstreams this replica is skipping for now
    # (gateway/upstreams/health.py). Readiness never depends on them: a replica
    # whose upstreams are down still answers, and fails over, better than none.
    detail = {"status": text, "upstreams": rt.health.detail()}
    return web.Response(status=status, body=json.dumps(detail), content_type=JSON)


async def landing(request: web.Request) -> web.Response:
    return web.Response(body=_LANDING, content_type=JSON, headers={"Cache-Control": "no-store"})


async def models(request: web.Request) -> web.Response:
    principal = _authenticate(request)
    rt = request.app[RUNTIME]
    access = rt.policies.access_for(principal)
    data = [
        ModelInfo(type="model", id=e.id, display_name=e.display_name, max_input_tokens=e.max_input_tokens, description=e.description)
        for e in rt.routes.catalog
        if access.allows(e.id)
    ]
    listing = ModelList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None)
    return web.Response(body=encoder.encode(listing), content_type=JSON)


async def telemetry_ingest(request: web.Request) -> web.Response:
    principal = _authenticate(request)
    rt = request.app[RUNTIME]
    body = await read_body(request, rt.limits.max_request_bytes)
    # Queued for every destination that takes this signal, as received (bytes, content
    # type and encoding); answered 200 at once whether it is forwarded or not.
    if rt.relay is not None:
        signal = request.path.rsplit("/", 1)[1]
        content_type, encoding = request.headers.get("Content-Type"), request.headers.get("Content-Encoding")
        if rt.stamp_identity and rt.relay.wants(signal):
            stamped = await _stamped(rt.relay, signal, body, content_type, encoding, principal)
            if stamped is None:
                return web.Response(status=200)
            body = stamped
        rt.relay.submit(signal, body, content_type, encoding)
    return web.Response(status=200)


# Bodies up to this size, not compressed, are stamped on the event loop: the real
# client's exports are a few kB, stamped in less time than a hop to a thread
# takes. Larger or compressed ones (which may inflate to MAX_STAMPED_BYTES) are
# stamped in a worker thread, so that one cannot stall every other request.
STAMP_ON_LOOP_BYTES = 64 * 1024


async def _stamped(
    relay: Relay, signal: str, body: bytes, content_type: str | None, encoding: str | None, caller: Principal,
) -> bytes | None:
    """The export with the caller's identity stamped (gateway/telemetry/stamp.py), or None
    when it cannot be stamped: then the relay counts and logs it, and it is never
    relayed unstamped."""
    # Imported here: the protobuf classes load only in a gateway that stamps.
    from gateway.telemetry.otlp_body import BodyRejected
    from gateway.telemetry.stamp import stamp

    try:
        if len(body) <= STAMP_ON_LOOP_BYTES and not encoding:
            return stamp(signal, body, content_type, encoding, caller)
        return await asyncio.to_thread(stamp, signal, body, content_type, encoding, caller)
    except BodyRejected as exc:
        relay.refused(signal, len(body), f"it cannot be stamped with the identity of {caller.sub} ({exc})")
        return None


async def oauth_usage(request: web.Request) -> web.Response:
    """The caller's spend in dollars for ``/usage`` and the status line (SPEC §20)."""
    from gateway.db.store import StoreUnavailable
    from gateway.http import spend_gate

    principal = _authenticate(request)
    rt = request.app[RUNTIME]
    if rt.spend is None:
        raise GatewayError(Kind.NOT_CONFIGURED, "not configured", headers={"Cache-Control": "no-store"})
    try:
        body = await spend_gate.usage(rt, principal)
    except (StoreUnavailable, TimeoutError):
        raise GatewayError(Kind.STORE_UNAVAILABLE, "spend limit unavailable", headers={"Cache-Control": "no-store"}) from None
    return web.Response(body=body, content_type=JSON, headers={"Cache-Control": "no-store"})


async def not_found(request: web.Request) -> web.Response:
    raise GatewayError(Kind.NOT_FOUND, "not found")


async def protocol_markdown(request: web.Request) -> web.Response:
    from protocol_spec.requirements import spec_bytes

    return web.Response(body=spec_bytes(), headers={"Content-Type": "text/markdown; charset=utf-8"})


async def protocol_json(request: web.Request) -> web.Response:
    """The requirements index plus the JSON Schema of every wire type (SPEC §1.6)."""
    from protocol_spec.schema import protocol_json as document

    return web.Response(body=document(), content_type=JSON)
