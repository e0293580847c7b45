"""Vertex, Claude Platform on AWS and Foundry behind the gateway, end to end, and
Anthropic's own multi-cloud example file booting and serving through every upstream.

The anthropic SDK talks to Gatehouse; Gatehouse gets its credentials from the fake
Google token endpoint (which verifies the service account's signed assertion), signs
for the fake Claude Platform on AWS (botocore checks the SigV4 signature), or gets an
Azure AD token from a fake Entra ID over TLS. Every connection any of them makes is
watched: none may leave 127.0.0.0/8.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from pathlib import Path

import aiohttp
import anthropic
import pytest
import yaml

from gateway.config.load import loads
from protocol_spec.fakes import error_reply
from protocol_spec.fakes.aws_auth import AwsKeyring
from protocol_spec.fakes.azure import FakeEntra, TestCa
from protocol_spec.fakes.bedrock import FakeBedrock
from protocol_spec.fakes.bedrock_replies import THROTTLING
from protocol_spec.fakes.google import FakeGoogleToken, FakeVertex, google_error, prompt_too_long
from protocol_spec.fakes.platforms import FakeClaudePlatformAws, FakeFoundry
from protocol_spec.fakes.sts import FakeSts
from protocol_spec.fakes.upstream import FakeUpstream
from tests.harness import JWT_SECRET, free_port

PROMPT = [{"role": "user", "content": "hi"}]
KEY, SECRET = "AKIACLOUDRELAYTEST01", "cloud/relay+secret"
AZURE_TENANT, AZURE_CLIENT = "11111111-2222-3333-4444-555555555555", "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
AZURE_SECRET = "not-a-real-secret-cloud-relay"
EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "examples" / "cag" / "multi-upstream.yaml"

# Every address looked up or connected to while a test here runs, in any thread.
_seen: list[object] | None = None


def _watch(event: str, args: tuple) -> None:
    if _seen is not None and event in ("socket.connect", "socket.getaddrinfo"):
        target = args[1] if event == "socket.connect" else args[0]
        _seen.append(target[0] if isinstance(target, tuple) else target)


sys.addaudithook(_watch)


def _loopback(host: object) -> bool:
    if not isinstance(host, str | bytes):
        return True  # a unix socket (PostgreSQL) has no host
    name = host.decode() if isinstance(host, bytes) else host
    if name in ("localhost", "") or name.startswith("/"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No credential chain may find the machine's own credentials or probe a metadata address."""
    global _seen
    for name in list(os.environ):
        if name.startswith(("AWS_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential")
    seen: list[object] = []
    _seen = seen
    try:
        yield
    finally:
        _seen = None
    outside = [host for host in seen if not _loopback(host)]
    assert not outside, f"left loopback: {outside}"


def client(gw, **kw) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, auth_token=gw.token(**kw), api_key=None, max_retries=0)


async def raw_post(gw, body: dict, path: str = "/v1/messages"):
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + path, json=body, headers=gw.auth()) as r:
            return r.status, r.headers, await r.read()


@pytest.fixture
async def google():
    async with FakeGoogleToken() as fake:
        yield fake


@pytest.fixture
async def vertex(google):
    async with FakeVertex(google) as fake:
        yield fake


def vertex_block(url: str, key_file: Path) -> str:
    return (
        f"  - provider: vertex\n    region: us-east5\n    project_id: lab-proj\n    base_url: {url}/v1\n"
        f"    auth:\n      service_account_json: {key_file}"
    )


# ---------------------------------------------------------------- Vertex


async def test_vertex_json_stream_and_count(gateway_factory, google, vertex, tmp_path):
    key_file = tmp_path / "sa.json"
    google.new_service_account(key_file)
    gw = await gateway_factory([vertex_block(vertex.url, key_file)])
    reply = await client(gw).messages.create(
        model="claude-haiku-4-5", max_tokens=16, messages=PROMPT,
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14,request-tags-2026-08-21"},
    )
    assert reply.content[0].text
    got = vertex.received[-1]
    assert got.path == "/v1/projects/lab-proj/locations/us-east5/publishers/anthropic/models/claude-haiku-4-5@20251001:rawPredict"
    body = json.loads(got.body)
    assert body["anthropic_version"] == "vertex-2023-10-16" and "model" not in body
    assert got.header("anthropic-beta") == "interleaved-thinking-2025-05-14"
    async with client(gw).messages.stream(model="claude-opus-4-7", max_tokens=16, messages=PROMPT) as stream:
        assert await stream.get_final_text()
    assert vertex.received[-1].path.endswith("/models/claude-opus-4-7:streamRawPredict")
    count = await client(gw).messages.count_tokens(model="claude-opus-4-7", messages=PROMPT)
    assert count.input_tokens > 0
    assert vertex.received[-1].path.endswith("/models/count-tokens:rawPredict")
    assert json.loads(vertex.received[-1].body)["model"] == "claude-opus-4-7"
    assert google.grants == 1  # one token served every call


