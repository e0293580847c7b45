"""SPEC §21 telemetry ingestion, and replay of recorded real-client requests.

The replay sends every recorded inference request of the real CLI and SDK
(``protocol_spec/transcripts/``) through the gateway with the suite's own
bearer in place of the recorded credential, and checks at the fake upstream
that the body arrived byte for byte and the forwardable headers unchanged.
"""

from __future__ import annotations

from protocol_spec import transcripts
from protocol_spec.conformance.context import Ctx, header_value
from protocol_spec.conformance.verdicts import check

# Recorded folders replayed: what real clients send to a gateway. (gateway-real
# holds answers of a particular deployment, with caps and refusals of its own.)
REPLAYED_FOLDERS = ("cli/", "sdk/", "gateway-fake/")
INFERENCE_PATHS = ("/v1/messages", "/v1/messages/count_tokens")
# The recorded credential and connection headers; the suite supplies its own.
NOT_REPLAYED = frozenset({"authorization", "x-api-key", "host", "content-length", "connection", "transfer-encoding", "keep-alive", "cookie"})
FORWARDED_PREFIXES = ("anthropic-", "x-claude-code-", "x-stainless-")
FORWARDED_NAMES = ("content-type", "accept", "user-agent")
UNSERVED_MODEL = "my-gw-alias"


@check("telemetry ingestion", "TEL-1")
async def telemetry(c: Ctx) -> None:
    token = await c.bearer()
    for signal in ("metrics", "logs", "traces"):
        as_json = await c.t.post(f"/v1/{signal}", body=b'{"resourceMetrics":[]}', headers={"Content-Type": "application/json"}, bearer=token)
        c.expect("TEL-1", as_json.status == 200 and as_json.body == b"", f"POST /v1/{signal} (JSON)", observed=as_json.summary(), expected="200, empty body")
    protobuf = await c.t.post("/v1/metrics", body=b"\x0a\x00", headers={"Content-Type": "application/x-protobuf"}, bearer=token)
    c.expect("TEL-1", protobuf.status == 200 and protobuf.body == b"", "POST /v1/metrics (protobuf)", observed=protobuf.summary(), expected="200, empty body")
    anonymous = await c.t.post("/v1/metrics", body=b"{}", headers={"Content-Type": "application/json"})
    c.equal("TEL-1", anonymous.status, 401, "a bearer is required")


def _replayable() -> list[transcripts.Exchange]:
    found = []
    for name in transcripts.names():
        if not name.startswith(REPLAYED_FOLDERS):
            continue
        found += [e for e in transcripts.load(name) if e.method == "POST" and e.path in INFERENCE_PATHS]
    return found


@check("replay of recorded client requests", "MSG-1", "MSG-12", "MSG-18", "COUNT-1", "COUNT-3", "MSG-10", "HINT-1", timeout_s=60)
async def replay(c: Ctx) -> None:
    token = await c.bearer()
    for exchange in _replayable():
        await c.fake.reset()
        headers = [(k, v) for k, v in exchange.request_headers() if k.lower() not in NOT_REPLAYED]
        body = exchange.request_body()
        answer = await c.t.post(exchange.target, body=body, headers=headers, bearer=token)
        label = f"{exchange.transcript}#{exchange.n}"
        model = exchange.body_json.get("model") if isinstance(exchange.body_json, dict) else None
        if model == UNSERVED_MODEL:
            c.envelope("MSG-10", answer, 400, "invalid_request_error", contains=UNSERVED_MODEL, what=f"{label}: a model no upstream serves")
            continue
        rid = "COUNT-1" if exchange.path.endswith("count_tokens") else "MSG-1"
        c.status(rid, answer, 200, f"{label}: replayed")
        records = await c.received()
        if len(records) != 1:
            c.expect(rid, False, f"{label}: one upstream request", observed=len(records), expected=1)
            continue
        got = records[0]
        c.equal(rid, (got["path"], got["query_string"]), (exchange.path, exchange.query), f"{label}: path and query")
        c.expect("MSG-18", got["body"] == body, f"{label}: body byte for byte", observed=f"{len(got['body'])} bytes", expected=f"{len(body)} bytes")
        for name, value in headers:
            lowered = name.lower()
            if lowered.startswith(FORWARDED_PREFIXES) or lowered in FORWARDED_NAMES:
                target_rid = "HINT-1" if lowered.startswith("x-claude-code-") else "MSG-12"
                c.equal(target_rid, header_value(got["headers"], name), value, f"{label}: {lowered}")
        if exchange.path.endswith("count_tokens"):
            doc = answer.json()
            c.expect("COUNT-3", isinstance(doc, dict) and isinstance(doc.get("input_tokens"), int), f"{label}: {{input_tokens: N}}", observed=answer.summary())
