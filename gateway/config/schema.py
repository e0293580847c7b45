"""The shape of ``gateway.yaml``: one frozen msgspec Struct per mapping.

Field names are the YAML keys, so a file written for Anthropic's Claude apps
gateway maps onto these types key for key. Numeric bounds live in ``Meta`` so
the validator in :mod:`gateway.config.load` reads them from one place; rules that
involve more than one field live there too, not here.

Every Struct forbids unknown fields: a misspelt key must stop the boot rather
than silently leave a security setting at its default.

Gatehouse-only tuning sits under the single ``gatehouse:`` section, so the rest
of the file stays valid for the other gateway.

The second half of the module checks plain data (parsed YAML) against these
types: :func:`shape` walks value and type together and records each problem
at its dotted path, reading bounds from the ``Meta`` annotations, then returns
the data with expanded numbers and booleans parsed, ready for
``msgspec.convert``. msgspec's own decoder would stop at the first problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec
import msgspec.inspect as mi
from msgspec import Meta, field

PositiveInt = Annotated[int, Meta(gt=0)]
NonEmpty = Annotated[str, Meta(min_length=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]
# The other gateway takes ≥ 32 characters as its stand-in for "enough entropy".
Secret32 = Annotated[str, Meta(min_length=32)]
Rate = Annotated[float, Meta(gt=0, le=10000)]

Provider = Literal[
    "anthropic", "bedrock", "mantle", "anthropicAws", "anthropicGoogleCloud", "vertex", "foundry"
]
PROVIDERS: tuple[str, ...] = Provider.__args__  # type: ignore[attr-defined]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


# ---------------------------------------------------------------- listen


class Tls(_Section, frozen=True):
    cert: NonEmpty
    key: NonEmpty


class Listen(_Section, frozen=True):
    host: NonEmpty = "0.0.0.0"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    public_url: str | None = None
    tls: Tls | None = None
    trusted_proxies: tuple[str, ...] = ()


# ---------------------------------------------------------------- oidc


class GoogleGroups(_Section, frozen=True):
    service_account_json_path: str
    admin_email: str


class ClientAssertionGatehouse(_Section, frozen=True):
    """Ours only, on ``oidc.client_assertion``: for IdPs that find the key by a
    registered id (Okta) rather than by certificate thumbprint (Entra)."""

    # Sent as the assertion's ``kid`` (IdPs that match keys by id); unset, no kid.
    key_id: NonEmpty | None = None


class ClientAssertion(_Section, frozen=True):
    private_key_pem: NonEmpty
    certificate_pem: NonEmpty
    gatehouse: ClientAssertionGatehouse = field(default_factory=ClientAssertionGatehouse)


class Oidc(_Section, frozen=True):
    issuer: NonEmpty
    client_id: NonEmpty
    client_secret: NonEmpty | None = None
    allowed_email_domains: tuple[str, ...] | None = None
    allowed_groups: tuple[str, ...] | None = None
    groups_claim: str = "groups"
    google_groups: GoogleGroups | None = None
    email_claim: str | tuple[str, ...] = "email"
    scopes: tuple[str, ...] = ("openid", "profile", "email", "offline_access")
    scope_on_refresh: bool = False
    extra_auth_params: dict[str, str] = field(default_factory=dict)
    userinfo_fallback: bool = False
    use_pkce: bool = True
    clock_skew_seconds: Annotated[int, Meta(ge=0)] = 0
    token_endpoint_auth_method: (
        Literal["client_secret_basic", "client_secret_post", "private_key_jwt"] | None
    ) = None
    client_assertion: ClientAssertion | None = None
    id_token_signed_response_alg: str = "RS256"
    additional_authorized_parties: tuple[str, ...] = ()
    discovery_url: str | None = None
    use_proxy: bool | None = None
    form_action_origins: tuple[str, ...] = ()
    ca_cert_pem: str | None = None


# ---------------------------------------------------------------- session / store


class Session(_Section, frozen=True):
    jwt_secret: Secret32 | Annotated[tuple[Secret32, ...], Meta(min_length=1)]
    # Observed: the other gateway boots with 0 and with 10000, so only negatives are refused.
    ttl_hours: Annotated[float, Meta(ge=0)] = 1

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every accepted signing secret; the first one signs new tokens."""
        return (self.jwt_secret,) if isinstance(self.jwt_secret, str) else self.jwt_secret


