"""The Messages API as Bedrock gets it: URLs, headers, body rewrite, counting and errors."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
import pytest

from gateway.config.schema import Guardrail, Upstream
from gateway.errors import GatewayError, Kind
from gateway.upstreams import cloud_errors
from gateway.upstreams.bedrock import (
    BedrockTranslator,
    MalformedReply,
    count_reply,
    foundation_id,
    model_path,
)
from gateway.upstreams.outbound import REQUEST_TAGS_BETA, Ask, Endpoint, Shape

PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/labprofile01"
SONNET = "us.anthropic.claude-sonnet-4-6"
HAIKU = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
CLIENT_HEADERS = {
    "Authorization": "Bearer client-session-token",
    "anthropic-beta": "interleaved-thinking-2025-05-14",
    "anthropic-version": "2023-06-01",
    "x-app": "cli",
    "User-Agent": "claude-cli/2.1",
    "x-stainless-lang": "js",
    "x-claude-code-session-id": "s-1",
}
# Odd but valid spacing, number forms, escapes and key order: each value must come out as sent.
BODY = (
    b'{"model" : "claude-sonnet-4-6", "max_tokens":1024, "temperature": 1.50e0,'
    b' "system":[ {"type":"text","text":"be \\u00e9 brief","cache_control":{"type" :"ephemeral"}} ],'
    b' "messages":[{"role":"user","content":"Gr\xc3\xbc\xc3\x9f \\"q\\"\\n"}],'
    b' "stream": true, "tags": {"billing_group":"eng"}, "metadata":{"user_id":"u1"},'
    b' "thinking": {"type":"enabled","budget_tokens":2048}, "tools": [ ]}'
)


def upstream(**fields: Any) -> Upstream:
    base: dict[str, Any] = {"provider": "bedrock", "name": "bedrock", "region": "us-east-1"}
    return Upstream(**(base | fields))


def translator(env: dict[str, str] | None = None, **fields: Any) -> BedrockTranslator:
    return BedrockTranslator(upstream(**fields), env or {})


def ask(
    body: bytes = BODY,
    *,
    endpoint: Endpoint = Endpoint.MESSAGES,
    stream: bool = False,
    betas: tuple[str, ...] = (),
    thinking_budget: int | None = None,
) -> Ask:
    path = "/v1/messages" if endpoint is Endpoint.MESSAGES else "/v1/messages/count_tokens"
    return Ask(
        endpoint,
        path,
        body,
        "claude-sonnet-4-6",
        stream,
        CLIENT_HEADERS,
        betas,
        "dev@example.com",
        "sub-1",
        thinking_budget,
    )


def raw_members(body: bytes) -> list[tuple[str, bytes]]:
    """Top-level members in order, each with its value's bytes as they appear in ``body``."""
    return [(k, bytes(v)) for k, v in msgspec.json.decode(body, type=dict[str, msgspec.Raw]).items()]


# ---------------------------------------------------------------- endpoints


def test_default_endpoint_is_regional() -> None:
    out = translator().outbound(ask(), SONNET)
    assert out is not None
    assert out.url == f"https://bedrock-runtime.us-east-1.amazonaws.com/model/{SONNET}/invoke"
    assert out.shape is Shape.AS_IS


def test_streaming_uses_the_stream_action_and_the_event_stream_shape() -> None:
    out = translator().outbound(ask(stream=True), SONNET)
    assert out is not None
    assert out.url.endswith(f"/model/{SONNET}/invoke-with-response-stream")
    assert out.shape is Shape.EVENT_STREAM


@pytest.mark.parametrize("value", ["true", "TRUE", " True "])
def test_fips_endpoint(value: str) -> None:
    out = translator({"AWS_USE_FIPS_ENDPOINT": value}, region="us-gov-west-1").outbound(ask(), SONNET)
    assert out is not None
    assert out.url.startswith("https://bedrock-runtime-fips.us-gov-west-1.amazonaws.com/model/")


