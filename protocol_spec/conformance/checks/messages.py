"""SPEC §10 (messages), §11 (token counting) and §16 routing, judged at the fake upstream.

The fixture configuration has two Anthropic-format upstreams on the same fake,
``primary`` and ``secondary``; the fake tells them apart by the API key each
request carries. The secondary also gets a configured header and the caller's
identity (``forward_user_identity``). Each check resets the fake, scripts its
answers, sends one request and reads back exactly what arrived.

The cloud upstreams come after those two, so a built-in model whose Anthropic
upstreams both fail goes on to Bedrock and Vertex (checks/clouds.py judges
that). Where every upstream tried must fail, the checks here ask for
:data:`~protocol_spec.conformance.fixtures.PAIR_MODEL`, routed to the two
Anthropic upstreams only; N in ``all upstreams failed (N attempted)`` still
counts every configured upstream (MSG-31).
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

from protocol_spec.conformance.context import Ctx, header_value, small_request
from protocol_spec.conformance.fixtures import (
    CUSTOM_MODEL,
    CUSTOM_UPSTREAM_MODEL,
    PAIR_MODEL,
    SECONDARY_HEADER,
)
from protocol_spec.conformance.verdicts import check
from protocol_spec.fakes import Reply, error_reply
from protocol_spec.fakes.replies import message_json

# A dated id every gateway's catalog knows (MODEL-6); MODEL-9 adds one nobody knows.
KNOWN_DATED = "claude-haiku-4-5-20251001"

# Client headers that must reach the upstream unchanged (SPEC MSG-12, HINT-1).
FORWARDED = [
    ("anthropic-version", "2023-06-01"),
    ("anthropic-beta", "interleaved-thinking-2025-05-14,conformance-beta-2099-01-01"),
    ("anthropic-conformance-new-header", "kept"),
    ("x-claude-code-session-id", "0f3c2a9e-conformance"),
    ("x-claude-code-request-class", "main"),
    ("x-claude-code-managed-settings-checksum", "sha256:" + "0" * 64),
    ("x-stainless-retry-count", "0"),
    ("x-stainless-lang", "js"),
    ("accept", "application/json"),
    ("user-agent", "claude-cli/2.1.328 (external, cli)"),
]
# Client headers that must not (SPEC MSG-13).
DROPPED = [
    ("x-api-key", "sk-ant-client-own-key"),
    ("cookie", "session=conformance"),
    ("x-app", "cli"),
    ("x-forwarded-for", "198.51.100.7"),
    ("forwarded", "for=198.51.100.7"),
    ("x-request-id", "conformance-client-request-id"),
    ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ("x-conformance-custom", "private"),
]


def all_failed(c: Ctx) -> str:
    """The gateway's 502 message when every upstream failed (MSG-31: N counts every configured one)."""
    return f"all upstreams failed ({len(c.state.upstreams)} attempted)"


def _body_model(record: dict[str, Any]) -> Any:
    try:
        return json.loads(record["body"]).get("model")
    except (ValueError, AttributeError):
        return None


@check(
    "body checks",
    "MSG-5", "MSG-6", "MSG-7", "MSG-8", "MSG-10", "MSG-4", "ERR-1", "ERR-2", "ERR-6", "ROLE-4",
)
async def body_checks(c: Ctx) -> None:
    await c.fake.reset()
    cases: list[tuple[str, bytes, str]] = [
        ("MSG-5", b"", "invalid JSON"),
        ("MSG-5", b'{"model": "claude-sonnet-4-6",', "invalid JSON"),
        ("MSG-6", b"[1, 2]", "request body must be a JSON object"),
        ("MSG-6", b'"text"', "request body must be a JSON object"),
        ("MSG-7", b'{"max_tokens": 5, "messages": []}', "model is required"),
        ("MSG-8", b'{"model": null, "max_tokens": 5, "messages": []}', "model must be a string"),
        ("MSG-7", b'{"model": "", "max_tokens": 5, "messages": []}', "model is required"),
        ("MSG-8", b'{"model": 5, "max_tokens": 5, "messages": []}', "model must be a string"),
        ("MSG-8", b'{"model": ["claude-sonnet-4-6"], "max_tokens": 5, "messages": []}', "model must be a string"),
    ]
    for rid, raw, message in cases:
        answer = await c.messages(raw=raw)
        c.envelope(rid, answer, 400, "invalid_request_error", message=message, what=f"body {raw[:40]!r}")
    unknown = await c.messages(small_request("gpt-4o"))
    c.envelope("MSG-10", unknown, 400, "invalid_request_error", contains="gpt-4o", what="a model no upstream serves")
    reached = await c.received()
    c.expect("MSG-10", not reached, "refused requests never reach an upstream", observed=len(reached), expected=0)
    c.expect("MSG-4", not reached, "each refusal happens before any upstream call", observed=len(reached), expected=0)


