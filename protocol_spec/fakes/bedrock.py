"""A fake Amazon Bedrock runtime: a real aiohttp server on a loopback port.

Serves ``POST /model/{id}/invoke``, ``/invoke-with-response-stream`` and
``/count-tokens`` (``{id}`` as it came on the wire: an ARN keeps its ``%2F``).
Every request must carry either a SigV4 signature for service ``bedrock`` in
the configured region, recomputed with botocore from the keys of an
:class:`~protocol_spec.fakes.aws_auth.AwsKeyring`, or ``Authorization: Bearer``
with one of the configured Bedrock API keys. Refusals look like AWS's (403,
``x-amzn-ErrorType: InvalidSignatureException`` / ``ExpiredTokenException`` …).

Tests queue :class:`~protocol_spec.fakes.bedrock_replies.BedrockReply` values
with ``script()``; each request (signature accepted) takes the next one, else
the default answer. Every request is recorded in ``received``, refused ones
too. A fake in another process is driven through ``POST /_fake/script``,
``GET /_fake/received``, ``POST /_fake/reset`` and ``POST /_fake/keys``.

Run it on its own with ``python -m protocol_spec.fakes.bedrock --port N
--access-key AK --secret SK``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from protocol_spec.fakes.aws_auth import AwsKeyring, SignatureRejected, verify_sigv4
from protocol_spec.fakes.bedrock_replies import BedrockReply, error_answer, new_request_id, render
from protocol_spec.fakes.loopback import LoopbackServer, run, until_signalled
from protocol_spec.fakes.replies import Prepared
from protocol_spec.fakes.upstream import Received, _reset_connection

__all__ = ["BedrockReceived", "FakeBedrock", "main"]

CONTROL_PREFIX = "/_fake/"
MAX_BODY_BYTES = 256 * 1024 * 1024
SERVICE = "bedrock"
_OPERATIONS = {"invoke": "invoke", "invoke-with-response-stream": "stream", "count-tokens": "count"}
_ROUTE = re.compile(r"^/model/(?P<id>[^/?]+)/(?P<op>invoke|invoke-with-response-stream|count-tokens)$")


@dataclass(eq=False)
class BedrockReceived(Received):
    """One request as it arrived (see :class:`~protocol_spec.fakes.upstream.Received`).

    ``operation`` is "invoke", "stream" or "count" ("" when no route matched);
    ``model_id`` the path id percent-decoded; ``principal`` the access key id
    (or ``bearer:<token>``) whose signature was accepted, ``refused`` AWS's
    error type when it was not; ``payload`` the Anthropic body carried (for
    count-tokens, the decoded ``invokeModel`` body).
    """

    operation: str = ""
    model_id: str = ""
    principal: str | None = None
    refused: str | None = None
    payload: Any = None

    def as_plain(self) -> dict[str, Any]:
        plain = super().as_plain()
        plain.update(
            operation=self.operation,
            model_id=self.model_id,
            principal=self.principal,
            refused=self.refused,
            payload=self.payload,
        )
        return plain


class FakeBedrock(LoopbackServer):
    """The fake server. Use as ``async with FakeBedrock(keyring) as fake:`` or start()/close().

    ``clock`` (epoch seconds) decides whether temporary credentials have
    expired and how far ``x-amz-date`` may be from now; tests that move time
    give the same clock to the gateway's signer.
    """

    def __init__(
        self,
        keyring: AwsKeyring | None = None,
        *,
        region: str = "us-east-1",
        bearer_tokens: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
        default: BedrockReply | None = None,
        validate_body: bool = True,
        record: bool = True,
    ) -> None:
        self.keyring = keyring if keyring is not None else AwsKeyring()
        self.region = region
        self.bearer_tokens = set(bearer_tokens)
        self.clock = clock
        super().__init__(host, port)
        self.validate_body = validate_body
        self.record = record
        self.received: list[BedrockReceived] = []
        self._queue: collections.deque[BedrockReply] = collections.deque()
        self._default = default or BedrockReply()
        self._prepared: dict[tuple[str, str], Prepared] = {}

    # -- lifecycle ---------------------------------------------------------

    def _app(self) -> web.Application:
        return web.Application(client_max_size=MAX_BODY_BYTES)

    def _routes(self, app: web.Application) -> None:
        app.router.add_get(CONTROL_PREFIX + "received", self._control_received)
        app.router.add_post(CONTROL_PREFIX + "script", self._control_script)
        app.router.add_post(CONTROL_PREFIX + "reset", self._control_reset)
        app.router.add_post(CONTROL_PREFIX + "keys", self._control_keys)
        app.router.add_route("*", "/{tail:.*}", self._handle)

    # -- scripting ---------------------------------------------------------

    def script(self, *replies: BedrockReply) -> None:
        """Queue replies; each accepted request takes the oldest one."""
        self._queue.extend(replies)

    def set_default(self, reply: BedrockReply | None) -> None:
        self._default = reply or BedrockReply()
        self._prepared.clear()

    def clear(self) -> None:
        self._queue.clear()
        self.received.clear()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def wait_received(self, count: int = 1, timeout: float = 5.0) -> list[BedrockReceived]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(self.received)} of {count} requests arrived within {timeout}s")
            await asyncio.sleep(0.005)
        return list(self.received)

    # -- request handling --------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        rec = _record(request, body)
        if self.record:
            self.received.append(rec)
        answer = self._answer_for(request.method, rec)
        rec.status = answer.status
        try:
            return await _send(request, rec, answer)
        except asyncio.CancelledError:
            if not rec.reset:
                rec.mark_cancelled()
            raise
        except ConnectionError:
            rec.mark_cancelled()
            raise asyncio.CancelledError from None

    def _answer_for(self, method: str, rec: BedrockReceived) -> Prepared:
        try:
            rec.principal = self._authenticate(method, rec)
        except SignatureRejected as refusal:
            rec.refused = refusal.error_type
            return error_answer(refusal.status, refusal.error_type, refusal.message)
        route = _ROUTE.match(rec.path)
        if method != "POST" or route is None:
            return error_answer(404, "UnknownOperationException", f"{method} {rec.path} is not served here")
        rec.operation = _OPERATIONS[route["op"]]
        rec.model_id = unquote(route["id"])
        invalid = self._read_payload(rec)
        if invalid is not None:
            return error_answer(400, "ValidationException", invalid)
        if self._queue:
            return render(self._queue.popleft(), rec.operation, rec.model_id, _counted(rec))
        if rec.operation == "count":
            return render(self._default, "count", rec.model_id, _counted(rec))
        key = (rec.operation, rec.model_id)
        answer = self._prepared.get(key)
        if answer is None:
            answer = render(self._default, rec.operation, rec.model_id)
            if len(self._prepared) < 1024:
                self._prepared[key] = answer
        return answer

    def _authenticate(self, method: str, rec: BedrockReceived) -> str:
        auth = rec.header("authorization") or ""
        if auth.startswith("Bearer "):
            token = auth[len("Bearer ") :]
            if token not in self.bearer_tokens:
                raise SignatureRejected(
                    "UnrecognizedClientException", "The security token included in the request is invalid."
                )
            return "bearer:" + token
        now = datetime.fromtimestamp(self.clock(), UTC)
        raw_path = rec.path + ("?" + rec.query_string if rec.query_string else "")
        return verify_sigv4(
            method,
            raw_path,
            rec.headers,
            rec.body,
            keyring=self.keyring,
            service=SERVICE,
            region=self.region,
            now=now,
        )

    def _read_payload(self, rec: BedrockReceived) -> str | None:
        """Decode the Anthropic body the request carries; the refusal text if Bedrock would refuse it."""
        try:
            outer = msgspec.json.decode(rec.body)
            if rec.operation == "count":
                rec.payload = msgspec.json.decode(base64.b64decode(outer["input"]["invokeModel"]["body"]))
            else:
                rec.payload = outer
        except (msgspec.DecodeError, KeyError, TypeError, binascii.Error):
            return "Malformed input request, please reformat your input and try again."
        if not self.validate_body:
            return None
        return _malformed(rec.payload, counting=rec.operation == "count")

    # -- control endpoints -------------------------------------------------

    async def _control_received(self, request: web.Request) -> web.Response:
        return web.Response(
            body=msgspec.json.encode([r.as_plain() for r in self.received]), content_type="application/json"
        )

    async def _control_script(self, request: web.Request) -> web.Response:
        try:
            decoded = msgspec.json.decode(await request.read(), type=list[BedrockReply] | BedrockReply)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            return web.json_response({"error": str(err)}, status=400)
        self.script(*(decoded if isinstance(decoded, list) else [decoded]))
        return web.json_response({"pending": self.pending})

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.clear()
        self.set_default(None)
        return web.json_response({"ok": True})

    async def _control_keys(self, request: web.Request) -> web.Response:
        """Add a key: ``{"access_key_id", "secret", "session_token"?, "expires_at"?: epoch seconds}``."""
        try:
            key = msgspec.json.decode(await request.read(), type=_KeyIn)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            return web.json_response({"error": str(err)}, status=400)
        expires = None if key.expires_at is None else datetime.fromtimestamp(key.expires_at, UTC)
        self.keyring.add(key.access_key_id, key.secret, key.session_token, expires)
        return web.json_response({"ok": True})


class _KeyIn(msgspec.Struct):
    access_key_id: str
    secret: str
    session_token: str | None = None
    expires_at: float | None = None


def _record(request: web.Request, body: bytes) -> BedrockReceived:
    path, _, query = request.raw_path.partition("?")
    headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.raw_headers]
    return BedrockReceived(request.method, path, query, headers, body)


def _counted(rec: BedrockReceived) -> bytes:
    return msgspec.json.encode(rec.payload) if rec.payload is not None else b""


def _malformed(payload: Any, *, counting: bool) -> str | None:
    """What Bedrock says of a body in the wrong shape for Anthropic's models (None: fine)."""
    if not isinstance(payload, dict):
        return (
            "Malformed input request: #: expected type: JSONObject, please reformat your input and try again."
        )
    version = payload.get("anthropic_version")
    if not isinstance(version, str) or not version.startswith("bedrock-"):
        return "Malformed input request: #: required key [anthropic_version] not found#, please reformat your input and try again."
    for key in ("model", "stream") if not counting else ("model",):
        if key in payload:
            return f"Malformed input request: #: extraneous key [{key}] is not permitted, please reformat your input and try again."
    return None


