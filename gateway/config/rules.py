"""Rules that one field cannot express alone, for every section but upstreams.

:func:`prepare` runs on the raw data before the shape check (it needs keys as
written: provider names, the ``settings`` alias of ``cli``). :func:`check` runs
afterwards on the sections and list entries that shaped cleanly, so a broken
section never adds a second, misleading issue. Each section has one checker in
:data:`_SECTION_RULES`; cross-references (models and prices naming upstreams,
pricing needing an admin or managed section) go through :class:`_Context`.
Messages name paths, never configured values that could be secrets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

from gateway.config import schema as s
from gateway.config import settings_keys
from gateway.config.addresses import (
    host_address,
    is_ip_or_cidr,
    is_loopback_host,
    scheme_host,
    strip_port,
    url_problem,
)
from gateway.config.client_keys import KeyMaterialError, load_client_key
from gateway.config.schema import Issues, dotted
from gateway.config.upstreams import check_headers, check_upstream_names, check_upstreams, prepare_upstream


def prepare(data: dict[str, Any], issues: Issues) -> dict[str, Any]:
    """Rules that need the keys as written (which provider, which alias), applied
    before the generic shape check; returns a copy with defaults filled in."""
    data = dict(data)
    if isinstance(data.get("upstreams"), list):
        data["upstreams"] = [
            prepare_upstream(u, f"upstreams[{i}]", issues) if isinstance(u, dict) else u
            for i, u in enumerate(data["upstreams"])
        ]
    managed = data.get("managed")
    if isinstance(managed, dict) and isinstance(managed.get("policies"), list):
        policies = [
            _prepare_policy(p, f"managed.policies[{i}]", issues) if isinstance(p, dict) else p
            for i, p in enumerate(managed["policies"])
        ]
        data["managed"] = {**managed, "policies": policies}
    return data


def _prepare_policy(raw: dict[str, Any], path: str, issues: Issues) -> dict[str, Any]:
    policy = dict(raw)
    written = "cli"
    if "settings" in policy:
        if "cli" in policy:
            issues.add(f"{path}.settings", "settings is another name for cli; set only one of them")
            del policy["settings"]
        else:
            written = "settings"
            policy["cli"] = policy.pop("settings")
    cli = policy.get("cli")
    if isinstance(cli, dict):
        # Keys and basic types against the checked-in list (mcpServers refused
        # with its replacement); named as written, cli or settings.
        for issue_path, message in settings_keys.check(cli, f"{path}.{written}"):
            issues.add(issue_path, message)
    desktop = policy.get("desktop")
    if isinstance(desktop, dict):
        from gateway.config import desktop_keys

        # Desktop's flat keys: unknown, gateway-computed, MDM-only and legacy keys stop the boot.
        for issue_path, message in desktop_keys.check(desktop, f"{path}.desktop"):
            issues.add(issue_path, message)
    return policy


class _Context(NamedTuple):
    """What section rules may need to know about the rest of the file."""

    allow_loopback: bool
    upstream_names: list[str] | None  # None when upstreams is not even a list
    has_admin: bool  # written, even if broken: avoids a second, misleading issue
    has_policies: bool


def check(
    sections: dict[str, Any],
    items: dict[str, dict[int, Any]],
    data: dict[str, Any],
    allow_loopback: bool,
    issues: Issues,
) -> None:
    """Rules beyond one field's shape. Each runs only on sections (or list
    entries) that passed the shape check, so a broken section never causes a
    second, misleading issue."""
    ctx = _Context(allow_loopback, _upstream_names(data), data.get("admin") is not None, _has_policies(data))
    for name, rule in _SECTION_RULES.items():
        if sections.get(name) is not None:
            rule(sections[name], ctx, issues)
    if data.get("oidc") is None:
        cri = sections.get("cri")
        if data.get("cri") is None or (cri is not None and not cri.enabled):
            issues.add("oidc", "required section is missing (it may be left out only with cri.enabled: true)")
    check_upstreams(items.get("upstreams", {}), allow_loopback, issues)
    check_upstream_names(data, issues)
    if ctx.upstream_names is not None:
        _check_models(items.get("models", {}), ctx.upstream_names, issues)
        _check_foundry_models(items.get("upstreams", {}), items.get("models", {}), issues)


def _upstream_names(data: dict[str, Any]) -> list[str] | None:
    ups = data.get("upstreams")
    if not isinstance(ups, list):
        return None
    return [u["name"] for u in ups if isinstance(u, dict) and isinstance(u.get("name"), str)]


def _has_policies(data: dict[str, Any]) -> bool:
    managed = data.get("managed")
    return (
        isinstance(managed, dict) and isinstance(managed.get("policies"), list) and bool(managed["policies"])
    )


def _check_listen(listen: s.Listen, ctx: _Context, issues: Issues) -> None:
    if listen.public_url is not None:
        scheme, host = scheme_host(listen.public_url)
        if scheme not in ("http", "https") or not host:
            issues.add("listen.public_url", "must be an http:// or https:// URL")
    elif not is_loopback_host(listen.host):
        issues.add(
            "listen.public_url",
            "required when listen.host is not a loopback address: set the origin clients reach "
            "(e.g. https://gateway.example.com), otherwise sign-in redirects would follow the client-sent Host header",
        )
    for i, entry in enumerate(listen.trusted_proxies):
        if not is_ip_or_cidr(strip_port(entry)):
            issues.add(f"listen.trusted_proxies[{i}]", "not an IP address or CIDR range")


# Sign-in request parameters the gateway computes per request; letting config
# override them would break PKCE, state checking or the callback.
_MANAGED_AUTH_PARAMS = frozenset(
    {"redirect_uri", "state", "nonce", "scope", "response_type", "response_mode", "client_id"}
)


def _check_oidc(oidc: s.Oidc, ctx: _Context, issues: Issues) -> None:
    problem = url_problem(oidc.issuer, ctx.allow_loopback)
    if problem:
        issues.add("oidc.issuer", problem)
    if oidc.discovery_url is not None:
        problem = url_problem(oidc.discovery_url, ctx.allow_loopback)
        if problem is None and "/.well-known/" not in oidc.discovery_url:
            problem = "must be the discovery document's own URL (a path containing /.well-known/)"
        if problem:
            issues.add("oidc.discovery_url", problem)
    if "openid" not in oidc.scopes:
        issues.add("oidc.scopes", "must include 'openid'; without it the IdP returns no id_token")
    for k in oidc.extra_auth_params:
        low = k.lower()
        if low in _MANAGED_AUTH_PARAMS or low.startswith("code_challenge"):
            issues.add(
                dotted("oidc.extra_auth_params", k),
                "the gateway sets this sign-in parameter itself; it cannot be overridden (use oidc.scopes for scope)",
            )
    _check_client_auth(oidc, issues)
    if oidc.google_groups is not None:
        _check_google_groups(oidc, ctx, issues)
    for name in ("allowed_email_domains", "allowed_groups", "additional_authorized_parties"):
        for i, entry in enumerate(getattr(oidc, name) or ()):
            if not entry.strip():
                issues.add(f"oidc.{name}[{i}]", "must not be empty")
    if isinstance(oidc.email_claim, tuple) and not oidc.email_claim:
        issues.add("oidc.email_claim", "must name at least one claim")
    for i, origin in enumerate(oidc.form_action_origins):
        if scheme_host(origin)[0] not in ("http", "https"):
            issues.add(f"oidc.form_action_origins[{i}]", "must be an http:// or https:// origin")
    if oidc.ca_cert_pem is not None and "-----BEGIN CERTIFICATE-----" not in oidc.ca_cert_pem:
        issues.add("oidc.ca_cert_pem", "must be PEM certificate text (load a file with ${file:/path})")


def _check_client_auth(oidc: s.Oidc, issues: Issues) -> None:
    if oidc.token_endpoint_auth_method == "private_key_jwt":
        if oidc.client_secret is not None:
            issues.add(
                "oidc.client_secret",
                "remove it: with private_key_jwt the gateway authenticates with the client_assertion certificate",
            )
        if oidc.client_assertion is None:
            issues.add(
                "oidc.client_assertion",
                "required with private_key_jwt: private_key_pem (the key the gateway signs with) and certificate_pem (the certificate registered at the IdP)",
            )
        else:
            _check_assertion_key(oidc.client_assertion, issues)
        return
    if oidc.client_assertion is not None:
        issues.add("oidc.client_assertion", "only used when token_endpoint_auth_method is private_key_jwt")
    if oidc.client_secret is None:
        issues.add(
            "oidc.client_secret",
            "required (or, for an IdP that issues certificates, use token_endpoint_auth_method: private_key_jwt with a client_assertion block)",
        )


def _check_assertion_key(assertion: s.ClientAssertion, issues: Issues) -> None:
    path = "oidc.client_assertion"
    pem_ok = True
    if "PRIVATE KEY-----" not in assertion.private_key_pem:
        issues.add(f"{path}.private_key_pem", "must be a PEM private key (load a file with ${file:/path})")
        pem_ok = False
    if "-----BEGIN CERTIFICATE-----" not in assertion.certificate_pem:
        issues.add(f"{path}.certificate_pem", "must be a PEM certificate (load a file with ${file:/path})")
        pem_ok = False
    if pem_ok:
        # Parsed here for the boot error; the OIDC client parses it again to sign with.
        try:
            load_client_key(assertion.private_key_pem, assertion.certificate_pem)
        except KeyMaterialError as exc:
            issues.add(f"{path}.{exc.field}", exc.message)


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _check_google_groups(oidc: s.Oidc, ctx: _Context, issues: Issues) -> None:
    """The key file must be a service account's, usable for domain-wide delegation:
    a broken one would refuse every sign-in, so it stops the boot instead."""
    assert oidc.google_groups is not None
    where = "oidc.google_groups.service_account_json_path"
    path = oidc.google_groups.service_account_json_path
    if not _EMAIL.match(oidc.google_groups.admin_email):
        issues.add("oidc.google_groups.admin_email", "must be the email address of a Google Workspace admin")
    if "email" not in oidc.scopes:
        issues.add("oidc.scopes", "must include 'email' with oidc.google_groups: groups are looked up by email")
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
    except OSError as exc:
        issues.add(where, f"cannot read the key file: {exc.strerror or type(exc).__name__}")
        return
    except ValueError:
        issues.add(where, "the key file is not JSON (download a JSON key of the service account)")
        return
    if not isinstance(info, dict) or info.get("type") != "service_account":
        issues.add(where, "must be a service account key file (\"type\": \"service_account\")")
        return
    for field in ("client_email", "private_key", "token_uri"):
        if not isinstance(info.get(field), str) or not info[field].strip():
            issues.add(where, f"the key file has no {field}")
    key = info.get("private_key")
    if isinstance(key, str) and key.strip() and "PRIVATE KEY-----" not in key:
        issues.add(where, "the key file's private_key is not a PEM private key")
    if isinstance(info.get("token_uri"), str):
        problem = url_problem(info["token_uri"], ctx.allow_loopback)
        if problem:
            issues.add(where, f"the key file's token_uri {problem}")


def _check_store(store: s.Store, ctx: _Context, issues: Issues) -> None:
    if not store.postgres_url.startswith(("postgres://", "postgresql://")):
        issues.add("store.postgres_url", "must start with postgres:// or postgresql://")
    ours = store.gatehouse
    if ours.listen_url is not None and not ours.listen_url.startswith(("postgres://", "postgresql://")):
        issues.add("store.gatehouse.listen_url", "must start with postgres:// or postgresql://")
    if ours.pool_mode == "transaction" and ours.listen_url is None:
        issues.add(
            "store.gatehouse.listen_url",
            "required when store.gatehouse.pool_mode is transaction: LISTEN and the migration lock need a "
            "session of their own, which a transaction-pooling PgBouncer does not keep; give a URL straight "
            "to PostgreSQL",
        )


def _check_models(models: dict[int, s.Model], names: list[str], issues: Issues) -> None:
    first: dict[str, int] = {}
    for i, m in models.items():
        if m.id in first:
            issues.add(f"models[{i}].id", f"model id '{m.id}' is already listed at models[{first[m.id]}]")
        first.setdefault(m.id, i)
        for upstream in m.upstream_model:
            if upstream not in names:
                issues.add(
                    dotted(f"models[{i}].upstream_model", upstream),
                    f"names no upstream; known upstreams: {_listing(names)}",
                )


def _check_foundry_models(ups: dict[int, s.Upstream], models: dict[int, s.Model], issues: Issues) -> None:
    # A Foundry deployment is named by whoever deployed it: no model id reaches one
    # unless a models: entry says which deployment serves it.
    mapped = {name for m in models.values() for name in m.upstream_model}
    for i, up in ups.items():
        if up.provider == "foundry" and up.name not in mapped:
            issues.add(
                f"upstreams[{i}]",
                f"a foundry upstream needs a models: entry whose upstream_model maps a model id to one of its "
                f"deployment names (e.g. models: [{{id: claude-sonnet-4-6, upstream_model: {{{up.name}: <deployment>}}}}])",
            )


def _check_managed(managed: s.Managed, ctx: _Context, issues: Issues) -> None:
    for i, policy in enumerate(managed.policies):
        path = f"managed.policies[{i}].match"
        groups = policy.match.groups
        if groups is not None and not groups:
            issues.add(f"{path}.groups", "must list at least one group (use match: {} to match everyone)")
        for j, g in enumerate(groups or ()):
            if not g.strip():
                issues.add(
                    f"{path}.groups[{j}]",
                    "must not be empty: an empty entry could match a token without groups",
                )
        if policy.match.email_domain is not None:
            domain = policy.match.email_domain.strip()
            domain = domain[1:] if domain.startswith("@") else domain
            if not domain:
                issues.add(f"{path}.email_domain", "must not be empty")
            elif "@" in domain or "," in domain or any(ch.isspace() for ch in domain):
                issues.add(
                    f"{path}.email_domain",
                    "must be one bare domain such as example.com (no @, spaces or commas)",
                )


def _check_telemetry(tel: s.Telemetry, ctx: _Context, issues: Issues) -> None:
    for i, dest in enumerate(tel.forward_to):
        path = f"telemetry.forward_to[{i}]"
        _check_collector_url(dest.url, f"{path}.url", ctx, issues)
        if dest.gatehouse.protocol == "grpc" and urlsplit(dest.url).path.strip("/"):
            # gRPC calls go to fixed service paths; a base path would be silently ignored.
            issues.add(f"{path}.url", "a gRPC collector is named by scheme, host and port only (no path)")
        check_headers(dest.headers, f"{path}.headers", reserved=False, issues=issues)
    for name, value in tel.resource_attributes.items():
        _check_resource_attribute(name, value, dotted("telemetry.resource_attributes", name), issues)


def _check_collector_url(url: str, path: str, ctx: _Context, issues: Issues) -> None:
    scheme, host = scheme_host(url)
    # Like the other gateway, a loopback *name* passes here (the run-time
    # address check still stops exports to it); literal IPs are checked now.
    problem = url_problem(url, ctx.allow_loopback or host_address(host) is None)
    if problem is None and scheme != "https" and not is_loopback_host(host):
        problem = "must be an https:// URL (http:// only for a loopback collector)"
    if problem:
        issues.add(path, problem)


def _check_gatehouse(ours: s.Gatehouse, ctx: _Context, issues: Issues) -> None:
    tel = ours.telemetry
    for signal, otlp in (("metrics", tel.metrics.otlp), ("traces", tel.traces.otlp)):
        if otlp is not None:
            path = f"gatehouse.telemetry.{signal}.otlp"
            _check_collector_url(otlp.endpoint, f"{path}.endpoint", ctx, issues)
            check_headers(otlp.headers, f"{path}.headers", reserved=False, issues=issues)
    listen = tel.metrics.prometheus.listen
    if tel.metrics.prometheus.enabled and listen is None and not ctx.has_admin:
        # On the main listener /metrics answers only an admin key: without admin: no scrape could succeed.
        issues.add(
            "gatehouse.telemetry.metrics.prometheus",
            "GET /metrics on the main listener needs an admin key and there is no admin: section; "
            "add one, or set prometheus.listen to serve it on a listener of its own",
        )
    if listen is not None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            issues.add("gatehouse.telemetry.metrics.prometheus.listen", "must be host:port, e.g. 0.0.0.0:9464")


# OTEL_RESOURCE_ATTRIBUTES (protocol §9.2): names the client sets itself are reserved, so
# an operator's attribute can never pass for a person's identity or the client's own facts.
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9._-]+")
_RESERVED_ATTRIBUTE_PREFIXES = ("user.", "enduser.", "identity.")
_RESERVED_ATTRIBUTES = frozenset(
    {"service.name", "service.version", "claude.deployment_mode", "host.arch", "os.type", "os.version", "wsl.version"}
)
_ATTRIBUTE_VALUE_FORBIDDEN = frozenset(',;=\\"% ')
MAX_ATTRIBUTE_VALUE_CHARS = 255


def _check_resource_attribute(name: str, value: str, path: str, issues: Issues) -> None:
    low = name.lower()
    if not _ATTRIBUTE_NAME.fullmatch(name):
        issues.add(path, "attribute names use only letters, digits, '.', '_' and '-'")
    elif low in _RESERVED_ATTRIBUTES or low.startswith(_RESERVED_ATTRIBUTE_PREFIXES):
        issues.add(path, "reserved: the client sets this attribute itself (user.*, enduser.*, identity.*, service.*, …)")
    if not value or any(not (" " < ch <= "~") or ch in _ATTRIBUTE_VALUE_FORBIDDEN for ch in value):
        issues.add(path, 'must be non-empty printable ASCII without spaces or any of , ; = \\ " %')
    elif len(quote(value, safe="")) > MAX_ATTRIBUTE_VALUE_CHARS:
        issues.add(path, f"must be at most {MAX_ATTRIBUTE_VALUE_CHARS} characters once percent-encoded")


def _check_admin(admin: s.Admin, ctx: _Context, issues: Issues) -> None:
    seen: dict[str, str] = {}
    for keys in ("write_keys", "read_keys"):
        for i, k in enumerate(getattr(admin, keys)):
            path = f"admin.{keys}[{i}]"
            if k.id in seen:
                issues.add(
                    f"{path}.id",
                    f"key id '{k.id}' is already used by {seen[k.id]}; ids must be unique so audit entries name one key",
                )
            seen.setdefault(k.id, path)
    for i, g in enumerate(admin.admin_groups):
        if not g.strip():
            issues.add(
                f"admin.admin_groups[{i}]",
                "must not be empty: an empty entry could match a token without groups and grant admin",
            )


def _check_pricing(pricing: s.Pricing, ctx: _Context, issues: Issues) -> None:
    if not (ctx.has_admin or ctx.has_policies):
        message = "needs an admin: section, or a managed: section with at least one policy; nothing else reads prices"
        issues.add("pricing", message)
    names = ctx.upstream_names
    first: dict[tuple[str, str], int] = {}
    for i, row in enumerate(pricing.overrides):
        if names is not None and row.upstream not in names:
            issues.add(
                f"pricing.overrides[{i}].upstream", f"names no upstream; known upstreams: {_listing(names)}"
            )
        key = (row.upstream, row.model.lower())
        if key in first:
            issues.add(
                f"pricing.overrides[{i}]",
                f"repeats the upstream and model of pricing.overrides[{first[key]}]",
            )
        first.setdefault(key, i)


def _check_enforcement(enforcement: s.Enforcement, ctx: _Context, issues: Issues) -> None:
    if enforcement.fail_closed_on_error and not ctx.has_admin:
        message = "needs an admin: section; spend enforcement runs only when admin is configured"
        issues.add("enforcement.fail_closed_on_error", message)


def _check_access(access: s.AccessControl, ctx: _Context, issues: Issues) -> None:
    for name in ("allow_cidrs", "deny_cidrs"):
        for i, entry in enumerate(getattr(access, name)):
            if not is_ip_or_cidr(entry):
                issues.add(f"access_control.{name}[{i}]", "not an IP address or CIDR range")


def _listing(names: list[str]) -> str:
    return ", ".join(dict.fromkeys(names)) or "(none)"


_SECTION_RULES: dict[str, Callable[[Any, _Context, Issues], None]] = {
    "listen": _check_listen,
    "oidc": _check_oidc,
    "store": _check_store,
    "managed": _check_managed,
    "telemetry": _check_telemetry,
    "admin": _check_admin,
    "access_control": _check_access,
    "enforcement": _check_enforcement,
    "pricing": _check_pricing,
    "gatehouse": _check_gatehouse,
}
