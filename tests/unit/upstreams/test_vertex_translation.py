"""gateway.upstreams.vertex: the URL, headers and body Vertex gets, and what the client
sees of Vertex's errors (reference cag-cloud-upstreams §3 and §5, SPEC VERTEX-*)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gateway.config.schema import Upstream
from gateway.errors import GatewayError
from gateway.upstreams.outbound import REQUEST_TAGS_BETA, Ask, Endpoint, Shape
from gateway.upstreams.vertex import VertexTranslator, base_url, vertex_body

MODELS = "/projects/lab-proj/locations/us-east5/publishers/anthropic/models/"
BODY = (
    b'{"model": "claude-opus-4-7", "max_tokens": 1024,\n'
    b' "system": [{"type": "text", "text": "caf\\u00e9 \xe2\x98\x95", "cache_control": {"type":"ephemeral"}}],\n'
    b' "messages": [{"role": "user", "content": "hi"}], "temperature": 1.0E0, "metadata": {"user_id": "u"},\n'
    b' "tags": {"team": "core"}, "thinking": {"type": "enabled", "budget_tokens": 2048}, "stream": true}'
)
# Every member but model and tags, bytes as sent, in the client's order, after ours.
VERTEX_BODY = (
    b'{"anthropic_version":"vertex-2023-10-16","max_tokens":1024,'
    b'"system":[{"type": "text", "text": "caf\\u00e9 \xe2\x98\x95", "cache_control": {"type":"ephemeral"}}],'
    b'"messages":[{"role": "user", "content": "hi"}],"temperature":1.0E0,"metadata":{"user_id": "u"},'
    b'"thinking":{"type": "enabled", "budget_tokens": 2048},"stream":true}'
)
CLIENT_HEADERS = CIMultiDict(
    [
        ("Authorization", "Bearer gatehouse-session-token"),
        ("x-api-key", "client-key"),
        ("Content-Type", "application/json"),
        ("Accept", "text/event-stream"),
        ("User-Agent", "claude-cli/2.1.0"),
        ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", "interleaved-thinking-2025-05-14"),
        ("x-stainless-lang", "js"),
        ("x-claude-code-session-id", "abc"),
        ("x-app", "cli"),
        ("Cookie", "a=b"),
    ]
)


def upstream(**fields) -> Upstream:
    fields = {
        "provider": "vertex",
        "name": "vertex",
        "region": "us-east5",
        "project_id": "lab-proj",
        **fields,
    }
    return Upstream(**fields)


def ask(
    body: bytes = BODY,
    *,
    stream: bool = False,
    endpoint: Endpoint = Endpoint.MESSAGES,
    betas: tuple[str, ...] = ("interleaved-thinking-2025-05-14",),
    headers: CIMultiDict | None = None,
) -> Ask:
    path = (
        "/v1/messages/count_tokens?beta=true"
        if endpoint is Endpoint.COUNT_TOKENS
        else "/v1/messages?beta=true"
    )
    return Ask(
        endpoint,
        path,
        body,
        "claude-opus-4-7",
        stream,
        headers or CLIENT_HEADERS,
        betas,
        "a@corp.com",
        "sub-1",
    )


# ---------------------------------------------------------------- where it goes


@pytest.mark.parametrize(
    ("region", "configured", "expected"),
    [
        ("us-east5", None, "https://us-east5-aiplatform.googleapis.com/v1"),
        ("europe-west1", None, "https://europe-west1-aiplatform.googleapis.com/v1"),
        ("global", None, "https://aiplatform.googleapis.com/v1"),
        ("us", None, "https://aiplatform.us.rep.googleapis.com/v1"),
        ("eu", None, "https://aiplatform.eu.rep.googleapis.com/v1"),
        # A Private Service Connect base is used as given: no /v1 added (the operator's must carry it).
        (
            "us-east5",
            "https://us-east5-aiplatform.p.googleapis.com",
            "https://us-east5-aiplatform.p.googleapis.com",
        ),
        ("us-east5", "https://psc.corp.example/v1/", "https://psc.corp.example/v1"),
    ],
)
def test_base_url(region, configured, expected):
    assert base_url(configured, region) == expected


def test_messages_go_to_raw_predict_and_streams_to_stream_raw_predict():
    t = VertexTranslator(upstream())
    root = "https://us-east5-aiplatform.googleapis.com/v1" + MODELS
    # The client's query string (?beta=true) is the Anthropic API's, not Vertex's.
    assert t.outbound(ask(), "claude-opus-4-7").url == root + "claude-opus-4-7:rawPredict"
    assert t.outbound(ask(stream=True), "claude-opus-4-7").url == root + "claude-opus-4-7:streamRawPredict"


def test_global_region_and_base_url_paths():
    t = VertexTranslator(upstream(region="global"))
    assert t.outbound(ask(), "claude-sonnet-4-6").url == (
        "https://aiplatform.googleapis.com/v1/projects/lab-proj/locations/global"
        "/publishers/anthropic/models/claude-sonnet-4-6:rawPredict"
    )
    psc = VertexTranslator(upstream(base_url="http://127.0.0.1:8123"))
    # base_url is where requests go, for the egress proxy chosen at boot.
    assert psc.base_url == "http://127.0.0.1:8123"
    assert VertexTranslator(upstream(region="global")).base_url == "https://aiplatform.googleapis.com/v1"
    assert (
        psc.outbound(ask(), "claude-opus-4-7").url
        == f"http://127.0.0.1:8123{MODELS}claude-opus-4-7:rawPredict"
    )


def test_versioned_ids_keep_their_at_and_odd_ids_are_encoded():
    t = VertexTranslator(upstream(base_url="https://v"))
    assert (
        t.outbound(ask(), "claude-haiku-4-5@20251001").url
        == f"https://v{MODELS}claude-haiku-4-5@20251001:rawPredict"
    )
    # An operator's upstream_model cannot break out of its path segment.
    assert t.outbound(ask(), "a/b:c?d").url == f"https://v{MODELS}a%2Fb%3Ac%3Fd:rawPredict"


def test_counting_goes_to_count_tokens_raw_predict():
    t = VertexTranslator(upstream(base_url="https://v"))
    out = t.outbound(ask(endpoint=Endpoint.COUNT_TOKENS), "claude-opus-4-7")
    assert out.url == f"https://v{MODELS}count-tokens:rawPredict"


# ---------------------------------------------------------------- the body


def test_body_drops_model_and_tags_adds_the_version_and_keeps_every_other_byte():
    t = VertexTranslator(upstream())
    out = t.outbound(ask(stream=True), "claude-opus-4-7")
    assert out.body == VERTEX_BODY
    assert out.shape is Shape.AS_IS


def test_count_body_keeps_model_as_the_vertex_id_in_its_place():
    out = VertexTranslator(upstream()).outbound(
        ask(endpoint=Endpoint.COUNT_TOKENS), "claude-haiku-4-5@20251001"
    )
    assert out.body == VERTEX_BODY.replace(
        b'"vertex-2023-10-16",', b'"vertex-2023-10-16","model":"claude-haiku-4-5@20251001",'
    )


def test_a_client_anthropic_version_in_the_body_is_replaced_by_vertex_s():
    assert vertex_body(b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":1}', None) == (
        b'{"anthropic_version":"vertex-2023-10-16","max_tokens":1}'
    )


def test_a_body_without_tags_or_stream_is_left_alone():
    assert vertex_body(b'{ "model" : "m" , "max_tokens" : 1 }', None) == (
        b'{"anthropic_version":"vertex-2023-10-16","max_tokens":1}'
    )


@pytest.mark.parametrize("body", [b"[]", b"not json", b"", b'"s"'])
def test_a_body_that_is_not_an_object_is_refused(body):
    with pytest.raises(GatewayError):
        VertexTranslator(upstream()).outbound(ask(body), "claude-opus-4-7")


# ---------------------------------------------------------------- headers


def test_headers_are_ours_plus_the_client_s_version_and_betas():
    t = VertexTranslator(upstream(headers={"X-Cost-Center": "4711"}))
    out = t.outbound(
        ask(betas=("interleaved-thinking-2025-05-14", "context-1m-2025-08-07")), "claude-opus-4-7"
    )
    assert out.headers == {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Accept-Encoding": "gzip, deflate",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "interleaved-thinking-2025-05-14,context-1m-2025-08-07",
        "X-Cost-Center": "4711",
    }


def test_no_betas_means_no_beta_header_and_the_version_defaults():
    out = VertexTranslator(upstream()).outbound(ask(betas=(), headers=CIMultiDict()), "claude-opus-4-7")
    assert "anthropic-beta" not in out.headers
    assert out.headers["anthropic-version"] == "2023-06-01"


def test_the_request_tags_beta_never_arrives_because_the_ask_has_none():
    # Ask.betas comes without it; what is left goes as sent, in order.
    out = VertexTranslator(upstream()).outbound(ask(betas=("b-1", "b-2")), "claude-opus-4-7")
    assert (
        out.headers["anthropic-beta"] == "b-1,b-2" and REQUEST_TAGS_BETA not in out.headers["anthropic-beta"]
    )


def test_a_newer_client_version_is_passed_on():
    headers = CIMultiDict([("Anthropic-Version", "2024-01-01")])
    assert (
        VertexTranslator(upstream()).outbound(ask(headers=headers), "m").headers["anthropic-version"]
        == "2024-01-01"
    )


# ---------------------------------------------------------------- errors and replies

GOOGLE_429 = (
    b'{"error":{"code":429,"message":"Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per'
    b"_base_model with base model: anthropic-claude-opus-4-7. Please submit a quota increase request. "
    b'projects/lab-proj/locations/us-east5","status":"RESOURCE_EXHAUSTED"}}'
)


@pytest.mark.parametrize(
    ("status", "body", "error_type", "message"),
    [
        (429, GOOGLE_429, "rate_limit_error", "upstream rate limit exceeded"),
        (
            403,
            b'{"error":{"code":403,"message":"Permission denied on projects/lab-proj","status":"PERMISSION_DENIED"}}',
            "permission_error",
            "upstream denied the gateway access",
        ),
        (
            401,
            b'{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}',
            "authentication_error",
            "upstream refused the gateway's credentials",
        ),
        (
            404,
            b'{"error":{"code":404,"message":"Publisher Model `projects/lab-proj/.../claude-x` not found.","status":"NOT_FOUND"}}',
            "not_found_error",
            "model not available on this upstream",
        ),
        (
            400,
            b'{"error":{"code":400,"message":"Invalid project lab-proj","status":"INVALID_ARGUMENT"}}',
            "invalid_request_error",
            "upstream rejected the request",
        ),
        (
            500,
            b'{"error":{"code":500,"message":"Internal error in projects/lab-proj","status":"INTERNAL"}}',
            "api_error",
            "upstream error",
        ),
        (503, b"<html>Service Unavailable</html>", "api_error", "upstream unavailable"),
    ],
)
def test_google_errors_become_fixed_texts_without_the_project(status, body, error_type, message):
    error = VertexTranslator(upstream()).client_error(
        ask(), status, {"Content-Type": "application/json"}, body
    )
    assert (error.status, error.error_type, error.message) == (status, error_type, message)
    assert "lab-proj" not in error.message and error.body == b""
    assert error.log is not None and "vertex" in error.log
    if b"lab-proj" in body:
        assert "lab-proj" in error.log  # the operator keeps the whole story


def test_too_long_prompt_in_anthropic_s_envelope_is_relayed_in_its_words():
    body = (
        b'{"type":"error","error":{"type":"invalid_request_error",'
        b'"message":"prompt is too long: 212345 tokens > 200000 maximum"}}'
    )
    error = VertexTranslator(upstream()).client_error(ask(), 400, {}, body)
    assert (error.status, error.error_type) == (400, "invalid_request_error")
    assert error.message == "prompt is too long: 212345 tokens > 200000 maximum"


def test_only_the_content_type_of_a_reply_reaches_the_client():
    headers = CIMultiDict(
        [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("x-vertex-ai-llm-request-type", "shared"),
            ("X-Goog-Request-Id", "abc"),
            ("server-timing", "gfet4t7; dur=42"),
            ("alt-svc", 'h3=":443"'),
            ("Content-Encoding", "gzip"),
        ]
    )
    assert VertexTranslator(upstream()).response_headers(headers) == {
        "Content-Type": "text/event-stream; charset=utf-8"
    }
    assert VertexTranslator(upstream()).response_headers(CIMultiDict()) == {}
