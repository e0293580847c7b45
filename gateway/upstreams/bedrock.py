"""Amazon Bedrock (bedrock-runtime) as an upstream: the Messages API translated (pure).

What goes on the wire is what Anthropic's gateway sends Bedrock (protocol §6,
cag-cloud-upstreams §2); SigV4 is added afterwards by the signer, over exactly
these headers and bytes.

* ``/v1/messages`` → ``POST {base}/model/{id}/invoke`` (JSON) or
  ``…/invoke-with-response-stream`` (an AWS event stream, re-emitted as SSE by
  :mod:`gateway.upstreams.eventstream`). The body loses ``model``, ``stream``
  and ``tags``, gains ``anthropic_version`` and, when the client named any,
  ``anthropic_beta`` (its ``anthropic-beta`` header values, since Bedrock
  ignores the header). Every other member keeps the bytes the client sent.
* ``/v1/messages/count_tokens`` → ``POST {base}/model/{foundation id}/count-tokens``
  with the InvokeModel body base64-wrapped; CountTokens takes only a bare
  foundation-model id, so an inference-profile ARN cannot be counted here.
* No client header goes upstream: Bedrock authenticates the gateway, not the
  developer, and the signature covers every header sent.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from urllib.parse import quote

import msgspec

from gateway.client_text import quoted
from gateway.config.schema import Upstream
from gateway.errors import Fault, GatewayError, Kind, Party
from gateway.upstreams import cloud_errors
from gateway.upstreams.outbound import REQUEST_TAGS_BETA, Ask, ClientError, Endpoint, Outbound, Shape
from protocol_spec.cloud_wire import (
    CountTokensInput,
    CountTokensRequest,
    InvokeModelTokens,
    TokenCount,
    count_tokens_response_decoder,
)
from protocol_spec.wire import encoder

BEDROCK_VERSION = "bedrock-2023-05-31"
API_VERSION = "2023-06-01"
GUARDRAIL_ID_HEADER = "X-Amzn-Bedrock-GuardrailIdentifier"
GUARDRAIL_VERSION_HEADER = "X-Amzn-Bedrock-GuardrailVersion"
EVENT_STREAM_TYPE = "application/vnd.amazon.eventstream"
SSE_TYPE = "text/event-stream; charset=utf-8"
COUNT_UNAVAILABLE = "token counting is not available for this model here"
# Body members a guarded upstream refuses: they configure Bedrock itself
# (``amazon-bedrock-guardrailConfig``), and would let a developer swap the
# operator's guardrail for their own (protocol §6.1, BEDROCK-8).
BEDROCK_MEMBER_PREFIX = "amazon-bedrock-"

# DNS suffix per AWS partition, from botocore/data/partitions.json (regionRegex → dnsSuffix).
_PARTITIONS = (
    (re.compile(r"us-iso-\w+-\d+"), "c2s.ic.gov"),
    (re.compile(r"us-isob-\w+-\d+"), "sc2s.sgov.gov"),
    (re.compile(r"eu-isoe-\w+-\d+"), "cloud.adc-e.uk"),
    (re.compile(r"us-isof-\w+-\d+"), "csp.hci.ic.gov"),
    (re.compile(r"cn-\w+-\d+"), "amazonaws.com.cn"),
    (re.compile(r"eusc-de-\w+-\d+"), "amazonaws.eu"),
)
# A cross-region inference profile id is a geography label before the foundation
# id (``us.``, ``eu.``, ``apac.``, ``jp.``, ``au.``, ``global.``, ``us-gov.``…).
_GEO_PREFIX = re.compile(r"[a-z][a-z0-9-]*\.(?=anthropic\.)")
_FOUNDATION_ARN = re.compile(r"arn:aws[a-z-]*:bedrock:[a-z0-9-]*::foundation-model/(.+)")
_EMPTY_ARRAY = re.compile(rb"\[\s*\]")

# Members the client may send that Bedrock must not get, or gets from us instead.
_NOT_INVOKED = frozenset({"model", "stream", "tags", "anthropic_version", "anthropic_beta"})
_NOT_COUNTED = _NOT_INVOKED | {"max_tokens"}

_members_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_VERSION = msgspec.Raw(encoder.encode(BEDROCK_VERSION))


class MalformedReply(Fault):
    """Bedrock answered 200 with a body that is not the shape its API documents."""

    fault = Party.UPSTREAM


def runtime_base_url(upstream: Upstream, env: Mapping[str, str]) -> str:
    """``base_url`` as configured (no prefix added), else the regional endpoint,
    the FIPS one when ``AWS_USE_FIPS_ENDPOINT`` is true (as the AWS SDKs read it)."""
    if upstream.base_url:
        return upstream.base_url.rstrip("/")
    if not upstream.region:
        raise ValueError(f"upstream {upstream.name}: bedrock needs a region or a base_url")
    region = upstream.region
    fips = env.get("AWS_USE_FIPS_ENDPOINT", "").strip().lower() == "true"
    host = "bedrock-runtime-fips" if fips else "bedrock-runtime"
    suffix = next((s for pattern, s in _PARTITIONS if pattern.fullmatch(region)), "amazonaws.com")
    return f"https://{host}.{region}.{suffix}"


def model_path(model_id: str) -> str:
    """``model_id`` as one path segment: ``:`` stays literal (``…-v1:0``, ARNs), ``/``
    becomes ``%2F`` (ARNs), anything else reserved is percent-encoded."""
    if model_id in (".", ".."):
        return model_id.replace(".", "%2E")  # a dot segment would be resolved away
    return quote(model_id, safe=":")


def foundation_id(model_id: str) -> str | None:
    """The bare foundation-model id CountTokens takes, or None when ``model_id``
    names an inference profile or deployment by ARN (nothing to derive it from)."""
    if model_id.startswith("arn:"):
        match = _FOUNDATION_ARN.fullmatch(model_id)
        return match[1] if match else None
    geo = _GEO_PREFIX.match(model_id)
    return model_id[geo.end() :] if geo else model_id


def count_reply(body: bytes) -> bytes:
    """CountTokens' ``{"inputTokens": N}`` as the Messages API's ``{"input_tokens": N}``;
    raises :class:`MalformedReply` on anything else."""
    try:
        reply = count_tokens_response_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise MalformedReply("bedrock count-tokens reply has no integer inputTokens") from None
    return encoder.encode(TokenCount(reply.input_tokens))


def beta_list(betas: tuple[str, ...]) -> list[str]:
    """The client's betas for the body, in header order, without the request-tags beta."""
    names = (part.strip() for value in betas for part in value.split(","))
    return [name for name in names if name and name != REQUEST_TAGS_BETA]


