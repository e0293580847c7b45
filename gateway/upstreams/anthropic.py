"""The Anthropic Messages API as an upstream: pass-through with our credential.

Pure: turns the client's request (path, query, headers, body) into the
upstream's (URL, headers, body). Forwarding rules (SPEC "Forwarding"):

* Forwarded: ``content-type``, ``accept``, ``user-agent`` and every
  ``anthropic-*``, ``x-claude-code-*`` and ``x-stainless-*`` header, as sent —
  header lists are open, new capabilities arrive as new names and values.
* Dropped: everything else — the client's credentials, cookies, ``x-app``,
  custom headers, ``x-forwarded-*`` and hop-by-hop headers.
* ``Accept-Encoding`` asks only for what the transport decodes.
* Our credential: ``api_key`` → ``x-api-key``; ``oauth_token`` → bearer plus
  the OAuth beta appended to ``anthropic-beta``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from gateway.upstreams.bodyview import splice_model
from gateway.upstreams.outbound import Ask, ClientError, Outbound

DEFAULT_BASE_URL = "https://api.anthropic.com"
OAUTH_BETA = "oauth-2025-04-20"
ACCEPT_ENCODING = "gzip, deflate"
_FORWARD_EXACT = frozenset({"content-type", "accept", "user-agent"})
_FORWARD_PREFIXES = ("anthropic-", "x-claude-code-", "x-stainless-")


class Prepared(NamedTuple):
    url_base: str  # base URL without trailing slash; the relay appends path and query
    static_headers: tuple[tuple[str, str], ...]  # credential and configured extras
    oauth: bool
    forward_identity: bool


def prepare(upstream: Any) -> Prepared:
    """Work done once per upstream at boot, so the per-request part stays small."""
    base = (upstream.base_url or DEFAULT_BASE_URL).rstrip("/")
    static: list[tuple[str, str]] = [("Accept-Encoding", ACCEPT_ENCODING)]
    auth = upstream.auth
    oauth = False
    api_key = getattr(auth, "api_key", None)
    token = getattr(auth, "oauth_token", None)
    if api_key:
        static.append(("x-api-key", api_key))
    elif token:
        static.append(("Authorization", f"Bearer {token}"))
        oauth = True
    for name, value in (upstream.headers or {}).items():
        static.append((name, value))
    return Prepared(base, tuple(static), oauth, bool(getattr(upstream, "forward_user_identity", False)))


def forwarded_headers(client_headers: Any) -> dict[str, str]:
    """The client headers that go upstream (``client_headers``: a multidict of str)."""
    out: dict[str, str] = {}
    spelled: dict[str, str] = {}  # lower-case name → the spelling first seen
    for name, value in client_headers.items():
        lower = name.lower()
        if lower in _FORWARD_EXACT or lower.startswith(_FORWARD_PREFIXES):
            # A repeated header folds into one comma-separated value, as HTTP allows,
            # whatever the case of each line: the rules below find it under one name.
            name = spelled.setdefault(lower, name)
            out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def build_headers(
    prepared: Prepared, client_headers: Any, email: str | None, sub: str | None, drop_beta: str | None = None
) -> dict[str, str]:
    headers = forwarded_headers(client_headers)
    if drop_beta is not None:
        _remove_beta(headers, drop_beta)
    if prepared.oauth:
        beta_name = next((n for n in headers if n.lower() == "anthropic-beta"), None)
        if beta_name is None:
            headers["anthropic-beta"] = OAUTH_BETA
        elif OAUTH_BETA not in headers[beta_name]:
            headers[beta_name] = f"{headers[beta_name]},{OAUTH_BETA}"
    for name, value in prepared.static_headers:
        lower = name.lower()
        for sent in [n for n in headers if n.lower() == lower]:
            del headers[sent]  # ours replaces the client's, in any spelling
        headers[name] = value
    if prepared.forward_identity and sub:
        headers["x-claude-gateway-user-id"] = sub
        if email:
            headers["x-claude-gateway-user-email"] = email
            headers["x-litellm-end-user-id"] = email
    return headers


def _remove_beta(headers: dict[str, str], value: str) -> None:
    name = next((n for n in headers if n.lower() == "anthropic-beta"), None)
    if name is None or value not in headers[name]:
        return
    kept = [b.strip() for b in headers[name].split(",") if b.strip() and b.strip() != value]
    if kept:
        headers[name] = ",".join(kept)
    else:
        del headers[name]


# Response headers that never reach the client: hop-by-hop ones, the encoding
# we already undid, the upstream's own account limits (the client must not
# mistake them for its own), and the upstream request id (we send ours).
_DROP_RESPONSE = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-encoding",
        "content-length",
        "request-id",
        "x-request-id",
        "set-cookie",
        "date",
        "server",
    }
)


def response_headers(upstream_headers: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in upstream_headers.items():
        lower = name.lower()
        if lower in _DROP_RESPONSE or lower.startswith("anthropic-ratelimit-"):
            continue
        out[name] = value
    return out


class AnthropicTranslator:
    """The Anthropic API (or a proxy in front of it) as a :class:`~gateway.upstreams.outbound.Translator`.

    The zero-copy path: the body goes as received (``model`` spliced only when the
    upstream takes another id), the reply comes back byte for byte.
    """

    __slots__ = ("name", "provider", "prepared", "drop_beta", "base_url")

    def __init__(self, upstream: Any, drop_beta: str | None) -> None:
        self.name: str = upstream.name
        self.provider: str = upstream.provider
        self.prepared = prepare(upstream)
        self.base_url = self.prepared.url_base
        # The request-tags beta, when the gateway owns request tags (billing_group_tag).
        self.drop_beta = drop_beta

    def outbound(self, ask: Ask, upstream_model: str) -> Outbound:
        body = ask.body if upstream_model == ask.model else splice_model(ask.body, upstream_model)
        headers = build_headers(self.prepared, ask.headers, ask.email, ask.sub, drop_beta=self.drop_beta)
        return Outbound(self.prepared.url_base + ask.path_qs, headers, body)

    def client_error(self, ask: Ask, status: int, headers: Mapping[str, str], body: bytes) -> ClientError:
        # Anthropic's own error bodies are relayed as they came: the client keys on their wording.
        # A forward_user_identity proxy's 429 on a request that carries an email is that
        # person's own limit, not capacity: relayed, not failed over (protocol §6.1).
        per_user = status == 429 and self.prepared.forward_identity and ask.email is not None
        return ClientError(status, response_headers(headers), body, failover=False if per_user else None)

    def response_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return response_headers(headers)
