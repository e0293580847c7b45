"""The bench's cloud cells cannot rot: the Bedrock and Vertex cells run once in a tiny form,
and the benchmark fakes still refuse what the test fakes refuse.

Asyncio driver, no peers, under a minute. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import aiohttp
import pytest

from bench import procs, report
from bench.run import Runner
from bench.targets import REPO
from gateway.upstreams.outbound import Outbound
from gateway.upstreams.sigv4 import sign
from protocol_spec.fakes.aws_auth import AwsKeyring
from protocol_spec.fakes.bedrock_bench import SampledFakeBedrock
from tests.system.test_bench_smoke import Tiny

KEY, SECRET = "AKIABENCHCLOUDTEST01", "bench/cloud+test"


class Creds:
    access_key, secret_key, token = KEY, SECRET, None


def test_the_cloud_cells_run_and_report(tmp_path):
    runner = Runner(tmp_path, Tiny(), peers={}, scenarios={"cloud"})
    runner.wrk = None
    (tmp_path / "machine.json").write_text(json.dumps({"cpus": 2, "quick": True}))
    runner.run()
    rows = [r for r in report.load(tmp_path) if r.get("scenario") == "cloud"]
    seen = {(r["mode"], r["target"]) for r in rows}
    for mode in ("json", "sse"):
        for target in ("direct", "gatehouse-policy", "direct-bedrock", "gatehouse-policy-bedrock",
                       "direct-vertex", "gatehouse-policy-vertex"):
            assert (mode, target) in seen
    assert all(r["requests"] > 0 and not r["errors"] for r in rows), rows
    fakes = next(r for r in report.load(tmp_path) if r.get("scenario") == "cloud-fakes")
    assert fakes["bedrock"]["signatures_verified"] >= 1 and fakes["bedrock"]["signatures_refused"] == 0
    table = (tmp_path / "table.md").read_text()
    assert "## Cloud upstreams" in table and "Bedrock CPU per request" in table
    logs = {p.name: p.read_text() for p in (tmp_path / "logs").glob("*.log")}
    assert "refusals=0 vertex_refused=0" in logs["google.log"]


def _signed(url: str, body: bytes, secret: str = SECRET) -> dict[str, str]:
    creds = Creds()
    creds.secret_key = secret
    out = sign(Outbound(url, {"content-type": "application/json"}, body), service="bedrock",
               region="us-east-1", creds=creds)
    return out.headers


async def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        await resp.read()
        return resp.status


BODY = b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":8,"messages":[]}'


@pytest.mark.parametrize("every", [1, 3])
async def test_the_sampled_fake_refuses_a_wrong_signature_it_samples(every):
    ring = AwsKeyring()
    ring.add(KEY, SECRET)
    async with SampledFakeBedrock(ring, verify_every=every, record=False) as fake:
        url = fake.url + "/model/us.anthropic.claude-sonnet-4-6/invoke"
        statuses = [await _post(url, BODY, _signed(url, BODY, secret))
                    for secret in ("wrong secret", SECRET, SECRET, "wrong secret")]
        async with aiohttp.ClientSession() as http, http.get(fake.url + "/_fake/stats") as resp:
            stats = await resp.json()
    # The first request is always checked; with every=3 the fourth is too.
    assert statuses == [403, 200, 200, 403]
    assert stats == {"requests": 4, "signed_requests": 4, "verify_every": every,
                     "signatures_verified": 4 if every == 1 else 2, "signatures_refused": 2}


async def test_an_unsampled_request_must_still_name_a_known_key_and_the_right_scope():
    ring = AwsKeyring()
    ring.add(KEY, SECRET)
    async with SampledFakeBedrock(ring, verify_every=0, record=False) as fake:
        url = fake.url + "/model/us.anthropic.claude-sonnet-4-6/invoke"
        good = _signed(url, BODY)
        cases = {
            "unsigned": {"content-type": "application/json"},
            "unknown key": {**good, "authorization": good["authorization"].replace(KEY, "AKIAUNKNOWN000000001")},
            "other region": {**good, "authorization": good["authorization"].replace("/us-east-1/", "/eu-west-1/")},
            "good": good,
        }
        got = {name: await _post(url, BODY, headers) for name, headers in cases.items()}
    assert got == {"unsigned": 403, "unknown key": 403, "other region": 403, "good": 200}


def test_the_google_process_writes_a_key_file_its_token_endpoint_honours(tmp_path):
    key_file = tmp_path / "sa.json"
    token_port, vertex_port = procs.free_port(), procs.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "protocol_spec.fakes.google_process", "--key-file", str(key_file),
         "--token-port", str(token_port), "--vertex-port", str(vertex_port)],
        cwd=str(REPO), stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("token on ")
        assert proc.stdout.readline().startswith("vertex on ")
        info = json.loads(key_file.read_text())
        assert info["token_uri"] == f"http://127.0.0.1:{token_port}/token"
        path = "/v1/projects/lab-proj/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-6:rawPredict"
        req = urllib.request.Request(f"http://127.0.0.1:{vertex_port}{path}", data=b"{}", method="POST",
                                     headers={"Authorization": "Bearer not-issued"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=5)  # noqa: S310 (loopback)
        assert refused.value.code == 401
    finally:
        proc.terminate()
        proc.wait(10)
