"""One bearer token per upstream, shared by every request: the part of a token
signer that does not depend on the cloud (Google's, Azure's).

Edge (it schedules the refresh). The rules:

* a token with more than ``refresh_margin_s`` left (by the injected clock) is
  used as it is, without a suspension point beyond the call;
* otherwise one refresh runs, and every request that needs it waits for that
  same one; a waiter that is cancelled (its client left) does not cancel it;
* a refresh that fails while the old token is still valid leaves the old one
  in use, and the next request tries again; once it has expired, the failure
  (a :class:`~gateway.upstreams.outbound.CredentialFailure`) reaches the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gateway.upstreams.outbound import CredentialFailure

REFRESH_MARGIN_S = 300.0

# Fetches a new token: (the token, seconds it lives from now); raises CredentialFailure.
Fetch = Callable[[], Awaitable[tuple[str, float]]]


class TokenCache:
    def __init__(
        self, fetch: Fetch, *, clock: Callable[[], float], refresh_margin_s: float = REFRESH_MARGIN_S
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._margin = refresh_margin_s
        self._token: str | None = None
        self._expires_at = 0.0
        self._refreshing: asyncio.Task[None] | None = None

    async def token(self) -> str:
        token = self._token
        if token is not None and self._clock() < self._expires_at - self._margin:
            return token
        task = self._refreshing
        if task is None:
            task = self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
            # Mark a failure seen even when every waiter was cancelled meanwhile.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            await asyncio.shield(task)
        except CredentialFailure:
            if self._token is not None and self._clock() < self._expires_at:
                return self._token
            raise
        assert self._token is not None
        return self._token

    def forget(self) -> None:
        """Stop using the current token (its issuer refused it before its time); the
        next caller refreshes. A refresh already under way is left to finish."""
        self._token, self._expires_at = None, 0.0

    async def _refresh(self) -> None:
        try:
            token, lifetime = await self._fetch()
            self._token, self._expires_at = token, self._clock() + lifetime
        finally:
            self._refreshing = None
