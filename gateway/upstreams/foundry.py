"""Microsoft Foundry (``provider: foundry``): Claude deployed in an Azure resource.

Pure. The Messages API as for Anthropic itself (:mod:`gateway.upstreams.passthrough`)
under ``https://{resource}.services.ai.azure.com/anthropic`` (the anthropic SDK's
base), or ``base_url`` as given (sovereign clouds), followed by the client's path
(``/v1/messages…``). Model ids are deployment names, chosen in routing from
``models[].upstream_model``.

The credential: ``auth.api_key`` goes in both ``x-api-key`` (what the endpoint
reads) and ``api-key`` (Azure's older name), as the anthropic SDK sends it; with
``use_azure_ad`` the Azure signer edge adds a bearer token instead.
"""

from __future__ import annotations

from typing import Any

from gateway.upstreams.passthrough import Passthrough

HOST_TEMPLATE = "https://{resource}.services.ai.azure.com/anthropic"
# Azure's request ids, regions and API management headers name the tenant's setup.
_DROP_RESPONSE = ("x-ms-", "apim-", "azureml-")


def base_url(upstream: Any) -> str:
    return upstream.base_url or HOST_TEMPLATE.format(resource=upstream.resource)


class FoundryTranslator(Passthrough):
    __slots__ = ()

    def __init__(self, upstream: Any, drop_beta: str | None) -> None:
        static: list[tuple[str, str]] = []
        api_key = upstream.auth.api_key
        if api_key:
            static += [("x-api-key", api_key), ("api-key", api_key)]
        super().__init__(upstream, base_url(upstream), static, drop_beta, _DROP_RESPONSE)
