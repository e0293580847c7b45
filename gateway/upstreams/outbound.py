"""The values a provider module turns a client's request into, and back.

Every provider is a pure translation (one module each: ``anthropic``,
``bedrock``, ``vertex``, ``anthropic_aws``, ``foundry``) plus, where it signs or
fetches tokens, an I/O edge (``aws_credentials``, ``google_credentials``). The
hot path speaks to all of them through these types:

* :class:`Ask`: what the client asked, decoded once per request;
* :class:`Outbound`: what one upstream attempt sends, before credentials;
* :class:`Shape`: how that upstream's successful reply reaches the client;
* :class:`ClientError`: an upstream's error reply as the client may see it.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Mapping
from typing import NamedTuple, Protocol

from gateway.errors import Fault, Party

# The beta that announces request tags; no upstream but Anthropic's own takes it.
REQUEST_TAGS_BETA = "request-tags-2026-08-21"


class Endpoint(enum.Enum):
    MESSAGES = "messages"
    COUNT_TOKENS = "count_tokens"


class Ask(NamedTuple):
    """The client's request, as every provider sees it."""

    endpoint: Endpoint
    path_qs: str  # as the client sent it ("/v1/messages?beta=true")
    body: bytes  # as received; request tags already removed when the gateway owns them
    model: str  # the id the client asked for
    stream: bool
    headers: Mapping[str, str]  # the client's headers (a case-insensitive multidict)
    betas: tuple[str, ...]  # anthropic-beta values in header order, request-tags beta removed
    email: str | None
    sub: str | None
    # The thinking budget when thinking is on (Bedrock CountTokens needs max_tokens above it).
    thinking_budget: int | None = None


class Shape(enum.Enum):
    AS_IS = "as_is"  # JSON and SSE bytes pass through untouched
    EVENT_STREAM = "event_stream"  # an AWS event stream, re-emitted as SSE (Bedrock streaming)
    BEDROCK_COUNT = "bedrock_count"  # {"inputTokens": N} → {"input_tokens": N}


class Outbound(NamedTuple):
    """One upstream attempt: POST ``body`` to ``url`` with ``headers``."""

    url: str
    headers: dict[str, str]
    body: bytes
    shape: Shape = Shape.AS_IS


def with_bearer(out: Outbound, token: str) -> Outbound:
    """``out`` carrying ``token`` as its bearer (the signers of token-based clouds)."""
    return out._replace(headers={**out.headers, "Authorization": f"Bearer {token}"})


class ClientError(NamedTuple):
    """An upstream's error reply as the client gets it.

    Either ``body`` is relayed as it came (Anthropic's own errors), or, when
    ``error_type`` is set, the gateway writes its envelope (with its request id)
    saying ``message``. ``log`` is the upstream's full text for the operational
    log, which the client must not see (cloud account ids, role ARNs, project ids).
    """

    status: int
    headers: dict[str, str]
    body: bytes = b""
    error_type: str | None = None
    message: str = ""
    log: str | None = None
    # None: the relay decides by status (SPEC "Failover"); True/False: the provider knows
    # better (a failed Bedrock count falls through to the next upstream whatever its status).
    failover: bool | None = None


class CredentialFailure(Fault):
    """The gateway could not obtain or use its own credential for an upstream (STS or a
    token endpoint down, a bad key file). The attempt counts as a 500 from that upstream,
    so the client never reads the gateway's credential trouble as its own 401/403."""

    fault = Party.UPSTREAM

    def __init__(self, upstream: str, detail: str) -> None:
        super().__init__(f"{upstream}: {detail}")
        self.upstream = upstream
        self.detail = detail


class Signer(Protocol):
    """The I/O half of a provider that signs or fetches tokens (one per upstream)."""

    # Written without ``async`` (this module is pure); implementations are coroutines.
    def start(self) -> Awaitable[None]: ...

    def close(self) -> Awaitable[None]: ...

    def serves(self, ask: Ask) -> bool:
        """False when this developer cannot be sent here at all (an assumed-role session
        named after a claim their token lacks): the relay moves on without a word."""
        ...

    def authorize(self, out: Outbound, ask: Ask) -> Awaitable[Outbound]:
        """``out`` with the gateway's credential added; raises :class:`CredentialFailure`."""
        ...


class Translator(Protocol):
    """The pure half of a provider, built once per configured upstream at boot."""

    name: str
    provider: str
    base_url: str  # where its requests go (the egress proxy is chosen for it at boot)

    def outbound(self, ask: Ask, upstream_model: str) -> Outbound | None:
        """The request to send, or None when this upstream cannot serve this ask
        (the relay moves on; it still counts in "N attempted"). May raise
        :class:`~gateway.errors.GatewayError` for a body this upstream must not get."""
        ...

    def client_error(self, ask: Ask, status: int, headers: Mapping[str, str], body: bytes) -> ClientError:
        """An error reply (any non-2xx status) as the client sees it."""
        ...

    def response_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The upstream's success headers the client may see."""
        ...
