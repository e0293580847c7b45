"""SPEC §23 (Vertex), judged at the fake Vertex AI and at the client.

The fixtures give the gateway a Vertex upstream (a service-account key file,
a Private Service Connect style ``base_url`` ending in ``/v1``) last in
``upstreams``. The fake Vertex answers only bearer tokens its fake Google
token endpoint issued after verifying the account's signed assertion, so a
request it answered 200 carried a real grant. A built-in model reaches Vertex
when both Anthropic upstreams answer 404 and both Bedrock upstreams 429.
"""

from __future__ import annotations

import json
from typing import Any

from protocol_spec.conformance.checks.cloud_views import (
    bedrock,
    error_of,
    leaked,
    parsed_events,
    reset_all,
    vertex,
    without_pings,
)
from protocol_spec.conformance.checks.streaming import read_stream
from protocol_spec.conformance.context import Ctx, header_value, obj, small_request
from protocol_spec.conformance.fixtures import (
    BEDROCK,
    ROLE_UPSTREAM,
    VERTEX,
    VERTEX_MODEL,
    VERTEX_MODEL_ID,
    VERTEX_PROJECT,
    VERTEX_REGION,
)
from protocol_spec.conformance.verdicts import check
from protocol_spec.fakes import Reply, error_reply
from protocol_spec.fakes.bedrock_replies import THROTTLING
from protocol_spec.fakes.google import google_error, prompt_too_long
from protocol_spec.fakes.replies import sse_bytes

VERTEX_VERSION = "vertex-2023-10-16"
REQUEST_TAGS_BETA = "request-tags-2026-08-21"
BETAS = ["interleaved-thinking-2025-05-14", REQUEST_TAGS_BETA, "token-efficient-tools-2025-02-19"]
KEPT_BETAS = [b for b in BETAS if b != REQUEST_TAGS_BETA]
MODELS_PATH = f"/v1/projects/{VERTEX_PROJECT}/locations/{VERTEX_REGION}/publishers/anthropic/models/"
BUILTIN_IDS = {"claude-haiku-4-5": "claude-haiku-4-5@20251001", "claude-sonnet-4-6": "claude-sonnet-4-6"}
UPSTREAM_404 = error_reply(404, "not_found_error", "model: not here")
TOOL = {"name": "lookup", "description": "Look a word up.", "input_schema": {"type": "object"}}


