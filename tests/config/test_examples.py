"""Every example config loads, so the examples cannot rot.

conf/examples/cag/ holds files in the Claude apps gateway's own format; they
must load unchanged (features Gatehouse lacks may show up in unsupported()).
conf/examples/*.yaml are files Gatehouse serves today, so nothing in them may
be unsupported.
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest
import yaml

from gateway.auth.tokens import Principal
from gateway.config.load import load, loads, unsupported
from gateway.config.schema import Gatehouse
from gateway.policy.policies import Policies, client_defaults
from gateway.upstreams.routing import Routes
from tests.client_certs import client_cert

EXAMPLES = Path(__file__).resolve().parents[2] / "conf" / "examples"
CAG = sorted((EXAMPLES / "cag").glob("*.yaml"))
SERVED = sorted(EXAMPLES.glob("*.yaml"))

_ENTRA = client_cert("RSA")
# Every variable an example may reference, with a value of the right shape.
EXAMPLE_ENV = {
    # conf/examples/cag/*.yaml
    "PORT": "8080",
    "OIDC_CLIENT_ID": "claude-gateway",
    "OIDC_CLIENT_SECRET": "example-oidc-client-secret",
    "GATEWAY_JWT_SECRET": "example-session-secret-0123456789abcdef",
    "GATEWAY_JWT_SECRET_PREVIOUS": "example-previous-secret-0123456789abcdef",
    "GATEWAY_POSTGRES_URL": "postgres://gateway@127.0.0.1:5432/gateway",
    "GATEWAY_DB_PASSWORD": "example-db-password",
    "GATEWAY_ADMIN_WRITE_KEY": "example-admin-write-key-0123456789abcdef",
    "GATEWAY_ADMIN_READ_KEY": "example-admin-read-key-0123456789abcdef",
    "ANTHROPIC_API_KEY": "sk-ant-example",
    "ANTHROPIC_OAUTH_TOKEN": "sk-ant-oat-example",
    "ANTHROPIC_AWS_API_KEY": "example-aws-platform-key",
    "OTLP_TOKEN": "example-otlp-token",
    # The key and certificate are checked against each other at boot: a real pair.
    "ENTRA_PRIVATE_KEY_PEM": _ENTRA.key_pem,
    "ENTRA_CERTIFICATE_PEM": _ENTRA.cert_pem,
    # A service account key file of the right shape (its key is a placeholder).
    "GOOGLE_GROUPS_KEY_FILE": str(Path(__file__).resolve().parent / "google-workspace-reader.json"),
    # conf/examples/*.yaml
    "GATEHOUSE_PORT": "8443",
    "GATEHOUSE_OIDC_CLIENT_SECRET": "example-oidc-client-secret",
    "GATEHOUSE_JWT_SECRET": "example-session-secret-0123456789abcdef",
    "GATEHOUSE_JWT_SECRET_PREVIOUS": "example-previous-secret-0123456789abcdef",
    "GATEHOUSE_POSTGRES_URL": "postgresql://gatehouse@127.0.0.1:5432/gatehouse",
    "GATEHOUSE_DB_PASSWORD": "example-db-password",
    "GATEHOUSE_PROXY_TOKEN": "example-proxy-token",
    # conf/examples/dev.yaml (exported by `make dev`)
    "GATEHOUSE_DEV_PORT": "18080",
    "GATEHOUSE_DEV_ADMIN_KEY": "dev-admin-0123456789abcdef0123456789abcdef",
    "GATEHOUSE_DEV_OIDC_ISSUER": "http://127.0.0.1:18100",
    "GATEHOUSE_DEV_OIDC_CLIENT_SECRET": "dev-client-secret",
    "GATEHOUSE_DEV_JWT_SECRET": "dev-session-secret-0123456789abcdef0123",
    "GATEHOUSE_DEV_POSTGRES_URL": "postgresql://postgres@127.0.0.1:15432/postgres",
    "GATEHOUSE_DEV_UPSTREAM_URL": "http://127.0.0.1:18200",
    "GATEHOUSE_DEV_UPSTREAM_API_KEY": "dev-upstream-key",
}
# Examples that talk to 127.0.0.1 and so need the development switch.
NEEDS_LOOPBACK = {"cag/minimal-loopback.yaml", "dev.yaml"}
LOOPBACK = {"CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1"}


def _name(path: Path) -> str:
    return str(path.relative_to(EXAMPLES))


def _env(path: Path) -> dict[str, str]:
    return {**EXAMPLE_ENV, **LOOPBACK} if _name(path) in NEEDS_LOOPBACK else EXAMPLE_ENV


def test_examples_exist() -> None:
    assert len(CAG) >= 4
    assert {"minimal.yaml", "gatehouse-tuned.yaml", "dev.yaml"} <= {p.name for p in SERVED}


@pytest.mark.parametrize("path", CAG + SERVED, ids=_name)
def test_secrets_come_from_the_environment(path: Path) -> None:
    text = path.read_text()
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    assert names, "every example takes at least one secret from ${VAR}"
    assert names <= set(EXAMPLE_ENV), names - set(EXAMPLE_ENV)


@pytest.mark.parametrize("path", CAG, ids=_name)
def test_claude_apps_gateway_examples_load(path: Path) -> None:
    cfg = load(str(path), _env(path))
    assert cfg.path == str(path)


@pytest.mark.parametrize("path", SERVED, ids=_name)
def test_served_examples_load_with_nothing_unsupported(path: Path) -> None:
    cfg = load(str(path), _env(path))
    assert unsupported(cfg) == []


@pytest.mark.parametrize("path", CAG + SERVED, ids=_name)
def test_examples_check_as_templates_without_their_environment(path: Path) -> None:
    """What `gatehouse check-config --no-env` does: no variable is needed, nothing is left unchecked but them."""
    switches = LOOPBACK if _name(path) in NEEDS_LOOPBACK else {}
    cfg = load(str(path), switches, expand=False)
    left = {name for _, written in cfg.unresolved for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", written)}
    assert left == set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", path.read_text()))


@pytest.mark.parametrize("path", SERVED, ids=_name)
def test_served_examples_boot_without_policy_or_text_warnings(path: Path) -> None:
    cfg = load(str(path), _env(path))
    catalog = tuple(e.id for e in Routes(cfg.upstreams, cfg.models, cfg.auto_include_builtin_models).catalog)
    assert cfg.load_warnings == ()
    assert Policies(cfg, catalog).warnings == []


def test_dev_example_serves_the_clients_default_models_and_keeps_its_blocked_message() -> None:
    """`make dev` then `claude -p "say hi"` with no --model works for a non-contractor."""
    path = EXAMPLES / "dev.yaml"
    cfg = load(str(path), _env(path))
    catalog = tuple(e.id for e in Routes(cfg.upstreams, cfg.models, cfg.auto_include_builtin_models).catalog)
    alice = Principal(sub="alice", email="alice@example.com", name=None, groups=("eng",), sid=None, exp=0)
    access = Policies(cfg, catalog).access_for(alice)
    assert [d.id for d in client_defaults() if not access.allows(d.id)] == []
    assert cfg.admin is not None and cfg.admin.blocked_message == "ask in #dev-tools for more"


def test_gatehouse_section_is_the_only_difference() -> None:
    """Without `gatehouse:` the tuned example is a plain gateway.yaml with the same settings."""
    path = EXAMPLES / "gatehouse-tuned.yaml"
    tuned = load(str(path), EXAMPLE_ENV)
    data = yaml.safe_load(path.read_text())
    del data["gatehouse"]
    plain = loads(yaml.safe_dump(data, sort_keys=False), EXAMPLE_ENV)
    assert tuned.gatehouse != plain.gatehouse == Gatehouse()
    same = ("path", "sha256", "gatehouse")
    assert msgspec.structs.replace(tuned, **{k: getattr(plain, k) for k in same}) == plain


def test_the_load_test_example_is_served() -> None:
    """load_test_mode is built (tests/http/test_load_test_mode.py serves this very file)."""
    path = EXAMPLES / "cag" / "load-test.yaml"
    cfg = load(str(path), _env(path))
    assert unsupported(cfg) == []
    assert cfg.load_test_mode is not None and cfg.load_test_mode.enabled
