"""The suite's fixtures: a fake Anthropic upstream, a test IdP, and a gateway.yaml that uses them.

``python -m protocol_spec.conformance fixtures --config-out gateway.yaml``
starts, on loopback:

* the fake Anthropic API (:class:`protocol_spec.fakes.FakeUpstream`, no
  artificial delays), which the ``run`` command scripts and inspects through
  its ``/_fake/*`` control endpoints;
* oidc-provider-mock (:class:`protocol_spec.idp_process.IdpProcess`) with the
  users of :data:`USERS`;

then writes three files side by side and stays up until interrupted:

* ``gateway.yaml``: a complete configuration in the shared ``gateway.yaml``
  schema (two upstreams on the fake, a custom model, managed policies, an
  ``admin`` block, limits), valid for Anthropic's gateway as well, plus a
  ``gatehouse:`` section that other gateways may delete (or leave out with
  ``--no-gatehouse-section``);
* ``gateway.env``: the environment the gateway needs (secrets, the database
  URL, ``CLAUDE_GATEWAY_ALLOW_LOOPBACK=1``), as ``NAME=value`` lines;
* ``gateway.fixtures.json``: the state ``run`` reads (:class:`FixtureState`):
  where the fake and the IdP listen, the users, the secrets, and what the
  configuration promises (so checks know what to expect).

Nothing here knows about any particular gateway implementation.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
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

# Models the recorded transcripts and the checks use; the base policy allows them all.
BASE_MODELS = ("claude-opus-5-5", "claude-opus-4-7", "claude-sonnet-4-6", "claude-haiku-4-5", CUSTOM_MODEL)
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
    "env": {"CONFORMANCE_ROLE": "contractor"},
}
# What SPEC MANAGED-20 makes of the contractor policy merged onto the base
# (deny lists are united; their order is not specified, so checks compare sets).
CONTRACTOR_MERGED: dict[str, Any] = {
    "availableModels": ["claude-haiku-4-5"],
    "model": "claude-haiku-4-5",
    "permissions": {"allow": ["Read"], "deny": ["WebFetch", "Bash"]},
    "env": {"CONFORMANCE_POLICY": "base", "CONFORMANCE_TEXT": "ünïcødé ✓ \"q\"", "CONFORMANCE_ROLE": "contractor"},
}

ENV_NAMES = {
    "jwt_secret": "CONFORMANCE_JWT_SECRET",
    "oidc_client_secret": "CONFORMANCE_OIDC_CLIENT_SECRET",
    "primary_key": "CONFORMANCE_PRIMARY_API_KEY",
    "secondary_key": "CONFORMANCE_SECONDARY_API_KEY",
    "admin_write_key": "CONFORMANCE_ADMIN_WRITE_KEY",
    "admin_read_key": "CONFORMANCE_ADMIN_READ_KEY",
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
    return {name: secrets.token_urlsafe(32) for name in ENV_NAMES if name != "postgres_url"}


def _yaml_list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return msgspec.json.encode(text).decode()


def _settings_yaml(settings: dict[str, Any]) -> str:
    # Flow-style JSON is valid YAML and keeps the documents exact.
    return msgspec.json.encode(settings).decode()


def render_config(*, port: int, fake_url: str, idp_url: str, gatehouse_section: bool = True) -> str:
    """The fixture gateway.yaml; secrets are ``${VAR}`` references into gateway.env."""
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
models:
  - id: {CUSTOM_MODEL}
    label: {_q(CUSTOM_LABEL)}
    description: {_q(CUSTOM_DESCRIPTION)}
    upstream_model:
      {PRIMARY}: {CUSTOM_UPSTREAM_MODEL}
managed:
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
    if gatehouse_section:
        text += f"""\
# Gatehouse's own settings; other gateways delete this section.
gatehouse:
  signin:
    login_notice: {_q(LOGIN_NOTICE)}
"""
    return text


def render_env(values: dict[str, str], postgres_url: str | None) -> dict[str, str]:
    env = {ENV_NAMES[name]: value for name, value in values.items()}
    if postgres_url:
        env[ENV_NAMES["postgres_url"]] = postgres_url
    # The IdP and the fake upstream are on loopback (SPEC NET-6).
    env["CLAUDE_GATEWAY_ALLOW_LOOPBACK"] = "1"
    return env


def env_file_text(env: dict[str, str]) -> str:
    lines = ["# Environment for the gateway under test (written by the conformance fixtures)."]
    lines += [f"{name}={value}" for name, value in sorted(env.items())]
    if ENV_NAMES["postgres_url"] not in env:
        lines.append(f"# {ENV_NAMES['postgres_url']}=postgresql://user@127.0.0.1:5432/db  (set this yourself)")
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
) -> FixtureState:
    """Write gateway.yaml, gateway.env and gateway.fixtures.json; return the state."""
    config_out.write_text(render_config(port=port, fake_url=fake_url, idp_url=idp_url, gatehouse_section=gatehouse_section))
    env = render_env(values, postgres_url)
    env_path = env_path_for(config_out)
    env_path.write_text(env_file_text(env))
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
    )
    state_file = state_path_for(config_out)
    state_file.write_bytes(msgspec.json.format(msgspec.json.encode(state)))
    os.chmod(state_file, 0o600)
    return state


async def serve(
    config_out: Path, *, gateway_port: int | None, postgres_url: str | None, quiet: bool, gatehouse_section: bool = True
) -> int:
    """Run the fixtures until SIGINT/SIGTERM. Returns the exit status."""
    from protocol_spec.fakes.upstream import FakeUpstream
    from protocol_spec.idp_process import IdpProcess

    idp = IdpProcess(list(USERS.values()))
    await asyncio.to_thread(idp.start)
    fake = FakeUpstream(HOST, 0)
    state_file = state_path_for(config_out)
    try:
        await fake.start()
        state = write_files(
            config_out,
            port=gateway_port or free_port(),
            fake_url=fake.url,
            idp_url=idp.issuer,
            postgres_url=postgres_url,
            values=new_secrets(),
            gatehouse_section=gatehouse_section,
        )
        if not quiet:
            print(config_out.read_text(), flush=True)
            print(Path(state.env_path).read_text(), flush=True)
        print(
            f"fake upstream {fake.url}\ntest IdP {idp.issuer}\nconfig {state.config_path}\n"
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
        await asyncio.to_thread(idp.stop)