class StoreGatehouse(_Section, frozen=True):
    """Ours only, on ``store``: PostgreSQL reached through a connection pooler (PgBouncer)."""

    # Straight to PostgreSQL, past the pooler, for the two things that need a
    # session of their own: LISTEN (revocations, spend-limit changes) and the
    # migrations' advisory lock. Unset: store.postgres_url serves them too.
    listen_url: NonEmpty | None = None
    # How the pooler at store.postgres_url lends server connections. "transaction"
    # (PgBouncer's pool_mode = transaction): no prepared-statement cache, and
    # listen_url is required.
    pool_mode: Literal["session", "transaction"] = "session"


class Store(_Section, frozen=True):
    postgres_url: NonEmpty
    username: str | None = None
    password: str | None = None
    max_connections: PositiveInt = 5
    connect_timeout_seconds: Annotated[int, Meta(ge=1, le=60)] = 5
    readiness_grace_seconds: Annotated[int, Meta(ge=0, le=3600)] = 0
    gatehouse: StoreGatehouse = field(default_factory=StoreGatehouse)


# ---------------------------------------------------------------- upstreams


class UpstreamAuth(_Section, frozen=True):
    """Every credential key of every provider; which ones a provider accepts is
    checked per provider in :mod:`gateway.config.load` (one table there)."""

    api_key: NonEmpty | None = None
    oauth_token: NonEmpty | None = None
    # Anthropic workload identity federation
    federation_rule_id: NonEmpty | None = None
    organization_id: NonEmpty | None = None
    identity_token_file: NonEmpty | None = None
    workspace_id: NonEmpty | None = None
    service_account_id: NonEmpty | None = None
    # AWS (bedrock, mantle, anthropicAws)
    aws_access_key_id: NonEmpty | None = None
    aws_secret_access_key: NonEmpty | None = None
    aws_session_token: NonEmpty | None = None
    aws_bearer_token: NonEmpty | None = None
    # Google (vertex, anthropicGoogleCloud): a file path, not the JSON itself
    service_account_json: NonEmpty | None = None
    # Azure (foundry)
    use_azure_ad: bool | None = None


class Guardrail(_Section, frozen=True):
    id: NonEmpty
    version: NonEmpty


class AssumeRole(_Section, frozen=True):
    role_arn: NonEmpty
    external_id: NonEmpty | None = None
    session_name: Literal["email", "sub"] | None = None


class Upstream(_Section, frozen=True):
    provider: Provider
    name: NonEmpty = ""  # the loader fills in the provider name when absent
    base_url: NonEmpty | None = None
    auth: UpstreamAuth = field(default_factory=UpstreamAuth)
    headers: dict[str, str] = field(default_factory=dict)
    forward_user_identity: bool = False
    region: NonEmpty | None = None
    project_id: NonEmpty | None = None
    workspace_id: NonEmpty | None = None
    resource: NonEmpty | None = None
    guardrail: Guardrail | None = None
    assume_role: AssumeRole | None = None


class Model(_Section, frozen=True):
    id: NonEmpty
    upstream_model: dict[str, NonEmpty]
    label: str | None = None
    description: str | None = None


# ---------------------------------------------------------------- managed / telemetry


class Match(_Section, frozen=True):
    groups: tuple[str, ...] | None = None
    email_domain: str | None = None


class Policy(_Section, frozen=True):
    match: Match
    # Open documents for now; the managed-settings issue adds key validation.
    cli: dict[str, Any] | None = None
    desktop: dict[str, Any] | None = None


class Managed(_Section, frozen=True):
    policies: tuple[Policy, ...] = ()


class GoogleExportAuth(_Section, frozen=True):
    pass


class ExportAuth(_Section, frozen=True):
    google: GoogleExportAuth | None = None


class ForwardToGatehouse(_Section, frozen=True):
    """Ours only, on a ``forward_to`` entry: how exports reach this destination."""

    # http: OTLP/HTTP, the client's bytes as sent (the reference's only way).
    # grpc: OTLP/gRPC export calls to the collector's gRPC port; protobuf bodies
    # go as sent, JSON bodies are converted (gateway/telemetry/).
    protocol: Literal["http", "grpc"] = "http"


