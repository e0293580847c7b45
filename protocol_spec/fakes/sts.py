"""A fake AWS STS that answers AssumeRole: a real aiohttp server on a loopback port.

``POST /`` with the query-protocol form botocore's ``sts`` client sends
(``Action=AssumeRole&Version=2011-06-15&RoleArn=…``), SigV4-signed for service
``sts`` by a key of the shared :class:`~protocol_spec.fakes.aws_auth.AwsKeyring`.
The answer is AssumeRole's XML with fresh temporary credentials, valid for
``DurationSeconds`` (default 3600) from ``clock()``, which the fake registers in
the keyring so a :class:`~protocol_spec.fakes.bedrock.FakeBedrock` sharing it
accepts them until they expire.

Point botocore at it with ``AWS_ENDPOINT_URL_STS=<fake.url>``. Script outcomes
with ``script("down", "access_denied", …)``; every AssumeRole request is kept
in ``calls``.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import string
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from aiohttp import web

from protocol_spec.fakes.aws_auth import AwsKeyring, SignatureRejected, verify_sigv4
from protocol_spec.fakes.loopback import LoopbackServer

__all__ = ["AssumeRoleCall", "FakeSts", "Outcome"]

SERVICE = "sts"
NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
ACCOUNT = "123456789012"
MIN_DURATION, MAX_DURATION, DEFAULT_DURATION = 900, 43200, 3600
_SESSION_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_+=,.@-")

Outcome = Literal["ok", "down", "access_denied"]

# What STS calls the refusals the shared verifier names in Bedrock's words.
_STS_CODES = {
    "InvalidSignatureException": "SignatureDoesNotMatch",
    "UnrecognizedClientException": "InvalidClientTokenId",
    "ExpiredTokenException": "ExpiredToken",
    "MissingAuthenticationTokenException": "MissingAuthenticationToken",
    "IncompleteSignatureException": "IncompleteSignature",
}


@dataclass(eq=False)
class AssumeRoleCall:
    """One AssumeRole request: what it asked, who signed it, what it got."""

    role_arn: str | None
    session_name: str | None
    external_id: str | None
    duration: int | None
    principal: str | None = None
    outcome: str = ""  # "ok", "down", "access_denied", "invalid", or "refused:<code>"
    access_key_id: str | None = None  # of the credentials issued
    expires_at: datetime | None = None


class FakeSts(LoopbackServer):
    """Use as ``async with FakeSts(keyring) as sts:``; ``clock`` gives epoch seconds."""

    def __init__(
        self,
        keyring: AwsKeyring | None = None,
        *,
        region: str = "us-east-1",
        clock: Callable[[], float] = time.time,
        delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.keyring = keyring if keyring is not None else AwsKeyring()
        self.region = region
        self.clock = clock
        self.delay = delay  # seconds each answer waits: lets concurrent callers pile up
        super().__init__(host, port)
        self.calls: list[AssumeRoleCall] = []
        self._queue: collections.deque[Outcome] = collections.deque()

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/", self._handle)

    def script(self, *outcomes: Outcome) -> None:
        """Queue outcomes; each AssumeRole takes the oldest one, then "ok"."""
        self._queue.extend(outcomes)

    @property
    def count(self) -> int:
        return len(self.calls)

    # -- request handling --------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        form = {name: values[0] for name, values in parse_qs(body.decode("utf-8", "replace")).items()}
        if form.get("Action") != "AssumeRole":
            return _error(400, "Sender", "InvalidAction", f"Could not find operation {form.get('Action')}")
        duration = form.get("DurationSeconds")
        call = AssumeRoleCall(
            form.get("RoleArn"),
            form.get("RoleSessionName"),
            form.get("ExternalId"),
            int(duration) if duration and duration.isdigit() else None,
        )
        self.calls.append(call)
        if self.delay:
            await asyncio.sleep(self.delay)
        return self._answer(request, body, call)

    def _answer(self, request: web.Request, body: bytes, call: AssumeRoleCall) -> web.Response:
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.raw_headers]
        try:
            call.principal = verify_sigv4(
                request.method,
                request.raw_path,
                headers,
                body,
                keyring=self.keyring,
                service=SERVICE,
                region=self.region,
                now=self._now(),
                # botocore signs STS calls with the wall clock, whatever the test's clock says.
                signed_now=datetime.now(UTC),
            )
        except SignatureRejected as refusal:
            code = _STS_CODES.get(refusal.error_type, refusal.error_type)
            call.outcome = "refused:" + code
            return _error(refusal.status, "Sender", code, refusal.message)
        invalid = _invalid(call)
        if invalid is not None:
            call.outcome = "invalid"
            return _error(400, "Sender", "ValidationError", invalid)
        outcome = self._queue.popleft() if self._queue else "ok"
        call.outcome = outcome
        if outcome == "down":
            return _error(
                503, "Receiver", "ServiceUnavailable", "Service is unavailable. Please try again later."
            )
        if outcome == "access_denied":
            return _error(
                403,
                "Sender",
                "AccessDenied",
                f"User: arn:aws:iam::{ACCOUNT}:user/{call.principal} is not authorized to perform: "
                f"sts:AssumeRole on resource: {call.role_arn}",
            )
        return self._issue(call)

    def _issue(self, call: AssumeRoleCall) -> web.Response:
        access_key = "ASIA" + "".join(
            secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16)
        )
        secret = secrets.token_urlsafe(30)
        token = "FQoGZXIvYXdzE" + secrets.token_urlsafe(96)
        expires = self._now() + timedelta(seconds=call.duration or DEFAULT_DURATION)
        self.keyring.add(access_key, secret, token, expires)
        call.access_key_id, call.expires_at = access_key, expires
        role_name = (call.role_arn or "").rsplit("/", 1)[-1]
        xml = f"""<AssumeRoleResponse xmlns="{NAMESPACE}">
  <AssumeRoleResult>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::{ACCOUNT}:assumed-role/{escape(role_name)}/{escape(call.session_name or "")}</Arn>
      <AssumedRoleId>AROA3XFRBF535PLBIFPI4:{escape(call.session_name or "")}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>{access_key}</AccessKeyId>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <SessionToken>{token}</SessionToken>
      <Expiration>{expires.strftime("%Y-%m-%dT%H:%M:%SZ")}</Expiration>
    </Credentials>
  </AssumeRoleResult>
  <ResponseMetadata>
    <RequestId>{uuid.uuid4()}</RequestId>
  </ResponseMetadata>
