"""The suite's fixtures: fake upstreams, a test IdP, and a gateway.yaml that uses them.

``python -m protocol_spec.conformance fixtures --config-out gateway.yaml``
starts, on loopback:

* the fake Anthropic API (:class:`protocol_spec.fakes.FakeUpstream`, no
  artificial delays), which the ``run`` command scripts and inspects through
  its ``/_fake/*`` control endpoints;
* unless ``--no-cloud-upstreams``, the cloud fakes (:mod:`protocol_spec.conformance.cloud_fixtures`):
  a fake Bedrock runtime that verifies every SigV4 signature, a fake STS, a
  fake Vertex AI that takes only bearers its fake Google token endpoint
  issued, and a front door that answers for ``oauth2.googleapis.com`` and
  ``sts.us-east-1.amazonaws.com`` on loopback;
* unless ``--no-telemetry``, a fake OTLP/HTTP collector
  (:class:`protocol_spec.fakes.otlp_collector.OtlpCollector`) with one sink
  per ``telemetry.forward_to`` destination (:data:`COLLECTOR_SINKS`), and,
  with the ``gatehouse:`` section, a fake OTLP/gRPC collector
  (:class:`protocol_spec.fakes.otlp_grpc_collector.OtlpGrpcCollector`) with a
  sink for a third destination that only Gatehouse reads (``protocol: grpc``)
  and one for Gatehouse's own request spans (:data:`GRPC_SINKS`);
* oidc-provider-mock (:class:`protocol_spec.idp_process.IdpProcess`) with the
  users of :data:`USERS`;

then writes its files side by side and stays up until interrupted:

* ``gateway.yaml``: a complete configuration in the shared ``gateway.yaml``
  schema (two Anthropic upstreams on the fake, a Bedrock and a Vertex
  upstream on theirs, custom models, managed policies, an ``admin`` block,
  limits, two telemetry destinations on the collector's sinks), valid for
  Anthropic's gateway as well, plus what only Gatehouse reads: a
  ``gatehouse:`` section, and a third ``forward_to`` destination marked
  ``gatehouse: {protocol: grpc}``. ``--no-gatehouse-section`` leaves all of it
  out; :func:`without_gatehouse` takes it out of a written config;
* ``gateway.env``: the environment the gateway needs (secrets, the database
  URL, ``CLAUDE_GATEWAY_ALLOW_LOOPBACK=1``, ``AWS_ENDPOINT_URL_STS``), as
  ``NAME=value`` lines, and, as comments, the proxy settings a gateway that
  ignores the key file's ``token_uri`` or that variable adds to reach those
  fakes (:func:`front_door_env`);
* ``gateway.google-sa.json`` and ``gateway.front-door-ca.pem``: the Vertex
  upstream's service-account key file and the throwaway CA of the front door;
* ``gateway.fixtures.json``: the state ``run`` reads (:class:`FixtureState`):
  where the fakes and the IdP listen, the users, the secrets, and what the
  configuration promises (so checks know what to expect).

Built-in models are tried on every upstream in order (SPEC MODEL-4), so the
cloud upstreams come last (Bedrock, Bedrock through an assumed role, Vertex):
a built-in model reaches them only when both Anthropic upstreams failed over. Checks that want a cloud upstream use the
custom models of :data:`CLOUD_MODELS`, each routed to the cloud upstreams only;
checks that make every Anthropic upstream fail use :data:`PAIR_MODEL`, which
goes to those two only.

Nothing here knows about any particular gateway implementation.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

STATE_VERSION = 1
HOST = "127.0.0.1"

# The people the test IdP knows. Roles are how checks ask for them.
USERS: dict[str, dict[str, Any]] = {
    "normal": {
        "sub": "conf-alice",
        "email": "alice@example.com",
        "email_verified": True,
        "name": "Alice Conformance",
        "groups": ["eng"],
    },
    "contractor": {
        "sub": "conf-bob",
        "email": "bob@contractor.test",
        "email_verified": True,
        "name": "Bob Contractor",
        "groups": ["contractors"],
    },
    "unverified": {
        "sub": "conf-mallory",
        "email": "mallory@example.com",
        "email_verified": False,
        "name": "Mallory Unverified",
        "groups": ["eng"],
    },
    "admin": {
        "sub": "conf-erin",
        "email": "erin@example.com",
        "email_verified": True,
        "name": "Erin Admin",
        "groups": ["eng", "gateway-admins"],
    },
    # Signs in once, then the IdP drops their tokens (deprovisioning, SPEC REFRESH-7).
    "deprovisioned": {
        "sub": "conf-dave",
        "email": "dave@example.com",
        "email_verified": True,
        "name": "Dave Leaving",
        "groups": ["eng"],
    },
    # Verified, but from a domain outside oidc.allowed_email_domains.
    "outsider": {
        "sub": "conf-oscar",
        "email": "oscar@outside.test",
        "email_verified": True,
        "name": "Oscar Outsider",
        "groups": ["eng"],
    },
}
ALLOWED_EMAIL_DOMAINS = ("example.com", "contractor.test")
ADMIN_GROUP = "gateway-admins"

PRIMARY = "primary"
SECONDARY = "secondary"
# Sent by the gateway to the secondary upstream only (upstreams[].headers).
SECONDARY_HEADER = ("x-conformance-upstream", "secondary")
CUSTOM_MODEL = "claude-conformance-1-0"
CUSTOM_LABEL = "Conformance Model"
CUSTOM_DESCRIPTION = "A custom model served by the primary upstream only."
CUSTOM_UPSTREAM_MODEL = "claude-sonnet-4-6"
# The cloud upstreams (last, see the module docstring) and the custom models that reach them.
BEDROCK = "bedrock"
VERTEX = "vertex"
BEDROCK_REGION = "us-east-1"
VERTEX_REGION = "us-east5"
VERTEX_PROJECT = "conformance-proj"
# Sent to Bedrock on every request (upstreams[].headers), so a check can see it signed (BEDROCK-3).
BEDROCK_HEADER = ("x-conformance-upstream", "bedrock")
# With a guardrail, bodies carrying amazon-bedrock-* members are refused (BEDROCK-8).
GUARDRAIL = ("conformance-guardrail", "1")
BEDROCK_MODEL = "claude-conformance-bedrock-1-0"
BEDROCK_MODEL_ID = "us.anthropic.claude-sonnet-4-6"
ARN_MODEL = "claude-conformance-arn-1-0"
ARN_MODEL_ID = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/conformance01"
VERTEX_MODEL = "claude-conformance-vertex-1-0"
VERTEX_MODEL_ID = "claude-sonnet-4-6@20260101"
# A second Bedrock upstream on the same fake, signing with credentials from AssumeRole at the fake
# STS, one session per developer (BEDROCK-12); Vertex serves its model when STS fails (MSG-46).
ROLE_UPSTREAM = "bedrock-role"
ROLE_ARN = "arn:aws:iam::123456789012:role/conformance-bedrock"
ROLE_MODEL = "claude-conformance-role-1-0"
# Bedrock first, then Vertex: for fall-through (counting) and no-failover-after-the-commit checks.
CLOUDS_MODEL = "claude-conformance-clouds-1-0"
CLOUDS_MODEL_IDS = {BEDROCK: "us.anthropic.claude-opus-4-7", VERTEX: "claude-opus-4-7"}
CLOUD_MODELS: dict[str, dict[str, str]] = {
    BEDROCK_MODEL: {BEDROCK: BEDROCK_MODEL_ID},
    ARN_MODEL: {BEDROCK: ARN_MODEL_ID},
    VERTEX_MODEL: {VERTEX: VERTEX_MODEL_ID},
    CLOUDS_MODEL: CLOUDS_MODEL_IDS,
    ROLE_MODEL: {ROLE_UPSTREAM: BEDROCK_MODEL_ID, VERTEX: "claude-sonnet-4-6"},
}
# Both Anthropic upstreams and nothing else: for checks that make every upstream it is sent to fail.
PAIR_MODEL = "claude-conformance-pair-1-0"
PAIR_UPSTREAM_MODEL = "claude-sonnet-4-6"
# What Gatehouse's section sets as its ping interval on a silent Bedrock stream (the protocol's is
# about 15 s); `run --ping-interval` tells the SSE-4 check which one the gateway under test uses.
GATEHOUSE_PING_INTERVAL_S = 1.0
PROTOCOL_PING_INTERVAL_S = 15.0
# Short enough that a stalled upstream fails over quickly, far above a loopback answer.
UPSTREAM_TTFB_MS = 1500
MAX_URL_LENGTH = 8192
MAX_REQUEST_HEADER_BYTES = 32768
# TEST-NET-1: never a real client; checks that X-Forwarded-For from an untrusted peer is ignored.
DENIED_CIDR = "192.0.2.0/24"
LOGIN_NOTICE = "Conformance fixtures: sign in with a test account."
BLOCKED_MESSAGE = "ask the platform team"
# Generous sign-in rate limits, so that repeated runs against one database never trip them.
RATE_LIMIT_MAX = 500

# Telemetry (SPEC §21): two telemetry.forward_to destinations, each a sink of the fake collector.
# The first takes metrics and logs, with headers (one expanded from the environment) and a
# path under its base URL; the second gives only a URL, so it gets the per-signal defaults
# (metrics). Traces go to nobody.
FULL_SINK = "full"
DEFAULTS_SINK = "defaults"
COLLECTOR_SINKS = (FULL_SINK, DEFAULTS_SINK)
FULL_SINK_PATH = "/otlp"
COLLECTOR_HEADER = ("x-conformance-collector", "full")
RESOURCE_ATTRIBUTES = {"deployment.environment": "conformance", "team.name": "platform"}
# The contractors policy sets its own value, which wins over the pushed one (TEL-6).
CONTRACTOR_RESOURCE_ATTRIBUTES = "deployment.environment=contractors"
# Gatehouse only (its section): a third destination over OTLP/gRPC taking metrics and logs, as the
# first does (so the pushed environment of TEL-6 is the same with and without it), and the
# gateway's own request spans (TEL-12), each a sink of the fake gRPC collector.
GRPC_SINK = "grpc"
SPANS_SINK = "spans"
GRPC_SINKS = (GRPC_SINK, SPANS_SINK)
GRPC_COLLECTOR_HEADER = ("x-conformance-collector", "grpc")
# The SDK's batch span processor waits this long (ms) before it exports (its default, 5 s, would
# make TEL-12 wait that long); set through the SDK's own variable in gateway.env.
SPAN_BATCH_DELAY_MS = 200

# Models the recorded transcripts and the checks use; the base policy allows them all.
BASE_MODELS = (
    "claude-opus-5-5", "claude-opus-4-7", "claude-sonnet-4-6", "claude-haiku-4-5", CUSTOM_MODEL, PAIR_MODEL, *CLOUD_MODELS,
)
BASE_SETTINGS: dict[str, Any] = {
    "availableModels": list(BASE_MODELS),
    "permissions": {"allow": ["Read", "Grep"], "deny": ["WebFetch"]},
    "env": {"CONFORMANCE_POLICY": "base", "CONFORMANCE_TEXT": "ünïcødé ✓ \"q\""},
}
CONTRACTOR_SETTINGS: dict[str, Any] = {
    "availableModels": ["claude-haiku-4-5"],
    # Claude Code starts on a model this policy does not allow; name the one to use.
    "model": "claude-haiku-4-5",
    "permissions": {"allow": ["Read"], "deny": ["Bash"]},
    "env": {"CONFORMANCE_ROLE": "contractor", "OTEL_RESOURCE_ATTRIBUTES": CONTRACTOR_RESOURCE_ATTRIBUTES},
}
# What SPEC MANAGED-20 makes of the contractor policy merged onto the base
# (deny lists are united; their order is not specified, so checks compare sets).
CONTRACTOR_MERGED: dict[str, Any] = {
    "availableModels": ["claude-haiku-4-5"],
    "model": "claude-haiku-4-5",
    "permissions": {"allow": ["Read"], "deny": ["WebFetch", "Bash"]},
    "env": {
        "CONFORMANCE_POLICY": "base",
        "CONFORMANCE_TEXT": "ünïcødé ✓ \"q\"",
        "CONFORMANCE_ROLE": "contractor",
        "OTEL_RESOURCE_ATTRIBUTES": CONTRACTOR_RESOURCE_ATTRIBUTES,
    },
}

ENV_NAMES = {
    "jwt_secret": "CONFORMANCE_JWT_SECRET",
    "oidc_client_secret": "CONFORMANCE_OIDC_CLIENT_SECRET",
    "primary_key": "CONFORMANCE_PRIMARY_API_KEY",
    "secondary_key": "CONFORMANCE_SECONDARY_API_KEY",
    "admin_write_key": "CONFORMANCE_ADMIN_WRITE_KEY",
    "admin_read_key": "CONFORMANCE_ADMIN_READ_KEY",
    "aws_access_key_id": "CONFORMANCE_AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "CONFORMANCE_AWS_SECRET_ACCESS_KEY",
    "collector_key": "CONFORMANCE_COLLECTOR_KEY",
    "postgres_url": "CONFORMANCE_POSTGRES_URL",
}
ADMIN_WRITE_KEY_ID = "conformance-write"
ADMIN_READ_KEY_ID = "conformance-read"


class FixtureState(msgspec.Struct, kw_only=True):
    """What ``fixtures`` tells ``run`` (the JSON of ``gateway.fixtures.json``)."""

    version: int = STATE_VERSION
    pid: int
    config_path: str
    env_path: str
    public_url: str
    gateway_port: int
    fake_url: str
    idp_url: str
    users: dict[str, dict[str, Any]]
    env: dict[str, str]
    jwt_secret: str
    primary_key: str
    secondary_key: str
    admin_write_key: str
    admin_read_key: str
    ttl_hours: float = 1.0
    upstream_ttfb_ms: int = UPSTREAM_TTFB_MS
    max_request_bytes: int = 33554432
    max_url_length: int = MAX_URL_LENGTH
    max_request_header_bytes: int = MAX_REQUEST_HEADER_BYTES
    # The configured upstreams' names, in order (MSG-31 counts them all).
    upstreams: list[str] = msgspec.field(default_factory=lambda: [PRIMARY, SECONDARY])
    # The cloud fakes ("" when the fixtures run with --no-cloud-upstreams: cloud checks SKIP).
    bedrock_url: str = ""
    vertex_url: str = ""
    google_token_url: str = ""
    # The front door for gateways that ignore token_uri or AWS_ENDPOINT_URL_STS (front_door_env()).
    front_door_url: str = ""
    front_door_ca_path: str = ""
    # The fake STS's AssumeRole log and script (cloud_fixtures.StsControl).
    sts_control_url: str = ""
    aws_access_key_id: str = ""
    # The fake collector's control URL and, per sink, the destination URL the config gives
    # the gateway ("" and {} with --no-telemetry: the telemetry relay checks SKIP).
    collector_url: str = ""
    collector_sinks: dict[str, str] = msgspec.field(default_factory=dict)
    # The secret the first destination's Authorization header is expanded from.
    collector_key: str = ""
    # What the gatehouse: section switches on (all unset with --no-gatehouse-section, and the
    # gRPC collector and stamping with --no-telemetry too; the checks of TEL-9 to TEL-12 then SKIP):
    # the fake gRPC collector's control URL and, per sink, the URL the config names;
    grpc_collector_url: str = ""
    grpc_sinks: dict[str, str] = msgspec.field(default_factory=dict)
    # gatehouse.telemetry.stamp_identity (TEL-10); GET /metrics for an admin key (TEL-11).
    stamp_identity: bool = False
    prometheus: bool = False


def state_path_for(config_out: Path) -> Path:
    return config_out.with_name(config_out.stem + ".fixtures.json")


def env_path_for(config_out: Path) -> Path:
    return config_out.with_name(config_out.stem + ".env")


def load_state(path: str | Path) -> FixtureState:
    state = msgspec.json.decode(Path(path).read_bytes(), type=FixtureState)
    if state.version != STATE_VERSION:
        raise ValueError(f"{path} has state version {state.version}; this suite reads {STATE_VERSION}")
    return state


def new_secrets() -> dict[str, str]:
    # Admin keys must be at least 32 characters (SPEC ADMIN-11); token_urlsafe(32) gives 43.
    # A leading letter: a value starting with "-" (one in 32 of them) reads as an option
    # on a command line (`run --admin-key "$KEY"`).
    values = {name: "k" + secrets.token_urlsafe(32) for name in ENV_NAMES if name != "postgres_url"}
    # Shaped like AWS's: an SDK may check the form of an access key id.
    values["aws_access_key_id"] = "AKIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))
    values["aws_secret_access_key"] = secrets.token_urlsafe(30)
    return values


def _yaml_list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return msgspec.json.encode(text).decode()


def _settings_yaml(settings: dict[str, Any]) -> str:
    # Flow-style JSON is valid YAML and keeps the documents exact.
    return msgspec.json.encode(settings).decode()


@dataclass(frozen=True)
class CloudUrls:
    """Where the cloud fakes listen, and the files the config and environment name."""

    bedrock_url: str
    vertex_url: str
    service_account_path: str
    google_token_url: str = ""
    front_door_url: str = ""
    front_door_ca_path: str = ""
    sts_url: str = ""
    sts_control_url: str = ""


def _cloud_upstreams(clouds: CloudUrls) -> str:
    env = ENV_NAMES
    # Vertex's base_url replaces everything before /projects, /v1 included (VERTEX-1).
    return f"""\
  - provider: bedrock
    name: {BEDROCK}
    region: {BEDROCK_REGION}
    base_url: {clouds.bedrock_url}
    auth:
      aws_access_key_id: ${{{env["aws_access_key_id"]}}}
      aws_secret_access_key: ${{{env["aws_secret_access_key"]}}}
    headers:
      {BEDROCK_HEADER[0]}: {BEDROCK_HEADER[1]}
    guardrail:
      id: {GUARDRAIL[0]}
      version: {_q(GUARDRAIL[1])}
  - provider: bedrock
    name: {ROLE_UPSTREAM}
    region: {BEDROCK_REGION}
    base_url: {clouds.bedrock_url}
    auth:
      aws_access_key_id: ${{{env["aws_access_key_id"]}}}
      aws_secret_access_key: ${{{env["aws_secret_access_key"]}}}
    assume_role:
      role_arn: {ROLE_ARN}
      session_name: email
    guardrail:
      id: {GUARDRAIL[0]}
      version: {_q(GUARDRAIL[1])}
  - provider: vertex
    name: {VERTEX}
    region: {VERTEX_REGION}
    project_id: {VERTEX_PROJECT}
    base_url: {clouds.vertex_url}/v1
    auth:
      service_account_json: {_q(clouds.service_account_path)}