@check("forwarding: headers, query and credential", "MSG-1", "MSG-11", "MSG-12", "MSG-13", "MSG-14", "MSG-18", "HINT-1", "ROLE-2")
async def forwarding(c: Ctx) -> None:
    await c.fake.reset()
    body = json.dumps(
        {
            "model": "claude-sonnet-4-6",
            "max_tokens": 16,
            "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.328;"}],
            "conformance_unknown_field": {"nested": [1, 2, 3]},
            "tags": {"team": "conformance"},
            "safeguards": {"enabled": True},
            "messages": [{"role": "system", "content": "odd but allowed"}, {"role": "user", "content": "héllo ✓"}],
        },
        ensure_ascii=False,
        indent=1,
    ).encode()
    answer = await c.messages(raw=body, path="/v1/messages?beta=true", headers=FORWARDED + DROPPED)
    c.status("MSG-11", answer, 200, "unknown fields and odd messages reach the upstream")
    c.status("ROLE-2", answer, 200, "unknown headers and fields never cause a refusal")
    c.status("HINT-1", answer, 200, "hint headers never cause a refusal")
    records = await c.received()
    c.equal("MSG-1", len(records), 1, "one upstream request")
    if not records:
        return
    got = records[0]
    c.equal("MSG-1", got["path"], "/v1/messages", "upstream path")
    c.equal("MSG-1", got["query_string"], "beta=true", "upstream query string")
    c.expect("MSG-18", got["body"] == body, "the body arrives byte for byte", observed=f"{len(got['body'])} bytes", expected=f"the {len(body)} bytes sent")
    c.expect("MSG-11", got["body"] == body, "nothing in the body is validated or changed", observed=len(got["body"]), expected=len(body))
    for name, value in FORWARDED:
        rid = "HINT-1" if name.startswith("x-claude-code-") else "MSG-12"
        c.equal(rid, header_value(got["headers"], name), value, f"upstream {name}")
    c.equal("MSG-12", header_value(got["headers"], "content-type"), "application/json", "upstream content-type")
    for name, value in DROPPED:
        seen = header_value(got["headers"], name)
        ok = seen is None or (name == "x-api-key" and seen != value)
        c.expect("MSG-13", ok, f"{name} is not forwarded", observed=seen, expected="absent")
    c.expect("MSG-13", header_value(got["headers"], "authorization") is None, "the client's Authorization is not forwarded", observed=header_value(got["headers"], "authorization"))
    c.equal("MSG-14", header_value(got["headers"], "x-api-key"), c.state.primary_key, "the primary upstream's api_key as x-api-key")


@check("model rewriting touches only the model bytes", "MSG-19", "MODEL-3", "MODEL-5", "MODEL-6", "MODEL-9", "MSG-9")
async def model_rewriting(c: Ctx) -> None:
    await c.fake.reset()
    sent = ('{ "max_tokens" : 16,\n  "model":"' + CUSTOM_MODEL + '" ,"messages": [ {"role":"user","content":"hi \\u00e9"} ] }').encode()
    answer = await c.messages(raw=sent)
    c.status("MSG-19", answer, 200, "a custom model")
    records = await c.received()
    if records:
        expected = sent.replace(CUSTOM_MODEL.encode(), CUSTOM_UPSTREAM_MODEL.encode())
        c.expect("MSG-19", records[0]["body"] == expected, "only the model value changed", observed=records[0]["body"], expected=expected)
        c.equal("MODEL-5", c.upstream_of(records[0]), "primary", "a custom model goes to the upstreams in its map")
    await c.fake.reset()
    await c.fake.script(error_reply(500, "api_error", "primary down"))
    failed = await c.messages(small_request(CUSTOM_MODEL))
    c.envelope("MODEL-5", failed, 502, "api_error", message=all_failed(c), what="custom model, its only upstream failing")
    calls = await c.received()
    c.equal("MODEL-5", len(calls), 1, "the upstream outside the map is skipped without a call")
    for rid, model in (("MODEL-6", KNOWN_DATED), ("MODEL-9", "claude-opus-4-7-20990101")):
        await c.fake.reset()
        dated = await c.messages(small_request(model))
        c.status(rid, dated, 200, f"{model}, a dated form of a catalog id")
        if rid == "MODEL-6":
            c.status("MSG-9", dated, 200, "a known dated form of an allowed id is allowed")
        records = await c.received()
        if records:
            c.equal(rid, _body_model(records[0]), model, "the upstream gets the id as written")


