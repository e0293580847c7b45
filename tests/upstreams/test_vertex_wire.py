"""A Vertex upstream end to end on loopback: VertexTranslator builds the request,
GoogleSigner adds a bearer the fake token endpoint issued, FakeVertex checks it
and answers; what comes back is what the client would get."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from gateway.config.schema import Upstream, UpstreamAuth
from gateway.upstreams.google_credentials import GoogleSigner
from gateway.upstreams.outbound import Ask, Endpoint, Outbound
from gateway.upstreams.vertex import VertexTranslator
from protocol_spec.fakes.google import (
    FakeGoogleToken,
    FakeVertex,
    VertexRoute,
    google_error,
    prompt_too_long,
    vertex_route,
)
from protocol_spec.fakes.replies import Reply

BODY = b'{"model":"claude-opus-4-7","max_tokens":64,"tags":{"t":"1"},"messages":[{"role":"user","content":"hi"}]}'
STREAM_BODY = BODY[:-1] + b',"stream":true}'


@pytest.fixture(autouse=True)
def no_cloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)


@pytest.fixture
async def wire(tmp_path):
    """(translator, signer, fake Vertex) for a Vertex upstream whose base_url is the fake's /v1."""
    async with FakeGoogleToken() as google, FakeVertex(google) as vertex:
        key_file = tmp_path / "sa.json"
        google.new_service_account(key_file)
        upstream = Upstream(
            provider="vertex",
            name="vertex",
            region="us-east5",
            project_id="lab-proj",
            base_url=vertex.url + "/v1",
            auth=UpstreamAuth(service_account_json=str(key_file)),
        )
        signer = GoogleSigner(upstream)
        await signer.start()
        async with aiohttp.ClientSession() as http:
            yield VertexTranslator(upstream), signer, vertex, http
        await signer.close()


def ask(body: bytes = BODY, *, stream: bool = False, endpoint: Endpoint = Endpoint.MESSAGES) -> Ask:
    headers = CIMultiDict([("anthropic-version", "2023-06-01"), ("Authorization", "Bearer client-token")])
    return Ask(endpoint, "/v1/messages", body, "claude-opus-4-7", stream, headers, ("b-1",), None, None)


def route(path: str) -> VertexRoute:
    found = vertex_route(path)
    assert found is not None, f"not a Vertex path: {path}"
    return found


async def send(http: aiohttp.ClientSession, out: Outbound) -> tuple[int, CIMultiDict, bytes]:
    async with http.post(out.url, headers=out.headers, data=out.body) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def test_json_reply_passes_through(wire):
    translator, signer, vertex, http = wire
    out = await signer.authorize(translator.outbound(ask(), "claude-opus-4-7"), ask())
    status, headers, body = await send(http, out)
    assert status == 200 and b'"type":"message"' in body
    rec = vertex.received[0]
    assert route(rec.path) == ("/v1", "lab-proj", "us-east5", "claude-opus-4-7", "rawPredict")
    assert rec.body == out.body and rec.header("anthropic-beta") == "b-1"
    assert rec.header("Authorization") != "Bearer client-token"
    assert translator.response_headers(headers) == {"Content-Type": "application/json"}


async def test_the_stream_passes_through_as_bytes_with_vertex_s_own_ping(wire):
    translator, signer, vertex, http = wire
    a = ask(STREAM_BODY, stream=True)
    out = await signer.authorize(translator.outbound(a, "claude-opus-4-7"), a)
    status, headers, body = await send(http, out)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert route(vertex.received[0].path).verb == "streamRawPredict"
    assert body == vertex.sse_bytes(Reply(), "claude-opus-4-7")
    events = [line for line in body.split(b"\n") if line.startswith(b"event: ")]
    assert events[:3] == [b"event: message_start", b"event: content_block_start", b"event: ping"]


async def test_count_tokens(wire):
    translator, signer, vertex, http = wire
    vertex.count_tokens = 321
    a = ask(endpoint=Endpoint.COUNT_TOKENS)
    out = await signer.authorize(translator.outbound(a, "claude-haiku-4-5@20251001"), a)
    status, _, body = await send(http, out)
    assert (status, body) == (200, b'{"input_tokens":321}')
    rec = vertex.received[0]
    assert route(rec.path).counting and rec.json()["model"] == "claude-haiku-4-5@20251001"


async def test_errors_reach_the_client_mapped(wire):
    translator, signer, vertex, http = wire
    vertex.script(
        google_error(429, "Quota exceeded for projects/lab-proj/locations/us-east5", "RESOURCE_EXHAUSTED"),
        prompt_too_long(),
    )
    out = await signer.authorize(translator.outbound(ask(), "claude-opus-4-7"), ask())
    status, headers, body = await send(http, out)
    error = translator.client_error(ask(), status, headers, body)
    assert (error.status, error.message) == (429, "upstream rate limit exceeded") and "lab-proj" in (
        error.log or ""
    )
    status, headers, body = await send(http, out)
    error = translator.client_error(ask(), status, headers, body)
    assert (error.status, error.message) == (400, "prompt is too long: 212345 tokens > 200000 maximum")


async def test_a_psc_base_url_is_used_as_given(wire, tmp_path):
    _, signer, vertex, http = wire
    psc = Upstream(
        provider="vertex", name="psc", region="us-east5", project_id="lab-proj", base_url=vertex.url
    )
    out = await signer.authorize(VertexTranslator(psc).outbound(ask(), "claude-opus-4-7"), ask())
    assert (await send(http, out))[0] == 200
    assert route(vertex.received[0].path).prefix == ""
