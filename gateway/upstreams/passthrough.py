"""The Messages API of Anthropic served by a cloud: the request goes as for Anthropic's own API.

Pure. Claude Platform on AWS (``anthropic_aws``) and Microsoft Foundry
(``foundry``) take Anthropic's paths, bodies, model ids and ``anthropic-*``
headers as they are. What differs from :mod:`gateway.upstreams.anthropic` is
only where the request goes, which static headers carry the gateway's
credential and account, and that their error replies name cloud accounts, so
they are mapped (:mod:`gateway.upstreams.cloud_errors`) instead of relayed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.upstreams import anthropic, cloud_errors
from gateway.upstreams.bodyview import splice_model
from gateway.upstreams.outbound import Ask, ClientError, Outbound, Shape

# No client credentials, cookies or identity headers are forwarded (anthropic.forwarded_headers).
_NO_STATIC = anthropic.Prepared("", (), oauth=False, forward_identity=False)


class Passthrough:
    """A translator whose provider module says where to send and what to add."""

    __slots__ = (
        "name",
        "provider",
        "base_url",
        "static_headers",
        "_static_names",
        "drop_beta",
        "_drop_prefixes",
    )

    def __init__(
        self,
        upstream: Any,
        base_url: str,
        static_headers: list[tuple[str, str]],
        drop_beta: str | None,
        drop_response_prefixes: tuple[str, ...],
    ) -> None:
        self.name: str = upstream.name
        self.provider: str = upstream.provider
        self.base_url = base_url.rstrip("/")
        static = [("Accept-Encoding", anthropic.ACCEPT_ENCODING), *static_headers]
        static += list((upstream.headers or {}).items())
        self.static_headers = tuple(static)
        self._static_names = frozenset(name.lower() for name, _ in static)
        # The request-tags beta, when the gateway owns request tags (as for the Anthropic API).
        self.drop_beta = drop_beta
        self._drop_prefixes = drop_response_prefixes

    def outbound(self, ask: Ask, upstream_model: str) -> Outbound:
        body = ask.body if upstream_model == ask.model else splice_model(ask.body, upstream_model)
        headers = anthropic.build_headers(_NO_STATIC, ask.headers, None, None, drop_beta=self.drop_beta)
        # A client header of the same name as ours (an anthropic-workspace-id, in any
        # case) must not travel beside it: the upstream could read either.
        for name in [n for n in headers if n.lower() in self._static_names]:
            del headers[name]
        headers.update(self.static_headers)
        return Outbound(self.base_url + ask.path_qs, headers, body, Shape.AS_IS)

    def client_error(self, ask: Ask, status: int, headers: Mapping[str, str], body: bytes) -> ClientError:
        # Rejections of the request come in Anthropic's envelope and are relayed; the
        # rest (the cloud's own refusals, naming its accounts) become fixed texts.
        return cloud_errors.client_error(status, body, envelope_relayed=True, upstream=self.name)

    def response_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        kept = anthropic.response_headers(headers)
        return {
            name: value for name, value in kept.items() if not name.lower().startswith(self._drop_prefixes)
        }
