"""Google Workspace groups at sign-in and refresh (``oidc.google_groups``): the edge.

Google's id_tokens carry no groups. With ``oidc.google_groups`` the gateway asks
the Admin SDK Directory API which groups the person is in, as a Workspace admin
(``admin_email``) through a service account with domain-wide delegation for
the read-only groups scope; the group emails replace whatever groups the
id_token had, and ``allowed_groups`` is applied to them.

* The admin's access token comes from :class:`~gateway.upstreams.google_credentials.GoogleToken`
  (google-auth in a worker thread, one refresh shared by every lookup, ahead of expiry).
* At sign-in the Directory is always asked. If it cannot answer
  (:class:`GroupsUnavailable`), the sign-in is refused with a message to try
  again: never a session with groups silently missing.
* At refresh, groups looked up less than ``session.ttl_hours`` ago are used as
  they are (:class:`~gateway.auth.directory_groups.GroupCache`, in this
  process). Otherwise the Directory is asked; if it cannot answer, the session
  keeps the groups it had (the caller passes them in), with a warning in the
  log, and the next refresh asks again.
* A person the Directory does not know (404: an address outside the
  Workspace) is in no groups.

Every call has a connect and a total deadline and a bounded answer; the pages of
one lookup share one overall deadline and a page limit. Addresses go through the
same guard as the IdP's; the Directory's address is Google's, except for a
loopback fake in development (:func:`~gateway.auth.directory_groups.directory_base`).
Log lines name the person by subject and never carry tokens.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec

from gateway import NAME, __version__, audit
from gateway.auth import directory_groups as dg
from gateway.auth.identity import Identity, IdentityRejected, with_directory_groups
from gateway.auth.oidc import IdpUnavailable
from gateway.config.load import is_forbidden_address, url_problem
from gateway.upstreams.egress import Egress
from gateway.upstreams.google_credentials import GoogleToken
from gateway.upstreams.outbound import CredentialFailure
from gateway.upstreams.transport import (
    RefusedAddress,
    TargetGuard,
    UnresolvedTarget,
    guarded_session,
    read_bounded,
)

CALL_TIMEOUT_S = 10.0
# All pages of one person together; a sign-in page should not hang longer.
LOOKUP_TIMEOUT_S = 20.0
# A page of 200 group emails is a few KiB; this is ample.
MAX_PAGE_BYTES = 256 * 1024
# 200 a page: enough for more groups than identity.MAX_GROUPS keeps.
MAX_PAGES = 10
NO_EMAIL = "Your account has no email address this gateway can look up groups for. Ask your administrator."

Log = Callable[[str, str], None]


class GroupsUnavailable(IdpUnavailable):
    """The Directory could not say which groups the person is in. Retryable."""


class GoogleGroups:
    """The Directory lookups of one gateway process (``oidc.google_groups``)."""

    def __init__(
        self,
        oidc_cfg: Any,
        token: GoogleToken,
        *,
        base_url: str,
        ttl_s: float,
        allow_loopback: bool,
        clock: Callable[[], float] = time.time,
        log: Log = audit.log,
        egress: Egress | None = None,
        call_timeout_s: float = CALL_TIMEOUT_S,
        lookup_timeout_s: float = LOOKUP_TIMEOUT_S,
    ) -> None:
        self._cfg = oidc_cfg
        self._token = token
        self._base = base_url
        self._allow_loopback = allow_loopback
        self._clock = clock
        self._log = log
        self._egress = egress if egress is not None and oidc_cfg.use_proxy else Egress()
        self._call_timeout_s = call_timeout_s
        self._lookup_timeout_s = lookup_timeout_s
        self.cache = dg.GroupCache(ttl_s)
        self._guard: TargetGuard | None = None
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(
        cls,
        oidc_cfg: Any,
        *,
        ttl_s: float,
        allow_loopback: bool,
        clock: Callable[[], float] = time.time,
        egress: Egress | None = None,
    ) -> GoogleGroups:
        """For ``oidc_cfg.google_groups`` (the key file was checked at boot)."""
        settings = oidc_cfg.google_groups
        proxy_for = egress.proxy_for if egress is not None and oidc_cfg.use_proxy else (lambda url: None)
        token = GoogleToken(
            "oidc.google_groups",
            settings.service_account_json_path,
            scopes=(dg.DIRECTORY_SCOPE,),
            subject=settings.admin_email,
            clock=clock,
            proxy_for=proxy_for,
        )
        base = dg.directory_base(_token_uri(settings.service_account_json_path), allow_loopback)
        return cls(
            oidc_cfg, token, base_url=base, ttl_s=ttl_s, allow_loopback=allow_loopback, clock=clock, egress=egress
        )

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self._token.start()
        if self._token.problem() is not None:
            self._log("warn", f"oidc.google_groups: {self._token.problem()}; sign-ins fail until this is fixed")
        self._session, self._guard = guarded_session(
            self._egress,
            lambda ip: is_forbidden_address(ip, self._allow_loopback),
            total_s=self._call_timeout_s,
            limit=16,
            user_agent=f"{NAME}/{__version__}",
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._token.close()

    # ------------------------------------------------------------ the two moments

    async def at_sign_in(self, identity: Identity) -> Identity:
        """``identity`` with its Directory groups. GroupsUnavailable / IdentityRejected."""
        email = _email_of(identity)
        groups = await self._lookup(email)
        self.cache.put(dg.GroupCache.key(identity.sub, email), groups, self._clock())
        return self._apply(identity, groups)

    async def at_refresh(self, identity: Identity, previous: tuple[str, ...] | None) -> Identity:
        """``identity`` with its groups: remembered, looked up, or (when the Directory
        cannot answer) ``previous``, the session's own. GroupsUnavailable only
        when there is nothing to keep."""
        email = _email_of(identity)
        key = dg.GroupCache.key(identity.sub, email)
        groups = self.cache.fresh(key, self._clock())
        if groups is None:
            try:
                groups = await self._lookup(email)
            except GroupsUnavailable as exc:
                if previous is None:
                    raise
                self._log(
                    "warn",
                    f"oidc.google_groups: keeping the {len(previous)} group(s) the session of {identity.sub} "
                    f"had: {exc}",
                )
                return self._apply(identity, previous)
            self.cache.put(key, groups, self._clock())
        return self._apply(identity, groups)

    def _apply(self, identity: Identity, groups: tuple[str, ...]) -> Identity:
        identity, warnings = with_directory_groups(identity, groups, self._cfg)
        for warning in warnings:
            self._log("warn", f"oidc.google_groups: {warning}")
        return identity

    # ------------------------------------------------------------ the Directory

    async def _lookup(self, email: str) -> tuple[str, ...]:
        """Every group of ``email``, page by page. Raises GroupsUnavailable."""
        groups: list[str] = []
        page_token: str | None = None
        try:
            async with asyncio.timeout(self._lookup_timeout_s):
                for _ in range(MAX_PAGES):
                    page = await self._page(dg.page_url(self._base, email, page_token))
                    if page is None:  # the Directory does not know the person
                        return ()
                    groups += page.groups
                    page_token = page.next_token
                    if page_token is None:
                        return tuple(groups)
        except TimeoutError:
            raise GroupsUnavailable(
                f"the Directory API gave no complete answer within {self._lookup_timeout_s:g} s"
            ) from None
        raise GroupsUnavailable(f"the Directory API listed more than {MAX_PAGES} pages of groups")

    async def _page(self, url: str) -> dg.Page | None:
        try:
            token = await self._token.token()
        except CredentialFailure as exc:
            raise GroupsUnavailable(f"no access token for the Directory API: {exc.detail}") from None
        status, body = await self._get(url, token)
        if status == 200:
            try:
                return dg.read_page(body)
            except dg.DirectoryAnswerInvalid as exc:
                raise GroupsUnavailable(f"the Directory API answered something else than groups: {exc}") from None
        if status == 404:
            return None
        if status == 401:
            self._token.forget()
        raise GroupsUnavailable(_refusal(status))

    async def _get(self, url: str, token: str) -> tuple[int, Any]:
        if self._session is None:
            raise RuntimeError("GoogleGroups.start() was not called")
        problem = url_problem(url, self._allow_loopback)
        if problem:
            raise GroupsUnavailable(f"the Directory API's URL {problem}")
        proxy = self._egress.proxy_for(url)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        try:
            if proxy is not None:
                assert self._guard is not None
                await self._guard.check(url)
            async with self._session.get(url, headers=headers, allow_redirects=False, proxy=proxy) as resp:
                raw = await read_bounded(resp, MAX_PAGE_BYTES, _too_large)
                status = resp.status
        except TimeoutError:
            raise GroupsUnavailable(f"the Directory API gave no answer within {self._call_timeout_s:g} s") from None
        except (RefusedAddress, UnresolvedTarget) as exc:
            raise GroupsUnavailable(f"the Directory API: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise GroupsUnavailable(f"cannot reach the Directory API ({type(exc).__name__})") from None
        if status != 200:
            return status, None
        try:
            return status, msgspec.json.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            raise GroupsUnavailable("the Directory API's answer is not JSON") from None


def _email_of(identity: Identity) -> str:
    if not identity.email:
        raise IdentityRejected("no email to look up Google groups for", NO_EMAIL)
    return identity.email


def _refusal(status: int) -> str:
    if status == 403:
        # What Google answers when delegation is missing the scope or admin_email is no admin.
        return (
            "the Directory API answered 403: check that the service account's client ID has domain-wide "
            f"delegation for {dg.DIRECTORY_SCOPE} and that oidc.google_groups.admin_email is a Workspace "
            "admin allowed to read groups"
        )
    return f"the Directory API answered HTTP {status}"


def _too_large() -> GroupsUnavailable:
    return GroupsUnavailable(f"the Directory API's answer is larger than {MAX_PAGE_BYTES} bytes")


def _token_uri(path: str) -> str | None:
    """The key file's token_uri (where the Directory is in development), or None."""
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return None  # GoogleToken reports the unreadable file
    uri = info.get("token_uri") if isinstance(info, dict) else None
    return uri if isinstance(uri, str) else None
