"""The hot path: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

Read ``messages`` top to bottom: it is the protocol's request rules in order
(SPEC "Messages"). Helpers follow it in the order it calls them.

Commit point: until the first byte of a reply is written to the client, any
upstream failure may fail over to the next upstream. After it, status and
headers are fixed; an upstream failure becomes an SSE ``error`` event and the
stream ends.

Cancellation: if the client goes away, aiohttp cancels this handler; the
``finally`` blocks close the upstream response at once (so the upstream stops
generating) and still record the request, with status 499.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime

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
    sse_error_event,
    upstream_status_fails_over,
)
from gateway.http import spend_gate
from gateway.http.keys import CLIENT_IP, REQUEST_ID, RUNTIME, SECURITY_HEADERS, authenticate, read_body
from gateway.http.runtime import Runtime
from gateway.policy.policies import ALLOW_ALL
from gateway.upstreams import anthropic
from gateway.upstreams.bodyview import decode_view, remove_member, splice_model
from gateway.upstreams.routing import Target
from gateway.upstreams.sse import ZERO, UsageTap, UsageTotals, json_usage
from gateway.upstreams.transport import UpstreamFailure

# Upstream error bodies are read whole before failing over; they are small,
# and a hostile or broken upstream must not make us buffer without bound.
MAX_ERROR_BODY_BYTES = 1 << 20
CLIENT_CLOSED = 499
REQUEST_TAGS_BETA = "request-tags-2026-08-21"


class Outcome:
    """What happened to one request, filled in as it goes; recorded at the end."""

    __slots__ = (
        "status", "upstream", "upstream_request_id", "model", "ms_headers", "usage", "attempts", "error",
        "billing_group", "upstream_model", "finished",
    )

    def __init__(self) -> None:
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


async def messages(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    t0 = time.monotonic()
    request_id = request[REQUEST_ID]
    outcome = Outcome()
    principal: Principal | None = None
    ticket: spend_gate.Ticket | None = None
    rt.inflight += 1
    try:
        # 1. Bearer session token → principal (pure, cached; no database).
        principal = authenticate(rt, request.headers.get("Authorization"))

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
        upstream_path = request.path_qs
        try:
            resp, first_chunk = await open_first(
                rt, request, body, view.model, targets, upstream_path, principal, outcome, t0
            )
        except RelayedUpstreamError as err:
            outcome.status = err.status
            status, headers, relayed = err.answer(request_id)
            return web.Response(status=status, body=relayed, headers=headers)

        # 8. Relay the reply: JSON whole, SSE chunk by chunk as it arrives.
        extra = ticket.headers if ticket is not None else None
        try:
            if first_chunk is None:
                return await relay_whole(request, resp, request_id, outcome, extra)
            return await relay_stream(rt, request, resp, first_chunk, request_id, outcome, ticket)
        finally:
            resp.close()
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
        if ticket is not None:
            spend_gate.settle(
                rt, ticket, outcome.upstream, outcome.upstream_model, outcome.usage,
                outcome.status == 200 and outcome.finished,
            )
        record(rt, request, request_id, principal, outcome, t0)


def billing_group(tags: Mapping[str, object], tag: str, principal: Principal) -> str | None:
    """The billing group a request names, if the person's token lists that group."""
    value = tags.get(tag)
    return value if isinstance(value, str) and value in principal.groups else None


