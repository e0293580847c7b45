"""The gateway's own telemetry at the HTTP edge: each Messages request's metrics
and span at its end, and ``GET /metrics`` for Prometheus.

* :func:`request_ended` is the one call the hot path makes (from
  ``messages.record``): one :meth:`~gateway.telemetry.own_metrics.OwnMetrics.observe_request`
  with what the request recorded, and its span when tracing is on. Nothing is
  built when neither is configured.
* ``GET /metrics`` on the main listener (``prometheus.enabled`` without
  ``listen``) answers only an admin credential, checked as the admin API checks
  it (:func:`gateway.http.admin.authorize`, read access): 401 in our envelope
  otherwise. Without ``prometheus.enabled`` the route does not exist (404).
* With ``prometheus.listen``, :func:`scrape_app` is a listener of its own that
  serves ``GET /metrics`` and nothing else, without auth (keep it off the
  public network).

The text comes from the SDK's Prometheus reader through ``prometheus_client``
(:meth:`gateway.telemetry.instruments.Instruments.prometheus_text`).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from gateway import audit
from gateway.errors import GatewayError, Kind
from gateway.http import admin
from gateway.http.keys import REQUEST_ID, RUNTIME
from gateway.telemetry.own_metrics import Finished, Usage

if TYPE_CHECKING:
    from gateway.auth.tokens import Principal
    from gateway.http.runtime import Runtime
    from gateway.telemetry.instruments import Instruments
    from gateway.telemetry.tracing import RequestSpan
    from gateway.upstreams.sse import UsageTotals

TRACE_HEADERS = ("traceparent", "tracestate")


class Outcome(Protocol):
    """What a finished request recorded (``gateway.http.messages.Outcome``) that telemetry reads."""

    @property
    def status(self) -> int: ...
    @property
    def model(self) -> str | None: ...
    @property
    def upstream(self) -> str | None: ...
    @property
    def upstream_model(self) -> str | None: ...
    @property
    def billing_group(self) -> str | None: ...
    @property
    def usage(self) -> UsageTotals: ...
    @property
    def attempts(self) -> int: ...
    @property
    def ms_headers(self) -> float | None: ...
    @property
    def attempt_at(self) -> float | None: ...
    @property
    def first_byte_at(self) -> float | None: ...
    @property
    def failures(self) -> list[tuple[str, str]]: ...


def request_ended(
    rt: Runtime, request: web.Request, principal: Principal | None, outcome: Outcome, t0: float
) -> None:
    """Count one finished Messages request and trace it. Never awaits, never raises for telemetry's sake."""
    metrics, tracer = rt.metrics, rt.tracer
    if not metrics.enabled and tracer is None:
        return
    now = time.monotonic()
    try:
        if metrics.enabled:
            metrics.observe_request(finished(rt, request.path, principal, outcome, t0, now))
        if tracer is not None:
            carrier = {name: value for name in TRACE_HEADERS if (value := request.headers.get(name)) is not None}
            tracer.record(carrier, request_span(request.path, request[REQUEST_ID], outcome, t0, now))
    except Exception as exc:
        # The audit event and the usage row come next in messages.record: a telemetry bug
        # must never cost them. Logged the first time and every 1,000th after.
        _failures[0] += 1
        if _failures[0] % 1000 == 1:
            audit.log("error", f"the gateway's own telemetry failed for a request ({_failures[0]} so far): {exc!r}")


_failures = [0]


def finished(
    rt: Runtime, route: str, principal: Principal | None, outcome: Outcome, t0: float, now: float
) -> Finished:
    u = outcome.usage
    user = None
    if rt.metrics.by_user and principal is not None:
        user = principal.email or principal.sub
    return Finished(
        route=route,
        status=outcome.status,
        model=outcome.model,
        upstream=outcome.upstream,
        total_s=now - t0,
        headers_s=outcome.ms_headers / 1000 if outcome.ms_headers is not None else None,
        first_byte_s=outcome.first_byte_at - t0 if outcome.first_byte_at is not None else None,
        usage=Usage(u.input_tokens, u.output_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens),
        cost_usd=cost_usd(rt, outcome),
        group=outcome.billing_group,
        user=user,
        attempts=outcome.attempts,
        failures=tuple(outcome.failures),
    )


def cost_usd(rt: Runtime, outcome: Outcome) -> float | None:
    """What the request cost at the configured prices, priced as the upstream that served it."""
    pricing = rt.pricing
    if pricing is None or outcome.upstream is None or outcome.upstream_model is None or outcome.model is None:
        return None
    rates = pricing.rates(outcome.upstream, outcome.model, outcome.upstream_model, warn=False)
    return pricing.cost_micro(rates, outcome.usage) / 1_000_000


def request_span(route: str, request_id: str, outcome: Outcome, t0: float, now: float) -> RequestSpan:
    """The request's span: its times on the wall clock, its facts as attributes (never content)."""
    from gateway.telemetry.tracing import RequestSpan, UpstreamCall

    wall_now = time.time_ns()

    def wall(mono: float) -> int:
        return wall_now - int((now - mono) * 1e9)

    u = outcome.usage
    attributes: dict[str, str | int | float | bool] = {
        "http.request.method": "POST",
        "http.route": route,
        "http.response.status_code": outcome.status,
        "gatehouse.request_id": request_id,
        "gatehouse.attempts": outcome.attempts,
        "gen_ai.usage.input_tokens": u.input_tokens,
        "gen_ai.usage.output_tokens": u.output_tokens,
    }
    if outcome.model is not None:
        attributes["gen_ai.request.model"] = outcome.model
    if outcome.upstream is not None:
        attributes["gatehouse.upstream"] = outcome.upstream
    call = None
    if outcome.upstream is not None and outcome.attempt_at is not None and outcome.ms_headers is not None:
        call_attributes: dict[str, str | int | float | bool] = {"gatehouse.upstream": outcome.upstream}
        if outcome.upstream_model is not None:
            call_attributes["gen_ai.request.model"] = outcome.upstream_model
        headers_at = t0 + outcome.ms_headers / 1000
        call = UpstreamCall(f"upstream {outcome.upstream}", wall(outcome.attempt_at), wall(headers_at), call_attributes)
    return RequestSpan(
        name=f"POST {route}",
        start_ns=wall(t0),
        end_ns=wall_now,
        attributes=attributes,
        error=outcome.status >= 500 or outcome.status == 0,
        upstream=call,
        failures=tuple(outcome.failures),
    )


# ------------------------------------------------------------------ GET /metrics


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text on the main listener, for an admin credential (read access is enough)."""
    context = request.app.get(admin.ADMIN)
    if context is None:
        # No admin: section, so no key can be right.
        raise GatewayError(Kind.AUTH_INVALID, "missing or invalid admin credentials")
    admin.authorize(request, context, write=False)
    return await _text(request.app[RUNTIME].instruments)


async def _text(instruments: Instruments | None) -> web.Response:
    assert instruments is not None  # the route exists only with Prometheus enabled
    # Rendering a busy gateway's series takes tens of milliseconds (bench/own_metrics.py):
    # in a thread, so requests in flight are not held for it (the tables allow reads from any thread).
    body, content_type = await asyncio.to_thread(instruments.prometheus_text)
    return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


def scrape_app(instruments: Instruments) -> web.Application:
    """The ``prometheus.listen`` listener: GET /metrics, nothing else, no auth."""

    async def scrape(request: web.Request) -> web.Response:
        return await _text(instruments)

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app
