"""gateway.yaml loading: shape, rules, expansion, defaults, unsupported(), redacted().

Most cases start from one valid base document, change one thing, and expect an
issue at an exact dotted path (the rows mirror the other gateway's observed boot
refusals, in our own words).
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from gateway.config import load as config
from gateway.config.load import ConfigError, is_forbidden_address, load, loads, redacted, unsupported

SECRETS = {
    "JWT": "j" * 40,
    "JWT_OLD": "o" * 40,
    "OIDC_SECRET": "oidc-client-secret-value",
    "PG_URL": "postgres://gw:pg-pass-word@127.0.0.1:5432/gw",
    "API_KEY": "sk-ant-upstream-key-value",
    "ADMIN_W": "w" * 32 + "-write",
    "ADMIN_R": "r" * 32 + "-read",
    "PORT": "18080",
}
ENV = {**SECRETS, "CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1"}

BASE: dict[str, Any] = {
    "listen": {"host": "127.0.0.1", "port": 18080},
    "oidc": {"issuer": "http://127.0.0.1:18100", "client_id": "gw", "client_secret": "${OIDC_SECRET}"},
    "session": {"jwt_secret": "${JWT}"},
    "store": {"postgres_url": "${PG_URL}"},
    "upstreams": [{"provider": "anthropic", "base_url": "http://127.0.0.1:18200", "auth": {"api_key": "${API_KEY}"}}],
}

BEDROCK = {"provider": "bedrock", "region": "us-east-1", "auth": {}}
MANTLE = {"provider": "mantle", "region": "us-east-1", "auth": {}}
ADMIN = {"write_keys": [{"id": "a", "key": "${ADMIN_W}"}]}


def doc(change: Callable[[dict[str, Any]], Any] | None = None) -> str:
    data = copy.deepcopy(BASE)
    if change is not None:
        change(data)
    return yaml.safe_dump(data, sort_keys=False)


def issues_of(text: str, environ: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as err:
        loads(text, ENV if environ is None else environ)
    return err.value.issues


def paths_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    return [p for p, _ in issues_of(text, environ)]


def up(i: int = 0) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda d: d["upstreams"][i]


def put(d: dict[str, Any], **kw: Any) -> dict[str, Any]:
    d.update(kw)
    return d


# (case id, change to BASE, dotted path expected among the issues)
BAD: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    # -- required sections and unknown keys at every level
    ("missing_listen", lambda d: d.pop("listen"), "listen"),
    ("missing_session", lambda d: d.pop("session"), "session"),
    ("missing_store", lambda d: d.pop("store"), "store"),
    ("missing_upstreams", lambda d: d.pop("upstreams"), "upstreams"),
    ("missing_oidc", lambda d: d.pop("oidc"), "oidc"),
    ("missing_oidc_cri_off", lambda d: (d.pop("oidc"), put(d, cri={"enabled": False})), "oidc"),
    ("empty_upstreams", lambda d: put(d, upstreams=[]), "upstreams"),
    ("unknown_top_key", lambda d: put(d, bogus=1), "bogus"),
    ("unknown_listen_key", lambda d: d["listen"].update(bogus=1), "listen.bogus"),
    ("unknown_session_key", lambda d: d["session"].update(bogus=1), "session.bogus"),
    ("unknown_store_key", lambda d: d["store"].update(bogus=1), "store.bogus"),
    ("unknown_timeouts_key", lambda d: put(d, timeouts={"bogus": 1}), "timeouts.bogus"),
    ("unknown_admin_key", lambda d: put(d, admin={"bogus": 1}), "admin.bogus"),
    ("unknown_cri_key", lambda d: put(d, cri={"bogus": 1}), "cri.bogus"),
    ("unknown_ltm_key", lambda d: put(d, load_test_mode={"enabled": True, "bogus": 1}), "load_test_mode.bogus"),
    ("unknown_gatehouse_key", lambda d: put(d, gatehouse={"bogus": 1}), "gatehouse.bogus"),
    ("unknown_auth_key", lambda d: up()(d)["auth"].update(bogus="x"), "upstreams[0].auth.bogus"),
    ("unknown_nested_key", lambda d: put(d, rate_limits={"device_verify": {"max": 1, "x": 2}}), "rate_limits.device_verify.x"),
    # -- listen
    ("port_big", lambda d: d["listen"].update(port=70000), "listen.port"),
    ("port_negative", lambda d: d["listen"].update(port=-1), "listen.port"),
    ("port_string", lambda d: d["listen"].update(port="abc"), "listen.port"),
    ("port_bool", lambda d: d["listen"].update(port=True), "listen.port"),
    ("host_public_no_url", lambda d: d["listen"].update(host="0.0.0.0"), "listen.public_url"),
    ("public_url_not_http", lambda d: d["listen"].update(public_url="ftp://x"), "listen.public_url"),
    ("tls_missing_key", lambda d: d["listen"].update(tls={"cert": "/c.pem"}), "listen.tls.key"),
    ("trusted_proxy_bad", lambda d: d["listen"].update(trusted_proxies=["10.0.0.1", "nope"]), "listen.trusted_proxies[1]"),
    # -- oidc
    ("oidc_no_client_id", lambda d: d["oidc"].pop("client_id"), "oidc.client_id"),
    ("oidc_no_secret", lambda d: d["oidc"].pop("client_secret"), "oidc.client_secret"),
    ("oidc_issuer_ftp", lambda d: d["oidc"].update(issuer="ftp://127.0.0.1"), "oidc.issuer"),
    ("oidc_issuer_metadata", lambda d: d["oidc"].update(issuer="http://169.254.169.254/"), "oidc.issuer"),
    ("oidc_scopes_no_openid", lambda d: d["oidc"].update(scopes=["profile", "email"]), "oidc.scopes"),
    ("oidc_discovery_url_bad", lambda d: d["oidc"].update(discovery_url="https://idp.example.com/tenant"), "oidc.discovery_url"),
    ("extra_auth_params_state", lambda d: d["oidc"].update(extra_auth_params={"state": "x"}), "oidc.extra_auth_params.state"),
    ("extra_auth_params_pkce", lambda d: d["oidc"].update(extra_auth_params={"code_challenge_method": "plain"}),
     "oidc.extra_auth_params.code_challenge_method"),
    ("oidc_tep_bad", lambda d: d["oidc"].update(token_endpoint_auth_method="none"), "oidc.token_endpoint_auth_method"),
    ("oidc_pkjwt_with_secret", lambda d: d["oidc"].update(token_endpoint_auth_method="private_key_jwt"), "oidc.client_secret"),
    ("oidc_pkjwt_no_assertion", lambda d: d["oidc"].update(token_endpoint_auth_method="private_key_jwt"), "oidc.client_assertion"),
    ("oidc_assertion_without_pkjwt",
     lambda d: d["oidc"].update(client_assertion={"private_key_pem": "k", "certificate_pem": "c"}), "oidc.client_assertion"),
    ("oidc_empty_domain", lambda d: d["oidc"].update(allowed_email_domains=[""]), "oidc.allowed_email_domains[0]"),
    ("oidc_clock_skew_negative", lambda d: d["oidc"].update(clock_skew_seconds=-1), "oidc.clock_skew_seconds"),
    # -- session / store
    ("short_jwt", lambda d: d["session"].update(jwt_secret="short"), "session.jwt_secret"),
    ("short_jwt_in_list", lambda d: d["session"].update(jwt_secret=["${JWT}", "short"]), "session.jwt_secret[1]"),
    ("empty_jwt_list", lambda d: d["session"].update(jwt_secret=[]), "session.jwt_secret"),
    ("ttl_negative", lambda d: d["session"].update(ttl_hours=-1), "session.ttl_hours"),
    ("pg_scheme", lambda d: d["store"].update(postgres_url="mysql://db/x"), "store.postgres_url"),
    ("pg_timeout_low", lambda d: d["store"].update(connect_timeout_seconds=0), "store.connect_timeout_seconds"),
    ("pg_timeout_high", lambda d: d["store"].update(connect_timeout_seconds=61), "store.connect_timeout_seconds"),
    ("pg_grace_high", lambda d: d["store"].update(readiness_grace_seconds=3601), "store.readiness_grace_seconds"),
    ("pg_pool_zero", lambda d: d["store"].update(max_connections=0), "store.max_connections"),
    # -- upstreams: common
    ("unknown_provider", lambda d: up()(d).update(provider="openai"), "upstreams[0].provider"),
    ("missing_provider", lambda d: up()(d).pop("provider"), "upstreams[0].provider"),
    ("dup_upstream_names", lambda d: d["upstreams"].append(copy.deepcopy(up()(d))), "upstreams[1].name"),
    ("empty_name", lambda d: up()(d).update(name=""), "upstreams[0].name"),
    ("base_url_ftp", lambda d: up()(d).update(base_url="ftp://127.0.0.1:18200"), "upstreams[0].base_url"),
    ("base_url_metadata", lambda d: up()(d).update(base_url="http://169.254.169.254"), "upstreams[0].base_url"),
    ("base_url_metadata_name", lambda d: up()(d).update(base_url="http://metadata.google.internal"), "upstreams[0].base_url"),
    ("base_url_metadata_v6", lambda d: up()(d).update(base_url="http://[fd00:ec2::254]/"), "upstreams[0].base_url"),
    ("header_reserved", lambda d: up()(d).update(headers={"Authorization": "x"}), "upstreams[0].headers.Authorization"),
    ("header_reserved_prefix", lambda d: up()(d).update(headers={"anthropic-beta": "x"}), "upstreams[0].headers.anthropic-beta"),
    ("header_amz_prefix", lambda d: up()(d).update(headers={"X-Amz-Date": "x"}), "upstreams[0].headers.X-Amz-Date"),
    ("header_number", lambda d: up()(d).update(headers={"X-Team": 42}), "upstreams[0].headers.X-Team"),
    ("header_empty", lambda d: up()(d).update(headers={"X-Team": ""}), "upstreams[0].headers.X-Team"),
    ("header_spaces", lambda d: up()(d).update(headers={"X-Team": " a"}), "upstreams[0].headers.X-Team"),
    ("header_bad_name", lambda d: up()(d).update(headers={"X Team": "a"}), 'upstreams[0].headers["X Team"]'),
    # -- upstreams: anthropic
    ("anthropic_both_auth", lambda d: up()(d)["auth"].update(oauth_token="t"), "upstreams[0].auth.oauth_token"),
    ("anthropic_empty_auth", lambda d: up()(d).update(auth={}), "upstreams[0].auth"),
    ("anthropic_no_auth", lambda d: up()(d).pop("auth"), "upstreams[0].auth"),
    ("anthropic_empty_key", lambda d: up()(d).update(auth={"api_key": ""}), "upstreams[0].auth.api_key"),
    ("anthropic_wif_partial", lambda d: up()(d).update(auth={"federation_rule_id": "r", "organization_id": "o"}),
     "upstreams[0].auth.identity_token_file"),
    ("anthropic_wif_extra_with_key", lambda d: up()(d)["auth"].update(workspace_id="w"), "upstreams[0].auth.workspace_id"),
    ("anthropic_aws_key", lambda d: up()(d)["auth"].update(aws_access_key_id="x"), "upstreams[0].auth.aws_access_key_id"),
    ("anthropic_region", lambda d: up()(d).update(region="us-east-1"), "upstreams[0].region"),
    ("fwd_identity_default_base", lambda d: (up()(d).pop("base_url"), up()(d).update(forward_user_identity=True)),
     "upstreams[0].forward_user_identity"),
    ("fwd_identity_explicit_default", lambda d: up()(d).update(base_url="https://api.anthropic.com/", forward_user_identity=True),
     "upstreams[0].forward_user_identity"),
    # -- upstreams: other providers
    ("bedrock_partial", lambda d: d["upstreams"].append({**BEDROCK, "auth": {"aws_access_key_id": "AKIA"}}), "upstreams[1].auth"),
    ("bedrock_session_only", lambda d: d["upstreams"].append({**BEDROCK, "auth": {"aws_session_token": "t"}}),
     "upstreams[1].auth.aws_session_token"),
    ("bedrock_no_region", lambda d: d["upstreams"].append({"provider": "bedrock"}), "upstreams[1].region"),
    ("bedrock_forward_identity", lambda d: d["upstreams"].append({**BEDROCK, "forward_user_identity": True}),
     "upstreams[1].forward_user_identity"),
    ("guardrail_version_number", lambda d: d["upstreams"].append({**BEDROCK, "guardrail": {"id": "g", "version": 1}}),
     "upstreams[1].guardrail.version"),
    ("guardrail_mix", lambda d: d["upstreams"].extend(
        [{**BEDROCK, "name": "b1", "guardrail": {"id": "g", "version": "1"}}, {**BEDROCK, "name": "b2"}]), "upstreams"),
    ("assume_role_bad_arn", lambda d: d["upstreams"].append({**BEDROCK, "assume_role": {"role_arn": "role/x"}}),
     "upstreams[1].assume_role.role_arn"),
    ("assume_role_session_name", lambda d: d["upstreams"].append(
        {**BEDROCK, "assume_role": {"role_arn": "arn:aws:iam::1:role/x", "session_name": "name"}}),
     "upstreams[1].assume_role.session_name"),
    ("assume_role_with_bearer", lambda d: d["upstreams"].append(
        {**BEDROCK, "auth": {"aws_bearer_token": "t"}, "assume_role": {"role_arn": "arn:aws:iam::1:role/x"}}),
     "upstreams[1].assume_role"),
    ("vertex_no_project", lambda d: d["upstreams"].append({"provider": "vertex", "region": "global"}), "upstreams[1].project_id"),
    ("anthropic_aws_region", lambda d: d["upstreams"].append(
        {"provider": "anthropicAws", "region": "US-EAST-1", "workspace_id": "w"}), "upstreams[1].region"),
    ("anthropic_aws_no_workspace", lambda d: d["upstreams"].append({"provider": "anthropicAws", "region": "us-east-1"}),
     "upstreams[1].workspace_id"),
    ("foundry_no_auth", lambda d: d["upstreams"].append({"provider": "foundry", "resource": "r"}), "upstreams[1].auth"),
    ("foundry_no_models", lambda d: d["upstreams"].append({"provider": "foundry", "resource": "r", "auth": {"api_key": "k"}}),
     "upstreams[1]"),
    ("bedrock_no_region", lambda d: d["upstreams"].append({"provider": "bedrock", "auth": {}}), "upstreams[1].region"),
    ("bedrock_half_keys", lambda d: d["upstreams"].append({**BEDROCK, "auth": {"aws_access_key_id": "AKIA"}}), "upstreams[1].auth"),
    ("bedrock_vertex_key", lambda d: d["upstreams"].append({**BEDROCK, "project_id": "p"}), "upstreams[1].project_id"),
    ("vertex_aws_key", lambda d: d["upstreams"].append(
        {"provider": "vertex", "region": "global", "project_id": "p", "auth": {"aws_bearer_token": "t"}}),
     "upstreams[1].auth.aws_bearer_token"),
    # -- models
    ("models_no_id", lambda d: put(d, models=[{"label": "M1"}]), "models[0].id"),
    ("models_no_map", lambda d: put(d, models=[{"label": "M1"}]), "models[0].upstream_model"),
    ("models_unknown_upstream_key", lambda d: put(d, models=[{"id": "m", "upstream_model": {"bedrock": "x"}}]),
     "models[0].upstream_model.bedrock"),
    ("models_dup_id", lambda d: put(d, models=[{"id": "m", "upstream_model": {"anthropic": "x"}}] * 2), "models[1].id"),
    # -- managed
    ("managed_bad_match_key", lambda d: put(d, managed={"policies": [{"match": {"team": "x"}}]}), "managed.policies[0].match.team"),
    ("managed_empty_group", lambda d: put(d, managed={"policies": [{"match": {"groups": [""]}}]}),
     "managed.policies[0].match.groups[0]"),
    ("managed_no_groups", lambda d: put(d, managed={"policies": [{"match": {"groups": []}}]}), "managed.policies[0].match.groups"),
    ("managed_domain_at", lambda d: put(d, managed={"policies": [{"match": {"email_domain": "a@b.com"}}]}),
     "managed.policies[0].match.email_domain"),
    ("managed_domain_empty", lambda d: put(d, managed={"policies": [{"match": {"email_domain": "@"}}]}),
     "managed.policies[0].match.email_domain"),
    ("managed_mcpServers", lambda d: put(d, managed={"policies": [{"match": {}, "cli": {"mcpServers": {}}}]}),
     "managed.policies[0].cli.mcpServers"),
    ("managed_mcpServers_alias", lambda d: put(d, managed={"policies": [{"match": {}, "settings": {"mcpServers": {}}}]}),
     "managed.policies[0].settings.mcpServers"),
    ("managed_cli_and_settings", lambda d: put(d, managed={"policies": [{"match": {}, "cli": {}, "settings": {}}]}),
     "managed.policies[0].settings"),
    ("managed_cli_not_mapping", lambda d: put(d, managed={"policies": [{"match": {}, "cli": [1]}]}), "managed.policies[0].cli"),
    ("managed_no_match", lambda d: put(d, managed={"policies": [{"cli": {}}]}), "managed.policies[0].match"),
    # -- telemetry
    ("resource_attribute_reserved", lambda d: put(d, telemetry={"resource_attributes": {"User.Email": "x"}}),
     'telemetry.resource_attributes["User.Email"]'),
    ("resource_attribute_bad_name", lambda d: put(d, telemetry={"resource_attributes": {"team name": "x"}}),
     'telemetry.resource_attributes["team name"]'),
    ("resource_attribute_bad_value", lambda d: put(d, telemetry={"resource_attributes": {"team": "a,b"}}),
     "telemetry.resource_attributes.team"),
    ("resource_attribute_long_value", lambda d: put(d, telemetry={"resource_attributes": {"team": "é" * 50}}),
     "telemetry.resource_attributes.team"),
    ("telemetry_http_remote", lambda d: put(d, telemetry={"forward_to": [{"url": "http://otel.example.com"}]}),
     "telemetry.forward_to[0].url"),
    ("telemetry_no_url", lambda d: put(d, telemetry={"forward_to": [{"metrics": True}]}), "telemetry.forward_to[0].url"),
    ("telemetry_bad_auth", lambda d: put(d, telemetry={"forward_to": [{"url": "https://o.example", "auth": {"aws": {}}}]}),
     "telemetry.forward_to[0].auth.aws"),
    # -- admin / enforcement / pricing
    ("admin_short_key", lambda d: put(d, admin={"write_keys": [{"id": "a", "key": "short"}]}), "admin.write_keys[0].key"),
    ("admin_dup_ids", lambda d: put(d, admin={**ADMIN, "read_keys": [{"id": "a", "key": "${ADMIN_R}"}]}), "admin.read_keys[0].id"),
    ("admin_empty_group", lambda d: put(d, admin={"admin_groups": [""]}), "admin.admin_groups[0]"),
    ("admin_group_mode_bad", lambda d: put(d, admin={"group_limit_mode": "avg"}), "admin.group_limit_mode"),
    ("admin_retention_zero", lambda d: put(d, admin={"audit_retention_days": 0}), "admin.audit_retention_days"),
    ("enforcement_no_admin", lambda d: put(d, enforcement={"fail_closed_on_error": True}), "enforcement.fail_closed_on_error"),
    ("pricing_no_admin", lambda d: put(d, pricing={"multiplier": 0.5}), "pricing"),
    ("pricing_no_admin_empty_managed", lambda d: put(d, pricing={}, managed={"policies": []}), "pricing"),
    ("pricing_mult_zero", lambda d: put(d, admin=ADMIN, pricing={"multiplier": 0}), "pricing.multiplier"),
    ("pricing_mult_high", lambda d: put(d, admin=ADMIN, pricing={"multiplier": 11}), "pricing.multiplier"),
    ("pricing_unknown_upstream", lambda d: put(d, admin=ADMIN, pricing={"overrides": [
        {"upstream": "nope", "model": "m", "input": 1, "output": 1, "cache_read": 1, "cache_write": 1}]}),
     "pricing.overrides[0].upstream"),
    ("pricing_rate_missing", lambda d: put(d, admin=ADMIN, pricing={"overrides": [
        {"upstream": "anthropic", "model": "m", "input": 1, "output": 1, "cache_read": 1}]}), "pricing.overrides[0].cache_write"),
    ("pricing_rate_zero", lambda d: put(d, admin=ADMIN, pricing={"overrides": [
        {"upstream": "anthropic", "model": "m", "input": 0, "output": 1, "cache_read": 1, "cache_write": 1}]}),
     "pricing.overrides[0].input"),
    ("pricing_rate_high", lambda d: put(d, admin=ADMIN, pricing={"overrides": [
        {"upstream": "anthropic", "model": "m", "input": 1, "output": 10001, "cache_read": 1, "cache_write": 1}]}),
     "pricing.overrides[0].output"),
    ("pricing_dup_rows", lambda d: put(d, admin=ADMIN, pricing={"overrides": [
        {"upstream": "anthropic", "model": "M", "input": 1, "output": 1, "cache_read": 1, "cache_write": 1},
        {"upstream": "anthropic", "model": "m", "input": 2, "output": 1, "cache_read": 1, "cache_write": 1}]}),
     "pricing.overrides[1]"),
    # -- HTTP tuning, load test, gatehouse
    ("access_control_bad_cidr", lambda d: put(d, access_control={"allow_cidrs": ["not-a-cidr"]}), "access_control.allow_cidrs[0]"),
    ("deny_bad_cidr", lambda d: put(d, access_control={"deny_cidrs": ["10.0.0.0/33"]}), "access_control.deny_cidrs[0]"),
    ("limits_bad", lambda d: put(d, limits={"max_request_bytes": -1}), "limits.max_request_bytes"),
    ("limits_header_zero", lambda d: put(d, limits={"max_request_header_bytes": 0}), "limits.max_request_header_bytes"),
    ("ttfb_zero", lambda d: put(d, timeouts={"upstream_ttfb_ms": 0}), "timeouts.upstream_ttfb_ms"),
    ("rate_limit_zero", lambda d: put(d, rate_limits={"device_verify": {"max": 0}}), "rate_limits.device_verify.max"),
    ("load_test_mode_bool", lambda d: put(d, load_test_mode=True), "load_test_mode"),
    ("load_test_mode_empty", lambda d: put(d, load_test_mode={}), "load_test_mode.enabled"),
    ("reply_tokens_zero", lambda d: put(d, load_test_mode={"enabled": True, "reply_tokens": 0}), "load_test_mode.reply_tokens"),
    ("reply_tokens_high", lambda d: put(d, load_test_mode={"enabled": True, "reply_tokens": 100001}),
     "load_test_mode.reply_tokens"),
    ("reply_seconds_high", lambda d: put(d, load_test_mode={"enabled": True, "reply_seconds": 601}),
     "load_test_mode.reply_seconds"),
    ("cri_not_bool", lambda d: put(d, cri={"enabled": "yes"}), "cri.enabled"),
    ("idle_timeout_low", lambda d: put(d, gatehouse={"upstream": {"idle_read_timeout_seconds": 299}}),
     "gatehouse.upstream.idle_read_timeout_seconds"),
    ("gatehouse_pool_zero", lambda d: put(d, gatehouse={"upstream": {"max_connections": 0}}), "gatehouse.upstream.max_connections"),
    ("spend_allowance_negative", lambda d: put(d, gatehouse={"spend": {"output_allowance_tokens": -1}}),
     "gatehouse.spend.output_allowance_tokens"),
    ("auto_include_not_bool", lambda d: put(d, auto_include_builtin_models="no"), "auto_include_builtin_models"),
]


def test_base_document_is_valid() -> None:
    cfg = loads(doc(), ENV)
    assert cfg.upstreams[0].auth.api_key == SECRETS["API_KEY"]


@pytest.mark.parametrize(("change", "path"), [pytest.param(c, p, id=i) for i, c, p in BAD])
def test_bad_config_names_the_path(change: Callable[[dict[str, Any]], Any], path: str) -> None:
    found = issues_of(doc(change))
    assert path in [p for p, _ in found], found
    text = str(ConfigError(found))
    assert f"{path}: " in text
    for secret in SECRETS.values():
        assert secret not in text


def test_every_issue_is_reported_in_one_pass() -> None:
    def many(d: dict[str, Any]) -> None:
        d["listen"]["bogus"] = 1
        d["store"]["typo"] = 1
        d["session"]["ttl_hours"] = "long"
        d["oidc"]["scopes"] = ["email"]
        d["upstreams"].append({"provider": "bedrock", "auth": {"aws_access_key_id": "A"}, "headers": {"host": "x"}})
        d["upstreams"].append({"provider": "anthropic", "name": "second", "auth": {"api_key": "k", "oauth_token": "t"}})
        d["models"] = [{"id": "m", "upstream_model": {"ghost": "x"}}]

    paths = paths_of(doc(many))
    assert set(paths) >= {
        "listen.bogus",
        "store.typo",
        "session.ttl_hours",
        "oidc.scopes",
        "upstreams[1].region",
        "upstreams[1].auth",
        "upstreams[1].headers.host",
        "upstreams[2].auth.oauth_token",
        "models[0].upstream_model.ghost",
    }


def test_loopback_needs_the_environment_switch() -> None:
    env = dict(SECRETS)
    assert set(paths_of(doc(), env)) == {"oidc.issuer", "upstreams[0].base_url"}



@pytest.mark.parametrize("host", ["localhost", "api.localhost", "[::1]", "127.1", "0x7f.0.0.1", "2130706433", "0.0.0.0",
                                  "[::ffff:127.0.0.1]"])
def test_loopback_spellings_are_recognised(host: str) -> None:
    text = doc(lambda d: up()(d).update(base_url=f"http://{host}:8080"))
    assert "upstreams[0].base_url" in paths_of(text, dict(SECRETS))
    loads(text, ENV)


def test_telemetry_urls() -> None:
    def dest(url: str) -> str:
        return doc(lambda d: put(d, admin=ADMIN, telemetry={"forward_to": [{"url": url}]}))

    loads(dest("https://otel.example.com"), ENV)
    loads(dest("http://localhost:4318"), SECRETS | {"CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1"})
    loads(dest("http://localhost:4318"), {**ENV, "CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1"})
    # A literal loopback IP fails without the switch; a metadata address always fails.
    with_guard = {**SECRETS}
    text = dest("http://127.0.0.1:4318").replace("http://127.0.0.1:18100", "https://idp.example.com")
    text = text.replace("http://127.0.0.1:18200", "https://proxy.example.com")
    assert paths_of(text, with_guard) == ["telemetry.forward_to[0].url"]
    assert paths_of(dest("https://169.254.169.254"), ENV) == ["telemetry.forward_to[0].url"]


def test_gatehouse_telemetry_options() -> None:
    grpc = {"url": "https://otel.example.com:4317", "gatehouse": {"protocol": "grpc"}}
    ours = {
        "stamp_identity": True,
        "queue_max_bytes": 1 << 20,
        "metrics": {
            "prometheus": {"enabled": True, "listen": "127.0.0.1:9464"},
            "otlp": {"endpoint": "https://otel.example.com:4317", "headers": {"x-tenant": "t"}},
        },
        "traces": {"otlp": {"endpoint": "https://otel.example.com:4318", "protocol": "http/protobuf"}, "sample_ratio": 0.5},
    }
    cfg = loads(doc(lambda d: put(d, telemetry={"forward_to": [grpc]}, gatehouse={"telemetry": ours})), ENV)
    assert cfg.telemetry is not None and cfg.telemetry.forward_to[0].gatehouse.protocol == "grpc"
    tel = cfg.gatehouse.telemetry
    assert tel.stamp_identity and tel.queue_max_bytes == 1 << 20 and tel.traces.sample_ratio == 0.5
    assert tel.metrics.otlp is not None and tel.metrics.otlp.protocol == "grpc"
    # Defaults: the reference's HTTP relay, 64 MiB per destination, nothing of ours exported.
    plain = loads(doc(), ENV).gatehouse.telemetry
    assert (plain.stamp_identity, plain.queue_max_bytes, plain.metrics.otlp, plain.traces.otlp) == (False, 64 << 20, None, None)
    assert not plain.metrics.prometheus.enabled

    bad = {
        "queue_max_bytes": 10,
        "metrics": {"prometheus": {"listen": "9464"}, "otlp": {"endpoint": "http://collector.example.com:4317"}},
        "traces": {"otlp": {"endpoint": "https://169.254.169.254"}, "sample_ratio": 2},
    }
    paths = paths_of(doc(lambda d: put(d, gatehouse={"telemetry": bad})), ENV)
    assert "gatehouse.telemetry.queue_max_bytes" in paths and "gatehouse.telemetry.traces.sample_ratio" in paths
    paths = paths_of(doc(lambda d: put(d, gatehouse={"telemetry": {**bad, "queue_max_bytes": 1 << 20, "traces": {"otlp": bad["traces"]["otlp"]}}})), ENV)
    assert paths == [
        "gatehouse.telemetry.metrics.otlp.endpoint",
        "gatehouse.telemetry.traces.otlp.endpoint",
        "gatehouse.telemetry.metrics.prometheus.listen",
    ]
    with_path = {**grpc, "url": "https://otel.example.com:4317/v1"}
    assert paths_of(doc(lambda d: put(d, telemetry={"forward_to": [with_path]})), ENV) == ["telemetry.forward_to[0].url"]
    wrong = {**grpc, "gatehouse": {"protocol": "thrift"}}
    assert paths_of(doc(lambda d: put(d, telemetry={"forward_to": [wrong]})), ENV) == ["telemetry.forward_to[0].gatehouse.protocol"]


def test_oidc_may_be_left_out_only_for_cri() -> None:
    cfg = loads(doc(lambda d: (d.pop("oidc"), put(d, cri={"enabled": True}))), ENV)
    assert cfg.oidc is None and cfg.cri is not None and cfg.cri.enabled


def test_private_key_jwt_with_assertion() -> None:
    from tests.client_certs import client_cert

    pair = client_cert("EC")

    def pkjwt(d: dict[str, Any]) -> None:
        d["oidc"].pop("client_secret")
        d["oidc"]["token_endpoint_auth_method"] = "private_key_jwt"
        d["oidc"]["client_assertion"] = {"private_key_pem": pair.key_pem, "certificate_pem": pair.cert_pem}

    cfg = loads(doc(pkjwt), ENV)
    assert cfg.oidc is not None and cfg.oidc.client_assertion is not None
    assert unsupported(cfg) == []  # served (tests/auth/test_client_assertion.py)


def test_yaml_problems() -> None:
    assert issues_of("listen: [\n")[0][1].startswith("line ")
    dup = doc().replace("store:", "store:\n  max_connections: 3\n  max_connections: 4", 1)
    (path, message), *_ = issues_of(dup)
    assert path == "" and "max_connections" in message and "twice" in message
    assert paths_of("") == [""]
    assert paths_of("- a\n- b\n") == [""]


def test_yaml_12_scalars() -> None:
    text = doc(lambda d: put(d, managed={"policies": [{"match": {}, "cli": {"env": {"A": "yes", "B": "on", "C": "0777"}}}]}))
    text = text.replace("'yes'", "yes").replace("'on'", "on").replace("'0777'", "0777")
    cfg = loads(text, ENV)
    assert cfg.managed is not None and cfg.managed.policies[0].cli == {"env": {"A": "yes", "B": "on", "C": 777}}


# ---------------------------------------------------------------- expansion


def test_expansion_inside_longer_strings_and_numbers() -> None:
    env = {**ENV, "HOST": "gw.example.com", "TEAM": "tools", "USE_PROXY": "true"}

    def change(d: dict[str, Any]) -> None:
        d["listen"].update(host="0.0.0.0", port="${PORT}", public_url="https://${HOST}:8443")
        up()(d)["headers"] = {"X-Team": "team-${TEAM}-${TEAM}"}
        d["oidc"]["use_proxy"] = "${USE_PROXY}"

    cfg = loads(doc(change), env)
    assert cfg.listen.port == 18080
    assert cfg.listen.public_url == "https://gw.example.com:8443"
    assert cfg.upstreams[0].headers == {"X-Team": "team-tools-tools"}
    assert cfg.oidc is not None and cfg.oidc.use_proxy is True


def test_keys_are_not_expanded() -> None:
    text = doc(lambda d: up()(d).update(headers={"X-${TEAM}": "a"}))
    assert paths_of(text) == ['upstreams[0].headers["X-${TEAM}"]']


def test_undefined_variable_names_variable_and_path() -> None:
    (path, message), *_ = issues_of(doc(lambda d: d["oidc"].update(client_secret="${NOPE_UNDEFINED}")))
    assert path == "oidc.client_secret" and "NOPE_UNDEFINED" in message


def test_bad_reference() -> None:
    (path, message), *_ = issues_of(doc(lambda d: d["oidc"].update(client_secret="${not a name}")))
    assert path == "oidc.client_secret" and "not a name" in message


def test_file_reference(tmp_path: Any) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("  file-held-secret-value\n")
    cfg = loads(doc(lambda d: d["oidc"].update(client_secret=f"${{file:{secret_file}}}")), ENV)
    assert cfg.oidc is not None and cfg.oidc.client_secret == "file-held-secret-value"

    missing = tmp_path / "nonexistent"
    (path, message), *_ = issues_of(doc(lambda d: d["oidc"].update(client_secret=f"${{file:{missing}}}")))
    assert path == "oidc.client_secret" and str(missing) in message

    (path, message), *_ = issues_of(doc(lambda d: d["oidc"].update(client_secret="${file:relative.txt}")))
    assert path == "oidc.client_secret" and "absolute" in message

    (path, message), *_ = issues_of(doc(lambda d: d["oidc"].update(client_secret=f"x${{file:{secret_file}}}")))
    assert path == "oidc.client_secret" and "entire value" in message


def test_file_contents_never_echoed(tmp_path: Any) -> None:
    secret_file = tmp_path / "short"
    secret_file.write_text("tiny-file-secret")
    found = issues_of(doc(lambda d: d["session"].update(jwt_secret=f"${{file:{secret_file}}}")))
    assert [p for p, _ in found] == ["session.jwt_secret"]
    assert "tiny-file-secret" not in str(ConfigError(found))


def test_secret_typed_wrongly_is_not_echoed() -> None:
    env = {**ENV, "NUMERIC": "12345678901234567890"}
    found = issues_of(doc(lambda d: up()(d).update(auth={"api_key": 98765432123, "oauth_token": "${NUMERIC}"})))
    text = str(ConfigError(found))
    assert "98765432123" not in text and "12345678901234567890" not in text
    found = issues_of(doc(lambda d: d["store"].update(postgres_url="mysql://u:hunter2-pass@db/x")), env)
    assert "hunter2-pass" not in str(ConfigError(found))


# ---------------------------------------------------------------- defaults and API


def test_defaults() -> None:
    cfg = loads(doc(), ENV)
    assert cfg.listen.public_url is None and cfg.listen.tls is None and cfg.listen.trusted_proxies == ()
    assert cfg.session.ttl_hours == 1 and cfg.session.secrets == (SECRETS["JWT"],)
    store = cfg.store
    assert (store.max_connections, store.connect_timeout_seconds, store.readiness_grace_seconds) == (5, 5, 0)
    assert store.username is None and store.password is None
    u = cfg.upstreams[0]
    assert (u.name, u.provider, u.headers, u.forward_user_identity) == ("anthropic", "anthropic", {}, False)
    assert cfg.auto_include_builtin_models is True and cfg.models == ()
    for section in ("managed", "telemetry", "admin", "enforcement", "pricing", "load_test_mode", "cri"):
        assert getattr(cfg, section) is None
    assert cfg.access_control.allow_cidrs == () and cfg.access_control.deny_cidrs == ()
    assert cfg.limits.max_request_bytes == 33554432
    assert cfg.limits.max_request_header_bytes is None and cfg.limits.max_url_length is None
    assert cfg.timeouts.upstream_ttfb_ms == 120000
    assert (cfg.rate_limits.device_authorization.max, cfg.rate_limits.device_authorization.window_seconds) == (30, 600)
    assert (cfg.rate_limits.device_verify.max, cfg.rate_limits.device_verify.window_seconds) == (10, 600)
    oidc = cfg.oidc
    assert oidc is not None
    assert oidc.scopes == ("openid", "profile", "email", "offline_access")
    assert (oidc.groups_claim, oidc.email_claim, oidc.use_pkce, oidc.clock_skew_seconds) == ("groups", "email", True, 0)
    assert oidc.id_token_signed_response_alg == "RS256" and oidc.token_endpoint_auth_method is None
    g = cfg.gatehouse
    assert (g.upstream.max_connections, g.upstream.connect_timeout_ms, g.upstream.idle_read_timeout_seconds) == (256, 10000, 300)
    assert (g.spend.store_timeout_ms, g.spend.output_allowance_tokens, g.spend.cut_streams_at_cap) == (2000, 4096, False)
    assert g.signin.login_notice is None


def test_section_defaults_when_present() -> None:
    cfg = loads(doc(lambda d: put(d, admin={}, load_test_mode={"enabled": False}, pricing={})), ENV)
    assert cfg.admin is not None
    assert (cfg.admin.audit_retention_days, cfg.admin.spend_retention_months, cfg.admin.identity_retention_days) == (365, 13, 90)
    assert cfg.admin.group_limit_mode == "min"
    assert cfg.load_test_mode is not None
    assert (cfg.load_test_mode.reply_tokens, cfg.load_test_mode.reply_seconds) == (750, 9.5)
    assert cfg.pricing is not None and cfg.pricing.multiplier == 1 and cfg.pricing.overrides == ()


def test_jwt_secret_list_and_settings_alias() -> None:
    def change(d: dict[str, Any]) -> None:
        d["session"]["jwt_secret"] = ["${JWT}", "${JWT_OLD}"]
        d["managed"] = {"policies": [{"match": {"groups": ["eng"]}, "settings": {"availableModels": ["m"]}}]}

    cfg = loads(doc(change), ENV)
    assert cfg.session.secrets == (SECRETS["JWT"], SECRETS["JWT_OLD"])
    assert cfg.managed is not None and cfg.managed.policies[0].cli == {"availableModels": ["m"]}


def test_config_is_frozen() -> None:
    cfg = loads(doc(), ENV)
    with pytest.raises(AttributeError):
        cfg.listen.port = 1  # type: ignore[misc]


def test_load_sets_path_and_sha256(tmp_path: Any) -> None:
    f = tmp_path / "gateway.yaml"
    f.write_text(doc())
    cfg = load(str(f), ENV)
    assert cfg.path == str(f)
    assert cfg.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    with pytest.raises(ConfigError) as err:
        load(str(tmp_path / "absent.yaml"), ENV)
    assert "absent.yaml" in str(err.value)


# ---------------------------------------------------------------- unsupported / redacted

UNSUPPORTED_CASES: list[tuple[str, Callable[[dict[str, Any]], Any], list[str]]] = [
    ("bedrock", lambda d: d["upstreams"].append(BEDROCK), []),
    ("vertex", lambda d: d["upstreams"].append({"provider": "vertex", "region": "global", "project_id": "p"}), []),
    ("anthropic_aws", lambda d: d["upstreams"].append({"provider": "anthropicAws", "region": "us-east-1", "workspace_id": "w"}), []),
    ("mantle", lambda d: d["upstreams"].append(MANTLE), ["upstreams[1]"]),
    ("wif", lambda d: up()(d).update(auth={"federation_rule_id": "r", "organization_id": "o", "identity_token_file": "/t"}),
     ["upstreams[0].auth.federation_rule_id"]),
    ("managed_desktop", lambda d: put(d, managed={"policies": [{"match": {}, "desktop": {}}]}), []),
    ("admin", lambda d: put(d, admin=ADMIN), []),
    ("enforcement", lambda d: put(d, admin=ADMIN, enforcement={"fail_closed_on_error": True}), []),
    ("enforcement_off", lambda d: put(d, enforcement={"fail_closed_on_error": False}), []),
    ("pricing", lambda d: put(d, admin=ADMIN, pricing={}), []),
    ("telemetry", lambda d: put(d, telemetry={"forward_to": [{"url": "https://o.example.com"}]}), []),
    ("telemetry_google", lambda d: put(d, telemetry={"forward_to": [{"url": "https://o.example.com", "auth": {"google": {}}}]}),
     []),
    ("telemetry_empty", lambda d: put(d, telemetry={}), []),
    ("load_test_on", lambda d: put(d, load_test_mode={"enabled": True}), []),
    ("load_test_off", lambda d: put(d, load_test_mode={"enabled": False}), []),
    ("use_proxy", lambda d: d["oidc"].update(use_proxy=True), []),
    ("cri", lambda d: put(d, cri={"enabled": True}), ["cri"]),
    ("implemented", lambda d: (
        up()(d).update(headers={"X-A": "b"}, forward_user_identity=True),
        d["listen"].update(tls={"cert": "/c", "key": "/k"}, trusted_proxies=["10.0.0.0/8"]),
        put(d, access_control={"allow_cidrs": ["10.0.0.0/8"]}, limits={"max_url_length": 100},
            timeouts={"upstream_ttfb_ms": 1}, gatehouse={"spend": {"cut_streams_at_cap": True}}),
    ), []),
]


@pytest.mark.parametrize(("change", "expected"), [pytest.param(c, e, id=i) for i, c, e in UNSUPPORTED_CASES])
def test_unsupported(change: Callable[[dict[str, Any]], Any], expected: list[str]) -> None:
    cfg = loads(doc(change), ENV)
    assert unsupported(cfg) == expected
    reasons = dict(config.unsupported_reasons(cfg))
    assert set(reasons) == set(expected) and all(reasons.values())


def test_redacted_masks_every_secret() -> None:
    def everything(d: dict[str, Any]) -> None:
        d["session"]["jwt_secret"] = ["${JWT}", "${JWT_OLD}"]
        d["store"]["password"] = "${OIDC_SECRET}x"
        d["store"]["postgres_url"] = "postgresql://gw:url-password-1@db:5432/gw?sslmode=require&password=qp-secret"
        up()(d)["headers"] = {"X-Proxy-Key": "hdr-secret-1"}
        d["upstreams"].append({**BEDROCK, "auth": {"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "aws-sec-1",
                                                    "aws_session_token": "aws-tok-1"}})
        d["upstreams"].append({"provider": "anthropic", "name": "second", "base_url": "https://p.example.com",
                               "auth": {"oauth_token": "oauth-tok-1"}})
        d["admin"] = {"write_keys": [{"id": "w", "key": "${ADMIN_W}"}], "read_keys": [{"id": "r", "key": "${ADMIN_R}"}]}
        d["telemetry"] = {"forward_to": [{"url": "https://o.example.com", "headers": {"DD-API-KEY": "dd-secret-1"}}]}
        d["managed"] = {"policies": [{"match": {}, "cli": {"env": {"TOKEN": "env-secret-1"}}}]}

    cfg = loads(doc(everything), ENV)
    out = redacted(cfg)
    text = json.dumps(out)
    leaked = [*SECRETS.values(), "url-password-1", "qp-secret", "hdr-secret-1", "AKIAEXAMPLE", "aws-sec-1", "aws-tok-1",
              "oauth-tok-1", "dd-secret-1", "env-secret-1"]
    for secret in leaked:
        if secret != SECRETS["PORT"]:
            assert secret not in text, secret
    assert out["store"]["postgres_url"].startswith("postgresql://gw:***@db:5432/gw?")
    assert out["session"]["jwt_secret"] == ["***", "***"]
    assert out["upstreams"][0]["headers"] == {"X-Proxy-Key": "***"}
    assert out["admin"]["write_keys"][0] == {"id": "w", "key": "***"}
    # Non-secret values stay readable for troubleshooting.
    assert out["upstreams"][1]["region"] == "us-east-1" and out["oidc"]["client_id"] == "gw"
    assert out["listen"]["port"] == 18080


def test_redacted_keeps_tls_key_path() -> None:
    cfg = loads(doc(lambda d: d["listen"].update(tls={"cert": "/c.pem", "key": "/k.pem"})), ENV)
    assert redacted(cfg)["listen"]["tls"] == {"cert": "/c.pem", "key": "/k.pem"}


# ---------------------------------------------------------------- address guard


@pytest.mark.parametrize(
    ("address", "allow_loopback", "forbidden"),
    [
        ("169.254.169.254", True, True),
        ("169.254.1.1", True, True),
        ("fe80::1", True, True),
        ("fd00:ec2::254", True, True),
        ("::ffff:169.254.169.254", True, True),
        ("127.0.0.1", False, True),
        ("127.0.0.1", True, False),
        ("::1", False, True),
        ("0.0.0.0", False, True),
        ("::ffff:127.0.0.1", False, True),
        ("10.1.2.3", False, False),
        ("93.184.216.34", False, False),
    ],
)
def test_is_forbidden_address(address: str, allow_loopback: bool, forbidden: bool) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address), allow_loopback) is forbidden


def test_null_sections() -> None:
    assert paths_of(doc(lambda d: put(d, oidc=None))) == ["oidc"]
    cfg = loads(doc(lambda d: put(d, admin=None, managed=None)), ENV)
    assert cfg.admin is None and cfg.managed is None


def test_unresolved_reference_is_reported_once() -> None:
    assert issues_of(doc(lambda d: d["session"].update(jwt_secret="${NOPE}")))[0][0] == "session.jwt_secret"
    assert paths_of(doc(lambda d: d["session"].update(jwt_secret="${NOPE}"))) == ["session.jwt_secret"]


def test_yaml_merge_keys() -> None:
    text = doc().replace("  auth:\n    api_key: ${API_KEY}", "  auth:\n    <<: {api_key: one}\n    api_key: ${API_KEY}")
    assert "<<" in text
    assert loads(text, ENV).upstreams[0].auth.api_key == SECRETS["API_KEY"]


def test_expanded_values_in_open_documents_are_plain_strings() -> None:
    cfg = loads(doc(lambda d: put(d, managed={"policies": [{"match": {}, "cli": {"env": {"T": "${API_KEY}"}}}]})), ENV)
    assert cfg.managed is not None
    value = cfg.managed.policies[0].cli["env"]["T"]  # type: ignore[index]
    assert value == SECRETS["API_KEY"] and type(value) is str
    assert redacted(cfg)["managed"]["policies"][0]["cli"]["env"] == {"T": "***"}


# ---------------------------------------------------------------- a template without its environment (--no-env)


def test_no_env_leaves_references_unresolved_and_checks_everything_else(tmp_path: Any) -> None:
    def change(d: dict[str, Any]) -> None:
        d["listen"].update(port="${PORT}", public_url="https://${HOST}:8443")
        d["session"]["jwt_secret"] = "${SHORT}"  # a stand-in fits min_length; the real length is unknown
        d["oidc"]["use_proxy"] = "${USE_PROXY}"
        d["store"]["password"] = f"${{file:{tmp_path / 'never-read'}}}"

    switches = {"CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1"}  # a process switch, still read; no variable is
    cfg = loads(doc(change), switches, expand=False)
    assert dict(cfg.unresolved) == {
        "listen.port": "${PORT}",
        "listen.public_url": "https://${HOST}:8443",
        "session.jwt_secret": "${SHORT}",
        "oidc.client_secret": "${OIDC_SECRET}",
        "oidc.use_proxy": "${USE_PROXY}",
        "store.postgres_url": "${PG_URL}",
        "store.password": f"${{file:{tmp_path / 'never-read'}}}",
        "upstreams[0].auth.api_key": "${API_KEY}",
    }
    shown = redacted(cfg)
    assert shown["listen"]["port"] == "${PORT}" and shown["listen"]["public_url"] == "https://${HOST}:8443"
    assert shown["store"]["postgres_url"] == "${PG_URL}" and shown["session"]["jwt_secret"] == "***"
    assert "unresolved" not in shown and "load_warnings" not in shown
    # With the environment, the same file still needs every variable.
    assert {p for p, _ in issues_of(doc(change), switches)} >= {"listen.port", "session.jwt_secret"}


def test_no_env_still_reports_what_does_not_depend_on_a_secret() -> None:
    def change(d: dict[str, Any]) -> None:
        d["listen"].update(port="${PORT}", bogus=1)
        d["oidc"].update(issuer="ftp://idp.example.com", client_secret="${not a name}")
        d["session"]["ttl_hours"] = -1
        up()(d).update(base_url="${UPSTREAM}", region="${REGION}")
        d["store"]["password"] = "${file:relative.txt}"

    with pytest.raises(ConfigError) as err:
        loads(doc(change), {"CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1"}, expand=False)
    assert sorted(p for p, _ in err.value.issues) == [
        "listen.bogus",
        "oidc.client_secret",
        "oidc.issuer",
        "session.ttl_hours",
        "store.password",
        "upstreams[0].region",  # an anthropic upstream takes no region, whatever its value
    ]


def test_no_env_loopback_still_needs_its_switch() -> None:
    assert loads(doc(), {"CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1"}, expand=False).unresolved
    with pytest.raises(ConfigError) as err:
        loads(doc(), {}, expand=False)
    assert "oidc.issuer" in [p for p, _ in err.value.issues]


def test_no_env_stand_ins_fit_bounded_fields() -> None:
    def change(d: dict[str, Any]) -> None:
        d["session"]["ttl_hours"] = "${TTL}"
        put(d, rate_limits={"device_verify": {"max": "${MAX}", "window_seconds": "${WINDOW}"}})
        put(d, gatehouse={"signin": {"login_notice": "${NOTICE}"}})

    cfg = loads(doc(change), {"CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1"}, expand=False)
    assert cfg.session.ttl_hours > 0 and cfg.rate_limits.device_verify.max > 0
    assert redacted(cfg)["rate_limits"]["device_verify"] == {"max": "${MAX}", "window_seconds": "${WINDOW}"}


def test_string_longer_than_its_bound_is_an_issue_not_a_crash() -> None:
    text = doc(lambda d: put(d, gatehouse={"signin": {"login_notice": "n" * 501}}))
    assert paths_of(text) == ["gatehouse.signin.login_notice"]


# ---------------------------------------------------------------- values cut short by an unquoted " #"

CUT_TEXT = """
admin:
  write_keys: [{id: a, key: "${ADMIN_W}"}]
  blocked_message: ask in #dev-tools for more