"""


def _model(model_id: str, label: str, routes: dict[str, str]) -> str:
    lines = [f"  - id: {model_id}", f"    label: {_q(label)}", "    upstream_model:"]
    lines += [f"      {name}: {_q(upstream_id)}" for name, upstream_id in routes.items()]
    return "\n".join(lines) + "\n"


def _models(clouds: CloudUrls | None) -> str:
    text = f"""\
  - id: {CUSTOM_MODEL}
    label: {_q(CUSTOM_LABEL)}
    description: {_q(CUSTOM_DESCRIPTION)}
    upstream_model:
      {PRIMARY}: {CUSTOM_UPSTREAM_MODEL}
"""
    text += _model(PAIR_MODEL, "Conformance pair", {PRIMARY: PAIR_UPSTREAM_MODEL, SECONDARY: PAIR_UPSTREAM_MODEL})
    if clouds is not None:
        for model_id, routes in CLOUD_MODELS.items():
            text += _model(model_id, "Conformance " + model_id.split("-")[2], routes)
    return text


def collector_destinations(sink_urls: dict[str, str]) -> dict[str, str]:
    """The ``forward_to`` URL of each sink: the first one's has a path under the listener."""
    return {name: url + (FULL_SINK_PATH if name == FULL_SINK else "") for name, url in sink_urls.items()}