</AssumeRoleResponse>
"""
        return web.Response(body=xml.encode(), content_type="text/xml")

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)


def _invalid(call: AssumeRoleCall) -> str | None:
    """STS's validation of the AssumeRole fields (None: valid)."""
    if not call.role_arn or not call.role_arn.startswith(("arn:aws:iam::", "arn:aws-us-gov:iam::")):
        return f"{call.role_arn} is invalid"
    name = call.session_name or ""
    if not 2 <= len(name) <= 64 or not set(name) <= _SESSION_NAME_CHARS:
        return (
            f"1 validation error detected: Value '{name}' at 'roleSessionName' failed to satisfy "
            r"constraint: Member must satisfy regular expression pattern: [\w+=,.@-]*"
        )
    if call.duration is not None and not MIN_DURATION <= call.duration <= MAX_DURATION:
        return (
            f"1 validation error detected: Value '{call.duration}' at 'durationSeconds' failed to satisfy "
            f"constraint: Member must have value between {MIN_DURATION} and {MAX_DURATION}"
        )
    return None


def _error(status: int, party: str, code: str, message: str) -> web.Response:
    xml = f"""<ErrorResponse xmlns="{NAMESPACE}">
  <Error>
    <Type>{party}</Type>
    <Code>{code}</Code>
    <Message>{escape(message)}</Message>
  </Error>
  <RequestId>{uuid.uuid4()}</RequestId>
</ErrorResponse>
"""
    return web.Response(status=status, body=xml.encode(), content_type="text/xml")
