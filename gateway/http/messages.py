"""The hot path: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

Read ``messages`` top to bottom: it is the protocol's request rules in order
(SPEC "Messages"). Helpers follow it in the order it calls them.

Commit point: until the first byte of a reply is written to the client, any
upstream failure may fail over to the next upstream. After it, status and
headers are fixed; an upstream failure becomes an SSE ``error`` event and the
stream ends.

Providers: every upstream is a translator (pure: the call it takes, the error
the client may see; gateway/upstreams/outbound.py) and, for the clouds, a
signer (its credential). The Claude API's translator passes the body and the
reply through as bytes; Bedrock's stream is an AWS event stream, re-emitted
here as SSE frame by frame, with a ping after a silence.

Load-test mode (``load_test_mode``, SPEC §10.10): two branches, both on
``rt.load_test``. After step 1 ``x-load-test-user`` may stand the request in for a
simulated developer; at step 7 the call is translated and signed as for real
(``sign_only``), dropped, and answered by gateway/http/load_test.py.

Cancellation: if the client goes away, aiohttp cancels this handler; the
``finally`` blocks close the upstream response at once (so the upstream stops
generating) and still record the request, with status 499.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import NamedTuple

import aiohttp
from aiohttp import web

from gateway import audit
from gateway.auth.tokens import Principal
from gateway.errors import (
    FINAL_PREFERENCE,
    Answer,
    Fault,
    GatewayError,
    Kind,
    Party,
    error_body,
    sse_error_event,
    upstream_status_fails_over,
)
from gateway.http import load_test, spend_gate
from gateway.http.keys import CLIENT_IP, REQUEST_ID, RUNTIME, SECURITY_HEADERS, authenticate, read_body
from gateway.http.own_telemetry import request_ended
from gateway.http.runtime import Runtime, UpstreamPlan
from gateway.policy.policies import ALLOW_ALL
from gateway.upstreams.bedrock import COUNT_UNAVAILABLE, MalformedReply, count_reply
from gateway.upstreams.bodyview import View, decode_view, remove_member, thinking_budget
from gateway.upstreams.eventstream import PING, EventStreamSse, StreamCorrupt
from gateway.upstreams.outbound import (
    REQUEST_TAGS_BETA,
    Ask,
    ClientError,
    CredentialFailure,
    Endpoint,
    Outbound,
    Shape,
)
from gateway.upstreams.routing import Target
from gateway.upstreams.sse import ZERO, UsageTap, UsageTotals, json_usage
from gateway.upstreams.transport import UpstreamFailure
from protocol_spec.cloud_wire import count_tokens_response_decoder

# Upstream error bodies are read whole before failing over; they are small,
# and a hostile or broken upstream must not make us buffer without bound.
MAX_ERROR_BODY_BYTES = 1 << 20
CLIENT_CLOSED = 499
# What load_test_mode adds to every inference event.
LOAD_TEST_MARK = {"load_test": True}
# The answer to a count no attempted upstream could make (SPEC BEDROCK-7).
CANNOT_COUNT = ClientError(
    501,
    {"Content-Type": "application/json", "x-should-retry": "false"},
    error_type="not_supported",
    message=COUNT_UNAVAILABLE,
)


class Outcome:
    """What happened to one request, filled in as it goes; recorded at the end."""

    __slots__ = (
        "status", "upstream", "upstream_request_id", "model", "ms_headers", "usage", "attempts", "error",
        "billing_group", "upstream_model", "finished", "request_id", "attempting", "attempt_at", "first_byte_at",
        "failures",
    )

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.status = 0
        self.upstream: str | None = None
        self.upstream_request_id: str | None = None
        self.model: str | None = None
        self.ms_headers: float | None = None
        self.usage: UsageTotals = ZERO
        self.attempts = 0
        self.error: str | None = None
        self.billing_group: str | None = None
        self.upstream_model: str | None = None
        self.finished = False
        # The upstream being tried and the id it gets, from the moment a call to it starts.
        self.attempting: Target | None = None
        # For the gateway's own metrics and traces (monotonic clock readings, failed attempts).
        self.attempt_at: float | None = None
        self.first_byte_at: float | None = None
        self.failures: list[tuple[str, str]] = []

    def failed(self, upstream: str, kind: str) -> None:
        """An upstream attempt that failed, for the gateway's own metrics and traces."""
        self.failures.append((upstream, kind))