def _telemetry(destinations: dict[str, str], grpc_url: str | None) -> str:
    env = ENV_NAMES
    attributes = "".join(f"\n    {name}: {_q(value)}" for name, value in RESOURCE_ATTRIBUTES.items())
    grpc_destination = "" if grpc_url is None else f"""\
    - url: {grpc_url}
      metrics: true
      logs: true
      headers:
        Authorization: "Bearer ${{{env["collector_key"]}}}"
        {GRPC_COLLECTOR_HEADER[0]}: {GRPC_COLLECTOR_HEADER[1]}
      gatehouse:
        protocol: grpc
"""
    return f"""\
telemetry:
  forward_to:
    - url: {destinations[FULL_SINK]}
      metrics: true
      logs: true
      headers:
        Authorization: "Bearer ${{{env["collector_key"]}}}"
        {COLLECTOR_HEADER[0]}: {COLLECTOR_HEADER[1]}
    - url: {destinations[DEFAULTS_SINK]}
{grpc_destination}  resource_attributes:{attributes}
"""


def _gatehouse_telemetry(grpc_sinks: dict[str, str] | None) -> str:
    """Gatehouse's own telemetry settings: /metrics always; stamping and traces with the gRPC collector."""
    text = """\
  telemetry:
    metrics:
      prometheus:
        enabled: true
"""
    if grpc_sinks is not None:
        # sample_ratio 0: only a client's sampled traceparent makes a span (TEL-12).
        text += f"""\
    stamp_identity: true
    traces:
      otlp:
        endpoint: {grpc_sinks[SPANS_SINK]}
        protocol: grpc
      sample_ratio: 0
"""
    return text


