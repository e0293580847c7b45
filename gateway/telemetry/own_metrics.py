"""The gateway's own metrics, counted in plain in-process tables.

Theory of operation: the hot path never calls the OpenTelemetry SDK. One
synchronous ``Counter.add`` or ``Histogram.record`` with four attributes costs
7-19 µs here (measured), about a dict increment's hundredfold, and a request
touches a dozen series. So every event is counted in a dict of numbers keyed by
its label values, and histograms are fixed buckets in a list of numbers; the
edge (:mod:`gateway.telemetry.instruments`) publishes these tables through the
SDK's observable instruments when a collector or Prometheus asks.

Rules:

* :data:`SPECS` is the one list of what is exported: names, kinds, units,
  labels. The edge builds its instruments from it; README "Observability"
  documents it.
* Counting happens on the event loop's thread; reading may happen on the SDK's
  export thread. Readers only take copies (``dict.copy``, list slices), which
  CPython makes without running Python code in between, so a read never sees a
  table change size under it. A series' buckets, sum, min and max live in one
  list, copied at once.
* Label values a client chooses (the model it names, an email) are bounded:
  past :data:`MAX_LABEL_VALUES` distinct values a label reads ``other``, so a
  client cannot grow memory or a collector's series without bound.
* Values that already live elsewhere (requests in flight, the database pool,
  the relay's queues) are not copied on every change: :meth:`OwnMetrics.watch`
  registers a function that reads them at export time.
* :class:`Unmetered` is the same surface doing nothing, for a gateway with no
  metrics configured: every hook stays one call and costs next to nothing.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from typing import Literal, NamedTuple

Labels = tuple[str, ...]
Table = dict[Labels, float]
Instrument = Literal["counter", "updown", "gauge", "histogram"]

# Request latencies: model calls run from milliseconds (count_tokens, a cached
# reply) to many minutes (long thinking streams), so the buckets span both.
LATENCY_BOUNDS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# SQL statements: a healthy one takes well under a millisecond to a few.
STATEMENT_BOUNDS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Distinct values one client-chosen label may take before the rest read OTHER.
MAX_LABEL_VALUES = 200
MAX_USERS = 10_000
OTHER = "other"


class Spec(NamedTuple):
    """One exported metric: its OpenTelemetry name, instrument, unit (UCUM), labels."""

    name: str
    instrument: Instrument
    unit: str
    description: str
    labels: Labels
    bounds: tuple[float, ...] = ()


# ------------------------------------------------------------------ requests
REQUESTS = Spec(
    "gatehouse.requests", "counter", "{request}", "Messages requests answered, by route, status, model and upstream",
    ("route", "status", "model", "upstream"),
)
REQUEST_DURATION = Spec(
    "gatehouse.request.duration", "histogram", "s", "Whole request, from arrival to the last byte sent",
    ("route", "model", "upstream"), LATENCY_BOUNDS_S,
)
UPSTREAM_HEADERS_DURATION = Spec(
    "gatehouse.upstream.headers.duration", "histogram", "s",
    "From arrival to the serving upstream's response headers (failovers included)",
    ("route", "model", "upstream"), LATENCY_BOUNDS_S,
)
FIRST_BYTE_DURATION = Spec(
    "gatehouse.stream.first_byte.duration", "histogram", "s",
    "From arrival to the first byte of a streamed reply written to the client",
    ("model", "upstream"), LATENCY_BOUNDS_S,
)
TOKENS = Spec(
    "gatehouse.tokens", "counter", "{token}", "Tokens used, by model, billing group and type",
    ("model", "group", "type"),
)
TOKENS_BY_USER = TOKENS._replace(labels=(*TOKENS.labels, "user"))
COST = Spec(
    "gatehouse.cost.usd", "counter", "{USD}", "What requests cost at the configured prices, in US dollars",
    ("model", "group"),
)
COST_BY_USER = COST._replace(labels=(*COST.labels, "user"))
FAILOVERS = Spec(
    "gatehouse.failovers", "counter", "{failover}", "Requests moved on to a next upstream", ("route",),
)
UPSTREAM_ERRORS = Spec(
    "gatehouse.upstream.errors", "counter", "{error}", "Upstream attempts that failed, by upstream and kind",
    ("upstream", "kind"),
)
INFLIGHT_REQUESTS = Spec(
    "gatehouse.inflight.requests", "updown", "{request}", "Messages requests being handled", (),
)
INFLIGHT_STREAMS = Spec(
    "gatehouse.inflight.streams", "updown", "{stream}", "Streamed replies being relayed", (),
)
# ------------------------------------------------------------------ upstream health
UPSTREAM_COOLDOWNS = Spec(
    "gatehouse.upstream.cooldowns", "counter", "{cooldown}", "Times an upstream started being skipped", ("upstream",),
)
UPSTREAM_COOLING = Spec(
    "gatehouse.upstream.cooling", "gauge", "1", "1 while an upstream is skipped after failures", ("upstream",),
)
# ------------------------------------------------------------------ spend
SPEND_ADMISSIONS = Spec(
    "gatehouse.spend.admissions", "counter", "{request}",
    "Requests admitted by the spend gate: database, lease (from memory), uncapped, unjudged (store down)",
    ("via",),
)
SPEND_REFUSALS = Spec(
    "gatehouse.spend.refusals", "counter", "{request}",
    "Requests refused by the spend gate: over_limit, store_unavailable, settlements_owed",
    ("reason",),
)
# ------------------------------------------------------------------ sign-in
SIGNIN_TOKENS = Spec(
    "gatehouse.signin.tokens", "counter", "{request}",
    "Token endpoint answers: grant device_code (a sign-in) or refresh_token; result issued or the OAuth error",
    ("grant", "result"),
)
# ------------------------------------------------------------------ database
DB_CONNECTIONS = Spec(
    "gatehouse.db.connections", "updown", "{connection}", "Pooled database connections, busy or idle", ("state",),
)
DB_CONNECTIONS_MAX = Spec(
    "gatehouse.db.connections.max", "gauge", "{connection}", "The pool's connection limit", (),
)
DB_STATEMENT_DURATION = Spec(
    "gatehouse.db.statement.duration", "histogram", "s", "SQL statements, by the name of their file in sql/",
    ("statement",), STATEMENT_BOUNDS_S,
)
DB_STATEMENT_ERRORS = Spec(
    "gatehouse.db.statement.errors", "counter", "{statement}", "SQL statements that raised", ("statement",),
)
# ------------------------------------------------------------------ the OTLP relay
RELAY_QUEUE_EXPORTS = Spec(
    "gatehouse.relay.queue.exports", "updown", "{export}", "Exports waiting for a telemetry.forward_to destination",
    ("destination",),
)
RELAY_QUEUE_BYTES = Spec(
    "gatehouse.relay.queue.bytes", "updown", "By", "Bytes waiting for a destination", ("destination",),
)
RELAY_EXPORTS = Spec(
    "gatehouse.relay.exports", "counter", "{export}",
    "Relayed exports by outcome: sent, retried (a failed try), rejected (not retried), dropped (queue full or "
    "drain), partial (delivered, some items refused), unstampable (not readable for identity stamping)",
    ("destination", "outcome"),
)
RELAY_DROPPED_BYTES = Spec(
    "gatehouse.relay.dropped.bytes", "counter", "By", "Bytes of exports dropped", ("destination",),
)

SPECS: tuple[Spec, ...] = (
    REQUESTS, REQUEST_DURATION, UPSTREAM_HEADERS_DURATION, FIRST_BYTE_DURATION, TOKENS, COST, FAILOVERS,
    UPSTREAM_ERRORS, INFLIGHT_REQUESTS, INFLIGHT_STREAMS, UPSTREAM_COOLDOWNS, UPSTREAM_COOLING, SPEND_ADMISSIONS,
    SPEND_REFUSALS, SIGNIN_TOKENS, DB_CONNECTIONS, DB_CONNECTIONS_MAX, DB_STATEMENT_DURATION, DB_STATEMENT_ERRORS,
    RELAY_QUEUE_EXPORTS, RELAY_QUEUE_BYTES, RELAY_EXPORTS, RELAY_DROPPED_BYTES,
)


class Usage(NamedTuple):
    """A request's tokens, by the type label they are counted under."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0