@check("upstream answers relayed", "MSG-22", "MSG-23", "MSG-24", "MSG-25", "MSG-26", "MSG-17", "ERR-7", "RETRY-4", "MSG-29")
async def relayed_answers(c: Ctx) -> None:
    await c.fake.reset()
    upstream_id = "req_conformanceupstream0000001"
    await c.fake.script(Reply(json=message_json("plain"), request_id=upstream_id, headers={"x-conformance-upstream-header": "1"}))
    ok = await c.messages(small_request())
    c.status("MSG-26", ok, 200, "a non-streaming request")
    c.expect("MSG-26", ok.json() == message_json("plain"), "the JSON reply is relayed unchanged", observed=ok.summary())
    leaked = [name for name in ok.headers if name.lower().startswith("anthropic-ratelimit-") and "unified" not in name.lower()]
    c.expect("MSG-23", not leaked, "upstream anthropic-ratelimit-* headers are removed", observed=leaked, expected=[])
    c.expect("MSG-24", ok.header("request-id") not in (None, upstream_id), "request-id is the gateway's own", observed=ok.header("request-id"))
    records = await c.received()
    if records:
        offered = header_value(records[0]["headers"], "accept-encoding") or ""
        tokens = {t.split(";")[0].strip().lower() for t in offered.split(",") if t.strip()}
        c.expect("MSG-17", tokens <= {"gzip", "deflate", "br", "zstd", "identity"}, "Accept-Encoding names real encodings", observed=offered)
    await c.fake.reset()
    error = error_reply(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum", should_retry=True, retry_after=7)
    await c.fake.script(error)
    bad = await c.messages(small_request())
    c.equal("MSG-22", bad.status, 400, "an upstream 400 keeps its status")
    c.equal("ERR-7", bad.json(), error.json, "the upstream error body is unchanged")
    c.equal("RETRY-4", bad.header("x-should-retry"), "true", "upstream x-should-retry relayed")
    c.equal("RETRY-4", bad.header("retry-after"), "7", "upstream retry-after relayed")
    calls = await c.received()
    c.equal("MSG-29", len(calls), 1, "a 4xx other than 401/403/404/429 is not failed over")
    await c.fake.reset()
    await c.fake.script(Reply(json=message_json("squeezed"), encoding="gzip"))
    squeezed = await c.messages(small_request(), headers={"Accept-Encoding": "gzip"}, decompress=False)
    encoding = (squeezed.header("Content-Encoding") or "").lower()
    try:
        plain = gzip.decompress(squeezed.body) if encoding == "gzip" else zlib.decompress(squeezed.body) if encoding == "deflate" else squeezed.body
        decoded = json.loads(plain)
    except (OSError, zlib.error, ValueError):
        decoded = None
    c.expect("MSG-25", decoded == message_json("squeezed"), "Content-Encoding matches the body the client gets", observed=(encoding, squeezed.body[:60]))


@check(
    "failover",
    "MSG-27", "MSG-28", "MSG-30", "MSG-31", "MSG-15", "MSG-16", "MODEL-4", "RETRY-3", "MSG-34", "ERR-6",
    timeout_s=30,
)
async def failover(c: Ctx) -> None:
    user = c.suite.user("normal")
    await c.fake.reset()
    await c.fake.script(error_reply(500, "api_error", "primary broke"))
    answer = await c.messages(small_request())
    c.status("MSG-28", answer, 200, "a 5xx from the first upstream fails over")
    calls = await c.received()
    order = [c.upstream_of(r) for r in calls]
    c.equal("MODEL-4", order, ["primary", "secondary"], "a built-in model is tried on every upstream in order")
    if len(calls) == 2:
        second = calls[1]["headers"]
        c.equal("MSG-15", header_value(second, SECONDARY_HEADER[0]), SECONDARY_HEADER[1], "configured headers on a failover request")
        c.expect("MSG-15", header_value(calls[0]["headers"], SECONDARY_HEADER[0]) is None, "only that upstream's headers", observed=header_value(calls[0]["headers"], SECONDARY_HEADER[0]))
        if c.suite.signin == "device":
            c.equal("MSG-16", header_value(second, "x-claude-gateway-user-id"), user["sub"], "x-claude-gateway-user-id")
            c.equal("MSG-16", header_value(second, "x-claude-gateway-user-email"), user["email"], "x-claude-gateway-user-email")
            c.equal("MSG-16", header_value(second, "x-litellm-end-user-id"), user["email"], "x-litellm-end-user-id")
        c.expect("MSG-16", header_value(calls[0]["headers"], "x-claude-gateway-user-id") is None, "no identity to an upstream without forward_user_identity", observed=header_value(calls[0]["headers"], "x-claude-gateway-user-id"))
    await c.fake.reset()
    again = await c.messages(small_request())
    calls = await c.received()
    c.expect("MSG-27", again.status == 200 and [c.upstream_of(r) for r in calls] == ["primary"], "the next request starts at the first upstream again", observed=[c.upstream_of(r) for r in calls])
    # Every upstream tried fails from here on: a model served by the two Anthropic upstreams only.
    for codes in ((401, 500), (403, 500), (404, 500), (429, 500), (501, 500)):
        await c.fake.reset()
        first = error_reply(codes[0], "conformance_error", f"primary says {codes[0]}")
        await c.fake.script(first, error_reply(codes[1], "api_error", "secondary broke"))
        relayed = await c.messages(small_request(PAIR_MODEL))
        c.equal("MSG-30", relayed.status, codes[0], f"{codes[0]} then 500: the {codes[0]} is relayed")
        c.equal("MSG-30", relayed.json(), first.json, f"{codes[0]} then 500: its body unchanged")
        c.equal("MSG-28", len(await c.received()), 2, f"a {codes[0]} fails over")
    await c.fake.reset()
    await c.fake.script(error_reply(429, "rate_limit_error", "first"), error_reply(401, "authentication_error", "second"))
    mixed = await c.messages(small_request(PAIR_MODEL))
    c.equal("MSG-30", mixed.status, 429, "429 then 401: the 429 wins")
    await c.fake.reset()
    await c.fake.script(error_reply(500, "api_error", "one"), error_reply(529, "overloaded_error", "two"))
    both = await c.messages(small_request(PAIR_MODEL))
    c.envelope("MSG-31", both, 502, "api_error", message=all_failed(c), what="every upstream failed")
    c.expect("RETRY-3", both.header("x-should-retry") is None, "the gateway's own 502 has no x-should-retry", observed=both.header("x-should-retry"))
    await c.fake.reset()
    await c.fake.script(Reply(json=message_json("late"), headers_delay=c.state.upstream_ttfb_ms / 1000 + 1.5))
    slow = await c.messages(small_request(), timeout_s=c.state.upstream_ttfb_ms / 1000 + 10)
    calls = await c.received()
    c.expect("MSG-34", slow.status == 200 and [c.upstream_of(r) for r in calls] == ["primary", "secondary"],
             "an upstream slower than upstream_ttfb_ms fails over", observed=(slow.status, [c.upstream_of(r) for r in calls]))
    c.expect("MSG-34", slow.ttfb_s < c.state.upstream_ttfb_ms / 1000 + 1.2, "within about upstream_ttfb_ms", observed=f"{slow.ttfb_s:.2f} s")


@check("token counting", "COUNT-1", "COUNT-3", "COUNT-4")
async def count_tokens(c: Ctx) -> None:
    await c.fake.reset()
    await c.fake.script(Reply(json={"input_tokens": 4242}))
    body = b'{"model":"claude-sonnet-4-6","messages":[{"role":"user","content":"count me"}],"tools":[]}'
    answer = await c.messages(raw=body, path="/v1/messages/count_tokens?beta=true", headers=FORWARDED[:3])
    c.status("COUNT-1", answer, 200, "count_tokens with a bearer")
    c.equal("COUNT-3", answer.json(), {"input_tokens": 4242}, "the upstream's count, unchanged")
    records = await c.received()
    if records:
        c.equal("COUNT-1", (records[0]["path"], records[0]["query_string"]), ("/v1/messages/count_tokens", "beta=true"), "path and query forwarded")
        c.expect("COUNT-1", records[0]["body"] == body, "body byte for byte", observed=records[0]["body"])
    await c.fake.reset()
    await c.fake.script(error_reply(501, "not_supported", "cannot count", should_retry=False))
    over = await c.messages(raw=body, path="/v1/messages/count_tokens")
    c.expect("COUNT-4", over.status == 200 and len(await c.received()) == 2, "a 501 from the first upstream fails over", observed=over.summary())
    await c.fake.reset()
    empty = await c.messages(raw=b"", path="/v1/messages/count_tokens")
    c.envelope("COUNT-1", empty, 400, "invalid_request_error", message="invalid JSON", what="count_tokens body checks")
