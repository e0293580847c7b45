"""Everything the handlers need, computed once at boot from the config.

Handlers never look things up in the config per request; they read these
precomputed values (SPEC "Hot path": no per-request config lookups). The
config itself stays on the runtime for the composition (background jobs read
their settings from it once, at startup), never for a handler.

Built in two steps, each complete:

* :class:`Boot` is what :func:`gateway.app.build.build` computes before any
  event loop runs: tokens, routes, upstream plans, limits, the spend switches,
  access lists, policies, prices, allowances, sightings, the task set.
* :class:`Runtime` is a ``Boot`` plus the edges that need the running loop (the
  database pool, the outbound HTTP session, the usage recorder, the revocation
  watcher, the spend store, the publishers of the gateway's own metrics and
  traces). The startup hook opens those and makes the runtime in one function (``gateway.app.build._start``); only then is it set
  on the app, so a handler never sees a runtime with an edge missing. The
  edges that exist only with some config sections are ``X | None`` from the
  start and stay so: ``revocations`` with ``oidc``, ``spend`` with ``admin``.

The edge classes are imported for type checking only: importing this module
(the CLI does, to mint tokens) opens no database driver or HTTP client module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from gateway.auth.tokens import TokenService
from gateway.db.tasks import TaskSet
from gateway.http.sightings import ChecksumSightings
from gateway.netaccess import AccessPolicy
from gateway.policy.policies import Policies
from gateway.telemetry.own_metrics import OwnMetrics, Unmetered
from gateway.upstreams.egress import Egress
from gateway.upstreams.health import Health
from gateway.upstreams.load_test import Canned
from gateway.upstreams.outbound import Signer, Translator
from gateway.upstreams.routing import Routes

if TYPE_CHECKING:
    from gateway.auth.revocations import RevocationWatcher
    from gateway.config.schema import Config
    from gateway.db.recorder import Recorder
    from gateway.db.store import Store
    from gateway.spend.budget import AllowanceTracker
    from gateway.spend.pricing import Pricing
    from gateway.spend.store import SpendStore
    from gateway.telemetry.instruments import Instruments
    from gateway.telemetry.relay import Relay
    from gateway.telemetry.tracing import RequestTracer
    from gateway.upstreams.transport import Transport


@dataclass
class Limits:
    max_request_bytes: int
    max_header_bytes: int | None
    max_url_length: int | None


@dataclass
class UpstreamPlan:
    """One configured upstream as the hot path uses it: computed at boot, pure."""

    name: str
    provider: str
    translator: Translator
    ttfb_s: float
    proxy: str | None = None  # the egress proxy for this upstream's URL, chosen once at boot


@dataclass(frozen=True, slots=True)
class SpendSwitches:
    """The spend settings the gate reads per request (``gatehouse.spend``, ``enforcement``)."""

    output_allowance_tokens: int
    topup_tokens: int
    cut_streams_at_cap: bool
    fail_closed_on_error: bool
    store_timeout_s: float


@dataclass(kw_only=True)
class Boot:
    """What is computed from the config before the event loop runs."""

    config: Config
    tokens: TokenService
    routes: Routes
    upstreams: tuple[UpstreamPlan, ...]
    egress: Egress  # HTTPS_PROXY / NO_PROXY, read once at boot
    health: Health  # which upstreams this replica skips for a while (transport failures)
    ping_interval_s: float  # silence after which a re-emitted (Bedrock) stream gets a ping
    stamp_identity: bool  # relayed exports get the bearer's identity (gatehouse.telemetry.stamp_identity)
    limits: Limits
    idle_read_timeout_s: float
    spend_switches: SpendSwitches
    access: AccessPolicy
    policies: Policies
    tasks: TaskSet  # work a client hang-up must not cancel
    sightings: ChecksumSightings
    pricing: Pricing | None  # with admin: or pricing:
    allowances: AllowanceTracker | None  # with admin: or pricing:
    billing_group_tag: str | None = None
    # load_test_mode on: the canned replies (requests are signed, then dropped).
    load_test: Canned | None = None
    clock: Callable[[], float] = time.time
    # The gateway's own metrics, counted in process (Unmetered: none configured).
    metrics: OwnMetrics = field(default_factory=Unmetered)


@dataclass(kw_only=True)
class Runtime(Boot):
    """A :class:`Boot` with its edges open: what every handler reads, complete from the first request."""

    transport: Transport
    relay: Relay | None  # with telemetry.forward_to
    signers: tuple[Signer | None, ...]  # per upstream: the credential edge, None when the translator carries it
    store: Store
    recorder: Recorder
    revocations: RevocationWatcher | None  # with oidc:
    spend: SpendStore | None  # with admin:
    # Publish ``metrics`` (with gatehouse.telemetry.metrics) / trace requests (with traces.otlp).
    instruments: Instruments | None = None
    tracer: RequestTracer | None = None
    started_at: float = field(default_factory=time.time)
    draining: bool = False
    inflight: int = 0
    streams: int = 0  # streamed replies being relayed (committed, not yet ended)

    @classmethod
    def complete(
        cls,
        boot: Boot,
        *,
        transport: Transport,
        relay: Relay | None,
        signers: tuple[Signer | None, ...],
        store: Store,
        recorder: Recorder,
        revocations: RevocationWatcher | None,
        spend: SpendStore | None,
        instruments: Instruments | None = None,
        tracer: RequestTracer | None = None,
    ) -> Runtime:
        """``boot`` with its edges; called once, at startup."""
        return cls(
            **{f.name: getattr(boot, f.name) for f in fields(Boot)},
            transport=transport,
            relay=relay,
            signers=signers,
            store=store,
            recorder=recorder,
            revocations=revocations,
            spend=spend,
            instruments=instruments,
            tracer=tracer,
        )