class ForwardTo(_Section, frozen=True):
    url: NonEmpty
    headers: dict[str, str] = field(default_factory=dict)
    metrics: bool = True
    logs: bool = False
    traces: bool = False
    auth: ExportAuth | None = None
    gatehouse: ForwardToGatehouse = field(default_factory=ForwardToGatehouse)


class Telemetry(_Section, frozen=True):
    forward_to: tuple[ForwardTo, ...] = ()
    resource_attributes: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- admin / spend


class AdminKey(_Section, frozen=True):
    id: NonEmpty
    key: Secret32


class Admin(_Section, frozen=True):
    write_keys: tuple[AdminKey, ...] = ()
    read_keys: tuple[AdminKey, ...] = ()
    admin_groups: tuple[str, ...] = ()
    blocked_message: str | None = None
    audit_retention_days: PositiveInt = 365
    spend_retention_months: PositiveInt = 13
    identity_retention_days: PositiveInt = 90
    group_limit_mode: Literal["min", "max"] = "min"
    billing_group_tag: str | None = None


class Enforcement(_Section, frozen=True):
    fail_closed_on_error: bool = False


class PriceOverride(_Section, frozen=True):
    upstream: NonEmpty
    model: NonEmpty
    input: Rate
    output: Rate
    cache_read: Rate
    cache_write: Rate


class Pricing(_Section, frozen=True):
    # Above 1 is a markup; the other gateway caps it at 10.
    multiplier: Annotated[float, Meta(gt=0, le=10)] = 1
    overrides: tuple[PriceOverride, ...] = ()


# ---------------------------------------------------------------- HTTP tuning


class AccessControl(_Section, frozen=True):
    allow_cidrs: tuple[str, ...] = ()
    deny_cidrs: tuple[str, ...] = ()


class Limits(_Section, frozen=True):
    max_request_bytes: PositiveInt = 32 * 1024 * 1024
    max_request_header_bytes: PositiveInt | None = None
    max_url_length: PositiveInt | None = None


class Timeouts(_Section, frozen=True):
    upstream_ttfb_ms: PositiveInt = 120_000


class RateLimit(_Section, frozen=True):
    max: PositiveInt
    window_seconds: PositiveInt = 600


class RateLimits(_Section, frozen=True):
    device_authorization: RateLimit = field(default_factory=lambda: RateLimit(max=30))
    device_verify: RateLimit = field(default_factory=lambda: RateLimit(max=10))


class LoadTestMode(_Section, frozen=True):
    enabled: bool
    reply_tokens: Annotated[int, Meta(ge=1, le=100_000)] = 750
    reply_seconds: Annotated[float, Meta(ge=0, le=600)] = 9.5


class Cri(_Section, frozen=True):
    enabled: bool = False


# ---------------------------------------------------------------- gatehouse (ours only)


class GatehouseUpstream(_Section, frozen=True):
    max_connections: Annotated[int, Meta(ge=1, le=65535)] = 256
    connect_timeout_ms: PositiveInt = 10_000
    # Claude Code abandons a silent stream after 300 s; a shorter idle timeout
    # here would cut streams the client still waits for.
    idle_read_timeout_seconds: Annotated[float, Meta(ge=300)] = 300
    # A Bedrock stream silent this long gets an `event: ping` (the client's watchdog
    # resets on any event); the Anthropic API and Vertex send their own.
    ping_interval_seconds: Annotated[float, Meta(ge=1, le=120)] = 15
    health: GatehouseUpstreamHealth = field(default_factory=lambda: GatehouseUpstreamHealth())


class GatehouseUpstreamHealth(_Section, frozen=True):
    """Skip an upstream that failed for transport reasons ``failures`` times in a row
    (gateway/upstreams/health.py); Anthropic's gateway retries it on every request."""

    enabled: bool = True
    failures: Annotated[int, Meta(ge=1, le=100)] = 3
    cooldown_ms: Annotated[int, Meta(ge=100, le=600_000)] = 5_000
    max_cooldown_ms: Annotated[int, Meta(ge=100, le=3_600_000)] = 60_000


