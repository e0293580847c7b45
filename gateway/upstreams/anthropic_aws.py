"""Claude Platform on AWS (``provider: anthropicAws``): Anthropic's API in an AWS account.

Pure. The Messages API as for Anthropic itself (:mod:`gateway.upstreams.passthrough`):
first-party model ids, ``anthropic-beta`` headers, ``count_tokens``. Differences:

* the host is derived from the region, ``https://aws-external-anthropic.{region}.api.aws``
  (the anthropic SDK's form), unless ``base_url`` is set;
* ``anthropic-workspace-id`` goes with every request;
* the credential is ``x-api-key`` when ``auth.api_key`` is set, else a SigV4
  signature for the service ``aws-external-anthropic`` added by the AWS signer edge.
"""

from __future__ import annotations

from typing import Any

from gateway.upstreams.passthrough import Passthrough

HOST_TEMPLATE = "https://aws-external-anthropic.{region}.api.aws"
SIGNING_SERVICE = "aws-external-anthropic"
# AWS request ids and tracing headers name the account's infrastructure.
_DROP_RESPONSE = ("x-amzn-", "x-amz-")


def base_url(upstream: Any) -> str:
    return upstream.base_url or HOST_TEMPLATE.format(region=upstream.region)


class AnthropicAwsTranslator(Passthrough):
    __slots__ = ()

    def __init__(self, upstream: Any, drop_beta: str | None) -> None:
        static = [("anthropic-workspace-id", upstream.workspace_id)]
        api_key = upstream.auth.api_key
        if api_key:
            static.append(("x-api-key", api_key))
        super().__init__(upstream, base_url(upstream), static, drop_beta, _DROP_RESPONSE)
