"""Time Gatehouse's SigV4 signer on its own, before blaming the Bedrock path for its cost.

    python -m bench.signer            # prints one JSON line per body size

Calls ``gateway.upstreams.sigv4.sign()`` on an ``Outbound`` shaped like the
Bedrock translator's (invoke URL, the headers it sends) with a small body and a
200 KB one, pinned to one core, and reports the median of several timed batches
(µs per call) so a noisy neighbour on the other core moves it little. The
split (SHA-256 of the body, botocore's canonical request and HMAC chain) comes
from timing the same steps apart.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from bench.stats import per_call_us
from gateway.upstreams.outbound import Outbound
from gateway.upstreams.sigv4 import sign

URL = "http://127.0.0.1:40001/model/us.anthropic.claude-sonnet-4-6/invoke"
HEADERS = {"content-type": "application/json", "accept": "application/json", "anthropic-version": "2023-06-01"}
CREDS = ReadOnlyCredentials("AKIABENCHSIGNER00001", "bench/signer+secret", None)
NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


def small_body() -> bytes:
    doc = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps(doc, separators=(",", ":")).encode()


def large_body(size: int = 200 * 1024) -> bytes:
    text = ("lorem ipsum dolor sit amet " * (size // 27 + 1))[:size]
    doc = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": [{"role": "user", "content": text}]}
    return json.dumps(doc, separators=(",", ":")).encode()


def measure(name: str, body: bytes, calls: int) -> dict[str, object]:
    out = Outbound(URL, dict(HEADERS), body)
    whole = per_call_us(lambda: sign(out, service="bedrock", region="us-east-1", creds=CREDS, now=NOW), calls)
    sha = per_call_us(lambda: hashlib.sha256(body).hexdigest(), calls)

    # botocore's part alone: the canonical request, string to sign and HMAC chain
    # over a request already carrying the payload hash.
    headers = {**HEADERS, "host": "127.0.0.1:40001", "x-amz-date": NOW.strftime("%Y%m%dT%H%M%SZ"),
               "x-amz-content-sha256": hashlib.sha256(body).hexdigest()}

    def botocore_only() -> None:
        request = AWSRequest(method="POST", url=URL, headers=headers, data=body)
        request.context["timestamp"] = headers["x-amz-date"]
        signer = SigV4Auth(CREDS, "bedrock", "us-east-1")
        signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)

    boto = per_call_us(botocore_only, calls)
    return {"body": name, "bytes": len(body), "sign_us": round(whole, 1), "sha256_us": round(sha, 1),
            "botocore_us": round(boto, 1)}


def main() -> None:
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[0]})
    for row in (measure("small", small_body(), 2000), measure("200KB", large_body(), 300)):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
