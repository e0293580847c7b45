"""Everything the handlers need, computed once at boot from the config.

Handlers never look things up in the config per request; they read these
precomputed values (SPEC "Hot path": no per-request config lookups).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.tokens import TokenService
from gateway.upstreams import anthropic
from gateway.upstreams.routing import Routes


@dataclass
class Limits:
    max_request_bytes: int
    max_header_bytes: int | None
    max_url_length: int | None


@dataclass
class UpstreamPlan:
    name: str
    provider: str
    prepared: anthropic.Prepared
    ttfb_s: float


@dataclass
class Runtime:
    config: Any
    tokens: TokenService
    routes: Routes
    upstreams: tuple[UpstreamPlan, ...]
    limits: Limits
    idle_read_timeout_s: float
    billing_group_tag: str | None = None
    transport: Any = None  # gateway.upstreams.transport.Transport, set on startup
    recorder: Any = None  # gateway.db.recorder.Recorder, set on startup
    store: Any = None  # gateway.db.store.Store, set on startup
    access: Any = None  # gateway.netaccess.AccessPolicy
    revocations: Any = None  # gateway.auth.revocations.RevocationWatcher, set on startup
    policies: Any = None  # gateway.policy.policies.Policies
    pricing: Any = None  # gateway.spend.pricing.Pricing (when admin: is configured)
    spend: Any = None  # gateway.spend.store.SpendStore, set on startup (when admin: is configured)
    allowances: Any = None  # gateway.spend.budget.AllowanceTracker
    tasks: Any = None  # gateway.db.tasks.TaskSet: work a client hang-up must not cancel
    sightings: Any = None  # gateway.http.managed.ChecksumSightings
    clock: Callable[[], float] = time.time
    started_at: float = field(default_factory=time.time)
    draining: bool = False
    inflight: int = 0
