"""oidc.google_groups at boot: the key file must be a service account's and the admin an
address, or the boot stops naming the dotted path (a broken key would refuse every sign-in)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.load import ConfigError, loads, unsupported
from protocol_spec.fakes.google import ServiceAccount

ENV = {"OIDC_SECRET": "oidc-client-secret-value", "JWT": "j" * 40, "CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1"}
BASE: dict[str, Any] = {
    "listen": {"host": "127.0.0.1", "port": 18080},
    "oidc": {"issuer": "https://accounts.google.com", "client_id": "gw", "client_secret": "${OIDC_SECRET}"},
    "session": {"jwt_secret": "${JWT}"},
    "store": {"postgres_url": "postgres://gw@127.0.0.1:5432/gw"},
    "upstreams": [{"provider": "anthropic", "auth": {"api_key": "k"}}],
}
KEY = "oidc.google_groups.service_account_json_path"


@pytest.fixture(scope="module")
def account() -> ServiceAccount:
    return ServiceAccount.generate("reader@proj.iam.gserviceaccount.com")


def key_file(tmp_path: Path, account: ServiceAccount, **changes: Any) -> Path:
    info: Any = account.key_file_info("https://oauth2.googleapis.com/token")
    info.update(changes)
    info = {k: v for k, v in info.items() if v is not None}
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(info))
    return path


def text(path: Path | str, admin: str = "admin@example.com", **oidc: Any) -> str:
    data = copy.deepcopy(BASE)
    data["oidc"].update(google_groups={"service_account_json_path": str(path), "admin_email": admin}, **oidc)
    return yaml.safe_dump(data)


def issues(doc: str, env: dict[str, str] = ENV) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as err:
        loads(doc, env)
    return err.value.issues


def test_a_service_account_key_loads_and_nothing_is_unsupported(tmp_path, account):
    cfg = loads(text(key_file(tmp_path, account)), ENV)
    assert cfg.oidc is not None and cfg.oidc.google_groups is not None
    assert unsupported(cfg) == []
    # A loopback token endpoint (the fakes) is fine under the development switch only.
    fake = key_file(tmp_path, account, token_uri="http://127.0.0.1:9/token")
    loads(text(fake), ENV)
    [(path, message)] = issues(text(fake), {k: v for k, v in ENV.items() if "LOOPBACK" not in k})
    assert path == KEY and "token_uri" in message and "CLAUDE_GATEWAY_ALLOW_LOOPBACK" in message


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"type": "authorized_user"}, "must be a service account key file"),
        ({"type": None}, "must be a service account key file"),
        ({"client_email": None}, "no client_email"),
        ({"private_key": ""}, "no private_key"),
        ({"private_key": "not a key"}, "not a PEM private key"),
        ({"token_uri": None}, "no token_uri"),
        ({"token_uri": "http://169.254.169.254/token"}, "token_uri"),
    ],
)
def test_a_key_file_that_is_no_service_account_key_stops_the_boot(tmp_path, account, changes, says):
    [(path, message)] = issues(text(key_file(tmp_path, account, **changes)))
    assert path == KEY and says in message
    assert "BEGIN PRIVATE KEY" not in message


def test_a_missing_or_unreadable_key_file_stops_the_boot(tmp_path):
    [(path, message)] = issues(text(tmp_path / "nowhere.json"))
    assert (path, message) == (KEY, "cannot read the key file: No such file or directory")
    garbage = tmp_path / "garbage.json"
    garbage.write_text("-----BEGIN PRIVATE KEY-----")
    [(path, message)] = issues(text(garbage))
    assert path == KEY and "not JSON" in message


@pytest.mark.parametrize("admin", ["admin", "admin@", "@example.com", "a b@example.com", "admin@localhost"])
def test_admin_email_must_be_an_address(tmp_path, account, admin):
    assert [p for p, _ in issues(text(key_file(tmp_path, account), admin))] == ["oidc.google_groups.admin_email"]


def test_groups_are_looked_up_by_email_so_the_email_scope_is_needed(tmp_path, account):
    [(path, message)] = issues(text(key_file(tmp_path, account), scopes=["openid", "profile"]))
    assert path == "oidc.scopes" and "email" in message


def test_a_template_checked_without_its_environment_leaves_the_key_file_for_later():
    """`gatehouse check-config --no-env`: a ${VAR} key path is not read."""
    cfg = loads(text("${GOOGLE_GROUPS_KEY_FILE}"), {}, expand=False)
    assert dict(cfg.unresolved)[KEY] == "${GOOGLE_GROUPS_KEY_FILE}"