class BedrockTranslator:
    """One configured ``bedrock`` upstream, as a :class:`~gateway.upstreams.outbound.Translator`."""

    __slots__ = ("name", "provider", "base_url", "guarded", "_invoke_headers", "_count_headers")

    def __init__(self, upstream: Upstream, env: Mapping[str, str]) -> None:
        self.name: str = upstream.name
        self.provider: str = "bedrock"
        self.base_url = runtime_base_url(upstream, env)
        self.guarded = upstream.guardrail is not None
        invoke = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "anthropic-version": API_VERSION,
        }
        if upstream.guardrail is not None:
            # No X-Amzn-Bedrock-Trace: a trace puts the guardrail's assessment in the
            # reply body, which the client would then read.
            invoke[GUARDRAIL_ID_HEADER] = upstream.guardrail.id
            invoke[GUARDRAIL_VERSION_HEADER] = upstream.guardrail.version
        self._invoke_headers = invoke | upstream.headers
        self._count_headers = {"Content-Type": "application/json"} | upstream.headers

    def outbound(self, ask: Ask, upstream_model: str) -> Outbound | None:
        if ask.endpoint is Endpoint.COUNT_TOKENS:
            return self._count(ask, upstream_model)
        members = _members(ask.body)
        if self.guarded:
            _refuse_bedrock_members(members)
        action = "invoke-with-response-stream" if ask.stream else "invoke"
        url = f"{self.base_url}/model/{model_path(upstream_model)}/{action}"
        body: dict[str, msgspec.Raw] = {"anthropic_version": _VERSION}
        betas = beta_list(ask.betas)
        if betas:
            body["anthropic_beta"] = msgspec.Raw(encoder.encode(betas))
        body.update((key, value) for key, value in members.items() if key not in _NOT_INVOKED)
        shape = Shape.EVENT_STREAM if ask.stream else Shape.AS_IS
        return Outbound(url, dict(self._invoke_headers), encoder.encode(body), shape)

    def _count(self, ask: Ask, upstream_model: str) -> Outbound | None:
        model = foundation_id(upstream_model)
        if model is None:
            return None
        # Observed: every beta is dropped here, and counting needs max_tokens above the
        # thinking budget (Bedrock validates the body as an InvokeModel one).
        inner: dict[str, msgspec.Raw] = {"anthropic_version": _VERSION}
        inner.update(
            (key, value)
            for key, value in _members(ask.body).items()
            if key not in _NOT_COUNTED and not (key == "tools" and _EMPTY_ARRAY.fullmatch(bytes(value)))
        )
        max_tokens = ask.thinking_budget + 1 if ask.thinking_budget is not None else 1
        inner["max_tokens"] = msgspec.Raw(str(max_tokens).encode())
        wrapped = base64.b64encode(encoder.encode(inner)).decode("ascii")
        body = encoder.encode(CountTokensRequest(CountTokensInput(InvokeModelTokens(wrapped))))
        url = f"{self.base_url}/model/{model_path(model)}/count-tokens"
        return Outbound(url, dict(self._count_headers), body, Shape.BEDROCK_COUNT)

    def client_error(self, ask: Ask, status: int, headers: Mapping[str, str], body: bytes) -> ClientError:
        mapped = cloud_errors.client_error(status, body, envelope_relayed=False, upstream=self.name)
        if ask.endpoint is not Endpoint.COUNT_TOKENS:
            return mapped
        # Counting is a convenience Bedrock may refuse (no bedrock:CountTokens, a model it
        # cannot count): the next upstream may count it, and only when none can does the
        # client hear that counting is unavailable.
        return ClientError(
            501,
            {"Content-Type": "application/json", "x-should-retry": "false"},
            error_type="not_supported",
            message=COUNT_UNAVAILABLE,
            log=mapped.log,
            failover=True,
        )

    def response_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        # Only the media type: x-amzn-RequestId and the rest name the gateway's AWS side.
        for name, value in headers.items():
            if name.lower() == "content-type":
                if value.lower().startswith(EVENT_STREAM_TYPE):
                    return {"Content-Type": SSE_TYPE}  # what the client gets once re-emitted
                return {"Content-Type": value}
        return {}


def _members(body: bytes) -> dict[str, msgspec.Raw]:
    """The body's top-level members in order, each value the bytes the client sent."""
    try:
        return _members_decoder.decode(body)
    except msgspec.ValidationError:
        raise GatewayError(Kind.INVALID_REQUEST, "request body must be a JSON object") from None
    except (msgspec.DecodeError, RecursionError):
        raise GatewayError(Kind.INVALID_REQUEST, "invalid JSON") from None


def _refuse_bedrock_members(members: Mapping[str, msgspec.Raw]) -> None:
    for key in members:
        if key.lower().startswith(BEDROCK_MEMBER_PREFIX):
            raise GatewayError(
                Kind.INVALID_REQUEST,
                f"{quoted(key)} is not allowed: this gateway applies its own Bedrock guardrail",
            )