@pytest.mark.parametrize("value", ["false", "", "1", "yes"])
def test_fips_only_when_true(value: str) -> None:
    assert (
        translator({"AWS_USE_FIPS_ENDPOINT": value}).base_url
        == "https://bedrock-runtime.us-east-1.amazonaws.com"
    )


@pytest.mark.parametrize(
    ("region", "host"),
    [
        ("eu-west-3", "bedrock-runtime.eu-west-3.amazonaws.com"),
        ("cn-north-1", "bedrock-runtime.cn-north-1.amazonaws.com.cn"),
        ("us-iso-east-1", "bedrock-runtime.us-iso-east-1.c2s.ic.gov"),
        ("us-isob-east-1", "bedrock-runtime.us-isob-east-1.sc2s.sgov.gov"),
    ],
)
def test_partition_dns_suffix(region: str, host: str) -> None:
    assert translator(region=region).base_url == f"https://{host}"


def test_base_url_is_used_as_given() -> None:
    t = translator({"AWS_USE_FIPS_ENDPOINT": "true"}, base_url="http://127.0.0.1:9001/prefix/")
    out = t.outbound(ask(), SONNET)
    assert out is not None
    assert out.url == f"http://127.0.0.1:9001/prefix/model/{SONNET}/invoke"


def test_no_region_and_no_base_url_is_a_boot_error() -> None:
    with pytest.raises(ValueError, match="region"):
        translator(region=None)


# ---------------------------------------------------------------- model ids in the path


@pytest.mark.parametrize(
    ("model", "segment"),
    [
        (HAIKU, HAIKU),
        (PROFILE_ARN, "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Flabprofile01"),
        ("odd id?#;&%", "odd%20id%3F%23%3B%26%25"),
        ("..", "%2E%2E"),
        (".", "%2E"),
    ],
)
def test_model_path(model: str, segment: str) -> None:
    assert model_path(model) == segment


def test_arn_in_the_url() -> None:
    out = translator().outbound(ask(), PROFILE_ARN)
    assert out is not None
    assert out.url.endswith(
        "/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Flabprofile01/invoke"
    )


# ---------------------------------------------------------------- the body


def test_body_drops_model_stream_and_tags_and_keeps_every_other_value_byte_for_byte() -> None:
    out = translator().outbound(ask(stream=True), SONNET)
    assert out is not None
    sent = raw_members(BODY)
    kept = [(k, v) for k, v in sent if k not in ("model", "stream", "tags")]
    assert raw_members(out.body) == [("anthropic_version", b'"bedrock-2023-05-31"'), *kept]
    # Checked on the raw bytes too, independently of how members are split.
    assert b'"temperature":1.50e0,' in out.body
    assert b'"system":[ {"type":"text","text":"be \\u00e9 brief","cache_control":{"type" :"ephemeral"}} ],' in out.body
    assert b'"content":"Gr\xc3\xbc\xc3\x9f \\"q\\"\\n"}]' in out.body
    # An empty tools array is left alone here (only counting drops it).
    assert ("tools", b"[ ]") in raw_members(out.body)


def test_body_is_one_json_object() -> None:
    out = translator().outbound(ask(), SONNET)
    assert out is not None
    decoded = json.loads(out.body)
    assert decoded["messages"][0]["content"] == 'Grüß "q"\n'
    assert decoded["system"][0]["text"] == "be é brief"
    assert "model" not in decoded and "stream" not in decoded and "tags" not in decoded


def test_betas_go_into_the_body_in_header_order_without_the_request_tags_beta() -> None:
    betas = ("interleaved-thinking-2025-05-14", REQUEST_TAGS_BETA, "context-1m-2025-08-07 , fine-grained-x")
    out = translator().outbound(ask(betas=betas), SONNET)
    assert out is not None
    members = raw_members(out.body)
    assert members[0] == ("anthropic_version", b'"bedrock-2023-05-31"')
    assert members[1][0] == "anthropic_beta"
    assert json.loads(members[1][1]) == [
        "interleaved-thinking-2025-05-14",
        "context-1m-2025-08-07",
        "fine-grained-x",
    ]