def without_gatehouse(config: dict[str, Any]) -> dict[str, Any]:
    """A parsed fixture config without anything only Gatehouse reads: the ``gatehouse:``
    section, and every ``forward_to`` entry with a ``gatehouse:`` key of its own (the gRPC
    destination; another gateway would post OTLP/HTTP to a gRPC port). What
    ``--no-gatehouse-section`` writes, for a config written with the section."""
    out = {k: v for k, v in config.items() if k != "gatehouse"}
    telemetry = out.get("telemetry")
    if isinstance(telemetry, dict) and isinstance(telemetry.get("forward_to"), list):
        kept = [d for d in telemetry["forward_to"] if not (isinstance(d, dict) and "gatehouse" in d)]
        out["telemetry"] = {**telemetry, "forward_to": kept}
    return out


def pushed_telemetry_env(public_url: str) -> dict[str, str]:
    """What SPEC TEL-6 adds to every served policy's ``env`` for the fixture's telemetry block."""
    return {
        "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "otlp",
        # Neither destination opts in to traces.
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_ENDPOINT": public_url.rstrip("/"),
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_RESOURCE_ATTRIBUTES": ",".join(f"{k}={v}" for k, v in RESOURCE_ATTRIBUTES.items()),
    }


def upstream_names(clouds: CloudUrls | None) -> list[str]:
    return [PRIMARY, SECONDARY] + ([BEDROCK, ROLE_UPSTREAM, VERTEX] if clouds is not None else [])


