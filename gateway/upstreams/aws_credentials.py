"""The gateway's AWS credentials for one upstream, and signing with them (an edge).

:class:`AwsSigner` is the :class:`~gateway.upstreams.outbound.Signer` of the
Bedrock and Claude Platform on AWS upstreams. Where its credentials come from:

* ``auth.aws_bearer_token``: a Bedrock API key, sent as ``Authorization:
  Bearer``; nothing is signed.
* ``auth.aws_access_key_id`` + ``aws_secret_access_key`` [+ session token]:
  fixed keys.
* ``auth: {}``: the AWS default chain, resolved by aiobotocore's session
  (environment, shared files, container credentials, instance metadata, web
  identity). Temporary credentials from it are refreshed by botocore itself,
  one refresh in flight, before they expire.
* ``assume_role``: the keys above only sign STS AssumeRole calls (regional
  STS; ``AWS_USE_FIPS_ENDPOINT`` and ``AWS_ENDPOINT_URL_STS`` are honoured by
  botocore); requests are signed with the role's 1-hour credentials, one
  session per developer when ``session_name`` is ``email`` or ``sub``, else one
  shared ``claude-apps-gateway`` session.

Any failure to obtain credentials raises
:class:`~gateway.upstreams.outbound.CredentialFailure` (the attempt counts as
a 500 from this upstream). With ``assume_role`` the base credentials never sign
a model request, whatever happens to STS. Messages name what failed, never a
key or token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError

from gateway.client_text import capped
from gateway.config.schema import Upstream
from gateway.upstreams.outbound import Ask, CredentialFailure, Outbound
from gateway.upstreams.sigv4 import AwsCredentials, role_session_name, sign

SHARED_SESSION_NAME = "claude-apps-gateway"
ROLE_SECONDS = 3600  # what Anthropic's gateway asks STS for (protocol.md §6.1)
# A role session is renewed this long before it expires, so no request is signed
# with credentials that could expire in flight.
RENEW_BEFORE_S = 300.0
# A renewal that fails may still sign with the old session while it has this long left.
STILL_USABLE_S = 30.0
# When the default chain found nothing, look again at most this often: each look
# may wait on instance-metadata timeouts.
CHAIN_RETRY_S = 10.0
STS_CONNECT_TIMEOUT_S = 5.0
STS_READ_TIMEOUT_S = 10.0
MAX_DETAIL_CHARS = 500


class _Session(NamedTuple):
    creds: ReadOnlyCredentials
    expires_at: float  # epoch seconds


class AwsSigner:
    """SigV4 (or a Bedrock API key) for one configured AWS upstream."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        service: str = "bedrock",
        clock: Callable[[], float] = time.time,
        proxy: str | None = None,
    ) -> None:
        if upstream.region is None:
            raise ValueError(f"upstream {upstream.name!r} has no region to sign for")
        self.name = upstream.name or upstream.provider
        self.service = service
        self.region = upstream.region
        self._clock = clock
        self._proxy = proxy
        auth = upstream.auth
        self._bearer = auth.aws_bearer_token
        self._keys: ReadOnlyCredentials | None = None
        if auth.aws_access_key_id and auth.aws_secret_access_key:
            self._keys = ReadOnlyCredentials(
                auth.aws_access_key_id, auth.aws_secret_access_key, auth.aws_session_token, None
            )
        self._role = upstream.assume_role
        self._aws: AioSession | None = None
        self._clients = contextlib.AsyncExitStack()
        self._sts: Any = None
        self._chain: Any = None  # botocore credentials from the default chain
        self._chain_looked_at: float | None = None
        self._open_lock = asyncio.Lock()
        self._sessions: dict[str, _Session] = {}
        self._assuming: dict[str, asyncio.Task[_Session]] = {}

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Resolve the default chain and open the STS client, where this upstream needs them.

        Nothing found is not fatal here: requests then fail over with a
        :class:`CredentialFailure`, and the chain is looked at again later.
        """
        if self._bearer is not None or (self._keys is not None and self._role is None):
            return
        self._aws = AioSession()
        with contextlib.suppress(CredentialFailure):
            if self._role is not None:
                await self._sts_client()
            else:
                await self._default_chain()

    async def close(self) -> None:
        for task in list(self._assuming.values()):
            task.cancel()
        self._assuming.clear()
        await self._clients.aclose()
        self._sts = None

    @property
    def sts_endpoint(self) -> str | None:
        """Where AssumeRole calls go (for the boot log); None until the STS client is open."""
        return None if self._sts is None else str(self._sts.meta.endpoint_url)

    # -- signing -----------------------------------------------------------

    def serves(self, ask: Ask) -> bool:
        """False when ``assume_role.session_name`` names a claim this developer's token lacks:
        such a developer is not routed here (protocol.md §6.1), rather than failing over."""
        if self._role is None or self._role.session_name is None:
            return True
        return bool(ask.email if self._role.session_name == "email" else ask.sub)

    async def authorize(self, out: Outbound, ask: Ask) -> Outbound:
        if self._bearer is not None:
            headers = {k: v for k, v in out.headers.items() if k.lower() != "authorization"}
            headers["authorization"] = "Bearer " + self._bearer
            return out._replace(headers=headers)
        creds = await self._credentials(ask)
        now = datetime.fromtimestamp(self._clock(), UTC)
        return sign(out, service=self.service, region=self.region, creds=creds, now=now)

    async def _credentials(self, ask: Ask) -> AwsCredentials:
        if self._role is not None:
            return await self._role_session(self._session_name(ask))
        if self._keys is not None:
            return self._keys
        chain = await self._default_chain()
        try:
            frozen: AwsCredentials = await chain.get_frozen_credentials()
        except Exception as exc:  # a refresh failed in botocore: its own exceptions, or RuntimeError
            raise self._failure("refreshing credentials from the AWS default chain failed", exc) from None
        return frozen

    # -- the default chain -------------------------------------------------

    async def _default_chain(self) -> Any:
        """The default chain's credentials (looked up once; again later if none were found)."""
        if self._chain is not None:
            return self._chain
        async with self._open_lock:
            if self._chain is None:
                await self._look_up_chain()
        return self._chain

    async def _look_up_chain(self) -> None:
        now = self._clock()
        if self._chain_looked_at is not None and now - self._chain_looked_at < CHAIN_RETRY_S:
            raise CredentialFailure(self.name, "no AWS credentials found by the default chain")
        self._chain_looked_at = now
        assert self._aws is not None, "AwsSigner not started"
        try:
            self._chain = await self._aws.get_credentials()
        except Exception as exc:  # a malformed shared file, an unreachable container endpoint…
            raise self._failure("the AWS default credential chain failed", exc) from None
        if self._chain is None:
            raise CredentialFailure(
                self.name,
                "no AWS credentials found by the default chain (environment, shared files, "
                "container, instance metadata, web identity)",
            )

    # -- assumed roles -----------------------------------------------------

    def _session_name(self, ask: Ask) -> str:
        assert self._role is not None
        claim = self._role.session_name
        if claim is None:
            return SHARED_SESSION_NAME
        value = ask.email if claim == "email" else ask.sub
        if not value:
            raise CredentialFailure(
                self.name, f"assume_role.session_name is {claim}, but the developer's token has no {claim}"
            )
        return role_session_name(value)

    async def _role_session(self, name: str) -> ReadOnlyCredentials:
        now = self._clock()
        current = self._sessions.get(name)
        if current is not None and now < current.expires_at - RENEW_BEFORE_S:
            return current.creds
        try:
            renewed = await asyncio.shield(self._assume_once(name))
        except CredentialFailure:
            # A session that still has a little time left beats failing over;
            # it is never the base credentials.
            if current is not None and self._clock() < current.expires_at - STILL_USABLE_S:
                return current.creds
            raise
        return renewed.creds

    def _assume_once(self, name: str) -> asyncio.Task[_Session]:
        """The AssumeRole call for ``name`` in flight, started if there is none: concurrent
        first requests share one STS call, and a failed call is not remembered."""
        task = self._assuming.get(name)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._assume(name))
            self._assuming[name] = task
            task.add_done_callback(lambda done: self._settle(name, done))
        return task

    def _settle(self, name: str, task: asyncio.Task[_Session]) -> None:
        if self._assuming.get(name) is task:
            del self._assuming[name]
        if task.cancelled():
            return
        if task.exception() is None:
            now = self._clock()
            for stale in [n for n, s in self._sessions.items() if s.expires_at <= now]:
                del self._sessions[stale]
            self._sessions[name] = task.result()

    async def _assume(self, name: str) -> _Session:
        assert self._role is not None
        sts = await self._sts_client()
        params: dict[str, Any] = {
            "RoleArn": self._role.role_arn,
            "RoleSessionName": name,
            "DurationSeconds": ROLE_SECONDS,
        }
        if self._role.external_id is not None:
            params["ExternalId"] = self._role.external_id
        try:
            reply = await sts.assume_role(**params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            detail = f"STS AssumeRole refused (HTTP {status}, {error.get('Code')}): {error.get('Message')}"
            raise CredentialFailure(self.name, capped(detail, MAX_DETAIL_CHARS)) from None
        except Exception as exc:  # unreachable, timed out, an unreadable answer
            raise self._failure("STS AssumeRole failed", exc) from None
        issued = reply["Credentials"]
        creds = ReadOnlyCredentials(
            issued["AccessKeyId"], issued["SecretAccessKey"], issued["SessionToken"], None
        )
        return _Session(creds, issued["Expiration"].timestamp())

    async def _sts_client(self) -> Any:
        if self._sts is not None:
            return self._sts
        async with self._open_lock:
            if self._sts is None:
                self._sts = await self._open_sts()
        return self._sts

    async def _open_sts(self) -> Any:
        """The STS client, signing with the base credentials (opened when those exist)."""
        assert self._aws is not None, "AwsSigner not started"
        keys: dict[str, str | None] = {}
        if self._keys is not None:
            keys = {
                "aws_access_key_id": self._keys.access_key,
                "aws_secret_access_key": self._keys.secret_key,
                "aws_session_token": self._keys.token,
            }
        elif self._chain is None:
            # The client would otherwise keep "no credentials" for good.
            await self._look_up_chain()
        config = AioConfig(
            # No retries: a failed AssumeRole fails this attempt over at once, and
            # the next request asks STS again.
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=STS_CONNECT_TIMEOUT_S,
            read_timeout=STS_READ_TIMEOUT_S,
            proxies={"http": self._proxy, "https": self._proxy} if self._proxy else None,
            # The service model is read from disk in a thread, not on the event loop.
            warm_up_loader_caches=True,
        )
        try:
            client = self._aws.create_client("sts", region_name=self.region, config=config, **keys)
            return await self._clients.enter_async_context(client)
        except Exception as exc:
            raise self._failure("opening the STS client failed", exc) from None

    def _failure(self, what: str, exc: BaseException) -> CredentialFailure:
        # botocore's messages name providers, files and endpoints, never key material.
        return CredentialFailure(self.name, capped(f"{what}: {type(exc).__name__}: {exc}", MAX_DETAIL_CHARS))