async def messages(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    t0 = time.monotonic()
    request_id = request[REQUEST_ID]
    outcome = Outcome(request_id)
    principal: Principal | None = None
    ask: Ask | None = None
    ticket: spend_gate.Ticket | None = None
    rt.inflight += 1
    try:
        # 1. Bearer session token → principal (pure, cached; no database).
        principal = authenticate(rt, request.headers.get("Authorization"))
        if rt.load_test is not None:  # load_test_mode: x-load-test-user stands for a developer
            principal = load_test.as_user(principal, request.headers.get(load_test.USER_HEADER))

        # 2. Size limits, before buffering anything.
        body = await read_body(request, rt.limits.max_request_bytes)

        # 3. Decode only what we route on.
        view = decode_view(body)
        outcome.model = view.model

        # 4. Request tags: with a billing-group tag configured, signed-in
        #    developers' tags never reach an upstream; the group is recorded.
        if rt.billing_group_tag is not None and view.tags is not None:
            outcome.billing_group = billing_group(view.tags, rt.billing_group_tag, principal)
            body = remove_member(body, "tags")

        # 5. Which upstreams may serve this model, under which id (also prices the estimate).
        try:
            targets, unroutable = rt.routes.plan(view.model), None
        except GatewayError as err:
            targets, unroutable = (), err

        # 6. The role's model allowlist, then the spend gate (SPEC MSG-4; Anthropic's gateway
        #    checks spend first): a model the person may not use costs no reservation.
        matched = rt.policies.match(principal)
        refusal = (matched.access if matched is not None else ALLOW_ALL).check(view.model)
        if refusal is not None:
            raise GatewayError(Kind.INVALID_REQUEST, refusal)
        if rt.spend is not None and request.path == "/v1/messages":
            ticket = await spend_gate.admit(rt, request_id, principal, view, len(body), targets[0] if targets else None)
        if unroutable is not None:
            raise unroutable
        if matched is not None and matched.hint_headers:
            seen = request.headers.get("x-claude-code-managed-settings-checksum")
            if seen:
                rt.sightings.note(principal.sub, seen, served=matched.checksum)

        # 7. Try them in order until one answers in a way we relay.
        ask = make_ask(request, body, view, principal)
        if rt.load_test is not None:
            # load_test_mode: built and signed as for real, then dropped; the reply is canned.
            await sign_only(rt, ask, targets, outcome)
            return await load_test.reply(rt.load_test, request, ask, outcome, ticket, t0)
        try:
            opened = await open_first(rt, ask, targets, outcome, t0)
        except RelayedUpstreamError as err:
            outcome.status = err.status
            status, headers, relayed = err.answer(request_id)
            return web.Response(status=status, body=relayed, headers=headers)

        # 8. Relay the reply: JSON whole, SSE chunk by chunk as it arrives.
        extra = ticket.headers if ticket is not None else None
        try:
            if opened.first is None:
                return await relay_whole(opened, request_id, outcome, extra)
            return await relay_stream(rt, request, opened, request_id, outcome, ticket)
        finally:
            opened.resp.close()
    except Fault as err:
        # Recorded here, answered by the envelope middleware; a fault that is no
        # answer of its own (answer() is None) ends up an internal error there.
        answer = err.answer(request_id)
        if answer is not None:
            outcome.status = answer.status
            outcome.error = str(err)
        raise
    except asyncio.CancelledError:
        outcome.status = CLIENT_CLOSED
        raise
    finally:
        rt.inflight -= 1
        close = functools.partial(close_books, rt, request, request_id, principal, outcome, ticket, t0)
        recount = abandoned_count(rt, ask, outcome)
        if recount is None:
            close()
        else:
            # Never awaited here: the handler may be being cancelled. The books close
            # once the count is in (or has failed), off the request.
            rt.tasks.spawn(count_abandoned(rt, recount, outcome, request_id, close), name=f"count {request_id}")


def close_books(
    rt: Runtime,
    request: web.Request,
    request_id: str,
    principal: Principal | None,
    outcome: Outcome,
    ticket: spend_gate.Ticket | None,
    t0: float,
) -> None:
    """Settle the spend reservation and record the request. Never awaits."""
    if ticket is not None:
        spend_gate.settle(
            rt, ticket, outcome.upstream, outcome.upstream_model, outcome.usage,
            outcome.status == 200 and outcome.finished,
        )
    record(rt, request, request_id, principal, outcome, t0)


def make_ask(request: web.Request, body: bytes, view: View, principal: Principal) -> Ask:
    """The request as every provider sees it: decoded once, here."""
    counting = request.path != "/v1/messages"
    return Ask(
        endpoint=Endpoint.COUNT_TOKENS if counting else Endpoint.MESSAGES,
        path_qs=request.path_qs,
        body=body,
        model=view.model,
        stream=view.stream,
        headers=request.headers,
        betas=betas(request.headers),
        email=principal.email,
        sub=principal.sub,
        thinking_budget=thinking_budget(body) if counting else None,
    )


def betas(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The client's ``anthropic-beta`` values, in order, without the request-tags beta
    (no upstream but Anthropic's takes it, and Anthropic's upstream reads the header)."""
    raw = getattr(headers, "getall", None)
    values = raw("anthropic-beta", ()) if raw is not None else [headers.get("anthropic-beta", "")]
    return tuple(b for v in values for b in (p.strip() for p in v.split(",")) if b and b != REQUEST_TAGS_BETA)


def billing_group(tags: Mapping[str, object], tag: str, principal: Principal) -> str | None:
    """The billing group a request names, if the person's token lists that group."""
    value = tags.get(tag)
    return value if isinstance(value, str) and value in principal.groups else None


class Opened(NamedTuple):
    """An upstream reply we relay: its response, how it reaches the client, and (for
    event streams) the first bytes for the client, read before committing to it."""

    resp: aiohttp.ClientResponse
    up: UpstreamPlan
    shape: Shape
    first: bytes | None
    decoder: EventStreamSse | None = None


async def open_first(rt: Runtime, ask: Ask, targets: tuple[Target, ...], outcome: Outcome, t0: float) -> Opened:
    """Open the first upstream that answers with something we relay.

    Upstreams the health memory says are down for now are skipped, unless every
    target is: then all are tried anyway. Raises the preferred final error when
    every attempted target fails.
    """
    failures: list[ClientError] = []
    cooling: list[Target] = []
    for target in targets:
        # Asked only when reached: admitting claims the probe of an upstream whose
        # cooldown is over, and a claim must end in a verdict.
        if not rt.health.admit(target.upstream):
            cooling.append(target)
            continue
        opened = await _attempt_once(rt, ask, target, outcome, t0, failures)
        if opened is not None:
            return opened
    if len(cooling) == len(targets):
        for target in cooling:
            opened = await _attempt_once(rt, ask, target, outcome, t0, failures)
            if opened is not None:
                return opened
    raise final_error(failures, len(rt.upstreams))


async def _attempt_once(
    rt: Runtime, ask: Ask, target: Target, outcome: Outcome, t0: float, failures: list[ClientError]
) -> Opened | None:
    try:
        return await _attempt(rt, ask, target, outcome, t0, failures)
    except BaseException:
        # A refused body, the client leaving: no verdict on the upstream, so a
        # probe it was admitted for must not stay claimed.
        rt.health.released(target.upstream)
        raise


async def _attempt(
    rt: Runtime, ask: Ask, target: Target, outcome: Outcome, t0: float, failures: list[ClientError]
) -> Opened | None:
    """One upstream: its reply to relay, or None after noting why the next one is tried."""
    out = await _signed(rt, ask, target, outcome, failures)
    if out is None:
        return None
    i = target.upstream
    up = rt.upstreams[i]
    rid = outcome.request_id
    try:
        resp = await rt.transport.open("POST", out.url, out.headers, out.body, up.ttfb_s, proxy=up.proxy)
    except UpstreamFailure as failure:
        _note_health(rt, i, ok=False)
        outcome.failed(up.name, failure.kind.name.lower())
        audit.log("warn", f"upstream {up.name} failed, trying next (request {rid}): {failure.detail}")
        return None
    outcome.ms_headers = (time.monotonic() - t0) * 1000
    outcome.upstream = up.name
    outcome.upstream_model = target.model
    outcome.upstream_request_id = resp.headers.get("request-id") or resp.headers.get("x-amzn-RequestId")
    if resp.status >= 400:
        try:
            err_body = await asyncio.wait_for(resp.content.read(MAX_ERROR_BODY_BYTES), rt.idle_read_timeout_s)
        except Exception:
            err_body = b""
        finally:
            resp.close()
        _note_health(rt, i, ok=resp.status < 500)
        outcome.failed(up.name, f"status_{resp.status}")
        err = up.translator.client_error(ask, resp.status, resp.headers, err_body)
        if err.log is not None:
            audit.log("warn", f"{err.log} (request {rid})")
        if err.failover if err.failover is not None else upstream_status_fails_over(resp.status):
            failures.append(err)
            audit.log("warn", f"upstream {up.name} answered {resp.status}, trying next (request {rid})")
            return None
        raise RelayedUpstreamError(err)
    if out.shape is Shape.EVENT_STREAM:
        decoder = EventStreamSse()
        first = await _first_bytes(resp, up, decoder.feed)
        if first is None or decoder.ended:  # broke, or an exception frame, before anything was relayed
            _note_health(rt, i, ok=False)
            outcome.failed(up.name, "stream_start")
            return None
        _note_health(rt, i, ok=True)
        return Opened(resp, up, out.shape, first, decoder)
    if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
        first = await _first_bytes(resp, up, None)
        _note_health(rt, i, ok=first is not None)
        if first is None:
            outcome.failed(up.name, "stream_start")
        return Opened(resp, up, out.shape, first) if first is not None else None
    _note_health(rt, i, ok=True)
    return Opened(resp, up, out.shape, None)


async def _signed(
    rt: Runtime, ask: Ask, target: Target, outcome: Outcome, failures: list[ClientError]
) -> Outbound | None:
    """The call to one upstream, translated and signed; None after noting why it cannot be made."""
    i = target.upstream
    up = rt.upstreams[i]
    signer = rt.signers[i]
    out = up.translator.outbound(ask, target.model)
    if out is None or (signer is not None and not signer.serves(ask)):
        # This upstream cannot serve this request (a count on an inference profile, a
        # per-developer role session for a token without the claim, …). A count it
        # cannot make is a 501 unless a later upstream counts (BEDROCK-7).
        rt.health.released(i)
        if ask.endpoint is Endpoint.COUNT_TOKENS:
            failures.append(CANNOT_COUNT)
        return None
    outcome.attempts += 1
    outcome.attempting = target
    outcome.attempt_at = time.monotonic()
    if signer is not None:
        try:
            out = await signer.authorize(out, ask)
        except CredentialFailure as failure:
            # Our credential trouble: a 500 from that upstream, never the client's 401/403.
            rt.health.released(i)
            outcome.failed(up.name, "credential")
            rid = outcome.request_id
            audit.log("warn", f"upstream {up.name}: no credential, trying next (request {rid}): {failure.detail}")
            return None
    return out


async def sign_only(rt: Runtime, ask: Ask, targets: tuple[Target, ...], outcome: Outcome) -> None:
    """load_test_mode: the call the relay would make first, translated and signed as for
    real, then dropped; nothing is sent. Fails as the relay would when no upstream could
    make it (no credential anywhere, a count nobody can make)."""
    failures: list[ClientError] = []
    for target in targets:
        if await _signed(rt, ask, target, outcome, failures) is not None:
            outcome.upstream = rt.upstreams[target.upstream].name
            outcome.upstream_model = target.model
            return
    raise final_error(failures, len(rt.upstreams))


async def _first_bytes(
    resp: aiohttp.ClientResponse, up: UpstreamPlan, feed: Callable[[bytes], bytes] | None
) -> bytes | None:
    """The first bytes for the client, peeked before committing (so a stream that dies
    at once still fails over); None, with the response closed, when there are none."""
    try:
        while True:
            data = await resp.content.readany()
            if not data:
                audit.log("warn", f"upstream {up.name} closed the stream before the first byte")
                break
            first = feed(data) if feed is not None else data
            if first:
                return first
    except Exception as exc:  # broke before a single byte: nothing committed yet
        audit.log("warn", f"upstream {up.name} stream failed before the first byte: {exc!r}")
    resp.close()
    return None


def _note_health(rt: Runtime, i: int, *, ok: bool) -> None:
    line = rt.health.succeeded(i) if ok else rt.health.failed(i)
    if line is not None:
        audit.log("warn" if not ok else "info", line)


def final_error(failures: list[ClientError], configured: int) -> Exception:
    """The answer when every attempted upstream failed (SPEC "Failover")."""
    for statuses in FINAL_PREFERENCE:
        for err in reversed(failures):
            if err.status in statuses:
                return RelayedUpstreamError(err)
    return GatewayError(Kind.ALL_UPSTREAMS_FAILED, f"all upstreams failed ({configured} attempted)")


class RelayedUpstreamError(Fault):
    """An upstream's error reply, as its provider lets the client see it: Anthropic's
    relayed as it came (the client keys on its wording), a cloud's in our envelope."""

    fault = Party.UPSTREAM

    def __init__(self, err: ClientError) -> None:
        super().__init__(err.status)
        self.status = err.status
        self.err = err

    def answer(self, request_id: str | None) -> Answer:
        err = self.err
        headers = dict(err.headers)
        if request_id is not None:
            headers["request-id"] = request_id
        if err.error_type is not None:
            return Answer(err.status, headers, error_body(err.error_type, err.message, request_id))
        return Answer(err.status, headers, err.body)


async def relay_whole(opened: Opened, request_id: str, outcome: Outcome, extra_headers: dict[str, str] | None) -> web.Response:
    resp, up = opened.resp, opened.up
    try:
        body = await resp.read()
    except Exception as exc:
        audit.log("warn", f"upstream reply broke off before it was complete: {exc!r}")
        raise GatewayError(Kind.ALL_UPSTREAMS_FAILED, "upstream reply was cut off") from None
    if opened.shape is Shape.BEDROCK_COUNT and resp.status == 200:
        try:
            body = count_reply(body)
        except MalformedReply as exc:
            audit.log("warn", f"upstream {up.name} sent a malformed count reply (request {request_id}): {exc}")
            raise GatewayError(Kind.UPSTREAM_STATUS, "upstream sent a malformed reply") from None
    outcome.status = resp.status
    if resp.status == 200:
        outcome.usage = json_usage(body)
        outcome.finished = True
    headers = up.translator.response_headers(resp.headers)
    if extra_headers and resp.status == 200:
        headers.update(extra_headers)
    headers["request-id"] = request_id
    return web.Response(status=resp.status, body=body, headers=headers)


async def relay_stream(
    rt: Runtime,
    request: web.Request,
    opened: Opened,
    request_id: str,
    outcome: Outcome,
    ticket: spend_gate.Ticket | None,
) -> web.StreamResponse:
    resp, decoder = opened.resp, opened.decoder
    headers = opened.up.translator.response_headers(resp.headers)
    if decoder is not None:
        headers["Content-Type"] = "text/event-stream; charset=utf-8"
    if ticket is not None and resp.status == 200:
        headers.update(ticket.headers)
    headers["request-id"] = request_id
    headers.update(SECURITY_HEADERS)
    out = web.StreamResponse(status=resp.status, headers=headers)
    outcome.status = resp.status
    tap = UsageTap()
    await out.prepare(request)  # commit point: from here on, no failover
    chunk = opened.first
    rt.streams += 1
    try:
        while chunk:
            tap.feed(chunk)
            await out.write(chunk)
            if outcome.first_byte_at is None:
                outcome.first_byte_at = time.monotonic()
            if ticket is not None:
                action = spend_gate.after_chunk(rt, ticket, tap.delta_bytes)
                if action == spend_gate.WAIT and ticket.pending is not None:
                    await ticket.pending
                    action = spend_gate.after_chunk(rt, ticket, tap.delta_bytes)
                if action == spend_gate.CUT:
                    # gatehouse.spend.cut_streams_at_cap: the cap has no room for more output.
                    await out.write((b"\n\n" if tap.mid_event else b"") + spend_gate.cut_event())
                    break
            try:
                if decoder is None:
                    chunk = await resp.content.readany()
                else:
                    chunk = await _next_events(resp, decoder, rt.ping_interval_s)
                    if decoder.ended:  # the upstream's exception frame, now an error event
                        outcome.failed(opened.up.name, "stream_error")
                        audit.log("warn", f"upstream {opened.up.name} ended the stream with an error (request {request_id}): {decoder.failure}")
                        tap.feed(chunk)
                        await out.write(chunk)
                        break
            except (aiohttp.ClientError, TimeoutError, OSError, StreamCorrupt) as exc:
                outcome.failed(opened.up.name, "stream_interrupted")
                audit.log("warn", f"upstream stream interrupted (request {request_id}): {exc!r}")
                if isinstance(exc, StreamCorrupt) and exc.before:
                    # Good events decoded ahead of the broken frame still reach the client.
                    tap.feed(exc.before)
                    await out.write(exc.before)
                prefix = b"\n\n" if tap.mid_event else b""
                await out.write(prefix + sse_error_event(Kind.STREAM_INTERRUPTED, "upstream stream interrupted"))
                break
        else:
            outcome.finished = True
        await out.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        outcome.status = CLIENT_CLOSED
    finally:
        rt.streams -= 1
        outcome.usage = tap.totals()
    return out


async def _next_events(resp: aiohttp.ClientResponse, decoder: EventStreamSse, ping_s: float) -> bytes:
    """The next SSE bytes re-emitted from an event stream: b"" at its end, a ping after
    ``ping_s`` of silence (the upstream sends none of its own)."""
    while True:
        try:
            async with asyncio.timeout(ping_s):
                data = await resp.content.readany()
        except TimeoutError:
            return PING
        if not data:
            if decoder.mid_frame:
                raise StreamCorrupt("the event stream ended inside a frame")
            return b""
        events = decoder.feed(data)
        if events:
            return events


# A count after the client left is bookkeeping: it may take this long before the
# request is recorded without it.
ABANDONED_COUNT_TIMEOUT_S = 10.0


class Recount(NamedTuple):
    target: Target
    ask: Ask
    out: Outbound


def abandoned_count(rt: Runtime, ask: Ask | None, outcome: Outcome) -> Recount | None:
    """For a Bedrock request the client abandoned before any usage came back: the
    CountTokens call that prices its input, which Bedrock bills and CountTokens
    counts for free (SPEC BEDROCK-9). None when there is nothing to count or no
    way to (an inference-profile ARN)."""
    target = outcome.attempting
    if (
        ask is None
        or target is None
        or ask.endpoint is not Endpoint.MESSAGES
        or outcome.status != CLIENT_CLOSED
        or outcome.usage.input_tokens
        or rt.upstreams[target.upstream].provider != "bedrock"
        or rt.load_test is not None  # nothing was sent, so nothing was billed
    ):
        return None
    counting = ask._replace(endpoint=Endpoint.COUNT_TOKENS, thinking_budget=thinking_budget(ask.body))
    out = rt.upstreams[target.upstream].translator.outbound(counting, target.model)
    return Recount(target, counting, out) if out is not None else None


async def count_abandoned(
    rt: Runtime, recount: Recount, outcome: Outcome, request_id: str, close: Callable[[], None]
) -> None:
    up, signer = rt.upstreams[recount.target.upstream], rt.signers[recount.target.upstream]
    try:
        async with asyncio.timeout(ABANDONED_COUNT_TIMEOUT_S):
            out = recount.out if signer is None else await signer.authorize(recount.out, recount.ask)
            resp = await rt.transport.open(
                "POST", out.url, out.headers, out.body, ABANDONED_COUNT_TIMEOUT_S, proxy=up.proxy
            )
            try:
                body = await resp.read()
            finally:
                resp.close()
        if resp.status == 200:
            tokens = count_tokens_response_decoder.decode(body).input_tokens
            outcome.usage = outcome.usage._replace(input_tokens=tokens)
            # Left while Bedrock was still to answer: the input is billed all the same.
            outcome.upstream = outcome.upstream or up.name
            outcome.upstream_model = outcome.upstream_model or recount.target.model
        else:
            audit.log("warn", f"upstream {up.name} could not count an abandoned request ({resp.status}, request {request_id})")
    except Exception as exc:
        audit.log("warn", f"upstream {up.name} could not count an abandoned request (request {request_id}): {exc!r}")
    finally:
        close()


def record(
    rt: Runtime, request: web.Request, request_id: str, principal: Principal | None, outcome: Outcome, t0: float
) -> None:
    """Audit event and usage row for every request that got past the bearer check.

    Never awaits: it runs in ``finally`` even while the handler is being cancelled.
    """
    ms_total = (time.monotonic() - t0) * 1000
    request_ended(rt, request, principal, outcome, t0)
    if principal is None:
        # Nobody to attribute a request to: this is a refused credential, not inference.
        audit.emit(
            "auth.denied",
            reason=outcome.error or "request ended before authentication",
            path=request.path,
            client_ip=request.get(CLIENT_IP),
        )
        return
    u = outcome.usage
    audit.emit(
        "inference",
        request_id=request_id,
        sub=principal.sub,
        email=principal.email,
        path=request.path,
        model=outcome.model,
        upstream=outcome.upstream,
        upstream_request_id=outcome.upstream_request_id,
        status=outcome.status,
        ms=round(outcome.ms_headers, 1) if outcome.ms_headers is not None else None,
        ms_total=round(ms_total, 1),
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_creation_input_tokens=u.cache_creation_input_tokens,
        cache_read_input_tokens=u.cache_read_input_tokens,
        output_estimated=u.estimated or None,
        billing_group=outcome.billing_group,
        **LOAD_TEST_MARK if rt.load_test is not None else {},
    )
    from gateway.db.store import UsageRow

    rt.recorder.submit(
        UsageRow(
            request_id=request_id,
            ts=datetime.now(UTC),
            sub=principal.sub,
            email=principal.email,
            model=outcome.model,
            upstream=outcome.upstream,
            status=outcome.status,
            input_tokens=u.input_tokens,
            output_tokens=u.output_tokens,
            cache_creation_input_tokens=u.cache_creation_input_tokens,
            cache_creation_5m=u.cache_creation_5m,
            cache_creation_1h=u.cache_creation_1h,
            cache_read_input_tokens=u.cache_read_input_tokens,
            estimated_output=u.estimated,
            ms_to_headers=round(outcome.ms_headers) if outcome.ms_headers is not None else None,
            ms_total=round(ms_total),
            path=request.path,
            upstream_request_id=outcome.upstream_request_id,
        )
    )