def render_config(
    *,
    port: int,
    fake_url: str,
    idp_url: str,
    gatehouse_section: bool = True,
    clouds: CloudUrls | None = None,
    collector: dict[str, str] | None = None,
    grpc_collector: dict[str, str] | None = None,
) -> str:
    """The fixture gateway.yaml; secrets are ``${VAR}`` references into gateway.env.

    ``collector`` maps each of :data:`COLLECTOR_SINKS` to its listener's URL; without
    it the config has no ``telemetry`` section. ``grpc_collector`` maps each of
    :data:`GRPC_SINKS` to its URL; it is used only with the ``gatehouse:`` section.
    """
    grpc_sinks = grpc_collector if gatehouse_section and collector is not None else None
    env = ENV_NAMES
    public_url = f"http://{HOST}:{port}"
    text = f"""\
# Written by `python -m protocol_spec.conformance fixtures`; the suite's run reads the
# matching gateway.fixtures.json. Secrets come from gateway.env.
listen:
  host: {HOST}
  port: {port}
  public_url: {public_url}
oidc:
  issuer: {idp_url}
  client_id: conformance-gateway
  client_secret: ${{{env["oidc_client_secret"]}}}
  allowed_email_domains: {_yaml_list(ALLOWED_EMAIL_DOMAINS)}
session:
  jwt_secret: ${{{env["jwt_secret"]}}}
  ttl_hours: 1
store:
  postgres_url: ${{{env["postgres_url"]}}}
upstreams:
  - provider: anthropic
    name: {PRIMARY}
    base_url: {fake_url}
    auth:
      api_key: ${{{env["primary_key"]}}}
  - provider: anthropic
    name: {SECONDARY}
    base_url: {fake_url}
    auth:
      api_key: ${{{env["secondary_key"]}}}
    headers:
      {SECONDARY_HEADER[0]}: {SECONDARY_HEADER[1]}
    forward_user_identity: true
{_cloud_upstreams(clouds) if clouds is not None else ""}models:
{_models(clouds)}managed:
  policies:
    - match: {{groups: [contractors]}}
      cli: {_settings_yaml(CONTRACTOR_SETTINGS)}
    - match: {{}}
      cli: {_settings_yaml(BASE_SETTINGS)}
admin:
  write_keys:
    - {{id: {ADMIN_WRITE_KEY_ID}, key: "${{{env["admin_write_key"]}}}"}}
  read_keys:
    - {{id: {ADMIN_READ_KEY_ID}, key: "${{{env["admin_read_key"]}}}"}}
  admin_groups: [{ADMIN_GROUP}]
  blocked_message: {_q(BLOCKED_MESSAGE)}
access_control:
  deny_cidrs: [{DENIED_CIDR}]
limits:
  max_url_length: {MAX_URL_LENGTH}
  max_request_header_bytes: {MAX_REQUEST_HEADER_BYTES}
timeouts:
  upstream_ttfb_ms: {UPSTREAM_TTFB_MS}
rate_limits:
  device_authorization: {{max: {RATE_LIMIT_MAX}, window_seconds: 600}}
  device_verify: {{max: {RATE_LIMIT_MAX}, window_seconds: 600}}
"""
    if collector is not None:
        text += _telemetry(collector_destinations(collector), grpc_sinks[GRPC_SINK] if grpc_sinks else None)
    if gatehouse_section:
        # Health memory off: the failover checks make the same upstream fail many times in a
        # row on purpose, and the protocol's failover rules (MSG-28 to MSG-31) assume every
        # request tries every upstream, as Anthropic's gateway does (SPEC MSG-45, §27.1).
        text += f"""\
# Gatehouse's own settings; other gateways delete this section and any forward_to entry with a gatehouse: key.
gatehouse:
  signin:
    login_notice: {_q(LOGIN_NOTICE)}
  upstream:
    ping_interval_seconds: {GATEHOUSE_PING_INTERVAL_S:g}
    health:
      enabled: false
"""
        text += _gatehouse_telemetry(grpc_sinks)
    return text


