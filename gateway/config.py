"""Load and validate ``gateway.yaml`` into a frozen :class:`Config`.

Theory of operation, in four passes over one YAML document:

1. **Parse** with YAML 1.2 scalar rules (``yes``/``on`` stay strings, as in the
   other gateway's JavaScript parser) and refuse duplicate keys.
2. **Expand** ``${VAR}`` anywhere inside a string value and ``${file:/abs}`` as a
   whole value. Keys are never expanded.
3. **Shape-check** each section (each upstream and model on its own) against
   the Structs in :mod:`gateway.config_schema`, whose walker reports every
   unknown key, missing key, wrong type and out-of-range number at its own
   dotted path (``upstreams[1].auth.api_key``). Keys a provider does not take
   and the ``settings`` alias of ``cli`` are handled just before, on the raw data.
4. **Rule-check** what one field cannot say alone: URL guards, credential
   combinations, references between sections. Rules run only on parts that
   passed step 3, so one mistake does not produce a cascade of issues.

Every issue names a path; no message ever repeats a configured value that could
be a secret. The module is pure: it reads only the file it is handed, files
named by ``${file:}``, and the environ mapping it is given.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import msgspec
import msgspec.inspect as mi
import yaml

from gateway import config_schema as s
from gateway import settings_keys
from gateway.config_schema import Config, Expanded, Issues, dotted, kind, shape

__all__ = [
    "Config",
    "ConfigError",
    "UNSUPPORTED",
    "is_forbidden_address",
    "load",
    "loads",
    "redacted",
    "unsupported",
    "unsupported_reasons",
]

ALLOW_LOOPBACK_ENV = "CLAUDE_GATEWAY_ALLOW_LOOPBACK"


class ConfigError(Exception):
    """Every problem found in one load; ``issues`` holds (dotted path, message)."""

    def __init__(self, issues: list[tuple[str, str]]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(f"{p}: {m}" if p else m for p, m in self.issues))


def load(path: str, environ: Mapping[str, str]) -> Config:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError([("", f"cannot read config file {path}: {exc.strerror or exc}")]) from None
    return loads(raw, environ, source=path)


def loads(text: bytes | str, environ: Mapping[str, str], source: str = "<string>") -> Config:
    raw = text.encode() if isinstance(text, str) else text
    data = _parse_yaml(raw)
    unresolved = Issues()
    data = _expand(data, "", environ, unresolved)
    issues = Issues()
    cfg = _build(data, environ, issues)
    # A reference that did not resolve left an empty string behind; the shape
    # complaints about that placeholder would only repeat the same problem.
    failed = {path for path, _ in unresolved}
    issues = Issues([*unresolved, *(i for i in issues if i[0] not in failed)])
    if issues or cfg is None:
        raise ConfigError(issues)
    return msgspec.structs.replace(cfg, path=source, sha256=hashlib.sha256(raw).hexdigest())


# ---------------------------------------------------------------- 1. YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core scalars and no duplicate keys."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        # Only the mapping's own keys count: a key that overrides one pulled in
        # with `<<: *anchor` is the point of a merge, not a duplicate.
        seen: set[str] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if isinstance(key, str):
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
        return super().construct_mapping(node, deep)


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int) -> None:
        self.key, self.line = key, line


# YAML 1.1 (PyYAML's default) reads yes/no/on/off as booleans, 0777 as octal and
# 1:30 as 90; the other gateway's parser (YAML 1.2) reads them as written. Keep
# only the 1.2 forms so a managed `env: {FOO: yes}` reaches clients as "yes".
_DROPPED = {
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:timestamp",
}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


def _construct_int(loader: _Loader, node: Any) -> int:
    text = loader.construct_scalar(node)
    if text.startswith("0x"):
        return int(text[2:], 16)
    if text.startswith("0o"):
        return int(text[2:], 8)
    return int(text, 10)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _parse_yaml(raw: bytes) -> Any:
    try:
        return yaml.load(raw, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as dup:
        raise ConfigError(
            [("", f"line {dup.line}: key '{dup.key}' appears twice in the same mapping")]
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError([("", f"{where}{problem}")]) from None


# ---------------------------------------------------------------- 2. expansion


_REF = re.compile(r"\$\{([^}]*)\}")
_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _expand(value: Any, path: str, environ: Mapping[str, str], issues: Issues) -> Any:
    if isinstance(value, str):
        return _expand_str(value, path, environ, issues)
    if isinstance(value, dict):
        return {k: _expand(v, dotted(path, k), environ, issues) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", environ, issues) for i, v in enumerate(value)]
    return value


def _expand_str(text: str, path: str, environ: Mapping[str, str], issues: Issues) -> str:
    refs = list(_REF.finditer(text))
    if not refs:
        return text
    for ref in refs:
        inner = ref.group(1)
        if inner.startswith("file:"):
            if ref.span() != (0, len(text)):
                issues.add(path, "a ${file:...} reference must be the entire value")
                return text
            return _expand_file(inner[len("file:") :], path, issues)
        if not _VAR.fullmatch(inner):
            issues.add(path, f"'${{{inner}}}' is not a reference; use ${{NAME}} or ${{file:/absolute/path}}")
        elif inner not in environ:
            issues.add(path, f"environment variable {inner} is not set")
    return Expanded(_REF.sub(lambda m: environ.get(m.group(1), ""), text))


def _expand_file(file_path: str, path: str, issues: Issues) -> str:
    if not os.path.isabs(file_path):
        issues.add(path, f"${{file:}} needs an absolute path, not {file_path}")
        return ""
    try:
        return Expanded(_read_text(file_path).strip())
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        issues.add(path, f"cannot read {file_path}: {reason}")
        return ""


# ---------------------------------------------------------------- build


def _build(data: Any, environ: Mapping[str, str], issues: Issues) -> Config | None:
    """Shape each section on its own, so one broken section does not hide the
    rule problems of the others; return None when anything failed."""
    if data is None:
        issues.add("", "the file is empty; expected a mapping of sections")
        return None
    if not isinstance(data, dict):
        issues.add("", f"expected a mapping of sections at the top level, got {kind(data)}")
        return None
    data = _prepare(data, issues)
    top = mi.type_info(Config)
    assert isinstance(top, mi.StructType)
    fields = {f.name: f for f in top.fields if f.name not in s.LOADER_FIELDS}
    for k in data:
        if k not in fields:
            issues.add(dotted("", k), f"unknown top-level section; expected one of: {', '.join(fields)}")
    sections: dict[str, Any] = {}
    items: dict[str, dict[int, Any]] = {}
    for name, f in fields.items():
        if data.get(name) is None:  # an empty `admin:` means the same as no admin section
            if f.required:
                issues.add(name, "required section is missing")
            continue
        before = len(issues)
        if name in _ITEMWISE and isinstance(data[name], list):
            items[name] = _shape_items(data[name], name, _ITEMWISE[name], issues)
            if not data[name] and f.required:
                issues.add(name, "must list at least one entry")
            shaped = list(items[name].values())
        else:
            shaped = shape(data[name], f.type, name, issues)
        if len(issues) == before:
            sections[name] = msgspec.convert(shaped, _ANNOTATIONS[name], strict=True)
    _check(sections, items, data, environ.get(ALLOW_LOOPBACK_ENV) == "1", issues)
    if issues:
        return None
    return Config(**sections)


_ANNOTATIONS = {f.name: f.type for f in msgspec.structs.fields(Config)}
# Top-level lists checked entry by entry, so one bad upstream does not hide
# the rule problems of the others.
_ITEMWISE: dict[str, type] = {"upstreams": s.Upstream, "models": s.Model}


def _shape_items(values: list[Any], name: str, item: type, issues: Issues) -> dict[int, Any]:
    info = mi.type_info(item)
    good: dict[int, Any] = {}
    for i, value in enumerate(values):
        before = len(issues)
        shaped = shape(value, info, f"{name}[{i}]", issues)
        if len(issues) == before:
            good[i] = msgspec.convert(shaped, item, strict=True)
    return good


# ---------------------------------------------------------------- 4a. prepare (raw data)


class _ProviderRule(NamedTuple):
    required: tuple[str, ...]  # upstream-level keys this provider cannot do without
    keys: frozenset[str]  # upstream-level keys beyond the common ones
    auth: frozenset[str]  # keys accepted under auth:


_COMMON_KEYS = frozenset({"provider", "name", "base_url", "auth", "headers"})
_AWS_KEYS = frozenset({"aws_access_key_id", "aws_secret_access_key", "aws_session_token"})
_WIF_KEYS = ("federation_rule_id", "organization_id", "identity_token_file")
# The mantle and anthropicGoogleCloud rows are inferred from the provider names
# the other gateway accepts; their exact keys are not documented.
PROVIDER_RULES: dict[str, _ProviderRule] = {
    "anthropic": _ProviderRule(
        (),
        frozenset({"forward_user_identity"}),
        frozenset({"api_key", "oauth_token", *_WIF_KEYS, "workspace_id", "service_account_id"}),
    ),
    "bedrock": _ProviderRule(
        ("region",), frozenset({"region", "guardrail", "assume_role"}), _AWS_KEYS | {"aws_bearer_token"}
    ),
    "mantle": _ProviderRule(("region",), frozenset({"region"}), _AWS_KEYS | {"aws_bearer_token", "api_key"}),
    "anthropicAws": _ProviderRule(
        ("region", "workspace_id"), frozenset({"region", "workspace_id"}), _AWS_KEYS | {"api_key"}
    ),
    "anthropicGoogleCloud": _ProviderRule(
        (),
        frozenset({"region", "project_id", "workspace_id"}),
        frozenset({"service_account_json", "api_key"}),
    ),
    "vertex": _ProviderRule(
        ("region", "project_id"), frozenset({"region", "project_id"}), frozenset({"service_account_json"})
    ),
    "foundry": _ProviderRule(("resource",), frozenset({"resource"}), frozenset({"api_key", "use_azure_ad"})),
}


def _prepare(data: dict[str, Any], issues: Issues) -> dict[str, Any]:
    """Rules that need the keys as written (which provider, which alias), applied
    before the generic shape check; returns a copy with defaults filled in."""
    data = dict(data)
    if isinstance(data.get("upstreams"), list):
        data["upstreams"] = [
            _prepare_upstream(u, f"upstreams[{i}]", issues) if isinstance(u, dict) else u
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


def _prepare_upstream(raw: dict[str, Any], path: str, issues: Issues) -> dict[str, Any]:
    provider = raw.get("provider")
    rule = PROVIDER_RULES.get(provider) if isinstance(provider, str) else None
    if rule is None:
        return raw  # the shape check reports the missing or unknown provider
    up = {"name": provider, **raw}
    allowed = _COMMON_KEYS | rule.keys
    for k in list(up):
        if k not in allowed:
            issues.add(
                dotted(path, k),
                f"not a key of a {provider} upstream; expected one of: {', '.join(sorted(allowed))}",
            )
            del up[k]
    for k in rule.required:
        if k not in up:
            issues.add(dotted(path, k), f"required for a {provider} upstream")
    auth = up.get("auth")
    if provider == "anthropic" and auth is None:
        issues.add(
            f"{path}.auth",
            "required: set api_key, oauth_token, or federation_rule_id + organization_id + identity_token_file",
        )
    if isinstance(auth, dict):
        for k in list(auth):
            if k not in rule.auth:
                issues.add(
                    dotted(f"{path}.auth", k),
                    f"not an auth key of a {provider} upstream; expected one of: {', '.join(sorted(rule.auth))}",
                )
        up["auth"] = {k: v for k, v in auth.items() if k in rule.auth}
    return up


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
    return policy


# ---------------------------------------------------------------- 4b. rules (typed sections)


class _Context(NamedTuple):
    """What section rules may need to know about the rest of the file."""

    allow_loopback: bool
    upstream_names: list[str] | None  # None when upstreams is not even a list
    has_admin: bool  # written, even if broken: avoids a second, misleading issue
    has_policies: bool


def _check(
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
    _check_upstreams(items.get("upstreams", {}), allow_loopback, issues)
    _check_upstream_names(data, issues)
    if ctx.upstream_names is not None:
        _check_models(items.get("models", {}), ctx.upstream_names, issues)


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
        scheme, host = _scheme_host(listen.public_url)
        if scheme not in ("http", "https") or not host:
            issues.add("listen.public_url", "must be an http:// or https:// URL")
    elif not is_loopback_host(listen.host):
        issues.add(
            "listen.public_url",
            "required when listen.host is not a loopback address: set the origin clients reach "
            "(e.g. https://gateway.example.com), otherwise sign-in redirects would follow the client-sent Host header",
        )
    for i, entry in enumerate(listen.trusted_proxies):
        if not _is_ip_or_cidr(_strip_port(entry)):
            issues.add(f"listen.trusted_proxies[{i}]", "not an IP address or CIDR range")


def _strip_port(entry: str) -> str:
    """``10.0.0.1:443`` → ``10.0.0.1`` and ``[::1]:443`` → ``::1``; bare IPv6 is left alone."""
    if entry.startswith("["):
        return entry[1:].split("]", 1)[0]
    if entry.count(":") == 1:
        return entry.split(":", 1)[0]
    return entry


def _is_ip_or_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return False
    return True


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
    for name in ("allowed_email_domains", "allowed_groups", "additional_authorized_parties"):
        for i, entry in enumerate(getattr(oidc, name) or ()):
            if not entry.strip():
                issues.add(f"oidc.{name}[{i}]", "must not be empty")
    if isinstance(oidc.email_claim, tuple) and not oidc.email_claim:
        issues.add("oidc.email_claim", "must name at least one claim")
    for i, origin in enumerate(oidc.form_action_origins):
        if _scheme_host(origin)[0] not in ("http", "https"):
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
            if "PRIVATE KEY-----" not in oidc.client_assertion.private_key_pem:
                issues.add("oidc.client_assertion.private_key_pem", "must be a PEM private key")
            if "-----BEGIN CERTIFICATE-----" not in oidc.client_assertion.certificate_pem:
                issues.add("oidc.client_assertion.certificate_pem", "must be a PEM certificate")
        return
    if oidc.client_assertion is not None:
        issues.add("oidc.client_assertion", "only used when token_endpoint_auth_method is private_key_jwt")
    if oidc.client_secret is None:
        issues.add(
            "oidc.client_secret",
            "required (or, for an IdP that issues certificates, use token_endpoint_auth_method: private_key_jwt with a client_assertion block)",
        )


def _check_store(store: s.Store, ctx: _Context, issues: Issues) -> None:
    if not store.postgres_url.startswith(("postgres://", "postgresql://")):
        issues.add("store.postgres_url", "must start with postgres:// or postgresql://")


# --- upstreams

ANTHROPIC_API = "https://api.anthropic.com"
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers the gateway owns: credentials, framing, and provider protocol headers.
_RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "x-api-key",
        "host",
        "content-type",
        "user-agent",
        "content-length",
        "transfer-encoding",
        "connection",
    }
)
_RESERVED_PREFIXES = ("anthropic-", "x-goog-", "x-amz-", "x-amzn-")
_ROLE_ARN = re.compile(r"arn:aws(?:-us-gov)?:iam::")
_AWS_REGION = re.compile(r"[a-z0-9-]+")


def _check_upstream_names(data: dict[str, Any], issues: Issues) -> None:
    seen: dict[str, int] = {}
    for i, up in enumerate(data.get("upstreams") or ()):
        name = up.get("name") if isinstance(up, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            message = f"upstream name '{name}' is already used by upstreams[{seen[name]}]; give each upstream its own name:"
            issues.add(f"upstreams[{i}].name", message)
        seen.setdefault(name, i)


def _check_upstreams(ups: dict[int, s.Upstream], allow_loopback: bool, issues: Issues) -> None:
    for i, up in ups.items():
        path = f"upstreams[{i}]"
        if up.base_url is not None:
            problem = url_problem(up.base_url, allow_loopback)
            if problem:
                issues.add(f"{path}.base_url", problem)
        _check_headers(up.headers, f"{path}.headers", reserved=True, issues=issues)
        _PROVIDER_CHECKS.get(up.provider, _no_check)(up, path, issues)
    guarded = [i for i, u in ups.items() if u.provider == "bedrock" and u.guardrail is not None]
    unguarded = [i for i, u in ups.items() if u.provider == "bedrock" and u.guardrail is None]
    if guarded and unguarded:
        issues.add(
            "upstreams",
            f"either every bedrock upstream sets guardrail or none does (upstreams[{guarded[0]}] has one, upstreams[{unguarded[0]}] has none)",
        )


def _check_headers(headers: dict[str, str], path: str, reserved: bool, issues: Issues) -> None:
    for name, value in headers.items():
        where = dotted(path, name)
        low = name.lower()
        if not _HEADER_NAME.fullmatch(name):
            issues.add(where, "not a valid header name")
        elif reserved and (low in _RESERVED_HEADERS or low.startswith(_RESERVED_PREFIXES)):
            issues.add(where, "reserved: the gateway sets this header itself")
        if not value:
            issues.add(where, "must not be empty")
        elif value != value.strip() or any(not (" " <= ch <= "~") for ch in value):
            issues.add(where, "must be printable ASCII without leading or trailing spaces")


def _no_check(up: s.Upstream, path: str, issues: Issues) -> None:
    return None


def _check_anthropic(up: s.Upstream, path: str, issues: Issues) -> None:
    a = up.auth
    branches = [
        b
        for b, on in (
            ("api_key", a.api_key),
            ("oauth_token", a.oauth_token),
            ("federation_rule_id", a.federation_rule_id),
        )
        if on is not None
    ]
    wif_parts = [k for k in (*_WIF_KEYS, "workspace_id", "service_account_id") if getattr(a, k) is not None]
    if len(branches) > 1:
        issues.add(
            f"{path}.auth.{branches[1]}",
            f"cannot be combined with {branches[0]}; configure exactly one credential",
        )
    elif not branches and not wif_parts:
        issues.add(
            f"{path}.auth",
            "set one of api_key, oauth_token, or federation_rule_id + organization_id + identity_token_file",
        )
    if wif_parts:
        if a.api_key is not None or a.oauth_token is not None:
            if a.federation_rule_id is None:
                issues.add(
                    f"{path}.auth.{wif_parts[0]}",
                    "belongs to workload identity federation and cannot be combined with api_key or oauth_token",
                )
        else:
            for k in _WIF_KEYS:
                if getattr(a, k) is None:
                    issues.add(f"{path}.auth.{k}", "required for workload identity federation")
    if up.forward_user_identity and (up.base_url is None or up.base_url.rstrip("/") == ANTHROPIC_API):
        issues.add(
            f"{path}.forward_user_identity",
            "refused for Anthropic's API so user emails are never sent there; it is meant for a proxy you run at base_url",
        )


def _check_aws_keys(up: s.Upstream, path: str, issues: Issues) -> None:
    a = up.auth
    if (a.aws_access_key_id is None) != (a.aws_secret_access_key is None):
        issues.add(f"{path}.auth", "aws_access_key_id and aws_secret_access_key must be set together")
    elif a.aws_session_token is not None and a.aws_access_key_id is None:
        issues.add(f"{path}.auth.aws_session_token", "needs aws_access_key_id and aws_secret_access_key")
    if a.aws_bearer_token is not None and a.aws_access_key_id is not None:
        issues.add(
            f"{path}.auth.aws_bearer_token",
            "cannot be combined with an access key pair; configure one credential",
        )


def _check_bedrock(up: s.Upstream, path: str, issues: Issues) -> None:
    _check_aws_keys(up, path, issues)
    if up.assume_role is not None:
        if not _ROLE_ARN.match(up.assume_role.role_arn):
            issues.add(
                f"{path}.assume_role.role_arn",
                "must be an IAM role ARN (arn:aws:iam::… or arn:aws-us-gov:iam::…)",
            )
        if up.auth.aws_bearer_token is not None:
            issues.add(
                f"{path}.assume_role",
                "cannot be used with auth.aws_bearer_token (a bearer token cannot assume a role)",
            )


def _check_anthropic_aws(up: s.Upstream, path: str, issues: Issues) -> None:
    _check_aws_keys(up, path, issues)
    if up.region is not None and not _AWS_REGION.fullmatch(up.region):
        issues.add(f"{path}.region", "may contain only lowercase letters, digits and hyphens")


def _check_foundry(up: s.Upstream, path: str, issues: Issues) -> None:
    if up.auth.api_key is None and not up.auth.use_azure_ad:
        issues.add(f"{path}.auth", "set api_key, or use_azure_ad: true for Azure AD credentials")


_PROVIDER_CHECKS: dict[str, Callable[[s.Upstream, str, Issues], None]] = {
    "anthropic": _check_anthropic,
    "bedrock": _check_bedrock,
    "mantle": _check_aws_keys,
    "anthropicAws": _check_anthropic_aws,
    "foundry": _check_foundry,
}


# --- the other sections


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
        scheme, host = _scheme_host(dest.url)
        # Like the other gateway, a loopback *name* passes here (the run-time
        # address check still stops exports to it); literal IPs are checked now.
        problem = url_problem(dest.url, ctx.allow_loopback or host_address(host) is None)
        if problem is None and scheme != "https" and not is_loopback_host(host):
            problem = "must be an https:// URL (http:// only for a loopback collector)"
        if problem:
            issues.add(f"{path}.url", problem)
        _check_headers(dest.headers, f"{path}.headers", reserved=False, issues=issues)


def _scheme_host(url: str) -> tuple[str, str]:
    try:
        parts = urlsplit(url)
        return parts.scheme, (parts.hostname or "")
    except ValueError:
        return "", ""


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
            if not _is_ip_or_cidr(entry):
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
}


# ---------------------------------------------------------------- address guard

# Cloud instance-metadata endpoints: reaching one from a gateway that relays
# URLs from config would hand out the host's cloud credentials.
_METADATA_IPS = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)
_METADATA_HOSTS = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"}
)


def is_forbidden_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_loopback: bool) -> bool:
    """True for addresses the gateway must never call (metadata, link-local),
    and for loopback/unspecified ones unless loopback is allowed."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _METADATA_IPS or ip.is_link_local:
        return True
    if ip.is_loopback or ip.is_unspecified:
        return not allow_loopback
    return False