class GatehouseSpend(_Section, frozen=True):
    store_timeout_ms: PositiveInt = 2000
    output_allowance_tokens: Annotated[int, Meta(ge=0)] = 4096
    cut_streams_at_cap: bool = False
    # A running stream grows its reservation by this many output tokens at a
    # time: larger steps mean fewer database calls, smaller ones less overshoot
    # per stream when a cap runs out without cut_streams_at_cap.
    topup_tokens: Annotated[int, Meta(ge=64, le=1_000_000)] = 2048
    # An open reservation whose owner stops renewing it (the process died) is
    # charged its reserved amount after this long. Each top-up renews it, so it
    # must outlast the longest silence in a live request (time to first byte,
    # thinking pauses, a long non-streaming reply). Values of a few seconds are
    # for tests: a reservation that expires while its request still runs is
    # charged its reserved amount, then corrected when the request settles.
    reservation_ttl_seconds: Annotated[int, Meta(ge=2, le=86_400)] = 1800
    # Admit a person's requests from memory against a slice of their cap's headroom
    # leased in advance (gateway/spend/leases.py), instead of a database round trip
    # each. Caps hold either way; off, every capped request reserves on its own.
    leases: bool = True
    # A lease whose replica stops renewing it (every second while alive) expires
    # after this long: what its running requests held is charged, the rest freed.
    lease_ttl_seconds: Annotated[int, Meta(ge=4, le=3600)] = 60


class GatehouseSignin(_Section, frozen=True):
    # Shown next to the code in Claude Code (the protocol caps it at 500 characters).
    login_notice: Annotated[str, Meta(max_length=500)] | None = None
    # A sign-in family (one /login) lives at most this long, however often it is
    # refreshed; then the person signs in again. Refresh re-checks them with the
    # IdP every ttl_hours in between.
    session_max_days: Annotated[int, Meta(ge=1, le=365)] = 30


class GatehouseConnections(_Section, frozen=True):
    # Deadlines on reading client requests (gateway/app/connections.py). None applies
    # while a response is written: streams are bounded by upstream.idle_read_timeout_seconds.
    # The whole request line and headers, from the connection's accept (or a later
    # request's first byte); a late head closes the connection unanswered.
    header_read_timeout_seconds: Annotated[float, Meta(gt=0, le=3600)] = 20
    # The whole body, from the end of its head; late gets 408. 32 MiB (the default
    # body limit) arrives in 300 s at about 1 Mbit/s.
    body_read_timeout_seconds: Annotated[float, Meta(gt=0, le=3600)] = 300
    # A kept-alive connection with no new request. Above the 60 s idle timeout of
    # common load balancers, so they close first and never reuse a connection we close.
    keepalive_idle_timeout_seconds: Annotated[float, Meta(gt=0, le=3600)] = 75


class GatehouseOtlp(_Section, frozen=True):
    """Where the gateway sends its own metrics or traces (not the clients' relayed exports)."""

    # The collector's base URL: https:// (http:// only for loopback, and loopback
    # only under CLAUDE_GATEWAY_ALLOW_LOOPBACK=1, as for every outbound address).
    endpoint: NonEmpty
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    headers: dict[str, str] = field(default_factory=dict)


class GatehousePrometheus(_Section, frozen=True):
    enabled: bool = False
    # host:port of a listener of its own that serves only GET /metrics, without
    # auth (keep it off the public network). Unset: GET /metrics on the main
    # listener, answered only with an admin key (read or write).
    listen: str | None = None


class GatehouseMetrics(_Section, frozen=True):
    prometheus: GatehousePrometheus = field(default_factory=GatehousePrometheus)
    otlp: GatehouseOtlp | None = None
    export_interval_seconds: Annotated[float, Meta(ge=1, le=3600)] = 60
    # Tokens and cost labelled by person (their email) as well as by model and
    # group. Off by default: one series per person is heavy, and it is personal data.
    by_user: bool = False


class GatehouseTraces(_Section, frozen=True):
    # Tracing is on when an exporter is configured.
    otlp: GatehouseOtlp | None = None
    # Share of requests traced when the client sent no sampled traceparent.
    sample_ratio: Annotated[float, Meta(ge=0, le=1)] = 0.01


