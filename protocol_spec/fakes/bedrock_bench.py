"""The fake Bedrock runtime for benchmarks: it recomputes one SigV4 signature in N.

:class:`~protocol_spec.fakes.bedrock.FakeBedrock` checks every signature with
botocore, about 100 µs of the fake's CPU per request (more for big bodies). On
a 2-core bench host that fake shares a core with the load tool and PostgreSQL,
so at a few thousand requests a second the checking, not the gateway under
test, would set the pace. :class:`SampledFakeBedrock` keeps the same answers
and refusals but fully verifies only the first request and then one in
``verify_every`` (0: none); the others must still carry a SigV4
``Authorization`` scoped to a known key, this region and ``bedrock``, which
catches a gateway that stopped signing or signs for the wrong place, but not
a wrong signature on an unsampled request. Bearer API keys are checked on
every request as before (a set lookup).

``GET /_fake/stats`` says how many requests came, how many carried SigV4, how
many signatures were recomputed and how many of those were refused, so a benchmark can show that
the sample it checked passed. This is for benchmarks only: tests and the
conformance suite use :class:`~protocol_spec.fakes.bedrock.FakeBedrock`,
which verifies everything.

    python -m protocol_spec.fakes.bedrock_bench --port N --access-key AK --secret SK \\
        [--bearer-token T] [--verify-every 50] [--no-record] [--uvloop]
"""

from __future__ import annotations

import argparse
import re
from typing import Any

import msgspec
from aiohttp import web

from protocol_spec.fakes.aws_auth import ALGORITHM, INVALID_TOKEN, AwsKeyring, SignatureRejected
from protocol_spec.fakes.bedrock import SERVICE, BedrockReceived, FakeBedrock
from protocol_spec.fakes.bedrock_replies import BedrockReply
from protocol_spec.fakes.loopback import run, until_signalled
from protocol_spec.fakes.replies import Reply

__all__ = ["SampledFakeBedrock", "main"]

STATS_PATH = "/_fake/stats"
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")


class SampledFakeBedrock(FakeBedrock):
    """:class:`FakeBedrock` that recomputes the signature of one request in ``verify_every``."""

    def __init__(self, keyring: AwsKeyring | None = None, *, verify_every: int = 1, **kwargs: Any) -> None:
        super().__init__(keyring, **kwargs)
        self.verify_every = verify_every
        self.requests = 0
        self.signed = 0  # requests carrying SigV4 (not a Bedrock API key): the sample is taken among these
        self.verified = 0
        self.refused_verified = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path == STATS_PATH:
            return web.Response(body=msgspec.json.encode(self.stats()), content_type="application/json")
        return await super()._handle(request)

    def stats(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "signed_requests": self.signed,
            "verify_every": self.verify_every,
            "signatures_verified": self.verified,
            "signatures_refused": self.refused_verified,
        }

    def _authenticate(self, method: str, rec: BedrockReceived) -> str:
        self.requests += 1
        auth = rec.header("authorization") or ""
        if auth.startswith("Bearer "):
            return super()._authenticate(method, rec)  # an API key: a set lookup, always checked
        self.signed += 1
        if self.verify_every > 0 and (self.signed - 1) % self.verify_every == 0:
            self.verified += 1
            try:
                return super()._authenticate(method, rec)
            except SignatureRejected:
                self.refused_verified += 1
                raise
        return self._scope_only(auth)

    def _scope_only(self, auth: str) -> str:
        """The access key of an unsampled request, from its Authorization's scope alone."""
        found = _CREDENTIAL.search(auth) if auth.startswith(ALGORITHM + " ") else None
        if found is None:
            raise SignatureRejected("MissingAuthenticationTokenException", "Missing Authentication Token")
        access_key, region, service = found.groups()
        if access_key not in self.keyring or region != self.region or service != SERVICE:
            raise SignatureRejected("UnrecognizedClientException", INVALID_TOKEN)
        return access_key


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m protocol_spec.fakes.bedrock_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--access-key", action="append", default=[], help="an accepted access key id")
    parser.add_argument("--secret", action="append", default=[], help="its secret (same order)")
    parser.add_argument("--bearer-token", action="append", default=[], help="an accepted Bedrock API key")
    parser.add_argument(
        "--verify-every", type=int, default=1, help="recompute one signature in N (1: all, 0: none)"
    )
    parser.add_argument("--deltas", type=int, default=4, help="text deltas per stream")
    parser.add_argument("--no-record", action="store_true", help="keep no request log")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args(argv)
    if len(args.access_key) != len(args.secret):
        parser.error("give one --secret per --access-key")
    if args.verify_every < 0:
        parser.error("--verify-every must be 0 or more")
    return args


async def serve(args: argparse.Namespace) -> None:
    keyring = AwsKeyring()
    for access_key, secret in zip(args.access_key, args.secret, strict=True):
        keyring.add(access_key, secret)
    fake = SampledFakeBedrock(
        keyring,
        verify_every=args.verify_every,
        region=args.region,
        bearer_tokens=args.bearer_token,
        host=args.host,
        port=args.port,
        default=BedrockReply(answer=Reply(deltas=args.deltas)),
        record=not args.no_record,
    )
    await fake.start()
    print(f"listening on {fake.url}", flush=True)
    try:
        await until_signalled()
    finally:
        print("stats " + msgspec.json.encode(fake.stats()).decode(), flush=True)
        await fake.close()


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    run(serve(args), use_uvloop=args.uvloop)


if __name__ == "__main__":
    main()