async def test_vertex_errors_say_what_the_client_may_know(gateway_factory, google, vertex, tmp_path):
    key_file = tmp_path / "sa.json"
    google.new_service_account(key_file)
    gw = await gateway_factory([vertex_block(vertex.url, key_file)])
    vertex.script(prompt_too_long())
    status, _, body = await raw_post(gw, {"model": "claude-opus-4-7", "max_tokens": 16, "messages": PROMPT})
    assert status == 400 and json.loads(body)["error"]["message"].startswith("prompt is too long")
    vertex.script(google_error(429, "Quota exceeded for projects/lab-proj", "RESOURCE_EXHAUSTED"))
    status, _, body = await raw_post(gw, {"model": "claude-opus-4-7", "max_tokens": 16, "messages": PROMPT})
    assert status == 429 and json.loads(body)["error"]["message"] == "upstream rate limit exceeded"
    assert b"lab-proj" not in body


async def test_a_token_endpoint_that_is_down_fails_over(gateway_factory, google, vertex, fake_upstream, tmp_path):
    key_file = tmp_path / "sa.json"
    google.new_service_account(key_file)
    google.down = True
    gw = await gateway_factory([vertex_block(vertex.url, key_file), fake_upstream.url])
    reply = await client(gw).messages.create(model="claude-opus-4-7", max_tokens=16, messages=PROMPT)
    assert reply.content[0].text and vertex.received == []
    assert fake_upstream.received[-1].path == "/v1/messages"


# ---------------------------------------------------------------- Claude Platform on AWS and Foundry


async def test_claude_platform_on_aws_signs_with_its_own_service_name(gateway_factory):
    ring = AwsKeyring()
    ring.add(KEY, SECRET)
    async with FakeClaudePlatformAws(ring, workspace_id="wrkspc_lab") as fake:
        block = (
            f"  - provider: anthropicAws\n    region: us-east-1\n    workspace_id: wrkspc_lab\n    base_url: {fake.url}\n"
            f"    auth:\n      aws_access_key_id: {KEY}\n      aws_secret_access_key: {SECRET}"
        )
        gw = await gateway_factory([block])
        async with client(gw).messages.stream(model="claude-sonnet-4-6", max_tokens=16, messages=PROMPT) as stream:
            assert await stream.get_final_text()
        assert fake.principals == [KEY]
        # The Messages API as the client sent it: the model id and body untouched.
        assert json.loads(fake.received[-1].body)["model"] == "claude-sonnet-4-6"


async def test_foundry_with_a_key_reaches_only_mapped_deployments(gateway_factory):
    async with FakeFoundry(api_keys=["foundry-key-1"]) as fake:
        block = f"  - provider: foundry\n    resource: lab\n    base_url: {fake.url}/anthropic\n    auth:\n      api_key: foundry-key-1"
        models = "models:\n  - id: claude-sonnet-4-6\n    upstream_model: {foundry: lab-sonnet-deployment}\n"
        gw = await gateway_factory([block], models)
        await client(gw).messages.create(model="claude-sonnet-4-6", max_tokens=16, messages=PROMPT)
        async with client(gw).messages.stream(model="claude-sonnet-4-6", max_tokens=16, messages=PROMPT) as stream:
            assert await stream.get_final_text()
        assert fake.principals == ["key:foundry-key-1", "key:foundry-key-1"]
        assert fake.received[-1].path == "/anthropic/v1/messages"
        assert json.loads(fake.received[-1].body)["model"] == "lab-sonnet-deployment"
        status, _, body = await raw_post(gw, {"model": "claude-opus-4-7", "max_tokens": 16, "messages": PROMPT})
        assert status == 400 and len(fake.received) == 2  # no deployment named for it: never sent


# ---------------------------------------------------------------- Anthropic's multi-cloud example


# Loaded by the gateway process below (it is on its PYTHONPATH): every address that
# process looks up or connects to, in any thread, goes to a file the test reads.
SITECUSTOMIZE = """
import os, sys
_out = open(os.environ["GATEHOUSE_TEST_SOCKETS"], "a", buffering=1)
def _watch(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple):
        _out.write(f"{args[1][0]}\\n")
    elif event == "socket.getaddrinfo":
        _out.write(f"{args[0]}\\n")
sys.addaudithook(_watch)
"""


