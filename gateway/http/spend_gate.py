"""The spend gate on the hot path: admit, top up while streaming, settle (SPEC §19).

Glue between the relay and the spend engine (:mod:`gateway.spend`: caps,
pricing, the store); kept beside the relay so ``messages.py`` stays a readable
list of steps. One database round trip to admit a capped request, none per SSE
chunk (top-ups are requested once per step, in the background), and one to
settle, queued where a client hang-up cannot cancel it.

Every request served is charged: one the store could not judge (it did not
answer, and ``enforcement.fail_closed_on_error`` is off) still gets a
:class:`Ticket`, so the relay settles it with what it cost like any other,
and the charge is owed until the store takes it. A request the store cannot
meter at all gets a clear refusal of its own: 429 while the owed queue is
full, 400 when the database refuses a value in it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from gateway import audit
from gateway.db.store import StoreRefused, StoreUnavailable
from gateway.errors import Answer, GatewayError, Kind, event_body, render, sse_error
from gateway.spend import caps as spend
from gateway.spend.budget import StreamBudget
from gateway.spend.pricing import Rates
from gateway.spend.settlements import Owed
from gateway.telemetry.own_metrics import SPEND_ADMISSIONS, SPEND_REFUSALS
from gateway.upstreams.sse import BYTES_PER_TOKEN_ESTIMATE, UsageTotals
from protocol_spec.wire import encoder

if TYPE_CHECKING:
    from gateway.auth.tokens import Principal
    from gateway.http.runtime import Runtime
    from gateway.upstreams.bodyview import View
    from gateway.upstreams.routing import Target

BILLING_ERROR = "billing_error"
CUT_MESSAGE = "spend limit reached"


class SpendRefused(GatewayError):
    """A 429 ``billing_error`` decided before any upstream call.

    ``Kind.OVER_SPEND_LIMIT`` when a limit is reached, ``Kind.SPEND_UNCHECKED``
    when the store could not judge the request and enforcement fails closed.
    """

    def __init__(self, kind: Kind, message: str, headers: dict[str, str]) -> None:
        super().__init__(kind, message, headers=headers)

    def answer(self, request_id: str | None) -> Answer:
        # As Anthropic's gateway answers it: the envelope without request_id.
        status, headers, _ = render(self, request_id)
        return Answer(status, headers, event_body(self.rule.error_type, self.message))


class Ticket:
    """One admitted request's standing with the spend engine: who is charged, for which model, how."""

    __slots__ = ("request_id", "principal", "model", "rates", "headers", "budget", "reserved", "pending")

    def __init__(
        self,
        request_id: str,
        principal: Principal,
        model: str,
        rates: Rates,
        headers: dict[str, str],
        budget: StreamBudget,
        reserved: bool,
    ) -> None:
        self.request_id = request_id
        self.principal = principal
        self.model = model  # as the client named it
        self.rates = rates
        self.headers = headers
        self.budget = budget
        self.reserved = reserved
        self.pending: asyncio.Task[None] | None = None  # the top-up asked for, while unanswered


def _now(rt: Runtime) -> datetime:
    return datetime.fromtimestamp(rt.clock(), UTC)


