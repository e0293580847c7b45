"""Composition root: the runtime, the middleware, and startup/cleanup.

The only module that wires edges (store, transport, recorder) to handlers; the
routes it registers are the table in :mod:`gateway.http.routes`. ``build``
computes the :class:`~gateway.http.runtime.Boot` (no event loop needed); the
startup hook opens the edges and makes the :class:`~gateway.http.runtime.Runtime`
from both in one function, ``_start``, before the first request.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import audit
from gateway.app import jobs, observability
from gateway.auth.tokens import TokenService
from gateway.client_text import quoted
from gateway.db.store import is_data_error
from gateway.db.tasks import TaskSet
from gateway.errors import Fault, GatewayError, Kind, error_body, render
from gateway.http import managed, signin
from gateway.http.keys import CLIENT_IP, REQUEST_ID, RUNTIME, SECURITY_HEADERS, new_request_id
from gateway.http.routes import add_routes
from gateway.http.runtime import Boot, Limits, Runtime, SpendSwitches, UpstreamPlan
from gateway.http.sightings import ChecksumSightings
from gateway.netaccess import AccessPolicy
from gateway.policy.desktop import DesktopBootstrap
from gateway.policy.policies import Policies
from gateway.upstreams.egress import Egress
from gateway.upstreams.health import Health
from gateway.upstreams.load_test import Canned, canned
from gateway.upstreams.outbound import REQUEST_TAGS_BETA, Signer
from gateway.upstreams.providers import needs_signer, signing_service, translator_for
from gateway.upstreams.routing import Routes

if TYPE_CHECKING:
    from gateway.auth.oidc import OidcClient
    from gateway.auth.revocations import RevocationWatcher
    from gateway.config.schema import Config, UpstreamAuth
    from gateway.db.listener import Listener
    from gateway.db.store import Store
    from gateway.spend.store import SpendStore
    from gateway.telemetry.destinations import Destination
    from gateway.telemetry.relay import Relay
    from gateway.upstreams.transport import Transport

# Errors aiohttp raises itself (unknown route, wrong method) → our envelope.
_HTTP_KINDS = {404: Kind.NOT_FOUND, 405: Kind.INVALID_REQUEST, 413: Kind.TOO_LARGE}


def build_boot(
    cfg: Config, *, idle_read_timeout_s: float | None = None, clock: Callable[[], float] = time.time
) -> Boot:
    """Everything the runtime holds that needs no event loop (see :mod:`gateway.http.runtime`)."""
    listen = cfg.listen
    tag = cfg.admin.billing_group_tag if cfg.admin is not None else None
    gh = cfg.gatehouse
    drop_beta = REQUEST_TAGS_BETA if tag is not None else None
    egress = Egress.from_env(os.environ, allow_loopback=os.environ.get("CLAUDE_GATEWAY_ALLOW_LOOPBACK") == "1")
    translators = tuple(translator_for(u, drop_beta=drop_beta, env=os.environ) for u in cfg.upstreams)
    plans = tuple(
        UpstreamPlan(
            name=u.name,
            provider=u.provider,
            translator=t,
            # Chosen once: the hot path reads no environment per request.
            proxy=egress.proxy_for(t.base_url),
            # The first-byte limit applies to the Anthropic API; other providers
            # may take up to an hour to start (they queue on their side).
            ttfb_s=cfg.timeouts.upstream_ttfb_ms / 1000 if u.provider == "anthropic" else 3600.0,
        )
        for u, t in zip(cfg.upstreams, translators, strict=True)
    )
    hc = gh.upstream.health
    health = Health(
        tuple(p.name for p in plans),
        enabled=hc.enabled,
        threshold=hc.failures,
        base_s=hc.cooldown_ms / 1000,
        max_s=max(hc.cooldown_ms, hc.max_cooldown_ms) / 1000,
    )
    routes = Routes(cfg.upstreams, cfg.models, cfg.auto_include_builtin_models)
    pricing = allowances = pricing_rows = None
    if cfg.admin is not None or cfg.pricing is not None:
        from gateway.spend.budget import AllowanceTracker
        from gateway.spend.pricing import Pricing

        pricing = Pricing(cfg, warn=lambda m: audit.log("warn", m))
        allowances = AllowanceTracker()
        if cfg.pricing is not None:
            pricing_rows = pricing.model_pricing_rows(_serving(routes, plans))
    return Boot(
        config=cfg,
        tokens=token_service(cfg),
        routes=routes,
        billing_group_tag=tag,
        load_test=_canned(cfg),
        upstreams=plans,
        egress=egress,
        health=health,
        ping_interval_s=gh.upstream.ping_interval_seconds,
        stamp_identity=gh.telemetry.stamp_identity,
        limits=Limits(cfg.limits.max_request_bytes, cfg.limits.max_request_header_bytes, cfg.limits.max_url_length),
        idle_read_timeout_s=idle_read_timeout_s or gh.upstream.idle_read_timeout_seconds,
        spend_switches=SpendSwitches(
            output_allowance_tokens=gh.spend.output_allowance_tokens,
            topup_tokens=gh.spend.topup_tokens,
            cut_streams_at_cap=gh.spend.cut_streams_at_cap,
            fail_closed_on_error=cfg.enforcement is not None and cfg.enforcement.fail_closed_on_error,
            store_timeout_s=gh.spend.store_timeout_ms / 1000,
        ),
        access=AccessPolicy(
            tuple(cfg.access_control.allow_cidrs),
            tuple(cfg.access_control.deny_cidrs),
            tuple(listen.trusted_proxies),
        ),
        policies=Policies(cfg, tuple(e.id for e in routes.catalog), pricing_rows),
        tasks=TaskSet(),
        sightings=ChecksumSightings(),
        pricing=pricing,
        allowances=allowances,
        clock=clock,
        metrics=observability.metrics_for(cfg),
    )


def _canned(cfg: Config) -> Canned | None:
    ltm = cfg.load_test_mode
    if ltm is None or not ltm.enabled:
        return None
    return canned(ltm.reply_tokens, ltm.reply_seconds)


def token_service(cfg: Config) -> TokenService:
    """The session tokens ``cfg`` signs and accepts (the CLI mints with it too)."""
    listen = cfg.listen
    issuer = listen.public_url or f"http://{listen.host}:{listen.port}"
    tag = cfg.admin.billing_group_tag if cfg.admin is not None else None
    return TokenService(
        tuple(cfg.session.secrets), issuer.rstrip("/"), int(cfg.session.ttl_hours * 3600), billing_group_tag=tag
    )


def build(
    cfg: Config,
    *,
    idle_read_timeout_s: float | None = None,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The application for ``cfg``. ``idle_read_timeout_s`` and ``clock`` exist for tests only.

    ``store``: an already-open store to use (tests share one); otherwise the
    app opens and migrates its own on startup and closes it on cleanup. The
    runtime (``app[RUNTIME]``) is set on startup, complete; so is the sign-in
    (``app[signin.SIGNIN]``, from the ``app[signin.SIGNIN_BOOT]`` made here).
    """
    boot = build_boot(cfg, idle_read_timeout_s=idle_read_timeout_s, clock=clock)
    # client_max_size sits above our own limit so our 413 (in our envelope,
    # decided from Content-Length before reading) always answers first.
    app = web.Application(middlewares=[envelope_middleware], client_max_size=boot.limits.max_request_bytes + 1)
    app[BOOT] = boot
    if cfg.oidc is not None:
        app[signin.SIGNIN_BOOT] = signin.SignInBoot.from_config(cfg, clock=clock)
    app[managed.POLICIES] = boot.policies
    app[managed.DESKTOP] = DesktopBootstrap(cfg, boot.policies)
    app[managed.SIGHTINGS] = boot.sightings
    app[jobs.JOBS] = jobs.Scheduler()
    add_routes(app, "core")
    if cfg.admin is not None:
        from gateway.http import admin as admin_api

        app[admin_api.ADMIN] = admin_api.AdminContext(cfg, clock=clock)
        add_routes(app, "admin")
    if observability.prometheus_on_main_listener(cfg):
        add_routes(app, "metrics")
    app.cleanup_ctx.append(_lifecycle(store))
    return app


