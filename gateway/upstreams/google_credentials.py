"""Google credentials: one bearer token per credential, refreshed off the event loop.

:class:`GoogleToken` is the token itself; :class:`GoogleSigner` puts it on a
Vertex upstream's requests, and the Workspace group lookup
(:mod:`gateway.auth.google_groups`) uses one acting for a Workspace admin
(domain-wide delegation: ``subject``).

Edge. The credential comes from ``auth.service_account_json`` (a key file path;
any file google-auth loads: service account, external account, authorized
user) or, without it, Application Default Credentials
(``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's file, the GCE/GKE metadata server).
google-auth does the protocol; this module decides when it runs:

* never on the event loop: loading, discovery and every refresh run in a
  worker thread through google-auth's urllib3 transport (the runtime image has
  no ``requests``);
* once for everybody and ahead of expiry (:mod:`gateway.upstreams.token_cache`):
  concurrent requests wait for the same refresh, started when less than
  ``refresh_margin_s`` is left by the injected clock;
* a credential that cannot be had (key file unreadable, token endpoint down
  or refusing) raises :class:`~gateway.upstreams.outbound.CredentialFailure`,
  which the relay counts as a 500 from this upstream and fails over. A broken
  credential is reported at boot (:meth:`GoogleSigner.problem`) and looked
  for again at most every ``discovery_retry_s``.

Messages name the file and google-auth's reason, never key material or tokens.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from datetime import UTC
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import google.auth
import google.auth.transport.urllib3
import urllib3

from gateway import audit
from gateway.client_text import capped
from gateway.upstreams.outbound import Ask, CredentialFailure, Outbound, with_bearer
from gateway.upstreams.token_cache import REFRESH_MARGIN_S, TokenCache

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
DISCOVERY_RETRY_S = 30.0
# google-auth leaves expiry unset for a few credential kinds; refresh such a token soon.
UNKNOWN_LIFETIME_S = 600.0
_TIMEOUT = urllib3.Timeout(connect=10.0, read=30.0)
# The metadata server is link-local: reachable only directly, never through a proxy.
_METADATA_HOSTS = ("metadata.google.internal", "169.254.169.254")
_REASON_CHARS = 300

Log = Callable[[str, str], None]


class GoogleToken:
    """A Google access token for one credential, refreshed off the event loop and shared.

    ``key_file`` None means Application Default Credentials. ``subject`` makes a
    service account act as that Workspace user (domain-wide delegation); any
    other kind of credential cannot, which is reported as its problem.
    """

    def __init__(
        self,
        name: str,
        key_file: str | None,
        *,
        scopes: tuple[str, ...] = (CLOUD_PLATFORM,),
        subject: str | None = None,
        clock: Callable[[], float] = time.time,
        proxy_for: Callable[[str], str | None] = lambda url: None,
        refresh_margin_s: float = REFRESH_MARGIN_S,
        discovery_retry_s: float = DISCOVERY_RETRY_S,
        log: Log = audit.log,
    ) -> None:
        self.name = name
        self._key_file = key_file
        self._scopes = list(scopes)
        self._subject = subject
        self._clock = clock
        self._discovery_retry = discovery_retry_s
        self._log = log
        # ``proxy_for`` (the gateway's egress rules) picks a proxy per URL: a key file's
        # token_uri may be another host than Google's, which NO_PROXY treats its own way.
        self._http = _Http(proxy_for, os.environ)
        self._credentials: Any = None  # a google.auth.credentials.Credentials once found
        self._problem: str | None = None
        self._discover_after = 0.0
        self._tokens = TokenCache(self._fetch, clock=clock, refresh_margin_s=refresh_margin_s)

    def problem(self) -> str | None:
        """Why there is no usable Google credential right now, or None."""
        return self._problem

    async def start(self) -> None:
        # The first token is fetched by the first use; loading the credential now
        # reports a broken key file at boot.
        await self._discover()

    async def close(self) -> None:
        self._http.clear()

    async def token(self) -> str:
        """A live access token; CredentialFailure when none can be had."""
        return await self._tokens.token()

    def forget(self) -> None:
        """Drop the current token (Google refused it early): the next use refreshes."""
        self._tokens.forget()

    async def _fetch(self) -> tuple[str, float]:
        """A new token and its lifetime (the token cache calls this, once at a time)."""
        if self._credentials is None:
            if self._clock() < self._discover_after:
                raise CredentialFailure(self.name, self._problem or "no Google credentials")
            await self._discover()
        credentials = self._credentials
        if credentials is None:
            raise CredentialFailure(self.name, self._problem or "no Google credentials")
        return await asyncio.to_thread(self._refresh_blocking, credentials)

    async def _discover(self) -> None:
        self._discover_after = self._clock() + self._discovery_retry
        try:
            self._credentials = await asyncio.to_thread(self._load)
        except CredentialFailure as failure:
            self._credentials, self._problem = None, failure.detail
        else:
            self._problem = None

    # -- in the worker thread -------------------------------------------------

    def _load(self) -> Any:
        try:
            if self._key_file is not None:
                credentials, _ = google.auth.load_credentials_from_file(
                    self._key_file, scopes=self._scopes, request=self._http.google
                )
            else:
                credentials, _ = google.auth.default(scopes=self._scopes, request=self._http.google)
        except OSError as exc:
            raise CredentialFailure(
                self.name, f"cannot read {self._key_file}: {exc.strerror or type(exc).__name__}"
            ) from None
        except Exception as exc:  # google-auth raises several kinds for an unusable file
            where = self._key_file or "application default credentials"
            raise CredentialFailure(
                self.name, f"no usable Google credentials in {where}: {_reason(exc)}"
            ) from None
        if self._subject is None:
            return credentials
        if not hasattr(credentials, "with_subject"):
            raise CredentialFailure(
                self.name, f"{self._key_file} is not a service account key; domain-wide delegation needs one"
            )
        return credentials.with_subject(self._subject)

    def _refresh_blocking(self, credentials: Any) -> tuple[str, float]:
        try:
            credentials.refresh(self._http.google)
        except Exception as exc:  # RefreshError, TransportError, or a malformed answer
            raise CredentialFailure(self.name, f"Google token refresh failed: {_reason(exc)}") from None
        token = credentials.token
        if not isinstance(token, str) or not token:
            raise CredentialFailure(self.name, "Google token refresh returned no access token")
        expiry = credentials.expiry  # naive UTC, computed by google-auth from expires_in
        if expiry is None:
            return token, UNKNOWN_LIFETIME_S
        return token, expiry.replace(tzinfo=UTC).timestamp() - time.time()


class GoogleSigner(GoogleToken):
    """Adds ``Authorization: Bearer <Google access token>`` (one instance per upstream)."""

    def __init__(
        self,
        upstream: Any,
        *,
        clock: Callable[[], float] = time.time,
        proxy: str | None = None,
        proxy_for: Callable[[str], str | None] | None = None,
        refresh_margin_s: float = REFRESH_MARGIN_S,
        discovery_retry_s: float = DISCOVERY_RETRY_S,
        log: Log = audit.log,
    ) -> None:
        super().__init__(
            upstream.name,
            upstream.auth.service_account_json,
            clock=clock,
            proxy_for=proxy_for or (lambda url: proxy),
            refresh_margin_s=refresh_margin_s,
            discovery_retry_s=discovery_retry_s,
            log=log,
        )

    async def start(self) -> None:
        # As Anthropic's gateway does, the first token waits for the first request.
        await super().start()
        if self._problem is not None:
            self._log(
                "warn", f"upstream {self.name}: {self._problem}; its requests fail over until this is fixed"
            )

    def serves(self, ask: Ask) -> bool:
        # One identity for every developer: nobody is turned away here.
        return True

    async def authorize(self, out: Outbound, ask: Ask) -> Outbound:
        return with_bearer(out, await self.token())


def _reason(exc: Exception) -> str:
    """google-auth's own summary (its first argument), without the response it may carry."""
    first = exc.args[0] if exc.args else ""
    return capped(f"{type(exc).__name__}: {first}", _REASON_CHARS)