async def admit(
    rt: Runtime, request_id: str, principal: Principal, view: View, body_len: int, first: Target | None
) -> Ticket:
    """Reserve the request's estimate; the ticket the relay settles with, once, whatever it cost.

    ``view`` is the request body's model and ``max_tokens``; ``first`` the
    upstream expected to serve it (its prices make the estimate), or None when
    nothing can, which is priced as the first upstream under the client's id.
    Called only with ``admin:`` configured, which gives the runtime its spend
    store, prices and allowances.

    SpendRefused (429) over a cap, when the store cannot answer and
    enforcement fails closed, or while the store owes too many settlements;
    GatewayError (400) when the database refuses a value of the request.
    """
    store, pricing, allowances = rt.spend, rt.pricing, rt.allowances
    switches = rt.spend_switches
    assert store is not None and pricing is not None and allowances is not None
    model, max_tokens = view.model, view.max_tokens
    upstream = rt.upstreams[first.upstream if first is not None else 0].name
    rates = pricing.rates(upstream, model, first.model if first is not None else model)
    allowance = allowances.allowance(principal.sub, model, max_tokens, switches.output_allowance_tokens)
    estimate = pricing.estimate_micro(rates, body_len // BYTES_PER_TOKEN_ESTIMATE, allowance)
    budget = StreamBudget(allowance, switches.topup_tokens, max_tokens, ahead=switches.cut_streams_at_cap)
    try:
        admission = await store.reserve(request_id=request_id, principal=principal, model=model, amount_micro=estimate, now=_now(rt))
    except Owed:
        # Nothing was reserved and nothing is owed for it: serving it would be serving uncharged.
        rt.metrics.add(SPEND_REFUSALS, ("settlements_owed",))
        raise SpendRefused(Kind.SPEND_UNCHECKED, spend.FAIL_CLOSED_MESSAGE, spend.fail_closed_headers()) from None
    except StoreRefused as exc:
        raise GatewayError(Kind.INVALID_REQUEST, str(exc)) from None
    except (StoreUnavailable, TimeoutError) as exc:
        if switches.fail_closed_on_error:
            # A reservation may have been stored just before the failure: release it.
            rt.tasks.spawn(store.settle(request_id, 0, _now(rt), principal=principal, model=model), "spend-settle")
            rt.metrics.add(SPEND_REFUSALS, ("store_unavailable",))
            raise SpendRefused(Kind.SPEND_UNCHECKED, spend.FAIL_CLOSED_MESSAGE, spend.fail_closed_headers()) from None
        rt.metrics.add(SPEND_ADMISSIONS, ("unjudged",))
        audit.log("warn", f"spend check failed, letting the request through (request {request_id}): {exc}")
        # Served unjudged, still charged: the relay settles it with its cost (which also releases
        # a reservation stored just before the failure), owed until the store takes it.
        return Ticket(request_id, principal, model, rates, {}, budget, False)
    except asyncio.CancelledError:
        # The client left while its admission was queued or in flight: whatever gets reserved is released.
        rt.tasks.spawn(store.settle(request_id, 0, _now(rt), principal=principal, model=model), "spend-settle")
        raise
    if not admission.admitted:
        assert admission.blocked is not None
        rt.tasks.spawn(store.settle(request_id, 0, _now(rt), principal=principal, model=model), "spend-settle")
        rt.metrics.add(SPEND_REFUSALS, ("over_limit",))
        raise SpendRefused(Kind.OVER_SPEND_LIMIT, admission.blocked.message, dict(admission.blocked.headers))
    via = "lease" if admission.leased else "database" if admission.reserved_micro > 0 else "uncapped"
    rt.metrics.add(SPEND_ADMISSIONS, (via,))
    return Ticket(
        request_id, principal, model, rates, spend.success_headers(admission.snapshots), budget, admission.reserved_micro > 0
    )


CONTINUE, CUT, WAIT = 0, 1, 2


def after_chunk(rt: Runtime, ticket: Ticket, delta_bytes: int) -> int:
    """Called after each relayed chunk: asks for the next step when due; says what the relay does next.

    CUT: end the stream (``cut_streams_at_cap`` and the grant is spent).
    WAIT: the stream has passed its grant while a top-up is unanswered; with
    ``cut_streams_at_cap`` the relay waits for the answer (``ticket.pending``)
    before relaying more, so no stream runs more than one event past its grant.
    """
    output = delta_bytes // BYTES_PER_TOKEN_ESTIMATE
    budget = ticket.budget
    tokens = budget.want(output)
    if tokens and ticket.reserved:
        ticket.pending = rt.tasks.spawn(_top_up(rt, ticket, tokens), "spend-top-up")
    elif tokens:
        budget.answer(tokens, True)  # nothing reserved (no cap applies): nothing to grow
    if not rt.spend_switches.cut_streams_at_cap or not budget.over(output):
        return CONTINUE
    if budget.denied:
        return CUT
    return WAIT if budget.pending else CONTINUE


async def _top_up(rt: Runtime, ticket: Ticket, tokens: int) -> None:
    store, pricing = rt.spend, rt.pricing
    assert store is not None and pricing is not None  # as for every ticket
    try:
        granted = await store.top_up(ticket.request_id, pricing.output_micro(ticket.rates, tokens), _now(rt))
    except Exception as exc:  # the store could not judge the step: as for any spend check
        if not isinstance(exc, (StoreUnavailable, TimeoutError)):
            audit.log("error", f"spend top-up failed (request {ticket.request_id}): {exc!r}")
        granted = not rt.spend_switches.fail_closed_on_error
    ticket.budget.answer(tokens, granted)


def settle(
    rt: Runtime, ticket: Ticket, upstream: str | None, upstream_model: str | None, usage: UsageTotals, finished: bool
) -> None:
    """Charge what the reply actually cost, priced as the upstream that served it (None: none did).

    Never awaits: the settlement joins the store's queue.
    """
    store, pricing, allowances = rt.spend, rt.pricing, rt.allowances
    assert store is not None and pricing is not None and allowances is not None  # as for every ticket
    principal, model = ticket.principal, ticket.model
    cost = 0
    if upstream is not None and upstream_model is not None:
        cost = pricing.cost_micro(pricing.rates(upstream, model, upstream_model), usage)
    store.settle_soon(ticket.request_id, cost, _now(rt), principal=principal, model=model)
    if finished and usage.output_tokens and not usage.estimated:
        allowances.observe(principal.sub, model, usage.output_tokens)


_CUT_EVENT = sse_error(BILLING_ERROR, CUT_MESSAGE)


def cut_event() -> bytes:
    return _CUT_EVENT


async def usage(rt: Runtime, principal: Principal) -> bytes:
    assert rt.spend is not None  # asked only with admin:
    now = _now(rt)
    snapshots = await asyncio.wait_for(rt.spend.snapshots(principal, now), rt.spend_switches.store_timeout_s)
    return encoder.encode(spend.usage_report(snapshots, now))
