"""Claude Platform on AWS and Microsoft Foundry: the Messages API behind their own auth.

Both answer exactly as the fake Anthropic API does
(:class:`~protocol_spec.fakes.upstream.FakeUpstream`: ``script()``,
``received``, ``/_fake/*``); what differs is who may ask:

* :class:`FakeClaudePlatformAws` wants ``anthropic-workspace-id`` on every
  request and either a known ``x-api-key`` or a SigV4 signature for the service
  ``aws-external-anthropic``, checked with botocore against an
  :class:`~protocol_spec.fakes.aws_auth.AwsKeyring`;
* :class:`FakeFoundry` serves under ``/anthropic`` and wants a known key in
  ``x-api-key`` or ``api-key``, or a bearer token ``bearer_ok`` accepts (say,
  :meth:`~protocol_spec.fakes.azure.FakeEntra.is_live`: an Azure AD token).

A refused request is answered in Anthropic's error envelope with 401, as both
services do, and recorded with ``refused`` set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from aiohttp import web

from protocol_spec.fakes.aws_auth import AwsKeyring, SignatureRejected, verify_sigv4
from protocol_spec.fakes.replies import Prepared, Reply, error_body, new_request_id, prepare
from protocol_spec.fakes.upstream import FakeUpstream, Received

PLATFORM_SERVICE = "aws-external-anthropic"


def _refuse(status: int, error_type: str, message: str) -> Prepared:
    request_id = new_request_id()
    return prepare(Reply(status=status, json=error_body(error_type, message, request_id), request_id=request_id))


class FakeClaudePlatformAws(FakeUpstream):
    def __init__(
        self,
        keyring: AwsKeyring | None = None,
        *,
        region: str = "us-east-1",
        workspace_id: str = "wrkspc_fake",
        api_keys: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        self.keyring = keyring if keyring is not None else AwsKeyring()
        self.region = region
        self.workspace_id = workspace_id
        self.api_keys = set(api_keys)
        self.clock = clock
        self.principals: list[str | None] = []  # who each request was accepted from (None: refused)

    async def start(self) -> FakeClaudePlatformAws:
        await super().start()
        return self

    async def __aenter__(self) -> FakeClaudePlatformAws:
        return await self.start()

    def _answer_for(self, request: web.Request, rec: Received) -> Prepared:
        if rec.header("anthropic-workspace-id") != self.workspace_id:
            self.principals.append(None)
            return _refuse(400, "invalid_request_error", "anthropic-workspace-id is missing or names another workspace")
        key = rec.header("x-api-key")
        if key is not None:
            if key not in self.api_keys:
                self.principals.append(None)
                return _refuse(401, "authentication_error", "invalid x-api-key")
            self.principals.append(f"key:{key}")
            return super()._answer_for(request, rec)
        raw_path = rec.path + (f"?{rec.query_string}" if rec.query_string else "")
        now = datetime.fromtimestamp(self.clock(), UTC)
        try:
            who = verify_sigv4(
                request.method, raw_path, rec.headers, rec.body,
                keyring=self.keyring, service=PLATFORM_SERVICE, region=self.region, now=now,
            )
        except SignatureRejected as refused:
            self.principals.append(None)
            return _refuse(403 if refused.status == 403 else 401, "authentication_error", str(refused))
        self.principals.append(who)
        return super()._answer_for(request, rec)


class FakeFoundry(FakeUpstream):
    PREFIX = "/anthropic"

    def __init__(
        self,
        *,
        api_keys: Iterable[str] = (),
        bearer_ok: Callable[[str], bool] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        self.api_keys = set(api_keys)
        self.bearer_ok = bearer_ok
        self.principals: list[str | None] = []

    async def start(self) -> FakeFoundry:
        await super().start()
        return self

    async def __aenter__(self) -> FakeFoundry:
        return await self.start()

    def _answer_for(self, request: web.Request, rec: Received) -> Prepared:
        if not rec.path.startswith(self.PREFIX + "/"):
            self.principals.append(None)
            return _refuse(404, "not_found_error", f"{rec.path} is not served here")
        key = rec.header("x-api-key") or rec.header("api-key")
        scheme, _, token = (rec.header("Authorization") or "").partition(" ")
        if key is not None and key in self.api_keys:
            self.principals.append(f"key:{key}")
        elif scheme.lower() == "bearer" and self.bearer_ok is not None and self.bearer_ok(token):
            self.principals.append(f"bearer:{token}")
        else:
            self.principals.append(None)
            return _refuse(401, "authentication_error", "missing or invalid credentials")
        return super()._answer_for(request, rec)