class _Http:
    """The urllib3 pools google-auth calls through: for each URL the proxy ``proxy_for``
    names (Google's endpoints), direct for the metadata server and for what no proxy
    serves. ``google`` is the transport to hand to google-auth."""

    def __init__(self, proxy_for: Callable[[str], str | None], env: Any) -> None:
        self._direct = urllib3.PoolManager(timeout=_TIMEOUT, retries=False)
        self._proxy_for = proxy_for
        self._proxied: dict[str, urllib3.ProxyManager] = {}
        configured = (env.get("GCE_METADATA_HOST"), env.get("GCE_METADATA_ROOT"), env.get("GCE_METADATA_IP"))
        self._metadata = frozenset(_METADATA_HOSTS) | {h for h in configured if h}
        self.google = google.auth.transport.urllib3.Request(self)

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any) -> Any:
        pool: urllib3.PoolManager = self._direct
        parts = urlsplit(url)
        if parts.netloc not in self._metadata and parts.hostname not in self._metadata:
            proxy = self._proxy_for(url)
            if proxy is not None:
                if proxy not in self._proxied:
                    self._proxied[proxy] = _proxy_manager(proxy)
                pool = self._proxied[proxy]
        return pool.request(method, url, body=body, headers=headers, **kwargs)

    def clear(self) -> None:
        self._direct.clear()
        for pool in self._proxied.values():
            pool.clear()


def _proxy_manager(proxy: str) -> urllib3.ProxyManager:
    # urllib3 takes proxy credentials as a header, not from the URL.
    parts = urlsplit(proxy)
    headers = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers = urllib3.make_headers(proxy_basic_auth=credentials)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        parts = parts._replace(netloc=f"{netloc}:{parts.port}" if parts.port else netloc)
    return urllib3.ProxyManager(urlunsplit(parts), proxy_headers=headers, timeout=_TIMEOUT, retries=False)