class GatehouseTelemetry(_Section, frozen=True):
    # Overwrite user.id, user.email, user.groups and identity.source on every
    # relayed export's resources from the bearer's claims, so a modified client
    # cannot report as someone else. Costs a decode and re-encode per export.
    stamp_identity: bool = False
    # Per destination: exports kept while a collector is down; the oldest go first.
    queue_max_bytes: Annotated[int, Meta(ge=65_536, le=4 << 30)] = 64 << 20
    metrics: GatehouseMetrics = field(default_factory=GatehouseMetrics)
    traces: GatehouseTraces = field(default_factory=GatehouseTraces)


class GatehouseRetention(_Section, frozen=True):
    """How long the sweep every replica runs (gateway/admin/retention.py) keeps usage data;
    the admin tables' own settings stay under ``admin``."""

    # Raw usage rows (one per request, with the person's email) older than this many
    # days are added to the usage_daily rollup, then deleted.
    usage_records_days: Annotated[int, Meta(ge=1, le=36_500)] = 400
    # Rollup rows (per day, person, model and upstream; no email) older than this
    # many days are deleted. Unset: kept for good, as spend history.
    usage_daily_days: Annotated[int, Meta(ge=1, le=36_500)] | None = None


class Gatehouse(_Section, frozen=True):
    # Operational log lines as text or JSON (gateway/audit.py). The environment's
    # CLAUDE_GATEWAY_LOG_FORMAT, when set, wins; neither set means text.
    log_format: Literal["text", "json"] | None = None
    upstream: GatehouseUpstream = field(default_factory=GatehouseUpstream)
    connections: GatehouseConnections = field(default_factory=GatehouseConnections)
    spend: GatehouseSpend = field(default_factory=GatehouseSpend)
    signin: GatehouseSignin = field(default_factory=GatehouseSignin)
    telemetry: GatehouseTelemetry = field(default_factory=GatehouseTelemetry)
    retention: GatehouseRetention = field(default_factory=GatehouseRetention)


# ---------------------------------------------------------------- the whole file


class Config(_Section, frozen=True):
    listen: Listen
    session: Session
    store: Store
    upstreams: Annotated[tuple[Upstream, ...], Meta(min_length=1)]
    oidc: Oidc | None = None  # required unless cri.enabled; checked by the loader
    auto_include_builtin_models: bool = True
    models: tuple[Model, ...] = ()
    managed: Managed | None = None
    telemetry: Telemetry | None = None
    admin: Admin | None = None
    enforcement: Enforcement | None = None
    pricing: Pricing | None = None
    access_control: AccessControl = field(default_factory=AccessControl)
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    rate_limits: RateLimits = field(default_factory=RateLimits)
    load_test_mode: LoadTestMode | None = None
    cri: Cri | None = None
    gatehouse: Gatehouse = field(default_factory=Gatehouse)
    # Set by the loader, never read from YAML.
    path: str = ""
    sha256: str = ""
    # Loaded without the environment (check-config --no-env): (dotted path, the
    # value as written) for each value whose ${...} was left unresolved; the
    # Config holds a stand-in there.
    unresolved: tuple[tuple[str, str], ...] = ()
    # Things in the file's text the parsed data cannot show (a value cut short
    # by an unquoted " #"), reported among the boot warnings.
    load_warnings: tuple[str, ...] = ()


# Fields of Config that describe the file rather than come from it.
LOADER_FIELDS = frozenset({"path", "sha256", "unresolved", "load_warnings"})


class Issues(list[tuple[str, str]]):
    """(dotted path, message) pairs, collected across every pass."""

    def add(self, path: str, message: str) -> None:
        self.append((path, message))


class Expanded(str):
    """A string produced by ${...}; numeric and boolean fields may parse it."""


class Unresolved(Expanded):
    """A value whose ${...} was deliberately left unresolved (a template checked
    without its environment). It stands for any scalar: the shape check accepts
    it for every scalar type and puts a valid stand-in of that type in its place,
    so the rest of the section is still shaped and rule-checked."""


# ---------------------------------------------------------------- checking data against the shape
#
# msgspec stops at the first problem and names paths its own way; this walk
# reports every unknown key, missing key, wrong type and out-of-range number
# at its own dotted path, reading bounds from the Meta annotations above.


def dotted(path: str, key: Any) -> str:
    """``path.key``, or ``path["odd key"]`` when the key is not a plain word."""
    key = str(key)
    if re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _unwrap(t: Any) -> Any:
    return t.type if isinstance(t, mi.Metadata) else t