@pytest.mark.parametrize("betas", [(), (REQUEST_TAGS_BETA,), (" , ",)])
def test_no_betas_left_means_no_anthropic_beta_member(betas: tuple[str, ...]) -> None:
    out = translator().outbound(ask(betas=betas), SONNET)
    assert out is not None
    assert "anthropic_beta" not in json.loads(out.body)


def test_our_version_and_betas_replace_any_the_client_put_in_the_body() -> None:
    body = b'{"anthropic_version":"x","anthropic_beta":["y"],"model":"m","max_tokens":5}'
    out = translator().outbound(ask(body, betas=("b1",)), SONNET)
    assert out is not None
    assert out.body == b'{"anthropic_version":"bedrock-2023-05-31","anthropic_beta":["b1"],"max_tokens":5}'


@pytest.mark.parametrize(("body", "message"), [(b"[1,2]", "JSON object"), (b"{nope", "invalid JSON")])
def test_a_body_that_is_not_an_object(body: bytes, message: str) -> None:
    with pytest.raises(GatewayError, match=message) as caught:
        translator().outbound(ask(body), SONNET)
    assert caught.value.kind is Kind.INVALID_REQUEST


# ---------------------------------------------------------------- headers


def test_headers_are_ours_and_the_configured_ones_never_the_clients() -> None:
    out = translator(headers={"x-team": "platform"}).outbound(ask(stream=True, betas=("b1",)), SONNET)
    assert out is not None
    assert out.headers == {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "anthropic-version": "2023-06-01",
        "x-team": "platform",
    }


def test_each_outbound_gets_its_own_headers_dict() -> None:
    t = translator()
    first = t.outbound(ask(), SONNET)
    assert first is not None
    first.headers["Authorization"] = "AWS4-HMAC-SHA256 …"
    second = t.outbound(ask(), SONNET)
    assert second is not None
    assert "Authorization" not in second.headers


# ---------------------------------------------------------------- guardrail


GUARDRAIL = Guardrail(id="gr-abc123", version="DRAFT")


def test_guardrail_headers() -> None:
    out = translator(guardrail=GUARDRAIL).outbound(ask(stream=True), SONNET)
    assert out is not None
    assert out.headers["X-Amzn-Bedrock-GuardrailIdentifier"] == "gr-abc123"
    assert out.headers["X-Amzn-Bedrock-GuardrailVersion"] == "DRAFT"
    assert not any(name.lower() == "x-amzn-bedrock-trace" for name in out.headers)


@pytest.mark.parametrize(
    "field", ["amazon-bedrock-guardrailConfig", "amazon-bedrock-anything", "Amazon-Bedrock-X"]
)
def test_a_guarded_upstream_refuses_bedrock_members(field: str) -> None:
    body = b'{"model":"m","max_tokens":5,"' + field.encode() + b'":{"tagSuffix":"x"}}'
    with pytest.raises(GatewayError) as caught:
        translator(guardrail=GUARDRAIL).outbound(ask(body), SONNET)
    assert caught.value.kind is Kind.INVALID_REQUEST
    assert field in caught.value.message


def test_the_refusal_quotes_a_hostile_field_name_safely() -> None:
    body = b'{"amazon-bedrock-\\u0000\\n":1}'
    with pytest.raises(GatewayError) as caught:
        translator(guardrail=GUARDRAIL).outbound(ask(body), SONNET)
    assert "\n" not in caught.value.message and "\x00" not in caught.value.message


def test_an_unguarded_upstream_passes_bedrock_members_through() -> None:
    body = b'{"model":"m","amazon-bedrock-guardrailConfig":{"tagSuffix":"x"}}'
    out = translator().outbound(ask(body), SONNET)
    assert out is not None
    assert ("amazon-bedrock-guardrailConfig", b'{"tagSuffix":"x"}') in raw_members(out.body)


# ---------------------------------------------------------------- counting