def host_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP a URL host names literally, including the old inet_aton spellings
    (``127.1``, ``0x7f.0.0.1``, ``2130706433``) that resolvers still accept."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return _legacy_ipv4(host)


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    nums = []
    for part in parts:
        try:
            if part.lower().startswith("0x"):
                nums.append(int(part[2:], 16))
            elif len(part) > 1 and part.startswith("0"):
                nums.append(int(part, 8))
            else:
                nums.append(int(part, 10))
        except ValueError:
            return None
    *head, last = nums
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for i, n in enumerate(head):
        value += n << (24 - 8 * i)
    return ipaddress.IPv4Address(value)


def is_loopback_host(host: str) -> bool:
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    ip = host_address(host)
    return ip is not None and (
        ip.is_loopback
        or (isinstance(ip, ipaddress.IPv6Address) and bool(ip.ipv4_mapped and ip.ipv4_mapped.is_loopback))
    )


def url_problem(url: str, allow_loopback: bool) -> str | None:
    """Why the gateway must not call ``url``, or None. Never echoes the URL,
    which may carry credentials."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not host:
        return "must be an http:// or https:// URL with a host"
    host = host.rstrip(".")
    ip = host_address(host)
    if host in _METADATA_HOSTS or (ip is not None and is_forbidden_address(ip, True)):
        return "points at a cloud metadata or link-local address, which is never allowed"
    local = is_forbidden_address(ip, False) if ip is not None else is_loopback_host(host)
    if local and not allow_loopback:
        return f"points at a loopback address; allowed only with {ALLOW_LOOPBACK_ENV}=1 (development)"
    return None


# ---------------------------------------------------------------- unsupported

# Features Gatehouse accepts in the file but does not serve yet, one row each:
# (path pattern, why, is-it-switched-on for the value found there). `[*]` walks
# a list. Delete a row when its feature lands.
UNSUPPORTED: tuple[tuple[str, str, Callable[[Any], bool]], ...] = (
    ("upstreams[*]", "only the anthropic provider is implemented", lambda u: u["provider"] != "anthropic"),
    ("upstreams[*].auth.federation_rule_id", "workload identity federation is not implemented", bool),
    ("oidc.google_groups", "Google Workspace group lookup is not implemented", bool),
    ("oidc.use_proxy", "sending IdP requests through a proxy is not implemented", bool),
    ("oidc.client_assertion", "private_key_jwt client authentication is not implemented", bool),
    ("managed.policies[*].desktop", "the Claude Desktop overlay (/user/bootstrap) is not implemented", lambda d: d is not None),
    ("telemetry.forward_to", "the OTLP relay is not implemented", bool),
    ("telemetry.resource_attributes", "pushing OTLP resource attributes is not implemented", bool),
    ("load_test_mode", "load-test mode is not implemented", lambda m: bool(m and m["enabled"])),
    ("cri", "customer-routed inference is not implemented", lambda c: bool(c and c["enabled"])),
)


def unsupported_reasons(cfg: Config) -> list[tuple[str, str]]:
    """(dotted path, reason) for each switched-on feature Gatehouse lacks."""
    data = msgspec.json.decode(msgspec.json.encode(cfg))
    return [
        (path, reason)
        for pattern, reason, switched_on in UNSUPPORTED
        for path, value in _find(data, pattern.split("."), "")
        if switched_on(value)
    ]


def unsupported(cfg: Config) -> list[str]:
    return [path for path, _ in unsupported_reasons(cfg)]


def _find(data: Any, steps: list[str], path: str) -> Iterable[tuple[str, Any]]:
    if not steps:
        yield path, data
        return
    name, walk = steps[0].removesuffix("[*]"), steps[0].endswith("[*]")
    value = data.get(name) if isinstance(data, dict) else None
    here = dotted(path, name)
    if not walk:
        yield from _find(value, steps[1:], here)
        return
    for i, item in enumerate(value or ()):
        yield from _find(item, steps[1:], f"{here}[{i}]")


# ---------------------------------------------------------------- redaction

MASK = "***"
# Field names whose value is a credential wherever they appear.
_SECRET_NAMES = frozenset(
    {
        "jwt_secret",
        "client_secret",
        "api_key",
        "oauth_token",
        "password",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_bearer_token",
        "private_key_pem",
    }
)
# Mappings whose values are all treated as secret: header maps carry tokens,
# and a managed policy's env block often does.
_SECRET_MAPS = frozenset({"headers", "env"})


def redacted(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data, every secret replaced by ``***``."""
    return _redact(msgspec.json.decode(msgspec.json.encode(cfg)), "")


def _redact(value: Any, path: str) -> Any:
    if isinstance(value, dict):
        return {k: _redact_field(k, v, dotted(path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _redact_field(name: str, value: Any, path: str) -> Any:
    if value is None:
        return None
    admin_key = name == "key" and "_keys[" in path
    if name in _SECRET_NAMES or admin_key:
        return [MASK for _ in value] if isinstance(value, list) else MASK
    if name in _SECRET_MAPS and isinstance(value, dict):
        return {k: MASK for k in value}
    if name == "postgres_url" and isinstance(value, str):
        return _mask_url_password(value)
    return _redact(value, path)


def _mask_url_password(url: str) -> str:
    url = re.sub(r"(?i)([?&]password=)[^&]*", r"\1" + MASK, url)
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.partition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        return f"{scheme}{sep}{user}:{MASK}@{hostpart}"
    return url