def render_env(
    values: dict[str, str], postgres_url: str | None, clouds: CloudUrls | None = None, spans: bool = False
) -> dict[str, str]:
    env = {ENV_NAMES[name]: value for name, value in values.items()}
    if postgres_url:
        env[ENV_NAMES["postgres_url"]] = postgres_url
    # The IdP and the fake upstream are on loopback (SPEC NET-6).
    env["CLAUDE_GATEWAY_ALLOW_LOOPBACK"] = "1"
    if clouds is not None and clouds.sts_url:
        # AWS SDKs take a service's endpoint from this variable: AssumeRole goes to the fake STS.
        env["AWS_ENDPOINT_URL_STS"] = clouds.sts_url
    if spans:
        env["OTEL_BSP_SCHEDULE_DELAY"] = str(SPAN_BATCH_DELAY_MS)
    return env


def front_door_env(front_url: str, ca_path: str) -> dict[str, str]:
    """What a gateway that cannot be pointed at the fake token endpoint or STS needs to reach them.

    Such a gateway (Anthropic's) always posts Google token grants to
    ``https://oauth2.googleapis.com/token`` and calls AssumeRole at
    ``https://sts.us-east-1.amazonaws.com``; the front door answers for those
    names on loopback with a certificate from a throwaway CA
    (protocol_spec/fakes/front_door.py). Every other fake is plain http on
    loopback, which none of these touch. Not in gateway.env itself: a gateway
    that honours ``token_uri`` and ``AWS_ENDPOINT_URL_STS`` needs no proxy, and
    should not be handed one.
    """
    return {"HTTPS_PROXY": front_url, "NO_PROXY": f"{HOST},localhost", "NODE_EXTRA_CA_CERTS": ca_path}


