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
from typing import Any

from gateway import audit
from gateway.db.store import StoreRefused, StoreUnavailable
from gateway.errors import GatewayError, Kind, sse_error
from gateway.spend import caps as spend
from gateway.spend.budget import StreamBudget
from gateway.spend.pricing import Rates
from gateway.spend.settlements import Owed
from gateway.upstreams.sse import BYTES_PER_TOKEN_ESTIMATE, UsageTotals
from protocol_spec.wire import ErrorDetail, ErrorEvent, encoder

BILLING_ERROR = "billing_error"
CUT_MESSAGE = "spend limit reached"


class SpendRefused(Exception):
    """A 429 ``billing_error`` decided before any upstream call."""

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.headers = headers
        # As Anthropic's gateway answers it: the envelope without request_id.
        self.body = encoder.encode(ErrorEvent(ErrorDetail(BILLING_ERROR, message)))


class Ticket:
    """One admitted request's standing with the spend engine."""

    __slots__ = ("request_id", "rates", "headers", "budget", "reserved", "pending")

    def __init__(self, request_id: str, rates: Rates, headers: dict[str, str], budget: StreamBudget, reserved: bool) -> None:
        self.request_id = request_id
        self.rates = rates
        self.headers = headers
        self.budget = budget
        self.reserved = reserved
        self.pending: asyncio.Task[None] | None = None  # the top-up asked for, while unanswered


def _now(rt: Any) -> datetime:
    return datetime.fromtimestamp(rt.clock(), UTC)


async def admit(rt: Any, request_id: str, principal: Any, model: str, upstream: str, upstream_model: str, body_len: int, max_tokens: int | None) -> Ticket:
    """Reserve the request's estimate; the ticket the relay settles with, once, whatever it cost.

    SpendRefused (429) over a cap, when the store cannot answer and
    enforcement fails closed, or while the store owes too many settlements;
    GatewayError (400) when the database refuses a value of the request.
    """
    gh = rt.config.gatehouse.spend
    allowance = rt.allowances.allowance(principal.sub, model, max_tokens, gh.output_allowance_tokens)
    rates = rt.pricing.rates(upstream, model, upstream_model)
    estimate = rt.pricing.estimate_micro(rates, body_len // BYTES_PER_TOKEN_ESTIMATE, allowance)
    budget = StreamBudget(allowance, gh.topup_tokens, max_tokens, ahead=gh.cut_streams_at_cap)
    try:
        admission = await rt.spend.reserve(request_id=request_id, principal=principal, model=model, amount_micro=estimate, now=_now(rt))
    except Owed:
        # Nothing was reserved and nothing is owed for it: serving it would be serving uncharged.
        raise SpendRefused(spend.FAIL_CLOSED_MESSAGE, spend.fail_closed_headers()) from None
    except StoreRefused as exc:
        raise GatewayError(Kind.INVALID_REQUEST, str(exc)) from None
    except (StoreUnavailable, TimeoutError) as exc:
        if rt.config.enforcement is not None and rt.config.enforcement.fail_closed_on_error:
            # A reservation may have been stored just before the failure: release it.
            rt.tasks.spawn(rt.spend.settle(request_id, 0, _now(rt), principal=principal, model=model), "spend-settle")
            raise SpendRefused(spend.FAIL_CLOSED_MESSAGE, spend.fail_closed_headers()) from None
        audit.log("warn", f"spend check failed, letting the request through (request {request_id}): {exc}")
        # Served unjudged, still charged: the relay settles it with its cost (which also releases
        # a reservation stored just before the failure), owed until the store takes it.
        return Ticket(request_id, rates, {}, budget, False)
    except asyncio.CancelledError:
        # The client left while its admission was queued or in flight: whatever gets reserved is released.
        rt.tasks.spawn(rt.spend.settle(request_id, 0, _now(rt), principal=principal, model=model), "spend-settle")
        raise
    if not admission.admitted:
        assert admission.blocked is not None
        rt.tasks.spawn(rt.spend.settle(request_id, 0, _now(rt), principal=principal, model=model), "spend-settle")
        raise SpendRefused(admission.blocked.message, dict(admission.blocked.headers))
    return Ticket(request_id, rates, spend.success_headers(admission.snapshots), budget, admission.reserved_micro > 0)


CONTINUE, CUT, WAIT = 0, 1, 2


def after_chunk(rt: Any, ticket: Ticket, delta_bytes: int) -> int:
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
    if not rt.config.gatehouse.spend.cut_streams_at_cap or not budget.over(output):
        return CONTINUE
    if budget.denied:
        return CUT
    return WAIT if budget.pending else CONTINUE


async def _top_up(rt: Any, ticket: Ticket, tokens: int) -> None:
    try:
        granted = await rt.spend.top_up(ticket.request_id, rt.pricing.output_micro(ticket.rates, tokens), _now(rt))
    except Exception as exc:  # the store could not judge the step: as for any spend check
        if not isinstance(exc, (StoreUnavailable, TimeoutError)):
            audit.log("error", f"spend top-up failed (request {ticket.request_id}): {exc!r}")
        fail_closed = rt.config.enforcement is not None and rt.config.enforcement.fail_closed_on_error
        granted = not fail_closed
    ticket.budget.answer(tokens, granted)


def settle(rt: Any, request_id: str, principal: Any, model: str, upstream: str | None, upstream_model: str | None, usage: UsageTotals, finished: bool) -> None:
    """Charge what the reply actually cost. Never awaits: the settlement joins the store's queue."""
    cost = 0
    if upstream is not None and upstream_model is not None:
        cost = rt.pricing.cost_micro(rt.pricing.rates(upstream, model, upstream_model), usage)
    rt.spend.settle_soon(request_id, cost, _now(rt), principal=principal, model=model)
    if finished and usage.output_tokens and not usage.estimated:
        rt.allowances.observe(principal.sub, model, usage.output_tokens)


_CUT_EVENT = sse_error(BILLING_ERROR, CUT_MESSAGE)


def cut_event() -> bytes:
    return _CUT_EVENT


async def usage(rt: Any, principal: Any) -> bytes:
    now = _now(rt)
    snapshots = await asyncio.wait_for(rt.spend.snapshots(principal, now), rt.config.gatehouse.spend.store_timeout_ms / 1000)
    return encoder.encode(spend.usage_report(snapshots, now))
