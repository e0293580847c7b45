"""Per-provider rules for the ``upstreams:`` list of ``gateway.yaml``.

Two stages. :func:`prepare_upstream` runs on the raw mapping before the shape
check: it fills ``name`` from ``provider`` and drops (with an issue each) keys the
provider does not take, so the generic walker never sees a bedrock key on an
anthropic upstream. :func:`check_upstreams` runs on entries that passed the
shape check: URL guard, header hygiene, and which credential combinations each
provider accepts. :data:`PROVIDER_RULES` is the one table of keys per provider.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

from gateway.config import schema as s
from gateway.config.addresses import url_problem
from gateway.config.schema import Issues, dotted


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


# Providers the schema accepts (Anthropic's gateway.yaml names them) that Gatehouse
# refuses at boot, and why.
NOT_SERVED = {
    "mantle": "Bedrock's Mantle endpoint is not described well enough to build and test against",
    "anthropicGoogleCloud": "Claude on Google Cloud's own endpoint is not described well enough to build and test against",
}


def prepare_upstream(raw: dict[str, Any], path: str, issues: Issues) -> dict[str, Any]:
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


def check_upstream_names(data: dict[str, Any], issues: Issues) -> None:
    seen: dict[str, int] = {}
    ups = data.get("upstreams")
    # The raw data: anything but a list was already reported by the shape check.
    for i, up in enumerate(ups if isinstance(ups, list) else ()):
        name = up.get("name") if isinstance(up, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            message = f"upstream name '{name}' is already used by upstreams[{seen[name]}]; give each upstream its own name:"
            issues.add(f"upstreams[{i}].name", message)
        seen.setdefault(name, i)


def check_upstreams(ups: dict[int, s.Upstream], allow_loopback: bool, issues: Issues) -> None:
    for i, up in ups.items():
        path = f"upstreams[{i}]"
        if up.base_url is not None:
            problem = url_problem(up.base_url, allow_loopback)
            if problem:
                issues.add(f"{path}.base_url", problem)
        check_headers(up.headers, f"{path}.headers", reserved=True, issues=issues)
        _PROVIDER_CHECKS.get(up.provider, _no_check)(up, path, issues)
    guarded = [i for i, u in ups.items() if u.provider == "bedrock" and u.guardrail is not None]
    unguarded = [i for i, u in ups.items() if u.provider == "bedrock" and u.guardrail is None]
    if guarded and unguarded:
        issues.add(
            "upstreams",
            f"either every bedrock upstream sets guardrail or none does (upstreams[{guarded[0]}] has one, upstreams[{unguarded[0]}] has none)",
        )


def check_headers(headers: dict[str, str], path: str, reserved: bool, issues: Issues) -> None:
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