async def test_the_multi_cloud_example_boots_and_serves_through_every_upstream(pg_url, monkeypatch, tmp_path, google, vertex):
    """conf/examples/cag/multi-upstream.yaml unchanged but for addresses, served by
    `gatehouse serve` as shipped: each upstream's base_url points at its fake, and the
    credentials its `auth` asks for come from where each provider's default chain looks
    (environment variables, a key file). Nothing the gateway process does leaves loopback."""
    from tests.system.test_process import spawn, wait_ready

    ring = AwsKeyring()
    ring.add(KEY, SECRET)
    (tmp_path / "ca").mkdir()
    ca = TestCa(tmp_path / "ca")
    async with (
        FakeBedrock(ring, region="us-west-2") as bedrock,
        FakeSts(ring, region="us-west-2") as sts,
        FakeClaudePlatformAws(workspace_id="wrkspc_01corp", api_keys=["example-aws-platform-key"]) as platform,
        FakeEntra(ca) as entra,
        FakeFoundry() as foundry,
        FakeUpstream() as anthropic_api,
    ):
        foundry.bearer_ok = entra.is_live
        entra.add_secret_client(AZURE_CLIENT, AZURE_SECRET)
        google.new_service_account(tmp_path / "adc.json")
        doc = yaml.safe_load(EXAMPLE.read_text())
        urls = {
            "bedrock-us": bedrock.url, "vertex": vertex.url + "/v1", "platform-aws": platform.url,
            "foundry": foundry.url + "/anthropic", "anthropic": anthropic_api.url,
        }
        for up in doc["upstreams"]:
            up["base_url"] = urls[up["name"]]
        port = free_port()
        doc["listen"].update(host="127.0.0.1", port=port, public_url=f"http://127.0.0.1:{port}")
        doc["oidc"]["issuer"] = "http://127.0.0.1:9"
        config = tmp_path / "gateway.yaml"
        config.write_text(yaml.safe_dump(doc))
        (tmp_path / "site").mkdir()
        (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        sockets = tmp_path / "sockets.txt"
        env = {
            **os.environ, "CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1", "OIDC_CLIENT_ID": "gw", "OIDC_CLIENT_SECRET": "s",
            "GATEWAY_JWT_SECRET": JWT_SECRET, "GATEWAY_POSTGRES_URL": pg_url,
            "ANTHROPIC_AWS_API_KEY": "example-aws-platform-key", "ANTHROPIC_API_KEY": "sk-ant-example",
            # Where each provider's default chain looks: the AWS environment and the region's
            # STS, Application Default Credentials, Azure's environment credential.
            "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL_STS": sts.url,
            "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "adc.json"),
            "REQUESTS_CA_BUNDLE": str(ca.bundle), "AZURE_AUTHORITY_HOST": entra.url,
            "AZURE_TENANT_ID": AZURE_TENANT, "AZURE_CLIENT_ID": AZURE_CLIENT, "AZURE_CLIENT_SECRET": AZURE_SECRET,
            "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "GATEHOUSE_TEST_SOCKETS": str(sockets),
        }
        proc = spawn("serve", "--config", str(config), env=env)
        try:
            await wait_ready(port, proc, timeout=60)
            from gateway.app.build import token_service

            tokens = token_service(loads(config.read_text(), env, source=str(config)))
            bearer = tokens.mint(sub="user-dev", email="dev@corp.example.com", now=int(time.time()))
            sdk = anthropic.AsyncAnthropic(
                base_url=f"http://127.0.0.1:{port}", auth_token=bearer, api_key=None, max_retries=0, timeout=30
            )
            # Down the list, one upstream at a time, by making each one before it refuse.
            await sdk.messages.create(model="claude-opus-4-7", max_tokens=16, messages=PROMPT)
            assert bedrock.received[-1].principal not in (None, KEY)  # the assumed role's key
            assert sts.calls[-1].session_name == "dev@corp.example.com"
            sent = {k.lower(): v for k, v in bedrock.received[-1].headers}
            assert sent["x-amzn-bedrock-guardrailidentifier"] == "gr-0123456789"
            bedrock.script(THROTTLING)
            await sdk.messages.create(model="claude-opus-4-7", max_tokens=16, messages=PROMPT)
            assert vertex.received[-1].path.endswith("/locations/us-east5/publishers/anthropic/models/claude-opus-4-7:rawPredict")
            bedrock.script(THROTTLING)
            vertex.script(google_error(503, "unavailable", "UNAVAILABLE"))
            await sdk.messages.create(model="claude-opus-4-7", max_tokens=16, messages=PROMPT)
            assert platform.principals[-1] == "key:example-aws-platform-key"
            # claude-sonnet-4-6 is mapped to a Foundry deployment; the others refuse first.
            bedrock.script(THROTTLING)
            vertex.script(google_error(503, "unavailable", "UNAVAILABLE"))
            platform.script(error_reply(529, "overloaded_error", "busy"))
            await sdk.messages.create(model="claude-sonnet-4-6", max_tokens=16, messages=PROMPT)
            assert foundry.principals[-1].startswith("bearer:")
            assert json.loads(foundry.received[-1].body)["model"] == "corp-sonnet-deployment"
            bedrock.script(THROTTLING)
            vertex.script(google_error(503, "unavailable", "UNAVAILABLE"))
            platform.script(error_reply(529, "overloaded_error", "busy"))
            await sdk.messages.create(model="claude-opus-4-7", max_tokens=16, messages=PROMPT)
            assert anthropic_api.received[-1].header("X-Cost-Center") == "4711"
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    outside = sorted({h for h in sockets.read_text().split() if not _loopback(h)})
    assert sockets.read_text() and not outside, f"the gateway process left loopback: {outside}"