# What build() computed, for the startup hook (and tests of an app not started).
BOOT: web.AppKey[Boot] = web.AppKey("boot", Boot)


def _serving(routes: Routes, upstreams: tuple[UpstreamPlan, ...]) -> dict[str, tuple[str, str]]:
    """Each catalog model → (first upstream that serves it, the id it gets there)."""
    serving = {}
    for entry in routes.catalog:
        targets = routes.plan(entry.id)
        if targets:
            serving[entry.id] = (upstreams[targets[0].upstream].name, targets[0].model)
    return serving


class _Started(NamedTuple):
    """What the lifecycle stops at shutdown besides the runtime's own edges."""

    own_store: bool
    oidc: OidcClient | None
    discovery: asyncio.Task[None] | None
    listener: Listener  # the process's one LISTEN connection (gateway.db.listener)


def _lifecycle(shared_store: Store | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        rt, started = await _start(app, app[BOOT], shared_store)
        app[RUNTIME] = rt
        scrapes = await observability.serve_scrapes(rt)
        scheduled = jobs.schedule(app, rt, rt.spend)
        scheduled.start()
        try:
            yield
        finally:
            # The order is documented in gateway.app.jobs.
            if started.discovery is not None:
                started.discovery.cancel()
            await scheduled.stop(*jobs.PRODUCERS)
            # Settlements and top-ups of requests that already ended must land.
            left = await rt.tasks.drain(10.0)
            if left:
                audit.log("warn", f"{left} spend settlement(s) still running at shutdown; their reservations expire and settle")
            await scheduled.stop()
            if rt.spend is not None:
                await rt.spend.close()
            if rt.revocations is not None:
                await rt.revocations.close()
            await started.listener.close()
            if started.oidc is not None:
                await started.oidc.close()
            await rt.recorder.drain(10.0)
            if rt.relay is not None:
                # What collectors can still take; the relay logs what it could not deliver.
                await rt.relay.drain(5.0)
            # The gateway's own last export, now that everything it counts has ended.
            await observability.close(rt, scrapes)
            await rt.transport.close()
            for signer in rt.signers:
                if signer is not None:
                    await signer.close()
            if started.own_store:
                await rt.store.close()

    return lifecycle


async def _start(app: web.Application, boot: Boot, shared_store: Store | None) -> tuple[Runtime, _Started]:
    """Open the edges in order and make the runtime from ``boot`` and them: the one place it is made."""
    from gateway.config.load import is_forbidden_address
    from gateway.db.listener import Listener
    from gateway.db.recorder import Recorder
    from gateway.db.store import Store
    from gateway.upstreams.transport import Transport

    cfg = boot.config
    allow_loopback = os.environ.get("CLAUDE_GATEWAY_ALLOW_LOOPBACK") == "1"
    transport = Transport(
        max_connections=cfg.gatehouse.upstream.max_connections,
        connect_timeout_s=cfg.gatehouse.upstream.connect_timeout_ms / 1000,
        idle_read_timeout_s=boot.idle_read_timeout_s,
        is_forbidden=lambda ip: is_forbidden_address(ip, allow_loopback),
        egress=boot.egress,
    )
    await transport.start()
    relay = await _start_relay(boot, transport)
    signers = await _start_signers(boot)
    own_store = shared_store is None
    if shared_store is None:
        # The gateway's own metrics time every statement (when metrics are on).
        on_statement = boot.metrics.statement if boot.metrics.enabled else None
        store = await Store.open(cfg.store, log=audit.log, on_statement=on_statement)
        await store.migrate()
    else:
        store = shared_store
    if boot.load_test is not None:
        try:
            await store.refuse_spent_for_load_test()
        except BaseException:
            # The boot stops here: what was opened so far closes first.
            await transport.close()
            for signer in signers:
                if signer is not None:
                    await signer.close()
            if relay is not None:
                await relay.drain(0.0)
            if own_store:
                await store.close()
            raise
    recorder = Recorder(store)
    await recorder.start()
    # One LISTEN connection for the whole process; the subscribers register first,
    # then one connect LISTENs on every channel and lets each resynchronise.
    listener = Listener(store)
    oidc = discovery = revocations = None
    if signin.SIGNIN_BOOT in app:
        si, discovery, revocations = await _start_signin(
            app[signin.SIGNIN_BOOT], boot, store, listener, allow_loopback
        )
        app[signin.SIGNIN] = si
        oidc = si.oidc
    spend = None
    if cfg.admin is not None:
        spend = await _start_spend(boot, store, listener)
    if listener.channels:
        await listener.start()
    publishers = observability.open_publishers(boot)
    rt = Runtime.complete(
        boot,
        transport=transport,
        relay=relay,
        signers=signers,
        store=store,
        recorder=recorder,
        revocations=revocations,
        spend=spend,
        instruments=publishers.instruments,
        tracer=publishers.tracer,
    )
    observability.watch_runtime(boot.metrics, rt)
    return rt, _Started(own_store, oidc, discovery, listener)


# The token endpoints the signers call are other hosts than the upstreams: NO_PROXY may
# treat them differently, so each gets the proxy chosen for its own URL.
AZURE_AUTHORITY_URL = "https://login.microsoftonline.com/"


async def _start_relay(boot: Boot, transport: Transport) -> Relay | None:
    """The OTLP relay to ``telemetry.forward_to``, sending through the upstreams' transport
    (same address guard, same egress proxy rules)."""
    telemetry = boot.config.telemetry
    if telemetry is None or not telemetry.forward_to:
        return None
    # Only now: the relay brings grpc with it, which a gateway without forward_to never loads.
    from gateway.telemetry.destinations import destinations, url_warnings
    from gateway.telemetry.relay import Relay

    dests = destinations(telemetry)
    signers = _telemetry_signers(boot, dests)
    for signer in signers.values():
        await signer.start()
    max_bytes = boot.config.gatehouse.telemetry.queue_max_bytes
    relay = Relay(dests, transport, egress=boot.egress, signers=signers, max_queue_bytes=max_bytes)
    relay.start()
    signals = sorted({signal for d in dests for signal in d.urls})
    audit.log("info", f"telemetry: relaying {', '.join(signals) or 'nothing'} to {len(dests)} destination(s)")
    for warning in url_warnings(telemetry):
        audit.log("warn", warning)
    return relay


class _GoogleIdentity(NamedTuple):
    """What GoogleSigner reads of an upstream, for a collector: the gateway's own ADC."""

    name: str
    auth: UpstreamAuth


def _telemetry_signers(boot: Boot, dests: tuple[Destination, ...]) -> dict[str, Signer]:
    """``auth: {google: {}}`` destinations get a bearer from the gateway's Google
    credentials (Application Default Credentials), refreshed like Vertex's."""
    from gateway.config.schema import UpstreamAuth
    from gateway.upstreams.google_credentials import GoogleSigner

    assert boot.config.telemetry is not None
    signers: dict[str, Signer] = {}
    for config, dest in zip(boot.config.telemetry.forward_to, dests, strict=True):
        if config.auth is not None and config.auth.google is not None:
            identity = _GoogleIdentity(f"telemetry {dest.name}", UpstreamAuth())
            signers[dest.name] = GoogleSigner(identity, clock=boot.clock, proxy_for=boot.egress.proxy_for)
    return signers


def _loopback_url(url: str) -> bool:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    return os.environ.get("CLAUDE_GATEWAY_ALLOW_LOOPBACK") == "1" and (host == "localhost" or host.startswith("127."))


async def _start_signers(boot: Boot) -> tuple[Signer | None, ...]:
    """The credential edge of each upstream that signs or fetches tokens: built once,
    shared by every request (one refresh in flight), refreshed by itself."""
    signers: list[Signer | None] = []
    for upstream in boot.config.upstreams:
        kind = needs_signer(upstream)
        signer: Signer | None = None
        if kind == "aws":
            from gateway.upstreams.aws_credentials import AwsSigner

            sts = f"https://sts.{upstream.region}.amazonaws.com" if upstream.assume_role is not None else None
            signer = AwsSigner(
                upstream,
                service=signing_service(upstream) or "bedrock",
                clock=boot.clock,
                proxy=boot.egress.proxy_for(sts) if sts is not None else None,
            )
        elif kind == "google":
            from gateway.upstreams.google_credentials import GoogleSigner

            # Per URL: a key file may name its own token_uri.
            signer = GoogleSigner(upstream, clock=boot.clock, proxy_for=boot.egress.proxy_for)
        elif kind == "azure":
            from gateway.upstreams.azure_credentials import AzureSigner

            authority = os.environ.get("AZURE_AUTHORITY_HOST") or AZURE_AUTHORITY_URL
            signer = AzureSigner(
                upstream,
                clock=boot.clock,
                proxy=boot.egress.proxy_for(authority),
                # MSAL asks Microsoft whether an authority it does not know is genuine; a
                # loopback authority (tests, under CLAUDE_GATEWAY_ALLOW_LOOPBACK=1) never is.
                credential_options={"disable_instance_discovery": True} if _loopback_url(authority) else None,
            )
        if signer is not None:
            await signer.start()
        signers.append(signer)
    return tuple(signers)


async def _start_spend(boot: Boot, store: Store, listener: Listener) -> SpendStore:
    from gateway.db.store import StoreUnavailable
    from gateway.spend.store import SpendStore

    cfg = boot.config
    assert cfg.admin is not None and boot.allowances is not None
    clock = boot.clock
    spend = SpendStore(
        store,
        clock=lambda: datetime.fromtimestamp(clock(), UTC),
        timeout_s=cfg.gatehouse.spend.store_timeout_ms / 1000,
        reservation_ttl_s=cfg.gatehouse.spend.reservation_ttl_seconds,
        leases=cfg.gatehouse.spend.leases,
        lease_ttl_s=cfg.gatehouse.spend.lease_ttl_seconds,
        mode=cfg.admin.group_limit_mode,
        blocked_message=cfg.admin.blocked_message,
        scheduled=True,
        listener=listener,
    )
    await spend.start()
    try:
        await spend.seed_allowances(boot.allowances)
    except StoreUnavailable as exc:
        audit.log("warn", f"output allowances not seeded from history: {exc}")
    return spend


async def _start_signin(
    si_boot: signin.SignInBoot, boot: Boot, store: Store, listener: Listener, allow_loopback: bool
) -> tuple[signin.SignIn, asyncio.Task[None], RevocationWatcher]:
    """Open the sign-in edges and make the :class:`~gateway.http.signin.SignIn` from ``si_boot`` and them."""
    from gateway.auth.device_store import DeviceStore
    from gateway.auth.oidc import OidcClient
    from gateway.auth.revocations import RevocationWatcher
    from gateway.auth.session_store import SessionService

    cfg = boot.config
    assert cfg.oidc is not None
    groups = None
    if cfg.oidc.google_groups is not None:
        from gateway.auth.google_groups import GoogleGroups

        # Closed with the OIDC client; remembered groups last as long as a session token.
        groups = GoogleGroups.from_config(
            cfg.oidc, ttl_s=boot.tokens.ttl_seconds, allow_loopback=allow_loopback, clock=boot.clock, egress=boot.egress
        )
        await groups.start()
    oidc = OidcClient(
        cfg.oidc, allow_loopback=allow_loopback, clock=boot.clock, egress=boot.egress, groups=groups
    )
    await oidc.start()
    sessions = SessionService(
        store,
        boot.tokens,
        secrets=tuple(cfg.session.secrets),
        clock=boot.clock,
        max_lifetime_s=cfg.gatehouse.signin.session_max_days * 86400,
    )
    revocations = RevocationWatcher(store, ttl_s=boot.tokens.ttl_seconds, listener=listener, clock=boot.clock)
    await revocations.start()
    si = signin.SignIn.complete(si_boot, devices=DeviceStore(store), oidc=oidc, sessions=sessions)

    async def discover_once() -> None:
        # Sign-in needs the IdP; inference does not. A replica whose IdP is down
        # at boot still serves existing sessions and discovers on first use.
        try:
            await oidc.discover()
        except Exception as exc:
            audit.log("warn", f"OIDC discovery failed at startup, will retry on first sign-in: {exc}")

    return si, asyncio.create_task(discover_once()), revocations


@web.middleware
async def envelope_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    try:
        decision = rt.access.decide(request.remote, request.headers.get("X-Forwarded-For"), request.path)
        request[CLIENT_IP] = decision.client_ip
        if not decision.allowed:
            audit.emit("access.denied", reason=decision.reason, client_ip=decision.client_ip, path=request.path)
            raise GatewayError(Kind.FORBIDDEN, "forbidden")
        if rt.access.first_public_client(decision.client_ip):
            # Once per process (SPEC NET-7): clients reach us from outside private address space.
            audit.emit("access.public_client", client_ip=decision.client_ip, path=request.path)
        _check_request_line_and_headers(request, rt)
        response = await handler(request)
    except Fault as err:
        # Each fault knows its answer (the Anthropic envelope, OAuth's shape, an
        # upstream's reply relayed); one with none is an internal error.
        answer = err.answer(request_id)
        if answer is None:
            raise
        status, headers, body = answer
        headers["request-id"] = request_id
        return web.Response(status=status, body=body, headers={**headers, **SECURITY_HEADERS})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = _HTTP_KINDS.get(exc.status, Kind.INVALID_REQUEST)
        message = "not found" if exc.status == 404 else (exc.reason or "bad request").lower()
        headers = {"Content-Type": "application/json", "request-id": request_id, **SECURITY_HEADERS}
        return web.Response(status=exc.status, body=error_body(_type_for(kind), message, request_id), headers=headers)
    except Exception as exc:
        # The database (or its driver) refusing one request's values — a NUL byte
        # in text, a number out of range — is that request's fault, not the
        # gateway's: a 400 for it alone, never an internal error. Handlers that
        # can say more refuse such values earlier; this is the net under them.
        # The message can quote the value, so the log names only its class.
        if not is_data_error(exc):
            raise
        audit.log(
            "warn",
            f"{request.method} {quoted(request.path, 200)}: the database refused a value of this request "
            f"({type(exc).__name__}); answered 400",
        )
        status, headers, body = render(GatewayError(Kind.INVALID_REQUEST, "a value in this request cannot be stored"), request_id)
        headers["request-id"] = request_id
        return web.Response(status=status, body=body, headers={**headers, **SECURITY_HEADERS})
    if not response.prepared:
        response.headers["request-id"] = request_id
        response.headers.update(SECURITY_HEADERS)
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


# aiohttp's parser refuses a request line or header line over its limits before
# any handler runs; gateway.app.bad_requests answers that refusal with our 414 or 431
# in the envelope. So the parser's limits are simply ours: the configured ones,
# else bounded defaults that stop one connection from making us buffer without
# end. Both 414 and 431 come from one exception carrying the limit it crossed,
# so the header limit is kept above the request-line limit to tell them apart
# (a header limit at or below the URL limit is raised to one byte above it;
# the configured total is still enforced, on the whole header section).
PARSER_LINE_DEFAULT = 64 * 1024
PARSER_FIELD_DEFAULT = 64 * 1024


def parser_limits(cfg: Config) -> dict[str, int]:
    line = cfg.limits.max_url_length or PARSER_LINE_DEFAULT
    field = cfg.limits.max_request_header_bytes or PARSER_FIELD_DEFAULT
    return {"max_line_size": line, "max_field_size": max(field, line + 1), "max_headers": 1000}
