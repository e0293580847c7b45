"""Composition root: the route table, the middleware, and startup/cleanup.

The only module that wires edges (store, transport, recorder) to handlers.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from gateway import audit, meta, relay
from gateway.errors import GatewayError, Kind, error_body, render
from gateway.netaccess import AccessPolicy
from gateway.relay import CLIENT_IP, REQUEST_ID, RUNTIME, new_request_id
from gateway.routing import Routes
from gateway.runtime import Limits, Runtime, UpstreamPlan
from gateway.sessions import TokenService
from gateway.upstreams import anthropic

# Errors aiohttp raises itself (unknown route, wrong method) → our envelope.
_HTTP_KINDS = {404: Kind.NOT_FOUND, 405: Kind.INVALID_REQUEST, 413: Kind.TOO_LARGE}


def routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/messages", relay.messages)
    r.add_post("/v1/messages/count_tokens", relay.messages)
    r.add_get("/v1/models", meta.models)
    r.add_get("/healthz", meta.healthz, allow_head=False)
    r.add_get("/readyz", meta.readyz, allow_head=False)
    r.add_get("/", meta.landing, allow_head=False)
    r.add_post("/v1/metrics", meta.telemetry_ingest)
    r.add_post("/v1/logs", meta.telemetry_ingest)
    r.add_post("/v1/traces", meta.telemetry_ingest)
    r.add_get("/managed/settings", meta.managed_settings, allow_head=False)
    r.add_get("/protocol", meta.protocol_markdown, allow_head=False)
    r.add_get("/protocol.json", meta.protocol_json, allow_head=False)


def build_runtime(cfg: Any, *, idle_read_timeout_s: float | None = None) -> Runtime:
    listen = cfg.listen
    issuer = listen.public_url or f"http://{listen.host}:{listen.port}"
    tokens = TokenService(tuple(cfg.session.secrets), issuer.rstrip("/"), int(cfg.session.ttl_hours * 3600))
    plans = tuple(
        UpstreamPlan(
            name=u.name,
            provider=u.provider,
            prepared=anthropic.prepare(u),
            # The first-byte limit applies to the Anthropic API; other providers
            # may take up to an hour to start (they queue on their side).
            ttfb_s=cfg.timeouts.upstream_ttfb_ms / 1000 if u.provider == "anthropic" else 3600.0,
        )
        for u in cfg.upstreams
    )
    gh = cfg.gatehouse
    return Runtime(
        config=cfg,
        tokens=tokens,
        routes=Routes(cfg.upstreams, cfg.models, cfg.auto_include_builtin_models),
        upstreams=plans,
        limits=Limits(cfg.limits.max_request_bytes, cfg.limits.max_request_header_bytes, cfg.limits.max_url_length),
        idle_read_timeout_s=idle_read_timeout_s or gh.upstream.idle_read_timeout_seconds,
        access=AccessPolicy(
            tuple(cfg.access_control.allow_cidrs),
            tuple(cfg.access_control.deny_cidrs),
            tuple(cfg.listen.trusted_proxies),
        ),
    )


def build(cfg: Any, *, idle_read_timeout_s: float | None = None, store: Any = None) -> web.Application:
    """The application for ``cfg``. ``idle_read_timeout_s`` exists for tests only.

    ``store``: an already-open store to use (tests share one); otherwise the
    app opens and migrates its own on startup and closes it on cleanup.
    """
    rt = build_runtime(cfg, idle_read_timeout_s=idle_read_timeout_s)
    # client_max_size sits above our own limit so our 413 (in our envelope,
    # decided from Content-Length before reading) always answers first.
    app = web.Application(middlewares=[envelope_middleware], client_max_size=rt.limits.max_request_bytes + 1)
    app[RUNTIME] = rt
    routes(app)
    app.cleanup_ctx.append(_lifecycle(store))
    return app


def _lifecycle(shared_store: Any):
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        from gateway.config import is_forbidden_address
        from gateway.recorder import Recorder
        from gateway.store import Store
        from gateway.upstreams.transport import Transport

        rt = app[RUNTIME]
        cfg = rt.config
        allow_loopback = os.environ.get("CLAUDE_GATEWAY_ALLOW_LOOPBACK") == "1"
        rt.transport = Transport(
            max_connections=cfg.gatehouse.upstream.max_connections,
            connect_timeout_s=cfg.gatehouse.upstream.connect_timeout_ms / 1000,
            idle_read_timeout_s=rt.idle_read_timeout_s,
            is_forbidden=lambda ip: is_forbidden_address(ip, allow_loopback),
        )
        await rt.transport.start()
        own_store = shared_store is None
        if own_store:
            rt.store = await Store.open(cfg.store, log=audit.log)
            await rt.store.migrate()
        else:
            rt.store = shared_store
        rt.recorder = Recorder(rt.store)
        await rt.recorder.start()
        try:
            yield
        finally:
            await rt.recorder.drain(10.0)
            await rt.transport.close()
            if own_store:
                await rt.store.close()

    return lifecycle


@web.middleware
async def envelope_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    try:
        decision = rt.access.decide(request.remote, request.headers.get("X-Forwarded-For"), request.path)
        request[CLIENT_IP] = decision.client_ip
        if not decision.allowed:
            audit.emit("access.denied", reason=decision.reason, client_ip=decision.client_ip, path=request.path)
            raise GatewayError(Kind.FORBIDDEN, "forbidden")
        _check_request_line_and_headers(request, rt)
        response = await handler(request)
    except GatewayError as err:
        status, headers, body = render(err, request_id)
        headers["request-id"] = request_id
        return web.Response(status=status, body=body, headers=headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = _HTTP_KINDS.get(exc.status, Kind.INVALID_REQUEST)
        message = "not found" if exc.status == 404 else (exc.reason or "bad request").lower()
        headers = {"Content-Type": "application/json", "request-id": request_id}
        return web.Response(status=exc.status, body=error_body(_type_for(kind), message, request_id), headers=headers)
    if not response.prepared:
        response.headers["request-id"] = request_id
    return response


def _type_for(kind: Kind) -> str:
    from gateway.errors import TABLE

    return TABLE[kind].error_type


def _check_request_line_and_headers(request: web.Request, rt: Runtime) -> None:
    limits = rt.limits
    if limits.max_url_length is not None and len(request.raw_path) > limits.max_url_length:
        raise GatewayError(Kind.URL_TOO_LONG, f"request URL is longer than {limits.max_url_length} bytes")
    if limits.max_header_bytes is not None:
        size = sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
        if size > limits.max_header_bytes:
            raise GatewayError(
                Kind.HEADERS_TOO_LARGE, f"request headers are larger than {limits.max_header_bytes} bytes"
            )


# aiohttp's parser rejects oversized lines with its own plain-text 400. Its
# limits sit far above ours so that, within them, our 414/431 (in our envelope)
# always answer first; they stay bounded so one connection can't make us buffer
# without end.
PARSER_LIMIT_WHEN_CONFIGURED = 1 << 20
PARSER_LIMIT_DEFAULT = 64 * 1024


def parser_limits(cfg: Any) -> dict[str, int]:
    url, headers = cfg.limits.max_url_length, cfg.limits.max_request_header_bytes
    return {
        "max_line_size": PARSER_LIMIT_WHEN_CONFIGURED if url else PARSER_LIMIT_DEFAULT,
        "max_field_size": PARSER_LIMIT_WHEN_CONFIGURED if headers else PARSER_LIMIT_DEFAULT,
        "max_headers": 1000,
    }
