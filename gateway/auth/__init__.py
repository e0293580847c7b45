"""Sign-in and sessions: who a caller is, and how they came to be signed in.

How it works: ``claude /login`` runs the OAuth device flow against the
gateway (:mod:`~gateway.auth.devicecodes` makes and judges the codes,
:mod:`~gateway.auth.device_store` keeps grants and the sign-in rate counters
of :mod:`~gateway.auth.rate_window` in PostgreSQL). The browser leg goes to
the organization's IdP through :mod:`~gateway.auth.oidc` (discovery, the code
exchange, userinfo), whose id_token is checked offline by
:mod:`~gateway.auth.id_tokens`; :mod:`~gateway.auth.identity` turns the claims
into an :class:`Identity` and applies the operator's admission rules, and
:mod:`~gateway.auth.pages` renders the few HTML pages on the way. A completed
sign-in starts a session family in :mod:`~gateway.auth.session_store`
(rotating refresh tokens, reuse detection, revocation; the IdP's refresh
tokens are kept sealed by :mod:`~gateway.auth.sealing`). The access tokens are minted and verified by
:mod:`~gateway.auth.tokens`, purely and cached, so a request costs no
database; :mod:`~gateway.auth.revocations` keeps every replica's set of
revoked families current by LISTEN/NOTIFY.

Public surface: ``tokens.TokenService``, ``tokens.Principal``,
``tokens.bearer_token``, ``oidc.OidcClient``, ``session_store.SessionService``,
``device_store.DeviceStore``, ``revocations.RevocationWatcher``,
``identity.Identity``. The HTTP side is :mod:`gateway.http.signin`.
"""