gatehouse:
  signin:
    login_notice: Welcome to the team # and its wiki
managed:
  policies:
    - match: {}
      cli:
        env: {A: "quoted #kept", B: plain}
        permissions:
          deny:
            - Bash(curl:*) #no-curl
            - WebFetch  # a deliberate comment
        companyAnnouncements:
          - Ask in #help
          - "Quoted: #help"
          - |
            block text #kept
        cleanupPeriodDays: 30 #days
        includeCoAuthoredBy: true #yes
        model: claude-sonnet-4-6 # one word, written like a comment
"""


def test_values_cut_by_an_unquoted_comment_are_warned_about() -> None:
    cfg = loads(doc() + CUT_TEXT, ENV)
    flagged = [w.split(" (line", 1)[0] for w in cfg.load_warnings]
    assert flagged == [
        "admin.blocked_message",
        "gatehouse.signin.login_notice",
        "managed.policies[0].cli.permissions.deny[0]",
        "managed.policies[0].cli.companyAnnouncements[0]",
    ]
    assert cfg.admin is not None and cfg.admin.blocked_message == "ask in"  # what YAML kept
    assert all("quote the whole value" in w for w in cfg.load_warnings)


def test_cut_warnings_name_the_line_never_the_value() -> None:
    text = doc(lambda d: up()(d)["auth"].update(api_key="sk-ant-secret-part")) + "admin:\n  blocked_message: x\n"
    text = text.replace("api_key: sk-ant-secret-part", "api_key: sk-ant-secret-part #rest-of-key")
    cfg = loads(text, ENV)
    (warning,) = cfg.load_warnings
    assert warning.startswith("upstreams[0].auth.api_key (line ")
    assert "sk-ant" not in warning and "rest-of-key" not in warning


def test_an_empty_value_followed_by_a_hashtag_is_warned_about() -> None:
    cfg = loads(doc() + "admin:\n  write_keys: [{id: a, key: \"${ADMIN_W}\"}]\n  blocked_message: #dev-tools\n", ENV)
    assert [w.split(" (line", 1)[0] for w in cfg.load_warnings] == ["admin.blocked_message"]
    assert cfg.admin is not None and cfg.admin.blocked_message is None
    assert loads(doc() + "admin:  # spend limits\n  write_keys: [{id: a, key: \"${ADMIN_W}\"}]\n", ENV).load_warnings == ()


def test_workload_identity_federation_is_refused_saying_what_to_use_instead() -> None:
    wif = {"federation_rule_id": "fdrl_1", "organization_id": "o", "identity_token_file": "/t"}
    (line,) = config.unsupported_features(loads(doc(lambda d: up()(d).update(auth=wif)), ENV))
    assert line.startswith("upstreams[0].auth.federation_rule_id (workload identity federation; Gatehouse does not")
    assert line.endswith("use auth.api_key or auth.oauth_token) is not supported yet")


def test_unsupported_features_name_the_feature() -> None:
    cfg = loads(doc(lambda d: (d["upstreams"].append(MANTLE), put(d, cri={"enabled": True}))), ENV)
    assert config.unsupported_features(cfg) == [
        "upstreams[1] (provider: mantle; Bedrock's Mantle endpoint is not described well enough to build and test against) is not supported yet",
        "cri (customer-routed inference; nothing about what it serves is described well enough to build; "
        "oidc sign-in is what Gatehouse serves) is not supported yet",
    ]