def env_file_text(env: dict[str, str], front: dict[str, str] | None = None) -> str:
    lines = ["# Environment for the gateway under test (written by the conformance fixtures)."]
    lines += [f"{name}={value}" for name, value in sorted(env.items())]
    if ENV_NAMES["postgres_url"] not in env:
        lines.append(f"# {ENV_NAMES['postgres_url']}=postgresql://user@127.0.0.1:5432/db  (set this yourself)")
    if front:
        lines.append("# A gateway that posts Google token grants to https://oauth2.googleapis.com/token whatever the key")
        lines.append("# file's token_uri says, or ignores AWS_ENDPOINT_URL_STS, also needs these (they route those hosts")
        lines.append("# to the fakes):")
        lines += [f"#   {name}={value}" for name, value in front.items()]
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def write_files(
    config_out: Path,
    *,
    port: int,
    fake_url: str,
    idp_url: str,
    postgres_url: str | None,
    values: dict[str, str],
    gatehouse_section: bool = True,
    clouds: CloudUrls | None = None,
    collector: tuple[str, dict[str, str]] | None = None,
    grpc_collector: tuple[str, dict[str, str]] | None = None,
) -> FixtureState:
    """Write gateway.yaml, gateway.env and gateway.fixtures.json; return the state.

    ``collector`` and ``grpc_collector`` are each a fake collector's control URL
    and its sinks' URLs (the gRPC one is used only with the ``gatehouse:`` section).
    """
    sinks = collector[1] if collector else None
    grpc = grpc_collector if gatehouse_section and collector else None
    config_out.write_text(
        render_config(
            port=port, fake_url=fake_url, idp_url=idp_url, gatehouse_section=gatehouse_section, clouds=clouds, collector=sinks,
            grpc_collector=grpc[1] if grpc else None,
        )
    )
    env = render_env(values, postgres_url, clouds, spans=grpc is not None)
    front = front_door_env(clouds.front_door_url, clouds.front_door_ca_path) if clouds and clouds.front_door_url else None
    env_path = env_path_for(config_out)
    env_path.write_text(env_file_text(env, front))
    os.chmod(env_path, 0o600)
    state = FixtureState(
        pid=os.getpid(),
        config_path=str(config_out.resolve()),
        env_path=str(env_path.resolve()),
        public_url=f"http://{HOST}:{port}",
        gateway_port=port,
        fake_url=fake_url,
        idp_url=idp_url,
        users=USERS,
        env=env,
        jwt_secret=values["jwt_secret"],
        primary_key=values["primary_key"],
        secondary_key=values["secondary_key"],
        admin_write_key=values["admin_write_key"],
        admin_read_key=values["admin_read_key"],
        upstreams=upstream_names(clouds),
        bedrock_url=clouds.bedrock_url if clouds else "",
        vertex_url=clouds.vertex_url if clouds else "",
        google_token_url=clouds.google_token_url if clouds else "",
        front_door_url=clouds.front_door_url if clouds else "",
        front_door_ca_path=clouds.front_door_ca_path if clouds else "",
        sts_control_url=clouds.sts_control_url if clouds else "",
        aws_access_key_id=values["aws_access_key_id"] if clouds else "",
        collector_url=collector[0] if collector else "",
        collector_sinks=collector_destinations(sinks) if sinks else {},
        collector_key=values["collector_key"] if collector else "",
        grpc_collector_url=grpc[0] if grpc else "",
        grpc_sinks=grpc[1] if grpc else {},
        stamp_identity=grpc is not None,
        prometheus=gatehouse_section,
    )
    state_file = state_path_for(config_out)
    state_file.write_bytes(msgspec.json.format(msgspec.json.encode(state)))
    os.chmod(state_file, 0o600)
    return state