def shape(value: Any, t: Any, path: str, issues: Issues) -> Any:
    """Return ``value`` coerced to what ``t`` decodes, recording problems by path."""
    t = _unwrap(t)
    handler = _SHAPERS.get(type(t))
    if handler is None:  # AnyType: an open document, kept as written
        return _plain(value)
    return handler(value, t, path, issues)


def _plain(value: Any) -> Any:
    """The same data with every Expanded marker turned back into a plain str,
    so open documents (managed settings) encode like any other value."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _shape_none(value: Any, t: Any, path: str, issues: Issues) -> Any:
    if value is not None:
        issues.add(path, f"expected nothing (null), got {kind(value)}")
    return value


def _shape_bool(value: Any, t: Any, path: str, issues: Issues) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, Unresolved):
        return False
    if isinstance(value, Expanded) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    issues.add(path, f"expected true or false, got {kind(value)}")
    return value


def _shape_number(value: Any, t: Any, path: str, issues: Issues) -> Any:
    want_int = isinstance(t, mi.IntType)
    if isinstance(value, Unresolved):
        return _stand_in_number(t, want_int)
    number = _as_number(value, want_int)
    if number is None:
        issues.add(path, f"expected {'an integer' if want_int else 'a number'}, got {kind(value)}")
        return value
    problem = _bounds_problem(number, t)
    if problem:
        issues.add(path, problem)
    return number


def _as_number(value: Any, want_int: bool) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):  # "${PORT}" or a quoted number
        try:
            value = int(value.strip()) if want_int else float(value.strip())
        except ValueError:
            return None
    if want_int:
        return value if isinstance(value, int) else None
    if isinstance(value, (int, float)) and value == value and value not in (float("inf"), float("-inf")):
        return float(value)
    return None


def _stand_in_number(t: Any, want_int: bool) -> int | float:
    """1, moved inside the field's bounds."""
    step = 1 if want_int else 0.5
    n: float = 1
    if t.ge is not None and n < t.ge:
        n = t.ge
    if t.gt is not None and n <= t.gt:
        n = t.gt + step
    if t.le is not None and n > t.le:
        n = t.le
    if t.lt is not None and n >= t.lt:
        n = t.lt - step
    return int(n) if want_int else float(n)


def _fmt(n: float) -> str:
    return f"{n:g}"


def _bounds_problem(n: float, t: Any) -> str | None:
    low = (
        f"greater than {_fmt(t.gt)}"
        if t.gt is not None
        else f"at least {_fmt(t.ge)}"
        if t.ge is not None
        else None
    )
    high = (
        f"less than {_fmt(t.lt)}"
        if t.lt is not None
        else f"at most {_fmt(t.le)}"
        if t.le is not None
        else None
    )
    bad = (
        (t.gt is not None and n <= t.gt)
        or (t.ge is not None and n < t.ge)
        or (t.lt is not None and n >= t.lt)
        or (t.le is not None and n > t.le)
    )
    if not bad:
        return None
    return "must be " + " and ".join(x for x in (low, high) if x)


def _shape_str(value: Any, t: Any, path: str, issues: Issues) -> Any:
    if not isinstance(value, str):
        hint = " (quote it to make it text)" if isinstance(value, (bool, int, float)) else ""
        issues.add(path, f"expected a string, got {kind(value)}{hint}")
        return value
    if isinstance(value, Unresolved):
        # Its length is the real value's, unknown here: the stand-in fits the bounds.
        stand_in = str(value).ljust(t.min_length or 0, "_")
        return stand_in if t.max_length is None else stand_in[: t.max_length]
    if t.min_length == 1 and not value:
        issues.add(path, "must not be empty")
    elif t.min_length and len(value) < t.min_length:
        issues.add(path, f"must be at least {t.min_length} characters long")
    elif t.max_length is not None and len(value) > t.max_length:
        issues.add(path, f"must be at most {t.max_length} characters long")
    return str(value)