async def _send(request: web.Request, rec: Received, answer: Prepared) -> web.StreamResponse:
    if answer.headers_delay:
        await asyncio.sleep(answer.headers_delay)
    headers = CIMultiDict(answer.headers)
    headers["x-amzn-RequestId"] = new_request_id()
    if not answer.streaming and answer.plain:
        rec.finished.set()
        return web.Response(status=answer.status, headers=headers, body=answer.frames[0][1])
    response = web.StreamResponse(status=answer.status, headers=headers)
    if not answer.streaming:
        response.content_length = answer.body_length
    await response.prepare(request)
    for index, (delay, frame) in enumerate([*answer.frames, (0.0, b"")]):
        if answer.stall_after == index:
            await asyncio.sleep(answer.stall_seconds)
        if answer.reset_after == index:
            rec.reset = True
            _reset_connection(request)
            raise asyncio.CancelledError
        if delay:
            await asyncio.sleep(delay)
        if frame:
            await response.write(frame)
    await response.write_eof()
    rec.finished.set()
    return response


# ---------------------------------------------------------------------------
# Running as a process (make dev, the bench, out-of-process conformance runs).


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m protocol_spec.fakes.bedrock", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--access-key", action="append", default=[], help="an accepted access key id")
    parser.add_argument("--secret", action="append", default=[], help="its secret (same order)")
    parser.add_argument("--bearer-token", action="append", default=[], help="an accepted Bedrock API key")
    parser.add_argument("--text", default=None, help="the answer text")
    parser.add_argument("--deltas", type=int, default=4, help="text deltas per stream")
    parser.add_argument("--no-record", action="store_true", help="keep no request log (long benchmarks)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args(argv)
    if len(args.access_key) != len(args.secret):
        parser.error("give one --secret per --access-key")
    return args


async def serve(args: argparse.Namespace) -> None:
    from protocol_spec.fakes.replies import Reply

    keyring = AwsKeyring()
    for access_key, secret in zip(args.access_key, args.secret, strict=True):
        keyring.add(access_key, secret)
    answer = Reply(deltas=args.deltas) if args.text is None else Reply(text=args.text, deltas=args.deltas)
    fake = FakeBedrock(
        keyring,
        region=args.region,
        bearer_tokens=args.bearer_token,
        host=args.host,
        port=args.port,
        default=BedrockReply(answer=answer),
        record=not args.no_record,
    )
    await fake.start()
    print(f"listening on {fake.url}", flush=True)
    try:
        await until_signalled()
    finally:
        await fake.close()


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    run(serve(args), use_uvloop=args.uvloop)


if __name__ == "__main__":
    main()