def counted(out_body: bytes) -> bytes:
    outer = json.loads(out_body)
    assert list(outer) == ["input"] and list(outer["input"]) == ["invokeModel"]
    assert list(outer["input"]["invokeModel"]) == ["body"]
    return base64.b64decode(outer["input"]["invokeModel"]["body"], validate=True)


COUNT_BODY = (
    b'{"model":"claude-sonnet-4-6","messages":[{"role":"user","content":"hi  there"}],'
    b'"system":"s","tools":[],"tags":{"g":"x"}}'
)


@pytest.mark.parametrize(
    ("model", "foundation"),
    [
        (SONNET, "anthropic.claude-sonnet-4-6"),
        (HAIKU, "anthropic.claude-haiku-4-5-20251001-v1:0"),
        ("global.anthropic.claude-opus-4-7", "anthropic.claude-opus-4-7"),
        ("apac.anthropic.claude-opus-4-7", "anthropic.claude-opus-4-7"),
        ("us-gov.anthropic.claude-opus-4-7", "anthropic.claude-opus-4-7"),
        ("anthropic.claude-opus-4-7", "anthropic.claude-opus-4-7"),
        (
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-opus-4-7",
            "anthropic.claude-opus-4-7",
        ),
        ("custom.model-x", "custom.model-x"),
        (PROFILE_ARN, None),
        ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-opus-4-7", None),
        ("arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abcdef123456", None),
    ],
)
def test_foundation_id(model: str, foundation: str | None) -> None:
    assert foundation_id(model) == foundation


def test_count_request() -> None:
    t = translator(headers={"x-team": "platform"}, guardrail=GUARDRAIL)
    out = t.outbound(
        ask(COUNT_BODY, endpoint=Endpoint.COUNT_TOKENS, betas=("token-counting-2024-11-01",)), HAIKU
    )
    assert out is not None
    assert out.url == (
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-haiku-4-5-20251001-v1:0/count-tokens"
    )
    assert out.shape is Shape.BEDROCK_COUNT
    assert out.headers == {"Content-Type": "application/json", "x-team": "platform"}
    inner = counted(out.body)
    assert inner == (
        b'{"anthropic_version":"bedrock-2023-05-31",'
        b'"messages":[{"role":"user","content":"hi  there"}],"system":"s","max_tokens":1}'
    )


def test_count_max_tokens_is_above_the_thinking_budget_and_replaces_the_clients() -> None:
    body = (
        b'{"model":"m","max_tokens":64000,"thinking":{"type":"enabled","budget_tokens":2048},"messages":[]}'
    )
    out = translator().outbound(ask(body, endpoint=Endpoint.COUNT_TOKENS, thinking_budget=2048), SONNET)
    assert out is not None
    inner = json.loads(counted(out.body))
    assert inner["max_tokens"] == 2049
    assert list(inner) == ["anthropic_version", "thinking", "messages", "max_tokens"]


def test_count_keeps_tools_that_are_not_empty_and_drops_betas_and_stream() -> None:
    body = b'{"model":"m","stream":true,"anthropic_beta":["x"],"tools":[{"name":"t"}],"messages":[]}'
    out = translator().outbound(ask(body, endpoint=Endpoint.COUNT_TOKENS, betas=("b1", "b2")), SONNET)
    assert out is not None
    inner = json.loads(counted(out.body))
    assert inner == {
        "anthropic_version": "bedrock-2023-05-31",
        "tools": [{"name": "t"}],
        "messages": [],
        "max_tokens": 1,
    }


def test_count_drops_an_empty_tools_array_however_spaced() -> None:
    out = translator().outbound(ask(b'{"model":"m","tools":[ \n ]}', endpoint=Endpoint.COUNT_TOKENS), SONNET)
    assert out is not None
    assert "tools" not in json.loads(counted(out.body))


def test_an_inference_profile_arn_cannot_be_counted_here() -> None:
    assert translator().outbound(ask(COUNT_BODY, endpoint=Endpoint.COUNT_TOKENS), PROFILE_ARN) is None


def test_count_reply() -> None:
    assert count_reply(b'{"inputTokens": 1234}') == b'{"input_tokens":1234}'
    assert count_reply(b'{"inputTokens":0,"extra":"ignored"}') == b'{"input_tokens":0}'