async def serve(
    config_out: Path,
    *,
    gateway_port: int | None,
    postgres_url: str | None,
    quiet: bool,
    gatehouse_section: bool = True,
    cloud_upstreams: bool = True,
    telemetry: bool = True,
) -> int:
    """Run the fixtures until SIGINT/SIGTERM. Returns the exit status."""
    from protocol_spec.conformance.cloud_fixtures import CloudFakes
    from protocol_spec.fakes.otlp_collector import OtlpCollector
    from protocol_spec.fakes.otlp_grpc_collector import OtlpGrpcCollector
    from protocol_spec.fakes.upstream import FakeUpstream
    from protocol_spec.idp_process import IdpProcess

    idp = IdpProcess(list(USERS.values()))
    await asyncio.to_thread(idp.start)
    fake = FakeUpstream(HOST, 0)
    values = new_secrets()
    cloud_fakes = CloudFakes(config_out, values["aws_access_key_id"], values["aws_secret_access_key"]) if cloud_upstreams else None
    collector = OtlpCollector(COLLECTOR_SINKS, HOST) if telemetry else None
    grpc_collector = OtlpGrpcCollector(GRPC_SINKS, HOST) if telemetry and gatehouse_section else None
    state_file = state_path_for(config_out)
    try:
        await fake.start()
        clouds = await cloud_fakes.start() if cloud_fakes is not None else None
        if collector is not None:
            await collector.start()
        if grpc_collector is not None:
            await grpc_collector.start()
        sinks = (collector.control_url, {name: collector.url(name) for name in COLLECTOR_SINKS}) if collector else None
        grpc_sinks = (grpc_collector.control_url, {n: grpc_collector.url(n) for n in GRPC_SINKS}) if grpc_collector else None
        state = write_files(
            config_out,
            port=gateway_port or free_port(),
            fake_url=fake.url,
            idp_url=idp.issuer,
            postgres_url=postgres_url,
            values=values,
            gatehouse_section=gatehouse_section,
            clouds=clouds,
            collector=sinks,
            grpc_collector=grpc_sinks,
        )
        if not quiet:
            print(config_out.read_text(), flush=True)
            print(Path(state.env_path).read_text(), flush=True)
        clouds_line = "" if clouds is None else f"fake Bedrock {clouds.bedrock_url}\nfake Vertex {clouds.vertex_url}\n"
        if collector is not None:
            clouds_line += f"fake OTLP collector {collector.control_url} (control)\n"
        if grpc_collector is not None:
            clouds_line += f"fake OTLP/gRPC collector {grpc_collector.control_url} (control)\n"
        print(
            f"fake upstream {fake.url}\n{clouds_line}test IdP {idp.issuer}\nconfig {state.config_path}\n"
            f"env {state.env_path}\nstate {state_file.resolve()}\n"
            f"start the gateway on {state.public_url}, then: python -m protocol_spec.conformance run "
            f"--base-url {state.public_url} --fixtures {state_file} --signin device "
            f"--admin-key \"${ENV_NAMES['admin_write_key']}\" (add --profile protocol for a gateway other than Gatehouse)"
            "\nfixtures ready",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        return 0
    finally:
        state_file.unlink(missing_ok=True)
        await fake.close()
        if collector is not None:
            await collector.close()
        if grpc_collector is not None:
            await grpc_collector.close()
        if cloud_fakes is not None:
            await cloud_fakes.close()
        await asyncio.to_thread(idp.stop)
