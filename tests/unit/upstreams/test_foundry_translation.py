"""gateway.upstreams.foundry: Microsoft Foundry takes the Messages API under
``https://{resource}.services.ai.azure.com/anthropic`` with a deployment name for model."""

from __future__ import annotations

from multidict import CIMultiDict

from gateway.config.schema import Upstream, UpstreamAuth
from gateway.upstreams.foundry import FoundryTranslator
from gateway.upstreams.outbound import REQUEST_TAGS_BETA, Ask, Endpoint, Shape

BODY = b'{"max_tokens":64, "model" : "claude-sonnet-4-6","messages":[{"role":"user","content":"hi"}],"stream":true}'
CLIENT_HEADERS = CIMultiDict(
    [
        ("Authorization", "Bearer gatehouse-session-token"),
        ("api-key", "client-supplied"),
        ("Content-Type", "application/json"),
        ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", f"context-1m-2025-08-07,{REQUEST_TAGS_BETA}"),
        ("User-Agent", "claude-cli/2.1.0"),
    ]
)


def upstream(**fields) -> Upstream:
    return Upstream(**{"provider": "foundry", "name": "foundry", "resource": "corp-claude", **fields})


def ask(path: str = "/v1/messages", endpoint: Endpoint = Endpoint.MESSAGES) -> Ask:
    return Ask(
        endpoint,
        path,
        BODY,
        "claude-sonnet-4-6",
        True,
        CLIENT_HEADERS,
        ("context-1m-2025-08-07",),
        None,
        None,
    )


def test_the_resource_names_the_host_under_anthropic():
    t = FoundryTranslator(upstream(auth=UpstreamAuth(api_key="az-key")), None)
    assert (
        t.outbound(ask(), "corp-sonnet").url
        == "https://corp-claude.services.ai.azure.com/anthropic/v1/messages"
    )
    count = t.outbound(ask("/v1/messages/count_tokens?beta=true", Endpoint.COUNT_TOKENS), "corp-sonnet")
    assert (
        count.url == "https://corp-claude.services.ai.azure.com/anthropic/v1/messages/count_tokens?beta=true"
    )


def test_base_url_is_used_as_given():
    t = FoundryTranslator(
        upstream(resource=None, base_url="https://corp.services.ai.azure.us/anthropic/"), None
    )
    assert t.outbound(ask(), "corp-sonnet").url == "https://corp.services.ai.azure.us/anthropic/v1/messages"
    assert t.base_url == "https://corp.services.ai.azure.us/anthropic"


def test_the_api_key_goes_in_both_headers_and_the_client_s_never():
    out = FoundryTranslator(upstream(auth=UpstreamAuth(api_key="az-key")), REQUEST_TAGS_BETA).outbound(
        ask(), "corp-sonnet"
    )
    assert out.headers == {
        "Content-Type": "application/json",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "context-1m-2025-08-07",
        "User-Agent": "claude-cli/2.1.0",
        "Accept-Encoding": "gzip, deflate",
        "x-api-key": "az-key",
        "api-key": "az-key",
    }


def test_with_azure_ad_no_key_is_sent_the_azure_signer_adds_a_bearer():
    out = FoundryTranslator(upstream(auth=UpstreamAuth(use_azure_ad=True)), None).outbound(
        ask(), "corp-sonnet"
    )
    assert {n.lower() for n in out.headers} & {"x-api-key", "api-key", "authorization"} == set()


def test_the_model_becomes_the_deployment_name_and_nothing_else_moves():
    out = FoundryTranslator(upstream(), None).outbound(ask(), "corp-sonnet-deployment")
    assert out.body == BODY.replace(b'"claude-sonnet-4-6"', b'"corp-sonnet-deployment"')
    assert out.shape is Shape.AS_IS


def test_errors_relay_the_envelope_and_hide_azure_s_own():
    t = FoundryTranslator(upstream(), None)
    envelope = b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: must be at most 64000"}}'
    assert t.client_error(ask(), 400, {}, envelope).message == "max_tokens: must be at most 64000"
    azure = b'{"error":{"code":"PermissionDenied","message":"Principal 0f0e-... lacks Microsoft.CognitiveServices/accounts/corp-claude"}}'
    error = t.client_error(ask(), 401, {}, azure)
    assert (error.error_type, error.message) == (
        "authentication_error",
        "upstream refused the gateway's credentials",
    )
    assert "corp-claude" in (error.log or "") and "corp-claude" not in error.message
    assert t.client_error(ask(), 400, {}, azure).message == "upstream rejected the request"


def test_reply_headers_lose_azure_s_own():
    headers = CIMultiDict(
        [
            ("Content-Type", "text/event-stream"),
            ("apim-request-id", "x"),
            ("x-ms-region", "East US 2"),
            ("azureml-model-session", "d1"),
            ("x-request-id", "y"),
            ("Cache-Control", "no-cache"),
        ]
    )
    assert FoundryTranslator(upstream(), None).response_headers(headers) == {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
    }