def _shape_literal(value: Any, t: Any, path: str, issues: Issues) -> Any:
    if isinstance(value, Unresolved):
        return t.values[0]
    if value in t.values and not isinstance(value, bool):
        return str(value) if isinstance(value, str) else value
    choices = ", ".join(repr(v) for v in t.values)
    # Enum fields never hold secrets, but a short echo is enough to spot a typo.
    got = f"'{value}'" if isinstance(value, str) and len(value) <= 40 else kind(value)
    issues.add(path, f"must be one of {choices}; got {got}")
    return value


def _shape_list(value: Any, t: Any, path: str, issues: Issues) -> Any:
    if not isinstance(value, list):
        issues.add(path, f"expected a list, got {kind(value)}")
        return value
    if t.min_length and len(value) < t.min_length:
        issues.add(path, f"must list at least {t.min_length} entr{'y' if t.min_length == 1 else 'ies'}")
    return [shape(v, t.item_type, f"{path}[{i}]", issues) for i, v in enumerate(value)]


def _shape_dict(value: Any, t: Any, path: str, issues: Issues) -> Any:
    if not isinstance(value, dict):
        issues.add(path, f"expected a mapping, got {kind(value)}")
        return value
    out = {}
    for k, v in value.items():
        if not isinstance(k, str):
            issues.add(dotted(path, k), "keys must be strings (quote it)")
            continue
        out[k] = shape(v, t.value_type, dotted(path, k), issues)
    return out


def _shape_struct(value: Any, t: Any, path: str, issues: Issues) -> Any:
    if not isinstance(value, dict):
        issues.add(path or "(top level)", f"expected a mapping, got {kind(value)}")
        return value
    fields = {f.name: f for f in t.fields if not (t.cls is Config and f.name in LOADER_FIELDS)}
    for k in value:
        if k not in fields:
            issues.add(dotted(path, k), f"unknown key; expected one of: {', '.join(fields)}")
    out = {}
    for name, f in fields.items():
        if name in value:
            out[name] = shape(value[name], f.type, dotted(path, name), issues)
        elif f.required:
            issues.add(dotted(path, name), "required")
    return out


def _shape_union(value: Any, t: Any, path: str, issues: Issues) -> Any:
    branches = [_unwrap(b) for b in t.types]
    if value is None and any(isinstance(b, mi.NoneType) for b in branches):
        return None
    for branch in branches:
        if _fits(value, branch):
            return shape(value, branch, path, issues)
    wanted = " or ".join(dict.fromkeys(_describe(b) for b in branches))
    issues.add(path, f"expected {wanted}, got {kind(value)}")
    return value


def _fits(value: Any, t: Any) -> bool:
    if isinstance(value, dict):
        return isinstance(t, (mi.StructType, mi.DictType))
    if isinstance(value, list):
        return isinstance(t, (mi.ListType, mi.VarTupleType))
    if isinstance(value, bool):
        return isinstance(t, mi.BoolType)
    if isinstance(value, Unresolved):
        return isinstance(t, (mi.StrType, mi.LiteralType, mi.IntType, mi.FloatType, mi.BoolType))
    if isinstance(value, str):
        if isinstance(value, Expanded) and isinstance(t, mi.BoolType):
            return value.lower() in ("true", "false")
        return isinstance(t, (mi.StrType, mi.LiteralType, mi.IntType, mi.FloatType))
    if isinstance(value, (int, float)):
        return isinstance(t, (mi.IntType, mi.FloatType, mi.LiteralType))
    return False


def _describe(t: Any) -> str:
    names: dict[type, str] = {
        mi.StructType: "a mapping",
        mi.DictType: "a mapping",
        mi.ListType: "a list",
        mi.VarTupleType: "a list",
        mi.StrType: "a string",
        mi.LiteralType: "a string",
        mi.BoolType: "true/false",
        mi.IntType: "an integer",
        mi.FloatType: "a number",
        mi.NoneType: "nothing",
    }
    return names.get(type(t), "a value")


_SHAPERS: dict[type, Callable[[Any, Any, str, Issues], Any]] = {
    mi.NoneType: _shape_none,
    mi.BoolType: _shape_bool,
    mi.IntType: _shape_number,
    mi.FloatType: _shape_number,
    mi.StrType: _shape_str,
    mi.LiteralType: _shape_literal,
    mi.ListType: _shape_list,
    mi.VarTupleType: _shape_list,
    mi.DictType: _shape_dict,
    mi.StructType: _shape_struct,
    mi.UnionType: _shape_union,
}