def vertex_body(*, stream: bool) -> dict:
    return {
        "model": VERTEX_MODEL,
        "max_tokens": 256,
        "stream": stream,
        "system": [{"type": "text", "text": "You answer briefly.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "héllo ✓"}],
        "metadata": {"user_id": "conformance-user"},
        "tools": [TOOL],
        "tags": {"team": "conformance"},
    }


def betas_of(value: str | None) -> list[str] | None:
    return None if value is None else [b.strip() for b in value.split(",") if b.strip()]


@check("Vertex: URL, body and credential", "VERTEX-1", "VERTEX-3", "VERTEX-4", "VERTEX-5")
async def request_shape(c: Ctx) -> None:
    fake = vertex(c)
    token = await c.bearer()
    for stream, verb in ((False, "rawPredict"), (True, "streamRawPredict")):
        await reset_all(c)
        body = vertex_body(stream=stream)
        if stream:
            sent = await read_stream(c, body)
            status = sent.status
        else:
            answer = await c.messages(body, headers={"anthropic-beta": ",".join(BETAS)})
            status = answer.status
        c.equal("VERTEX-1", status, 200, f"a {verb} request answered")
        records = await fake.received()
        c.equal("VERTEX-1", len(records), 1, f"one {verb} request to Vertex")
        if not records:
            continue
        got = records[0]
        c.equal("VERTEX-1", (got["path"], got["query_string"]), (MODELS_PATH + VERTEX_MODEL_ID + ":" + verb, ""),
                "base_url + /projects/…/publishers/anthropic/models/<id>:<verb>, nothing inserted")
        payload = obj(got_json(got["body"]))
        kept = {k: v for k, v in body.items() if k not in ("model", "tags")}
        c.equal("VERTEX-3", payload, {**kept, "anthropic_version": VERTEX_VERSION},
                "model removed, stream and every other member kept, anthropic_version added")
        c.expect("VERTEX-4", "tags" not in payload, f"{verb}: the tags member removed", observed=payload.get("tags"))
        auth = header_value(got["headers"], "authorization") or ""
        c.expect("VERTEX-5", auth.startswith("Bearer ") and token not in auth, f"{verb}: a bearer of the gateway's own",
                 observed=auth[:24] + "…")
        c.equal("VERTEX-5", got["status"], 200, f"{verb}: the bearer is one the token endpoint issued for the service account")
        if not stream:
            c.equal("VERTEX-3", betas_of(header_value(got["headers"], "anthropic-beta")), KEPT_BETAS, "anthropic-beta travels as a header")
            c.expect("VERTEX-4", REQUEST_TAGS_BETA not in (header_value(got["headers"], "anthropic-beta") or ""),
                     "the request-tags beta removed", observed=header_value(got["headers"], "anthropic-beta"))


def got_json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


@check("Vertex: model ids", "VERTEX-2", "MODEL-4")
async def model_ids(c: Ctx) -> None:
    fake = vertex(c)
    first = bedrock(c)
    await reset_all(c)
    await c.messages(small_request(VERTEX_MODEL))
    paths = [r["path"] for r in await fake.received()]
    c.equal("VERTEX-2", paths, [MODELS_PATH + VERTEX_MODEL_ID + ":rawPredict"], "an upstream_model entry verbatim, '@' included")
    for model, vertex_id in BUILTIN_IDS.items():
        await reset_all(c)
        await c.fake.script(UPSTREAM_404, UPSTREAM_404)
        await first.script(THROTTLING, THROTTLING)
        answer = await c.messages(small_request(model))
        c.status("VERTEX-2", answer, 200, f"built-in {model} after 404, 404 and Bedrock 429 twice")
        paths = [r["path"] for r in await fake.received()]
        c.equal("VERTEX-2", paths, [MODELS_PATH + vertex_id + ":rawPredict"], f"built-in {model}: Vertex's id for it")
        order = [c.upstream_of(r) for r in await c.received()]
        order += [BEDROCK if r["principal"] == c.state.aws_access_key_id else ROLE_UPSTREAM for r in await first.received()]
        order += [VERTEX] * len(paths)
        expected = ["primary", "secondary", BEDROCK, ROLE_UPSTREAM, VERTEX]
        c.equal("MODEL-4", order, expected, f"built-in {model} tried on every upstream in order")


@check("Vertex: the SSE reply", "VERTEX-6")
async def stream_relayed(c: Ctx) -> None:
    fake = vertex(c)
    await reset_all(c)
    # Vertex's stream is Anthropic's, its own ping after content_block_start included.
    reply = Reply(stream=True, text="Vertex says hello.", deltas=3, ratelimit_headers=False, request_id="")
    await fake.script(reply)
    stream = await read_stream(c, small_request(VERTEX_MODEL, stream=True))
    expected = parsed_events(sse_bytes(reply, VERTEX_MODEL_ID))
    seen = parsed_events(stream.body)
    c.equal("VERTEX-6", stream.status, 200, "stream status")
    c.equal("VERTEX-6", without_pings(seen), without_pings(expected), "the same events, in order, with the same data")
    c.expect("VERTEX-6", any(name == "ping" for name, _ in seen), "Vertex's own ping relayed like any other event (§12, SSE-2)",
             observed=[name for name, _ in seen])


@check("Vertex: errors", "VERTEX-6", "MSG-22")
async def errors(c: Ctx) -> None:
    fake = vertex(c)
    where = f"projects/{VERTEX_PROJECT}/locations/{VERTEX_REGION}"
    too_long = prompt_too_long()
    cases = [
        (too_long, 400, "invalid_request_error", "prompt is too long: 212345 tokens > 200000 maximum"),
        (google_error(429, f"Quota exceeded for {where}: online prediction requests per base model.", "RESOURCE_EXHAUSTED"),
         429, "rate_limit_error", "upstream rate limit exceeded"),
        (google_error(400, f"Invalid resource field value in the request for {where}.", "INVALID_ARGUMENT"),
         400, "invalid_request_error", "upstream rejected the request"),
        (google_error(403, f"Permission 'aiplatform.endpoints.predict' denied on resource '{where}'.", "PERMISSION_DENIED"),
         403, None, None),
    ]
    for reply, status, error_type, message in cases:
        await reset_all(c)
        await fake.script(reply)
        answer = await c.messages(small_request(VERTEX_MODEL))
        error = error_of(answer)
        what = f"Vertex {reply.status} {'in the envelope' if reply is too_long else 'in Google shape'}"
        c.equal("VERTEX-6", answer.status, status, f"{what}: status kept")
        c.equal("MSG-22", answer.status, status, f"{what}: a cloud error keeps its status")
        if error_type is not None:
            c.equal("VERTEX-6", error.get("type"), error_type, f"{what}: error.type")
        if message is not None:
            c.equal("VERTEX-6", error.get("message"), message, f"{what}: error.message")
        else:
            c.expect("VERTEX-6", isinstance(error.get("message"), str), f"{what}: the error envelope", observed=answer.summary())
        secrets = leaked(answer, VERTEX_PROJECT)
        c.expect("VERTEX-6", not secrets, f"{what}: the project id never reaches the client", observed=secrets, expected=[])


@check("Vertex: token counting", "VERTEX-7")
async def counting(c: Ctx) -> None:
    fake = vertex(c)
    await reset_all(c)
    await fake.script(Reply(json={"input_tokens": 777}, ratelimit_headers=False, request_id=""))
    messages = [{"role": "user", "content": "count me"}]
    answer = await c.messages({"model": VERTEX_MODEL, "messages": messages, "tools": [TOOL]}, path="/v1/messages/count_tokens")
    c.equal("VERTEX-7", (answer.status, answer.json()), (200, {"input_tokens": 777}), "Vertex's count relayed")
    records = await fake.received()
    got: dict[str, Any] = records[0] if records else {"path": None, "body": b""}
    c.equal("VERTEX-7", got["path"], MODELS_PATH + "count-tokens:rawPredict", "…/publishers/anthropic/models/count-tokens:rawPredict")
    payload = obj(got_json(got["body"]))
    c.equal("VERTEX-7", payload.get("model"), VERTEX_MODEL_ID, "the body's model is the Vertex id")
    c.equal("VERTEX-7", payload.get("anthropic_version"), VERTEX_VERSION, "anthropic_version added")
    c.equal("VERTEX-7", (payload.get("messages"), payload.get("tools")), (messages, [TOOL]), "the rest of the request kept")
