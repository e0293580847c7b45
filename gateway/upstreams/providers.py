"""Which translator serves each ``provider:`` value (the pure half of every provider).

The I/O half — who signs or fetches a token for it — is chosen where the edges
are opened (``gateway.app.build``), from :func:`needs_signer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.config.upstreams import NOT_SERVED
from gateway.upstreams.outbound import Translator

if TYPE_CHECKING:
    from gateway.config.schema import Upstream

def translator_for(upstream: Upstream, *, drop_beta: str | None, env: Mapping[str, str]) -> Translator:
    provider = upstream.provider
    if provider == "anthropic":
        from gateway.upstreams.anthropic import AnthropicTranslator

        return AnthropicTranslator(upstream, drop_beta)
    if provider == "bedrock":
        from gateway.upstreams.bedrock import BedrockTranslator

        return BedrockTranslator(upstream, env)
    if provider == "vertex":
        from gateway.upstreams.vertex import VertexTranslator

        return VertexTranslator(upstream)
    if provider == "anthropicAws":
        from gateway.upstreams.anthropic_aws import AnthropicAwsTranslator

        return AnthropicAwsTranslator(upstream, drop_beta)
    if provider == "foundry":
        from gateway.upstreams.foundry import FoundryTranslator

        return FoundryTranslator(upstream, drop_beta)
    raise ValueError(f"provider {provider} is not served: {NOT_SERVED.get(provider, 'unknown provider')}")


def signing_service(upstream: Upstream) -> str | None:
    """The SigV4 service name when this upstream is called with AWS credentials, else None."""
    if upstream.provider == "bedrock" and upstream.auth.aws_bearer_token is None:
        return "bedrock"
    if upstream.provider == "anthropicAws" and upstream.auth.api_key is None:
        return "aws-external-anthropic"
    return None


def needs_signer(upstream: Upstream) -> str | None:
    """Which credential edge an upstream needs: "aws", "google", "azure", or None."""
    if upstream.provider == "bedrock" or signing_service(upstream) is not None:
        return "aws"
    if upstream.provider == "vertex":
        return "google"
    if upstream.provider == "foundry" and upstream.auth.use_azure_ad:
        return "azure"
    return None
