"""Google Vertex AI as an upstream: the Messages API behind ``rawPredict``.

Pure. What Anthropic's gateway was seen to send (reference cag-cloud-upstreams §3),
which is the target:

* URL: ``{base}/projects/{project}/locations/{region}/publishers/anthropic/models/{id}``
  + ``:rawPredict`` (JSON) or ``:streamRawPredict`` (SSE); counting is
  ``…/models/count-tokens:rawPredict``. ``base`` is ``base_url`` exactly as
  configured (a Private Service Connect endpoint: no ``/v1`` is added), else
  Google's regional host, which carries ``/v1``.
* Body: ``model`` removed (the URL names it), ``tags`` removed (Vertex refuses
  unknown members), ``"anthropic_version": "vertex-2023-10-16"`` added; every
  other member's bytes exactly as the client sent them. The count body keeps
  ``model``, set to the Vertex id.
* Headers: our own short list; nothing of the client's but ``anthropic-version``
  and its betas (``anthropic-beta`` stays a header on Vertex).

Replies pass through as bytes, SSE included: Vertex speaks Anthropic's event
stream. Its own ``ping`` events reach the client (Anthropic's gateway re-emits
the stream and drops them; a documented difference).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import msgspec

from gateway.errors import GatewayError, Kind
from gateway.upstreams import cloud_errors
from gateway.upstreams.anthropic import ACCEPT_ENCODING
from gateway.upstreams.outbound import Ask, ClientError, Endpoint, Outbound, Shape

VERTEX_VERSION = "vertex-2023-10-16"
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
# Members Vertex must not get: the URL names the model, and it refuses request tags.
_DROPPED = frozenset({"model", "tags", "anthropic_version"})
# Google's multi-region hosts; any other region is a regional host.
_HOSTS = {
    "global": "https://aiplatform.googleapis.com/v1",
    "us": "https://aiplatform.us.rep.googleapis.com/v1",
    "eu": "https://aiplatform.eu.rep.googleapis.com/v1",
}

_members = msgspec.json.Decoder(dict[str, msgspec.Raw])
_encode = msgspec.json.Encoder().encode
_VERSION_RAW = msgspec.Raw(_encode(VERTEX_VERSION))


def base_url(configured: str | None, region: str) -> str:
    """Where the ``projects/…`` path starts, without a trailing slash."""
    if configured:
        return configured.rstrip("/")
    return _HOSTS.get(region) or f"https://{region}-aiplatform.googleapis.com/v1"


def vertex_body(body: bytes, model: str | None) -> bytes:
    """The client's body as Vertex takes it; ``model`` None drops the member (Messages),
    a string sets it (count-tokens). Member values keep their bytes and order."""
    try:
        members = _members.decode(body)
    except (msgspec.DecodeError, RecursionError):
        # The handler has parsed this body already; only a hand-made Ask gets here.
        raise GatewayError(Kind.INVALID_REQUEST, "request body must be a JSON object") from None
    out: dict[str, msgspec.Raw] = {"anthropic_version": _VERSION_RAW}
    for key, value in members.items():
        if key not in _DROPPED:
            out[key] = value
        elif key == "model" and model is not None:
            out[key] = msgspec.Raw(_encode(model))
    return _encode(out)


class VertexTranslator:
    """One configured Vertex upstream (``provider: vertex``)."""

    __slots__ = ("name", "provider", "base_url", "models_url", "static_headers")

    def __init__(self, upstream: Any) -> None:
        self.name: str = upstream.name
        self.provider: str = upstream.provider
        region: str = upstream.region
        self.base_url: str = base_url(upstream.base_url, region)
        base = self.base_url
        self.models_url = (
            f"{base}/projects/{quote(upstream.project_id, safe='')}"
            f"/locations/{quote(region, safe='')}/publishers/anthropic/models/"
        )
        self.static_headers: tuple[tuple[str, str], ...] = tuple((upstream.headers or {}).items())

    def outbound(self, ask: Ask, upstream_model: str) -> Outbound:
        if ask.endpoint is Endpoint.COUNT_TOKENS:
            url = self.models_url + "count-tokens:rawPredict"
            body = vertex_body(ask.body, upstream_model)
        else:
            # "@" stays literal: Vertex names versions "claude-haiku-4-5@20251001".
            verb = "streamRawPredict" if ask.stream else "rawPredict"
            url = f"{self.models_url}{quote(upstream_model, safe='@')}:{verb}"
            body = vertex_body(ask.body, None)
        return Outbound(url, self._headers(ask), body, Shape.AS_IS)

    def _headers(self, ask: Ask) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            # Also for streams, as Anthropic's gateway sends it; Vertex answers SSE anyway.
            "Accept": "application/json",
            "Accept-Encoding": ACCEPT_ENCODING,
            "anthropic-version": ask.headers.get("anthropic-version") or DEFAULT_ANTHROPIC_VERSION,
        }
        if ask.betas:
            headers["anthropic-beta"] = ",".join(ask.betas)
        headers.update(self.static_headers)
        return headers

    def client_error(self, ask: Ask, status: int, headers: Mapping[str, str], body: bytes) -> ClientError:
        # Google's own error shape names the project; Anthropic's envelope (a 400
        # "prompt is too long: …") is about the request and is relayed.
        return cloud_errors.client_error(status, body, envelope_relayed=True, upstream=self.name)

    def response_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        # Everything else Vertex sends is Google's (x-goog-*, server timing, alt-svc).
        content_type = headers.get("Content-Type")
        return {"Content-Type": content_type} if content_type else {}
