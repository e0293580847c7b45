"""Every route the gateway serves, in one table.

Each row is a method, a path, its handler and the section it belongs to:
``core`` routes are always registered (sign-in handlers answer 404 when the
config has no ``oidc:``), ``admin`` routes only when the config has an
``admin:`` section, so without it those paths are a plain 404; ``metrics``
(Prometheus text behind an admin credential) only with
``gatehouse.telemetry.metrics.prometheus.enabled`` and no listener of its own.

aiohttp matches routes in registration order, which is table order: the admin
API's literal paths (``/effective``, ``/audit``) come before ``/{id}`` so they
are not taken for ids. ``head`` says whether a GET also answers HEAD.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple

from aiohttp import web

from gateway.http import admin, managed, messages, meta, own_telemetry, signin

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Route(NamedTuple):
    method: str
    path: str
    handler: Handler
    section: str = "core"
    head: bool = False


SPEND_LIMITS = admin.BASE
SESSIONS = admin.SESSIONS

ROUTES: tuple[Route, ...] = (
    # Inference: the hot path (gateway.http.messages).
    Route("POST", "/v1/messages", messages.messages),
    Route("POST", "/v1/messages/count_tokens", messages.messages),
    # Discovery, health and the client's side channels (gateway.http.meta).
    Route("GET", "/v1/models", meta.models, head=True),
    Route("GET", "/healthz", meta.healthz),
    Route("GET", "/readyz", meta.readyz),
    Route("GET", "/", meta.landing),
    Route("POST", "/v1/metrics", meta.telemetry_ingest),
    Route("POST", "/v1/logs", meta.telemetry_ingest),
    Route("POST", "/v1/traces", meta.telemetry_ingest),
    # Managed settings and the client's bootstrap (gateway.http.managed).
    Route("GET", "/managed/settings", managed.managed_settings),
    Route("GET", "/user/bootstrap", managed.user_bootstrap),
    Route("GET", "/api/oauth/usage", meta.oauth_usage),
    Route("GET", "/protocol", meta.protocol_markdown),
    Route("GET", "/protocol.json", meta.protocol_json),
    # Sign-in: OAuth metadata, the device flow, the IdP callback, tokens (gateway.http.signin).
    Route("GET", "/.well-known/oauth-authorization-server", signin.metadata),
    Route("POST", "/oauth/device_authorization", signin.device_authorization),
    Route("GET", "/device", signin.device_page),
    Route("POST", "/device", signin.device_submit),
    Route("GET", "/oauth/callback", signin.callback),
    Route("POST", "/oauth/token", signin.token),
    Route("POST", "/oauth/revoke", signin.revoke),
    # Admin API: spend limits (gateway.http.admin), each guarded by its key or group check.
    Route("GET", SPEND_LIMITS, admin.guarded(admin.list_limits, write=False), "admin"),
    Route("POST", SPEND_LIMITS, admin.guarded(admin.upsert_limit, write=True), "admin"),
    Route("GET", SPEND_LIMITS + "/effective", admin.guarded(admin.effective, write=False), "admin"),
    Route("GET", SPEND_LIMITS + "/audit", admin.guarded(admin.audit_trail, write=False), "admin"),
    Route("GET", SPEND_LIMITS + "/{id}", admin.guarded(admin.get_limit, write=False), "admin"),
    Route("DELETE", SPEND_LIMITS + "/{id}", admin.guarded(admin.delete_limit, write=True), "admin"),
    # Admin API: sign-in sessions, a Gatehouse extension (gateway.http.admin); /revoke before /{family_id}.
    Route("GET", SESSIONS, admin.guarded(admin.list_sessions, write=False), "admin"),
    Route("POST", SESSIONS + "/revoke", admin.guarded(admin.revoke_sessions, write=True), "admin"),
    Route("DELETE", SESSIONS + "/{family_id}", admin.guarded(admin.revoke_session, write=True), "admin"),
    # The gateway's own metrics for Prometheus (gateway.http.own_telemetry).
    Route("GET", "/metrics", own_telemetry.metrics, "metrics"),
)


def add_routes(app: web.Application, section: str) -> None:
    """Register the table's rows of one section, in table order."""
    for route in ROUTES:
        if route.section != section:
            continue
        if route.method == "GET":
            app.router.add_get(route.path, route.handler, allow_head=route.head)
        else:
            app.router.add_route(route.method, route.path, route.handler)