@pytest.mark.parametrize(
    "body", [b"", b"nope", b"{}", b'{"inputTokens":"12"}', b'{"inputTokens":1.5}', b"[1]", b"[" * 10_000]
)
def test_count_reply_garbage(body: bytes) -> None:
    with pytest.raises(MalformedReply):
        count_reply(body)


# ---------------------------------------------------------------- errors


def error(status: int, body: bytes, endpoint: Endpoint = Endpoint.MESSAGES) -> Any:
    return translator(name="bedrock-east").client_error(
        ask(endpoint=endpoint), status, {"x-amzn-ErrorType": "X"}, body
    )


def test_too_long_prompt() -> None:
    got = error(400, b'{"message":"Input is too long for requested model."}')
    assert (got.status, got.error_type, got.message) == (
        400,
        "invalid_request_error",
        cloud_errors.PROMPT_TOO_LONG,
    )
    assert got.message == "capability_rejected: prompt_too_long"


def test_other_400_hides_the_upstream_text() -> None:
    got = error(400, b'{"message":"Malformed input request: account 123456789012"}')
    assert (got.status, got.error_type, got.message) == (400, "invalid_request_error", cloud_errors.REJECTED)
    assert got.log is not None and "123456789012" in got.log and "bedrock-east" in got.log
    assert got.failover is None


def test_400_in_anthropics_envelope_is_not_relayed_from_bedrock() -> None:
    body = b'{"type":"error","error":{"type":"invalid_request_error","message":"role arn:aws:iam::1:role/x"}}'
    got = error(400, body)
    assert got.message == cloud_errors.REJECTED


def test_413() -> None:
    got = error(413, b'{"message":"payload too big"}')
    assert (got.status, got.error_type, got.message) == (413, "request_too_large", cloud_errors.TOO_LARGE)


def test_429() -> None:
    got = error(429, b'{"message":"Too many requests, please wait before trying again."}')
    assert (got.status, got.error_type, got.message) == (
        429,
        "rate_limit_error",
        "upstream rate limit exceeded",
    )
    assert got.failover is None


def test_500() -> None:
    got = error(500, b'{"message":"internal"}')
    assert (got.status, got.error_type, got.message) == (500, "api_error", "upstream error")
    assert got.headers == {"Content-Type": "application/json"}
    assert got.body == b""


@pytest.mark.parametrize("status", [400, 403, 404, 429, 500, 503])
def test_a_failed_count_falls_through_as_501(status: int) -> None:
    got = error(
        status,
        b'{"message":"User: arn:aws:iam::123456789012:user/x is not authorized"}',
        Endpoint.COUNT_TOKENS,
    )
    assert got.status == 501
    assert got.headers == {"Content-Type": "application/json", "x-should-retry": "false"}
    assert (got.error_type, got.message) == (
        "not_supported",
        "token counting is not available for this model here",
    )
    assert got.failover is True
    assert got.log is not None and "123456789012" in got.log and str(status) in got.log


# ---------------------------------------------------------------- response headers


def test_response_headers_keep_only_the_media_type() -> None:
    upstream_headers = {
        "content-type": "application/json",
        "x-amzn-RequestId": "req-1",
        "X-Amzn-Bedrock-Input-Token-Count": "9",
        "Date": "x",
    }
    assert translator().response_headers(upstream_headers) == {"Content-Type": "application/json"}


def test_an_event_stream_is_announced_as_sse() -> None:
    headers = {"Content-Type": "application/vnd.amazon.eventstream", "x-amzn-RequestId": "r"}
    assert translator().response_headers(headers) == {"Content-Type": "text/event-stream; charset=utf-8"}


def test_no_content_type() -> None:
    assert translator().response_headers({"x-amzn-RequestId": "r"}) == {}


def test_translator_identity() -> None:
    t = translator(name="bedrock-west")
    assert (t.name, t.provider) == ("bedrock-west", "bedrock")