async def open_first(
    rt: Runtime,
    request: web.Request,
    body: bytes,
    model: str,
    targets: tuple[Target, ...],
    path_qs: str,
    principal: Principal,
    outcome: Outcome,
    t0: float,
) -> tuple[aiohttp.ClientResponse, bytes | None]:
    """Open the first upstream that answers with something we relay.

    Returns the response and, for event streams, the first chunk (peeked
    before committing, so a stream that dies at once still fails over).
    Raises the preferred final error when every target fails.
    """
    failures: list[tuple[int, dict[str, str], bytes]] = []
    drop_beta = REQUEST_TAGS_BETA if rt.billing_group_tag is not None else None
    for target in targets:
        up = rt.upstreams[target.upstream]
        outcome.attempts += 1
        payload = body if target.model == model else splice_model(body, target.model)
        headers = anthropic.build_headers(
            up.prepared, request.headers, principal.email, principal.sub, drop_beta=drop_beta
        )
        url = up.prepared.url_base + path_qs
        try:
            resp = await rt.transport.open("POST", url, headers, payload, up.ttfb_s)
        except UpstreamFailure as failure:
            audit.log("warn", f"upstream {up.name} failed, trying next (request {request[REQUEST_ID]}): {failure.detail}")
            continue
        outcome.ms_headers = (time.monotonic() - t0) * 1000
        outcome.upstream = up.name
        outcome.upstream_model = target.model
        outcome.upstream_request_id = resp.headers.get("request-id")
        if upstream_status_fails_over(resp.status):
            try:
                err_body = await asyncio.wait_for(resp.content.read(MAX_ERROR_BODY_BYTES), rt.idle_read_timeout_s)
            except Exception:
                err_body = b""
            failures.append((resp.status, anthropic.response_headers(resp.headers), err_body))
            resp.close()
            audit.log("warn", f"upstream {up.name} answered {resp.status}, trying next (request {request[REQUEST_ID]})")
            continue
        if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            try:
                first = await resp.content.readany()
            except Exception as exc:  # broke before a single byte: nothing committed yet
                resp.close()
                audit.log("warn", f"upstream {up.name} stream failed before the first byte: {exc!r}")
                continue
            if not first:
                resp.close()
                audit.log("warn", f"upstream {up.name} closed the stream before the first byte")
                continue
            return resp, first
        return resp, None
    raise final_error(failures, len(rt.upstreams))


def final_error(failures: list[tuple[int, dict[str, str], bytes]], configured: int) -> Exception:
    """The answer when every attempted upstream failed (SPEC "Failover")."""
    for statuses in FINAL_PREFERENCE:
        for status, headers, body in reversed(failures):
            if status in statuses:
                return RelayedUpstreamError(status, headers, body)
    return GatewayError(Kind.ALL_UPSTREAMS_FAILED, f"all upstreams failed ({configured} attempted)")


class RelayedUpstreamError(Fault):
    """An upstream's own error reply, relayed as it came (the client keys on its wording)."""

    fault = Party.UPSTREAM

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers
        self.body = body

    def answer(self, request_id: str | None) -> Answer:
        headers = dict(self.headers)
        if request_id is not None:
            headers["request-id"] = request_id
        return Answer(self.status, headers, self.body)


async def relay_whole(
    request: web.Request,
    resp: aiohttp.ClientResponse,
    request_id: str,
    outcome: Outcome,
    extra_headers: dict[str, str] | None,
) -> web.Response:
    try:
        body = await resp.read()
    except Exception as exc:
        audit.log("warn", f"upstream reply broke off before it was complete: {exc!r}")
        raise GatewayError(Kind.ALL_UPSTREAMS_FAILED, "upstream reply was cut off") from None
    outcome.status = resp.status
    if resp.status == 200:
        outcome.usage = json_usage(body)
        outcome.finished = True
    headers = anthropic.response_headers(resp.headers)
    if extra_headers and resp.status == 200:
        headers.update(extra_headers)
    headers["request-id"] = request_id
    return web.Response(status=resp.status, body=body, headers=headers)


async def relay_stream(
    rt: Runtime,
    request: web.Request,
    resp: aiohttp.ClientResponse,
    first_chunk: bytes,
    request_id: str,
    outcome: Outcome,
    ticket: spend_gate.Ticket | None,
) -> web.StreamResponse:
    headers = anthropic.response_headers(resp.headers)
    if ticket is not None and resp.status == 200:
        headers.update(ticket.headers)
    headers["request-id"] = request_id
    headers.update(SECURITY_HEADERS)
    out = web.StreamResponse(status=resp.status, headers=headers)
    outcome.status = resp.status
    tap = UsageTap()
    await out.prepare(request)  # commit point: from here on, no failover
    chunk = first_chunk
    try:
        while chunk:
            tap.feed(chunk)
            await out.write(chunk)
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
                chunk = await resp.content.readany()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                audit.log("warn", f"upstream stream interrupted (request {request_id}): {exc!r}")
                prefix = b"\n\n" if tap.mid_event else b""
                await out.write(prefix + sse_error_event(Kind.STREAM_INTERRUPTED, "upstream stream interrupted"))
                break
        else:
            outcome.finished = True
        await out.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        outcome.status = CLIENT_CLOSED
    finally:
        outcome.usage = tap.totals()
    return out


def record(
    rt: Runtime, request: web.Request, request_id: str, principal: Principal | None, outcome: Outcome, t0: float
) -> None:
    """Audit event and usage row for every request that got past the bearer check.

    Never awaits: it runs in ``finally`` even while the handler is being cancelled.
    """
    ms_total = (time.monotonic() - t0) * 1000
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