USAGE_TYPES = ("input", "output", "cache_read", "cache_write")


class Finished(NamedTuple):
    """One Messages request at its end: everything the request metrics need."""

    route: str
    status: int
    model: str | None
    upstream: str | None
    total_s: float
    headers_s: float | None = None  # to the serving upstream's response headers
    first_byte_s: float | None = None  # to the first streamed byte written to the client
    usage: Usage = Usage()
    cost_usd: float | None = None  # None: no prices configured
    group: str | None = None
    user: str | None = None
    attempts: int = 0
    failures: tuple[tuple[str, str], ...] = ()  # (upstream, kind) per failed attempt


class HistogramPoint(NamedTuple):
    """A histogram series as read at export time; ``buckets[i]`` counts values up to ``bounds[i]``, the last above all."""

    labels: dict[str, str]
    buckets: list[int]
    total: int  # values observed: the buckets' sum
    sum: float
    min: float
    max: float


class _Bounded:
    """The values one label has taken; past ``cap`` distinct ones, new values read OTHER."""

    __slots__ = ("cap", "seen")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if value is None:
            return ""
        if value in self.seen:
            return value
        if len(self.seen) >= self.cap:
            return OTHER
        self.seen.add(value)
        return value


class OwnMetrics:
    """The in-process tables. Counting methods never raise and never allocate beyond a new series."""

    enabled = True

    def __init__(self, *, by_user: bool = False, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.by_user = by_user
        self.tokens = TOKENS_BY_USER if by_user else TOKENS
        self.cost = COST_BY_USER if by_user else COST
        self.specs = tuple(
            self.tokens if s is TOKENS else self.cost if s is COST else s for s in SPECS
        )
        self.started_ns = clock_ns()
        self._counts: dict[str, Table] = {s.name: {} for s in self.specs if s.instrument != "histogram"}
        self._series: dict[str, dict[Labels, list[float]]] = {
            s.name: {} for s in self.specs if s.instrument == "histogram"
        }
        self._bounds = {s.name: s.bounds for s in self.specs if s.instrument == "histogram"}
        self._watched: dict[str, Callable[[], Mapping[Labels, float]]] = {}
        self._model = _Bounded(MAX_LABEL_VALUES)
        self._user = _Bounded(MAX_USERS)
        self._kind = _Bounded(MAX_LABEL_VALUES)
        self._group = _Bounded(MAX_LABEL_VALUES)

    # ------------------------------------------------------------ counting (the event loop)

    def add(self, spec: Spec, labels: Labels, value: float = 1) -> None:
        table = self._counts[spec.name]
        table[labels] = table.get(labels, 0) + value

    def observe(self, spec: Spec, labels: Labels, value: float) -> None:
        """One value into a histogram series: its bucket, the sum, the extremes."""
        table = self._series[spec.name]
        series = table.get(labels)
        bounds = self._bounds[spec.name]
        if series is None:
            # buckets…, sum, min, max: one list, so a reader copies a consistent series at once.
            series = table[labels] = [0] * (len(bounds) + 1) + [0.0, value, value]
        series[bisect_left(bounds, value)] += 1
        series[-3] += value
        if value < series[-2]:
            series[-2] = value
        elif value > series[-1]:
            series[-1] = value

    def observe_request(self, r: Finished) -> None:
        """Everything one Messages request counts for, in one call at its end."""
        route, model, upstream = r.route, self._model(r.model), r.upstream or ""
        self.add(REQUESTS, (route, str(r.status or 500), model, upstream))
        self.observe(REQUEST_DURATION, (route, model, upstream), r.total_s)
        if r.headers_s is not None:
            self.observe(UPSTREAM_HEADERS_DURATION, (route, model, upstream), r.headers_s)
        if r.first_byte_s is not None:
            self.observe(FIRST_BYTE_DURATION, (model, upstream), r.first_byte_s)
        if r.attempts > 1:
            self.add(FAILOVERS, (route,), r.attempts - 1)
        for failed, kind in r.failures:
            self.add(UPSTREAM_ERRORS, (failed, self._kind(kind)))
        group = self._group(r.group)
        user = (self._user(r.user),) if self.by_user else ()
        tokens = self._counts[self.tokens.name]
        for kind, count in zip(USAGE_TYPES, r.usage, strict=True):
            if count:
                key = (model, group, kind) + user
                tokens[key] = tokens.get(key, 0) + count
        if r.cost_usd:
            self.add(self.cost, (model, group) + user, r.cost_usd)

    def statement(self, name: str, seconds: float, ok: bool) -> None:
        """One SQL statement's time (the database layer calls this; ``name`` is its sql/ file)."""
        self.observe(DB_STATEMENT_DURATION, (name,), seconds)
        if not ok:
            self.add(DB_STATEMENT_ERRORS, (name,))

    def watch(self, spec: Spec, read: Callable[[], Mapping[Labels, float]]) -> None:
        """Have ``spec`` read by ``read`` at export time instead of from a table."""
        self._watched[spec.name] = read

    # ------------------------------------------------------------ reading (any thread)

    def points(self, spec: Spec) -> list[tuple[dict[str, str], float]]:
        """A counter's or gauge's series now: (labels, value)."""
        read = self._watched.get(spec.name)
        table = dict(read()) if read is not None else self._counts[spec.name].copy()
        return [(dict(zip(spec.labels, key, strict=True)), value) for key, value in table.items()]

    def histogram(self, spec: Spec) -> list[HistogramPoint]:
        series = self._series[spec.name].copy()
        points = []
        for key, raw in series.items():
            values = raw[:]
            buckets = [int(v) for v in values[:-3]]
            labels = dict(zip(spec.labels, key, strict=True))
            points.append(HistogramPoint(labels, buckets, sum(buckets), values[-3], values[-2], values[-1]))
        return points


class Unmetered(OwnMetrics):
    """No metrics configured: the same hooks, doing nothing."""

    enabled = False

    def add(self, spec: Spec, labels: Labels, value: float = 1) -> None:
        return None

    def observe(self, spec: Spec, labels: Labels, value: float) -> None:
        return None

    def observe_request(self, r: Finished) -> None:
        return None


# ------------------------------------------------------------------ readers of other parts' state


RELAY_OUTCOMES = ("sent", "retried", "rejected", "dropped", "partial", "unstampable")


def relay_tables(counters: Mapping[str, Mapping[str, int]]) -> dict[str, Table]:
    """The relay's per-destination counters (``Relay.counters()``) as the four relay metrics' tables."""
    queue: Table = {}
    queued_bytes: Table = {}
    exports: Table = {}
    dropped_bytes: Table = {}
    for dest, c in counters.items():
        queue[(dest,)] = c.get("queued", 0)
        queued_bytes[(dest,)] = c.get("queued_bytes", 0)
        dropped_bytes[(dest,)] = c.get("dropped_bytes", 0)
        for outcome in RELAY_OUTCOMES:
            exports[(dest, outcome)] = c.get(outcome, 0)
    return {
        RELAY_QUEUE_EXPORTS.name: queue,
        RELAY_QUEUE_BYTES.name: queued_bytes,
        RELAY_EXPORTS.name: exports,
        RELAY_DROPPED_BYTES.name: dropped_bytes,
    }


def pool_table(size: int, idle: int) -> Table:
    """Busy and idle connections from a pool's size and idle count."""
    return {("busy",): max(size - idle, 0), ("idle",): idle}


def per_upstream(names: Iterable[str], values: Iterable[float]) -> Table:
    return {(name,): value for name, value in zip(names, values, strict=True)}
