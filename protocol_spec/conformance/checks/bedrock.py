"""SPEC §22 (Bedrock), judged at the fake Bedrock runtime and at the client.

The fixtures give the gateway a Bedrock upstream (explicit keys, a configured
header, a guardrail) after the two Anthropic ones. The fake recomputes every
SigV4 signature with botocore and records the access key that signed
(``principal``), the path exactly as sent, and the Anthropic body it carried
(``payload``; for CountTokens the decoded ``invokeModel`` body). Requests go
through the custom models that route to Bedrock only (or Bedrock then Vertex);
a built-in model reaches Bedrock when both Anthropic upstreams answer 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable

import aiohttp
import msgspec

from protocol_spec.conformance.checks.bearer import claims_for, mint
from protocol_spec.conformance.checks.cloud_views import (
    ACCOUNT,
    SECRET_ROLE_ARN,
    bedrock,
    bedrock_stream_events,
    cloud_headers,
    error_of,
    leaked,
    parsed_events,
    reset_all,
    sts,
    vertex,
    without_pings,
)
from protocol_spec.conformance.checks.streaming import read_stream
from protocol_spec.conformance.context import Ctx, header_value, obj, small_request
from protocol_spec.conformance.fixtures import (
    ARN_MODEL,
    BEDROCK_HEADER,
    BEDROCK_MODEL,
    BEDROCK_MODEL_ID,
    BEDROCK_REGION,
    CLOUDS_MODEL,
    CLOUDS_MODEL_IDS,
    GUARDRAIL,
    ROLE_ARN,
    ROLE_MODEL,
    ROLE_UPSTREAM,
    VERTEX,
)
from protocol_spec.conformance.verdicts import check
from protocol_spec.fakes import Reply, error_reply
from protocol_spec.fakes.bedrock_remote import RemoteBedrock
from protocol_spec.fakes.bedrock_replies import (
    ACCESS_DENIED,
    THROTTLING,
    TOO_LONG,
    BedrockReply,
    bedrock_error,
    stream_exception,
    validation,
)

BEDROCK_VERSION = "bedrock-2023-05-31"
REQUEST_TAGS_BETA = "request-tags-2026-08-21"
BETAS = ["interleaved-thinking-2025-05-14", REQUEST_TAGS_BETA, "token-efficient-tools-2025-02-19"]
KEPT_BETAS = [b for b in BETAS if b != REQUEST_TAGS_BETA]
# The ARN's "/" goes as %2F; colons stay literal (reference cag-cloud-upstreams §2).
ARN_PATH = "/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Fconformance01/invoke"
BUILTIN_PATHS = {
    "claude-haiku-4-5": "/model/us.anthropic.claude-haiku-4-5-20251001-v1:0/invoke",
    "claude-sonnet-4-6": "/model/us.anthropic.claude-sonnet-4-6/invoke",
}
# Client headers with values no gateway would make up: none may reach Bedrock (BEDROCK-14).
CLIENT_HEADERS = [
    ("anthropic-beta", ",".join(BETAS)),
    ("x-app", "cli-conformance"),
    ("user-agent", "claude-cli/2.1.328 (conformance client)"),
    ("x-claude-code-session-id", "conformance-session-3f9a"),
    ("x-stainless-lang", "conformance-lang"),
    ("x-stainless-package-version", "9.9.9-conformance"),
    ("x-api-key", "sk-ant-conformance-client-key"),
    ("x-conformance-client", "private"),
]
TOOL = {
    "name": "lookup",
    "description": "Look a word up.",
    "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]},
}
UPSTREAM_404 = error_reply(404, "not_found_error", "model: not here")
INTERRUPTED = {"type": "api_error", "message": "upstream stream interrupted"}
EXCEPTION = {"type": "api_error", "message": "upstream error"}
SILENCE_AFTER = 2  # frames before the silence of the ping check (message_start, content_block_start)
ABANDON_WAIT_S = 3.0  # how long a count of an abandoned request may take to reach Bedrock (BEDROCK-9)


def full_body(model: str = BEDROCK_MODEL) -> dict:
    """A request using most of the Messages API, cache_control included."""
    return {
        "model": model,
        "max_tokens": 512,
        "stream": False,
        "system": [{"type": "text", "text": "You answer briefly.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "héllo ✓", "cache_control": {"type": "ephemeral"}}]}
        ],
        "metadata": {"user_id": "conformance-user"},
        "temperature": 0.5,
        "stop_sequences": ["END"],
        "tools": [TOOL],
        "tool_choice": {"type": "auto"},
        "tags": {"team": "conformance"},
    }


@check("Bedrock: model ids and their paths", "BEDROCK-1", "MODEL-4")
async def model_ids(c: Ctx) -> None:
    fake = bedrock(c)
    for model, path in ((BEDROCK_MODEL, f"/model/{BEDROCK_MODEL_ID}/invoke"), (ARN_MODEL, ARN_PATH)):
        await reset_all(c)
        answer = await c.messages(small_request(model))
        c.status("BEDROCK-1", answer, 200, f"{model}, routed to Bedrock only")
        got = [r["path"] for r in await fake.received()]
        c.equal("BEDROCK-1", got, [path], f"{model}: its upstream_model entry in the path")
    for model, path in BUILTIN_PATHS.items():
        await reset_all(c)
        await c.fake.script(UPSTREAM_404, UPSTREAM_404)
        answer = await c.messages(small_request(model))
        c.status("BEDROCK-1", answer, 200, f"built-in {model} after both Anthropic upstreams answered 404")
        got = [r["path"] for r in await fake.received()]
        c.equal("BEDROCK-1", got, [path], f"built-in {model}: the US cross-region profile, ':' literal")
        order = [c.upstream_of(r) for r in await c.received()] + ["bedrock"] * len(got)
        c.equal("MODEL-4", order, ["primary", "secondary", "bedrock"], f"built-in {model} goes on to Bedrock, in order")


@check("Bedrock: the request body", "BEDROCK-2", "BEDROCK-4")
async def request_body(c: Ctx) -> None:
    fake = bedrock(c)
    await reset_all(c)
    body = full_body()
    answer = await c.messages(body, headers={"anthropic-beta": ",".join(BETAS)})
    c.status("BEDROCK-2", answer, 200, "a request using most of the Messages API")
    records = await fake.received()
    c.equal("BEDROCK-2", len(records), 1, "one Bedrock request")
    if not records:
        return
    payload = obj(records[0]["payload"])
    kept = {k: v for k, v in body.items() if k not in ("model", "stream", "tags")}
    expected = {**kept, "anthropic_version": BEDROCK_VERSION, "anthropic_beta": KEPT_BETAS}
    c.expect("BEDROCK-2", "model" not in payload and "stream" not in payload, "model and stream removed", observed=sorted(payload))
    c.equal("BEDROCK-2", payload.get("anthropic_version"), BEDROCK_VERSION, "anthropic_version")
    c.equal("BEDROCK-2", payload.get("anthropic_beta"), KEPT_BETAS, "the anthropic-beta header's values as a body array, in order")
    c.equal("BEDROCK-2", payload, expected, "every other member kept as sent")
    c.expect("BEDROCK-4", "tags" not in payload, "the tags member removed", observed=payload.get("tags"))
    c.expect("BEDROCK-4", REQUEST_TAGS_BETA not in (payload.get("anthropic_beta") or []), "the request-tags beta removed",
             observed=payload.get("anthropic_beta"))
    c.expect("BEDROCK-4", REQUEST_TAGS_BETA not in records[0]["body"].decode("utf-8", "replace"), "no request-tags anywhere in the body")


@check("Bedrock: signature and headers", "BEDROCK-3", "BEDROCK-11", "BEDROCK-14")
async def signature_and_headers(c: Ctx) -> None:
    fake = bedrock(c)
    await reset_all(c)
    token = await c.bearer()
    answer = await c.messages(small_request(BEDROCK_MODEL), headers=CLIENT_HEADERS)
    c.status("BEDROCK-3", answer, 200, "a request to Bedrock")
    records = await fake.received()
    if not records:
        c.expect("BEDROCK-3", False, "the request reached Bedrock", observed="nothing arrived")
        return
    got = records[0]
    headers = got["headers"]
    auth = header_value(headers, "authorization") or ""
    key = c.state.aws_access_key_id
    c.equal("BEDROCK-3", (got["principal"], got["refused"]), (key, None), "SigV4 signature verified with the configured key")
    c.expect("BEDROCK-3", auth.startswith(f"AWS4-HMAC-SHA256 Credential={key}/") and f"/{BEDROCK_REGION}/bedrock/aws4_request" in auth,
             "AWS4-HMAC-SHA256, service bedrock, the upstream's region", observed=auth[:120])
    signed = auth.partition("SignedHeaders=")[2].split(",")[0].split(";")
    c.expect("BEDROCK-3", BEDROCK_HEADER[0] in signed and header_value(headers, BEDROCK_HEADER[0]) == BEDROCK_HEADER[1],
             "the configured header is sent and signed", observed=(header_value(headers, BEDROCK_HEADER[0]), signed))
    carried = [name for name, value in headers if token in value]
    c.expect("BEDROCK-3", not carried, "nothing of the client's credential is sent", observed=carried, expected=[])
    reached = [(n, v) for n, v in CLIENT_HEADERS if v in header_values_of(headers, n)]
    c.expect("BEDROCK-14", not reached, "none of the client's headers reach Bedrock", observed=reached, expected=[])
    c.expect("BEDROCK-11", header_value(headers, "anthropic-beta") is None, "no anthropic-beta header (betas travel in the body)",
             observed=header_value(headers, "anthropic-beta"))
    c.equal("BEDROCK-11", media(header_value(headers, "content-type")), "application/json", "content-type")
    c.equal("BEDROCK-11", media(header_value(headers, "accept")), "application/json", "accept")
    guard = (header_value(headers, "x-amzn-bedrock-guardrailidentifier"), header_value(headers, "x-amzn-bedrock-guardrailversion"))
    c.equal("BEDROCK-11", guard, GUARDRAIL, "the guardrail's identifier and version headers")
    c.expect("BEDROCK-11", not cloud_headers(answer.raw_headers), "no x-amzn-* header reaches the client", observed=cloud_headers(answer.raw_headers))


def header_values_of(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


def media(value: str | None) -> str | None:
    return value.split(";")[0].strip().lower() if value is not None else None


@check("Bedrock: the event stream re-emitted as SSE", "BEDROCK-5", "BEDROCK-2", "BEDROCK-11")
async def event_stream(c: Ctx) -> None:
    fake = bedrock(c)
    await reset_all(c)
    reply = BedrockReply(answer=Reply(text="One two three four five.", deltas=3))
    await fake.script(reply)
    stream = await read_stream(c, small_request(BEDROCK_MODEL, stream=True))
    c.equal("BEDROCK-5", stream.status, 200, "stream status")
    c.expect("BEDROCK-5", stream.headers.get("content-type", "").startswith("text/event-stream"), "text/event-stream",
             observed=stream.headers.get("content-type"))
    expected = bedrock_stream_events(reply, BEDROCK_MODEL_ID)
    seen = without_pings(parsed_events(stream.body))
    c.equal("BEDROCK-5", seen, expected, "the same events, in order, each chunk's JSON as its data")
    c.expect("BEDROCK-5", stream.body.endswith(b"\n\n") and stream.broken is None, "blank-line framing to a clean end",
             observed=stream.broken or stream.body[-40:])
    records = await fake.received()
    if records:
        got = records[0]
        c.equal("BEDROCK-5", got["path"], f"/model/{BEDROCK_MODEL_ID}/invoke-with-response-stream", "InvokeModelWithResponseStream")
        c.expect("BEDROCK-2", "stream" not in obj(got["payload"]), "stream removed from a streaming request", observed=sorted(obj(got["payload"])))
        c.equal("BEDROCK-11", media(header_value(got["headers"], "accept")), "application/json", "accept on a streaming request")
    c.expect("BEDROCK-11", not cloud_headers(stream.headers), "no x-amzn-* header on a stream", observed=cloud_headers(stream.headers))


@check("Bedrock: pings while the upstream is silent", "SSE-4", "BEDROCK-5", timeout_s=75)
async def silence_pings(c: Ctx) -> None:
    fake = bedrock(c)
    await reset_all(c)
    interval = c.suite.ping_interval_s
    # Long enough for a gateway that looks for silence every few seconds (Anthropic's: every 5 s).
    silence = interval * 4 / 3 + 1.5
    reply = BedrockReply(answer=Reply(text="Slow answer.", deltas=2, stall_after=SILENCE_AFTER, stall_seconds=silence))
    await fake.script(reply)
    stream = await read_stream(c, small_request(BEDROCK_MODEL, stream=True), timeout_s=silence + 20)
    events = parsed_events(stream.body)
    pings = [data for name, data in events if name == "ping"]
    c.expect("SSE-4", bool(pings), f"an event: ping during {silence:.1f} s of upstream silence (ping interval {interval:g} s)",
             observed=[name for name, _ in events])
    c.expect("SSE-4", all(p == {"type": "ping"} for p in pings), 'ping data {"type": "ping"}', observed=pings)
    blocks = [b for b in stream.body.replace(b"\r\n", b"\n").split(b"\n\n") if b.strip()]
    whole = all(b.startswith(b"event: ") and b"\ndata: " in b for b in blocks)
    c.expect("SSE-4", whole, "pings only at event boundaries: every block a whole event", observed=[b[:60] for b in blocks if not b.startswith(b"event: ")])
    gap = ping_gap(stream.chunks)
    c.expect("SSE-4", gap is not None and interval * 0.8 <= gap <= interval + 6, "the first ping after about the ping interval without a byte",
             observed=None if gap is None else f"{gap:.2f} s", expected=f"{interval * 0.8:.1f}-{interval + 6:.1f} s")
    c.equal("BEDROCK-5", without_pings(events), bedrock_stream_events(reply, BEDROCK_MODEL_ID), "every event arrives around the pings")


def ping_gap(chunks: list[tuple[float, bytes]]) -> float | None:
    """Seconds between the chunk carrying the first ping and the chunk before it."""
    for index, (at, chunk) in enumerate(chunks):
        if b"event: ping" in chunk and index > 0:
            return at - chunks[index - 1][0]
    return None


@check("Bedrock: a stream that breaks after it started", "BEDROCK-10", "BEDROCK-13")
async def stream_breaks(c: Ctx) -> None:
    fake = bedrock(c)
    other = vertex(c)
    # The pause after the first frame lets the reply start before it breaks (before that, failover).
    started = Reply(stall_after=1, stall_seconds=0.3)
    cases = (
        ("BEDROCK-10", "an exception frame", msgspec.structs.replace(stream_exception(at=3), answer=started), EXCEPTION),
        ("BEDROCK-13", "a frame failing its checksum", BedrockReply(corrupt_at=3, answer=started), INTERRUPTED),
    )
    for req, what, reply, error in cases:
        await reset_all(c)
        await fake.script(reply)
        stream = await read_stream(c, small_request(CLOUDS_MODEL, stream=True))
        events = without_pings(parsed_events(stream.body))
        errors = [data for name, data in events if name == "error"]
        last = events[-1] if events else (None, None)
        c.equal(req, stream.status, 200, f"{what}: the reply had started")
        c.expect(req, last[0] == "error" and len(errors) == 1, f"{what}: one event: error ends the stream",
                 observed=[name for name, _ in events][-4:])
        c.equal(req, obj(obj(last[1]).get("error")), error, f"{what}: the error event's error")
        c.expect(req, all(name != "message_stop" for name, _ in events), f"{what}: no message_stop")
        c.equal(req, len(await other.received()), 0, f"{what}: not re-sent to the next upstream ({VERTEX})")


@check("Bedrock: errors keep their status, not their words", "BEDROCK-6", "MSG-22")
async def errors(c: Ctx) -> None:
    fake = bedrock(c)
    cases = [
        (TOO_LONG, 400, "invalid_request_error", "capability_rejected: prompt_too_long"),
        (validation(f"{SECRET_ROLE_ARN} may not use this model feature."), 400, "invalid_request_error", "upstream rejected the request"),
        (bedrock_error(413, "ValidationException", f"Request body from {SECRET_ROLE_ARN} is too large."), 413, None, "request too large for this upstream"),
        (THROTTLING, 429, "rate_limit_error", "upstream rate limit exceeded"),
        (bedrock_error(403, "AccessDeniedException", f"User: {SECRET_ROLE_ARN} is not authorized to perform: bedrock:InvokeModel"), 403, None, None),
    ]
    for reply, status, error_type, message in cases:
        await reset_all(c)
        await fake.script(reply)
        answer = await c.messages(small_request(BEDROCK_MODEL))
        what = f"Bedrock {reply.status} {reply.error}"
        error = error_of(answer)
        c.equal("BEDROCK-6", answer.status, status, f"{what}: status kept")
        c.equal("MSG-22", answer.status, status, f"{what}: a cloud error keeps its status")
        c.expect("BEDROCK-6", isinstance(error.get("type"), str) and isinstance(error.get("message"), str), f"{what}: the error envelope",
                 observed=answer.summary())
        if error_type is not None:
            c.equal("BEDROCK-6", error.get("type"), error_type, f"{what}: error.type")
        if message is not None:
            c.equal("BEDROCK-6", error.get("message"), message, f"{what}: error.message")
        secrets = leaked(answer, ACCOUNT, reply.message)
        c.expect("BEDROCK-6", not secrets, f"{what}: Bedrock's own text stays in the operational log", observed=secrets, expected=[])
        c.expect("MSG-22", not secrets, f"{what}: reworded", observed=secrets, expected=[])


@check("Bedrock: token counting", "BEDROCK-7", "COUNT-3")
async def counting(c: Ctx) -> None:
    fake = bedrock(c)
    other = vertex(c)
    count_path = "/model/anthropic.claude-sonnet-4-6/count-tokens"
    messages = [{"role": "user", "content": "count me"}]
    thinking = {"type": "enabled", "budget_tokens": 2048}
    await reset_all(c)
    await fake.script(BedrockReply(input_tokens=4321))
    body = {"model": BEDROCK_MODEL, "messages": messages, "tools": [], "thinking": thinking, "system": "Be brief."}
    betas = {"anthropic-beta": "token-counting-2024-11-01,interleaved-thinking-2025-05-14"}
    answer = await c.messages(body, path="/v1/messages/count_tokens", headers=betas)
    c.status("BEDROCK-7", answer, 200, "count_tokens for a Bedrock-only model")
    c.equal("BEDROCK-7", answer.json(), {"input_tokens": 4321}, "CountTokens' inputTokens as input_tokens")
    c.equal("COUNT-3", answer.json(), {"input_tokens": 4321}, "success is {input_tokens: N}")
    records = await fake.received()
    got = records[0] if records else {"path": None, "payload": None}
    payload = obj(got["payload"])
    c.equal("BEDROCK-7", got["path"], count_path, "CountTokens on the bare foundation-model id")
    c.equal("BEDROCK-7", payload.get("anthropic_version"), "bedrock-2023-05-31", "anthropic_version in the invoke body")
    c.equal("BEDROCK-7", payload.get("max_tokens"), 2049, "max_tokens: the thinking budget plus one")
    absent = [k for k in ("model", "tools", "anthropic_beta") if k in payload]
    c.equal("BEDROCK-7", absent, [], "no model, no empty tools, no betas")
    c.equal("BEDROCK-7", (payload.get("messages"), payload.get("thinking"), payload.get("system")), (messages, thinking, "Be brief."),
            "the rest of the request kept")
    await reset_all(c)
    await c.messages({"model": BEDROCK_MODEL, "messages": messages, "tools": [TOOL]}, path="/v1/messages/count_tokens")
    records = await fake.received()
    payload = obj(records[0]["payload"]) if records else {}
    c.equal("BEDROCK-7", (payload.get("max_tokens"), payload.get("tools")), (1, [TOOL]), "without thinking max_tokens is 1; tools kept")
    # Not countable on Bedrock, no other upstream for the model: 501, and nothing sent.
    await reset_all(c)
    arn = await c.messages({"model": ARN_MODEL, "messages": messages}, path="/v1/messages/count_tokens")
    c.envelope("BEDROCK-7", arn, 501, "not_supported", no_retry=True, what="an inference-profile ARN, no other upstream")
    c.equal("BEDROCK-7", len(await fake.received()), 0, "an ARN is not counted on Bedrock")
    # A failed count falls through to the next upstream that can count...
    await reset_all(c)
    await fake.script(ACCESS_DENIED)
    await other.script(Reply(json={"input_tokens": 555}, ratelimit_headers=False, request_id=""))
    through = await c.messages({"model": CLOUDS_MODEL, "messages": messages}, path="/v1/messages/count_tokens")
    c.equal("BEDROCK-7", (through.status, through.json()), (200, {"input_tokens": 555}), "a refused count falls through to Vertex")
    counted = [r["path"] for r in await other.received()]
    c.expect("BEDROCK-7", len(counted) == 1 and counted[0].endswith("/models/count-tokens:rawPredict"), "Vertex counted it",
             observed=counted, expected=f"…/models/count-tokens:rawPredict for {CLOUDS_MODEL_IDS[VERTEX]}")
    # ...and only when none can, the client hears 501.
    await reset_all(c)
    await fake.script(ACCESS_DENIED)
    alone = await c.messages({"model": BEDROCK_MODEL, "messages": messages}, path="/v1/messages/count_tokens")
    c.envelope("BEDROCK-7", alone, 501, "not_supported", no_retry=True, what="a refused count with no other upstream")


@check("Bedrock: a guardrail refuses amazon-bedrock-* members", "BEDROCK-8")
async def guardrail_fields(c: Ctx) -> None:
    fake = bedrock(c)
    await reset_all(c)
    body = small_request(BEDROCK_MODEL, **{"amazon-bedrock-guardrailConfig": {"tagSuffix": "conformance"}})
    answer = await c.messages(body)
    c.equal("BEDROCK-8", answer.status, 400, "refused with 400")
    c.equal("BEDROCK-8", error_of(answer).get("type"), "invalid_request_error", "invalid_request_error")
    c.equal("BEDROCK-8", len(await fake.received()), 0, "not forwarded")


@check("a cloud upstream may take longer than upstream_ttfb_ms", "MSG-47", timeout_s=45)
async def slow_cloud(c: Ctx) -> None:
    fake = bedrock(c)
    wait = c.state.upstream_ttfb_ms / 1000 + 1.0
    slow = BedrockReply(answer=Reply(headers_delay=wait), input_tokens=99)
    await reset_all(c)
    await fake.script(slow)
    answer = await c.messages(small_request(BEDROCK_MODEL), timeout_s=wait + 15)
    c.status("MSG-47", answer, 200, f"Bedrock answering after {wait:.1f} s, past upstream_ttfb_ms")
    c.equal("MSG-47", len(await fake.received()), 1, "one Bedrock request, not abandoned")
    await reset_all(c)
    await fake.script(slow)
    stream = await read_stream(c, small_request(BEDROCK_MODEL, stream=True), timeout_s=wait + 15)
    ended = [name for name, _ in without_pings(parsed_events(stream.body))][-1:]
    c.expect("MSG-47", stream.status == 200 and ended == ["message_stop"], f"a stream whose headers come after {wait:.1f} s",
             observed=(stream.status, stream.broken or stream.body[-120:]))
    await reset_all(c)
    await fake.script(slow)
    counted = await c.messages({"model": BEDROCK_MODEL, "messages": [{"role": "user", "content": "hi"}]},
                               path="/v1/messages/count_tokens", timeout_s=wait + 15)
    c.equal("MSG-47", (counted.status, counted.json()), (200, {"input_tokens": 99}), f"a count answered after {wait:.1f} s")


@check("Bedrock: credentials from an assumed role", "BEDROCK-12", "MSG-46")
async def assumed_role(c: Ctx) -> None:
    fake = bedrock(c)
    role = sts(c)
    other = vertex(c)
    base_key = c.state.aws_access_key_id
    # Developers no earlier request has made the gateway assume the role for (session_name: email).
    run = secrets.token_hex(4)
    people = {name: f"conf-role-{name}-{run}@example.com" for name in ("first", "second", "third")}
    tokens = {name: mint(c.state.jwt_secret, claims_for(c, sub=f"conf-role-{name}-{run}", email=email))
              for name, email in people.items()}
    await reset_all(c)
    principals = []
    for name in ("first", "first", "second"):
        answer = await c.messages(small_request(ROLE_MODEL), bearer=tokens[name])
        c.status("BEDROCK-12", answer, 200, f"{ROLE_UPSTREAM} serving the {name} developer")
        records = await fake.received()
        principals.append(records[-1]["principal"] if records else None)
        token = header_value(records[-1]["headers"], "x-amz-security-token") if records else None
        c.expect("BEDROCK-12", principals[-1] not in (None, base_key) and token is not None,
                 f"{name} developer: signed with temporary credentials, never the base keys", observed=(principals[-1], bool(token)))
    calls = await role.received()
    c.equal("BEDROCK-12", [(call["role_arn"], call["session_name"], call["outcome"]) for call in calls],
            [(ROLE_ARN, people["first"], "ok"), (ROLE_ARN, people["second"], "ok")],
            "one AssumeRole per developer, the email as session name, reused by the next request")
    c.expect("BEDROCK-12", all(call["principal"] == base_key for call in calls), "AssumeRole signed with the upstream's own keys",
             observed=[call["principal"] for call in calls])
    issued = [call["access_key_id"] for call in calls]
    c.equal("BEDROCK-12", principals, [*issued[:1], *issued[:1], *issued[1:2]], "each developer's requests signed with their session's key")
    # STS refusing a developer without a session (AccessDenied, which AWS SDKs do not retry):
    # never the base keys, the next upstream instead.
    await reset_all(c)
    await role.script("access_denied")
    answer = await c.messages(small_request(ROLE_MODEL), bearer=tokens["third"])
    served = len(await other.received())
    sent = [r["principal"] for r in await fake.received()]
    c.expect("BEDROCK-12", answer.status == 200 and served == 1 and not sent, "STS refusing: nothing sent to Bedrock, Vertex serves it",
             observed=(answer.status, f"{served} Vertex request(s)", f"Bedrock requests signed by {sent}"))
    c.expect("MSG-46", answer.status == 200 and served == 1, "a credential the gateway cannot get counts as that upstream failing",
             observed=(answer.status, served))


@check("Bedrock: an abandoned request is counted", "BEDROCK-9", timeout_s=30)
async def abandoned_counted(c: Ctx) -> None:
    fake = bedrock(c)
    await reset_all(c)
    # Headers, then silence: the client leaves before any usage has come back.
    await fake.script(BedrockReply(answer=Reply(stall_after=0, stall_seconds=ABANDON_WAIT_S + 5)))
    body = json.dumps(small_request(BEDROCK_MODEL, stream=True)).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {await c.bearer()}"}
    async with aiohttp.ClientSession() as own:
        request = asyncio.ensure_future(own.post(c.t.url("/v1/messages"), data=body, headers=headers))
        arrived = await _until(lambda: _operations(fake), lambda ops: "stream" in ops, 5.0)
        request.cancel()  # drops the connection: the client has gone
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await request
    if "stream" not in arrived:
        c.expect("BEDROCK-9", False, "the stream reached Bedrock", observed=arrived)
        return
    seen = await _until(lambda: _operations(fake), lambda ops: "count" in ops, ABANDON_WAIT_S)
    c.expect("BEDROCK-9", "count" in seen, f"CountTokens for the abandoned request's input within {ABANDON_WAIT_S:g} s",
             observed=seen, expected="stream, then count")


async def _operations(fake: RemoteBedrock) -> list[str]:
    return [r["operation"] for r in await fake.received()]


async def _until(read: Callable[[], Awaitable[list[str]]], done: Callable[[list[str]], bool], within_s: float) -> list[str]:
    deadline = time.monotonic() + within_s
    value = await read()
    while not done(value) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        value = await read()
    return value
