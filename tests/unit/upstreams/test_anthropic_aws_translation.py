"""gateway.upstreams.anthropic_aws: Claude Platform on AWS takes the Messages API as
the client sent it, at a region-derived host, with the workspace header and our key."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gateway.config.schema import Upstream, UpstreamAuth
from gateway.upstreams.anthropic_aws import AnthropicAwsTranslator
from gateway.upstreams.outbound import REQUEST_TAGS_BETA, Ask, Endpoint, Shape

BODY = b'{"model":"claude-opus-4-7","max_tokens":64,"tags":{"team":"core"},"messages":[{"role":"user","content":"hi"}]}'
CLIENT_HEADERS = CIMultiDict(
    [
        ("Authorization", "Bearer gatehouse-session-token"),
        ("X-Api-Key", "client-key"),
        ("Cookie", "a=b"),
        ("x-app", "cli"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
        ("User-Agent", "claude-cli/2.1.0"),
        ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", f"interleaved-thinking-2025-05-14,{REQUEST_TAGS_BETA}"),
        ("x-stainless-lang", "js"),
        ("x-claude-code-session-id", "abc"),
        # A client may not choose the workspace: ours replaces it, whatever its case.
        ("Anthropic-Workspace-Id", "wrkspc_someone_else"),
    ]
)


def upstream(**fields) -> Upstream:
    fields = {
        "provider": "anthropicAws",
        "name": "platform-aws",
        "region": "us-east-1",
        "workspace_id": "wrkspc_01corp",
        **fields,
    }
    return Upstream(**fields)


def ask(path: str = "/v1/messages?beta=true", endpoint: Endpoint = Endpoint.MESSAGES) -> Ask:
    return Ask(
        endpoint,
        path,
        BODY,
        "claude-opus-4-7",
        False,
        CLIENT_HEADERS,
        ("interleaved-thinking-2025-05-14",),
        "a@corp.com",
        "sub-1",
    )


def test_the_host_comes_from_the_region_and_the_path_is_the_client_s():
    t = AnthropicAwsTranslator(upstream(region="eu-west-1", auth=UpstreamAuth(api_key="sk-aws")), None)
    assert (
        t.outbound(ask(), "claude-opus-4-7").url
        == "https://aws-external-anthropic.eu-west-1.api.aws/v1/messages?beta=true"
    )
    count = t.outbound(ask("/v1/messages/count_tokens", Endpoint.COUNT_TOKENS), "claude-opus-4-7")
    assert count.url == "https://aws-external-anthropic.eu-west-1.api.aws/v1/messages/count_tokens"


def test_base_url_replaces_the_host():
    t = AnthropicAwsTranslator(upstream(base_url="http://127.0.0.1:8123/"), None)
    assert t.base_url == "http://127.0.0.1:8123"
    assert AnthropicAwsTranslator(upstream(), None).base_url == "https://aws-external-anthropic.us-east-1.api.aws"
    assert t.outbound(ask(), "claude-opus-4-7").url == "http://127.0.0.1:8123/v1/messages?beta=true"


def test_with_an_api_key_headers_carry_it_and_the_workspace():
    t = AnthropicAwsTranslator(
        upstream(auth=UpstreamAuth(api_key="sk-aws"), headers={"X-Cost-Center": "4711"}), REQUEST_TAGS_BETA
    )
    out = t.outbound(ask(), "claude-opus-4-7")
    assert out.headers == {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": "claude-cli/2.1.0",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "interleaved-thinking-2025-05-14",
        "x-stainless-lang": "js",
        "x-claude-code-session-id": "abc",
        "Accept-Encoding": "gzip, deflate",
        "anthropic-workspace-id": "wrkspc_01corp",
        "x-api-key": "sk-aws",
        "X-Cost-Center": "4711",
    }


def test_without_an_api_key_no_key_goes_the_aws_signer_adds_sigv4():
    out = AnthropicAwsTranslator(upstream(), None).outbound(ask(), "claude-opus-4-7")
    assert {n.lower() for n in out.headers} & {"x-api-key", "authorization"} == set()
    assert out.headers["anthropic-workspace-id"] == "wrkspc_01corp"


def test_the_request_tags_beta_stays_unless_the_gateway_owns_tags():
    kept = AnthropicAwsTranslator(upstream(), None).outbound(ask(), "claude-opus-4-7")
    assert kept.headers["anthropic-beta"] == f"interleaved-thinking-2025-05-14,{REQUEST_TAGS_BETA}"


def test_the_body_goes_as_received_or_with_only_model_spliced():
    t = AnthropicAwsTranslator(upstream(), None)
    same = t.outbound(ask(), "claude-opus-4-7")
    assert same.body is BODY and same.shape is Shape.AS_IS
    renamed = t.outbound(ask(), "claude-opus-4-7-custom")
    assert renamed.body == BODY.replace(b'"claude-opus-4-7"', b'"claude-opus-4-7-custom"')


def test_envelope_errors_are_relayed_and_aws_errors_are_not():
    t = AnthropicAwsTranslator(upstream(), None)
    too_long = b'{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 212345 tokens > 200000 maximum"}}'
    error = t.client_error(ask(), 400, {}, too_long)
    assert error.message == "prompt is too long: 212345 tokens > 200000 maximum"
    denied = b'{"message":"User: arn:aws:sts::123456789012:assumed-role/gw/i-0abc is not authorized to perform: aws-external-anthropic:CreateMessage"}'
    error = t.client_error(ask(), 403, {"x-amzn-RequestId": "r-1"}, denied)
    assert (error.status, error.error_type, error.message) == (
        403,
        "permission_error",
        "upstream denied the gateway access",
    )
    assert "123456789012" not in error.message and "123456789012" in (error.log or "")
    assert error.headers == {"Content-Type": "application/json"}
    throttled = t.client_error(ask(), 429, {}, b'{"message":"Rate exceeded"}')
    assert (throttled.error_type, throttled.message) == ("rate_limit_error", "upstream rate limit exceeded")


@pytest.mark.parametrize("status", [400, 413])
def test_aws_shaped_rejections_say_so_without_aws_words(status):
    error = AnthropicAwsTranslator(upstream(), None).client_error(
        ask(), status, {}, b'{"message":"Malformed input request in account 123456789012"}'
    )
    assert "123456789012" not in error.message
    assert error.message in ("upstream rejected the request", "request too large for this upstream")


def test_reply_headers_lose_the_upstream_s_ids_limits_and_aws_tracing():
    headers = CIMultiDict(
        [
            ("Content-Type", "application/json"),
            ("request-id", "req_1"),
            ("anthropic-ratelimit-requests-remaining", "1"),
            ("x-amzn-RequestId", "r-1"),
            ("X-Amzn-Trace-Id", "Root=1"),
            ("x-amz-apigw-id", "a"),
            ("anthropic-organization-id", "org"),
        ]
    )
    assert AnthropicAwsTranslator(upstream(), None).response_headers(headers) == {
        "Content-Type": "application/json",
        "anthropic-organization-id": "org",
    }
