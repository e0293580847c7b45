"""Microsoft Entra ID tokens for a Foundry upstream with ``auth.use_azure_ad: true``.

Edge. azure-identity's ``DefaultAzureCredential`` finds the identity (a
service principal in ``AZURE_CLIENT_ID`` / ``AZURE_TENANT_ID`` /
``AZURE_CLIENT_SECRET`` or a certificate, AKS workload identity through
``AZURE_FEDERATED_TOKEN_FILE``, a managed identity, a developer's Azure CLI
login) and speaks to Entra; this module decides when:

* azure-identity is an optional extra (``pip install 'gatehouse[azure]'``),
  imported only here and only when such an upstream exists; without it the
  upstream is reported at boot and every request fails over;
* ``get_token`` blocks (requests underneath), so it runs in a worker thread,
  once for everybody and ahead of expiry (:mod:`gateway.upstreams.token_cache`);
* a token that cannot be had raises
  :class:`~gateway.upstreams.outbound.CredentialFailure` (counted as a 500 from
  this upstream), never with a secret in its text.

The scope is the one the anthropic SDK's Foundry documentation uses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway import audit
from gateway.client_text import capped
from gateway.upstreams.outbound import Ask, CredentialFailure, Outbound, with_bearer
from gateway.upstreams.token_cache import REFRESH_MARGIN_S, TokenCache

SCOPE = "https://ai.azure.com/.default"
MISSING_EXTRA = "use_azure_ad needs azure-identity: install the azure extra (pip install 'gatehouse[azure]')"
_REASON_CHARS = 400

Log = Callable[[str, str], None]


class AzureSigner:
    """Adds ``Authorization: Bearer <Entra access token>`` (one instance per upstream).

    ``credential_options`` are extra keyword arguments for ``DefaultAzureCredential``
    (e.g. ``disable_instance_discovery`` for an authority that is not Microsoft's).
    """

    def __init__(
        self,
        upstream: Any,
        *,
        clock: Callable[[], float] = time.time,
        proxy: str | None = None,
        refresh_margin_s: float = REFRESH_MARGIN_S,
        credential_options: Mapping[str, Any] | None = None,
        log: Log = audit.log,
    ) -> None:
        self.name: str = upstream.name
        self._proxy = proxy
        self._options = dict(credential_options or {})
        self._log = log
        self._credential: Any = None  # an azure.identity.DefaultAzureCredential once built
        self._problem: str | None = None
        self._tokens = TokenCache(self._fetch, clock=clock, refresh_margin_s=refresh_margin_s)

    def problem(self) -> str | None:
        """Why this upstream cannot get Entra tokens, or None."""
        return self._problem

    async def start(self) -> None:
        try:
            self._credential = await asyncio.to_thread(self._build)
        except CredentialFailure as failure:
            self._problem = failure.detail
            self._log(
                "warn", f"upstream {self.name}: {self._problem}; its requests fail over until this is fixed"
            )

    async def close(self) -> None:
        if self._credential is not None:
            credential, self._credential = self._credential, None
            await asyncio.to_thread(credential.close)

    def serves(self, ask: Ask) -> bool:
        # One identity for every developer: nobody is turned away here.
        return True

    async def authorize(self, out: Outbound, ask: Ask) -> Outbound:
        return with_bearer(out, await self._tokens.token())

    async def _fetch(self) -> tuple[str, float]:
        credential = self._credential
        if credential is None:
            raise CredentialFailure(self.name, self._problem or "the Azure credential is closed")
        return await asyncio.to_thread(self._get_token, credential)

    # -- in the worker thread -------------------------------------------------

    def _build(self) -> Any:
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError:
            raise CredentialFailure(self.name, MISSING_EXTRA) from None
        # A server never opens a browser or a broker window to sign someone in.
        options: dict[str, Any] = {
            "exclude_interactive_browser_credential": True,
            "exclude_broker_credential": True,
            **self._options,
        }
        if self._proxy is not None:
            # Entra is reached over https; the managed-identity endpoint (http, link-local) is not proxied.
            options["proxies"] = {"https": self._proxy}
        try:
            return DefaultAzureCredential(**options)
        except Exception as exc:  # a bad environment (AZURE_TOKEN_CREDENTIALS, …)
            raise CredentialFailure(self.name, f"cannot set up Azure credentials: {_reason(exc)}") from None

    def _get_token(self, credential: Any) -> tuple[str, float]:
        try:
            access = credential.get_token(SCOPE)
        except Exception as exc:  # ClientAuthenticationError, CredentialUnavailableError, transport errors
            raise CredentialFailure(self.name, f"Azure AD token request failed: {_reason(exc)}") from None
        return access.token, access.expires_on - time.time()


def _reason(exc: Exception) -> str:
    # azure-identity's messages list each credential it tried; keep the first lines.
    text = str(getattr(exc, "message", None) or exc).strip()
    return capped(f"{type(exc).__name__}: {' '.join(text.split())}", _REASON_CHARS)
