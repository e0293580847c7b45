"""Claude Desktop's bootstrap: who gets one from ``GET /user/bootstrap``, and what it holds.

Theory of operation (SPEC §17.4):

* **Opt-in** (MANAGED-22). A caller gets a bootstrap when the policy serving
  them (:meth:`Policies.match`) has a ``desktop`` block, or the ``match: {}``
  base has one; ``desktop: {}`` is enough. Otherwise the answer is a
  :class:`Denied` with the audit reason: ``not_configured`` (no policy anywhere
  has a block), ``no_policy_matched``, or ``policy_not_opted_in``.
* **Inheritance** (MANAGED-23). The winner's block is laid over the base's:
  keys it leaves out come from the base; ``disabledBuiltinTools`` is united;
  in ``builtinToolPolicy`` a tool the base sets to ``ask`` stays ``ask``
  (a policy may tighten ``allow`` to ``ask``, never the reverse); any other
  list or mapping (``banner``) replaces the base's whole.
* **The response** (MANAGED-25, MANAGED-26) is one JSON object of flat Desktop
  managed-config keys: the inherited block's keys as written, plus what the
  gateway computes from the served managed-settings document (``cli`` after
  the merge of §17.3, so exactly what Claude Code gets):

  - ``inferenceProvider: gateway`` and ``inferenceGatewayBaseUrl`` (public_url,
    else the address the request came to);
  - ``inferenceModels``: ``[{"name": id}]`` for each catalog model the policy
    allows, in the order of ``availableModels`` (the first is Desktop's
    default), every allowed catalog model when it has none;
  - ``disabledBuiltinTools``: bare tool names in ``permissions.deny`` (not
    scoped rules like ``Bash(npm *)``, nor MCP tools), united with the block's;
  - ``coworkEgressAllowedHosts``: the block's list if set, else
    ``sandbox.network.allowedDomains``;
  - with telemetry relayed (``telemetry.forward_to`` and ``public_url``, as
    for TEL-6): ``otlpEndpoint`` (the gateway), ``otlpProtocol``
    (``http/json`` only when the policy's ``env`` sets
    ``OTEL_EXPORTER_OTLP_PROTOCOL=http/json``, else ``http/protobuf``) and
    ``otlpResourceAttributes``: ``telemetry.resource_attributes`` plus the
    caller's ``user.email``, ``user.groups``, ``enduser.id`` (the email) and
    ``enduser.sub``, each left out when Desktop could not carry it (§9.4).

  Keys are serialized sorted (:func:`canonical_json.dumps`), so one policy and
  person always get the same bytes.

Everything that depends only on the policy is worked out once per policy and
kept; a request adds the base URL and the caller's identity.

Pure: no I/O, no awaits.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from gateway.config import desktop_keys
from gateway.policy import canonical_json
from gateway.policy.policies import Matched, ModelAccess, Policies, telemetry_env

__all__ = [
    "NOT_CONFIGURED",
    "NOT_OPTED_IN",
    "NO_POLICY",
    "Denied",
    "DesktopBootstrap",
    "Served",
    "boot_warnings",
    "bare_tools",
    "identity_attributes",
    "inherit",
]

# Audit reasons of desktop_bootstrap.denied, as the other gateway names them.
NOT_CONFIGURED = "not_configured"
NO_POLICY = "no_policy_matched"
NOT_OPTED_IN = "policy_not_opted_in"

_MESSAGES = {
    NOT_CONFIGURED: 'Claude Desktop is not configured on this gateway: no managed policy has a "desktop:" block',
    NO_POLICY: "no managed policy applies to you, so this gateway has no Claude Desktop configuration for you",
    NOT_OPTED_IN: 'the managed policy that applies to you does not turn on Claude Desktop (it has no "desktop:" '
    "block, and neither has the match: {} base)",
}

# What Desktop can carry in a resource attribute (protocol §9.4): the percent-encoded
# value at most 255 characters; a sub or email of printable ASCII without these.
MAX_ATTRIBUTE_CHARS = 255
_ATTRIBUTE_FORBIDDEN = frozenset(',;=\\"% ')
_BARE_TOOL = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Denied:
    """No bootstrap for this caller: a 404 with ``message``, audited with ``reason``."""

    reason: str
    message: str
    policy_index: int | None


@dataclass(frozen=True, slots=True)
class Served:
    """The 200 body for one caller, and the document it encodes."""

    policy_index: int
    document: dict[str, Any]
    body: bytes


@dataclass(frozen=True, slots=True)
class _PolicyPart:
    """What one opted-in policy's bootstrap holds before the caller is known."""

    document: dict[str, Any]
    resource_attributes: dict[str, str] | None  # None: telemetry is not relayed


class DesktopBootstrap:
    """Every policy's Desktop bootstrap, for ``cfg`` and the :class:`Policies` built from it."""

    def __init__(self, cfg: Any, policies: Policies) -> None:
        listed = tuple(cfg.managed.policies) if cfg.managed is not None else ()
        self._blocks: tuple[dict[str, Any] | None, ...] = tuple(p.desktop for p in listed)
        self._base_index = _base_index(listed)
        self.configured = any(block is not None for block in self._blocks)
        self._policies = policies
        self._public_url = cfg.listen.public_url.rstrip("/") if cfg.listen.public_url else None
        self._telemetry = telemetry_env(cfg)
        self._resource_attributes = dict(cfg.telemetry.resource_attributes) if self._telemetry else None
        self._parts: dict[int, _PolicyPart | None] = {}  # by policy index, filled on first use

    def answer(self, principal: Any, request_base_url: str) -> Served | Denied:
        """The bootstrap for ``principal`` (``.sub``, ``.email``, ``.groups``), or why there is none.

        ``request_base_url``: the scheme and host the request came to, used as the
        inference address only when ``listen.public_url`` is not set.
        """
        if not self.configured:
            return Denied(NOT_CONFIGURED, _MESSAGES[NOT_CONFIGURED], None)
        matched = self._policies.match(principal)
        if matched is None:
            return Denied(NO_POLICY, _MESSAGES[NO_POLICY], None)
        part = self._part(matched)
        if part is None:
            return Denied(NOT_OPTED_IN, _MESSAGES[NOT_OPTED_IN], matched.index)
        document = dict(part.document)
        document["inferenceGatewayBaseUrl"] = self._public_url or request_base_url.rstrip("/")
        if part.resource_attributes is not None:
            document["otlpResourceAttributes"] = {**part.resource_attributes, **identity_attributes(principal)}
        return Served(matched.index, document, canonical_json.dumps(document))

    def _part(self, matched: Matched) -> _PolicyPart | None:
        try:
            return self._parts[matched.index]
        except KeyError:
            pass
        block = self.effective_block(matched.index)
        part = None if block is None else self._compile(block, matched)
        self._parts[matched.index] = part
        return part

    def effective_block(self, index: int) -> dict[str, Any] | None:
        """Policy ``index``'s desktop block after inheritance, or None when it is not opted in."""
        own = self._blocks[index]
        base = self._blocks[self._base_index] if self._base_index is not None else None
        if index == self._base_index or base is None:
            return copy.deepcopy(own)
        return inherit(base, own or {})

    def _compile(self, block: Mapping[str, Any], matched: Matched) -> _PolicyPart:
        settings = matched.settings
        document = copy.deepcopy(dict(block))
        document["inferenceProvider"] = "gateway"
        document["inferenceModels"] = [{"name": m} for m in self._models(matched)]
        permissions = settings.get("permissions")
        deny = permissions.get("deny") if isinstance(permissions, dict) else None
        disabled = _union(bare_tools(deny), block.get("disabledBuiltinTools", []))
        if disabled:
            document["disabledBuiltinTools"] = disabled
        else:
            document.pop("disabledBuiltinTools", None)
        egress = block.get("coworkEgressAllowedHosts", _sandbox_domains(settings))
        if egress is not None:
            document["coworkEgressAllowedHosts"] = list(egress)
        if self._telemetry is None:
            return _PolicyPart(document, None)
        document["otlpEndpoint"] = self._telemetry["OTEL_EXPORTER_OTLP_ENDPOINT"]
        document["otlpProtocol"] = _protocol(settings)
        return _PolicyPart(document, dict(self._resource_attributes or {}))

    def _models(self, matched: Matched) -> list[str]:
        """Catalog ids the policy allows, in the order its availableModels names them."""
        catalog = self._policies.catalog_ids
        allowed = [m for m in catalog if matched.access.allows(m)]
        available = matched.settings.get("availableModels")
        if not isinstance(available, list):
            return allowed
        exact = matched.settings.get("availableModelsMatch") == "exact"
        ordered: list[str] = []
        for entry in available:
            # One entry at a time, so "sonnet" before "opus" puts every Sonnet first.
            one = ModelAccess([str(entry)], None, exact, {})
            ordered += [m for m in allowed if m not in ordered and one.allows(m)]
        # Anything allowed only through an alias pairing (alias ↔ dated id) comes last.
        return ordered + [m for m in allowed if m not in ordered]


def _base_index(listed: tuple[Any, ...]) -> int | None:
    # The same base Policies merges onto: the first policy with match: {}.
    return next(
        (i for i, p in enumerate(listed) if p.match.groups is None and p.match.email_domain is None),
        None,
    )


def inherit(base: Mapping[str, Any], role: Mapping[str, Any]) -> dict[str, Any]:
    """``role``'s desktop block laid over ``base``'s (protocol §4.5); neither is changed."""
    merged = copy.deepcopy(dict(base))
    for key, value in role.items():
        if key == "disabledBuiltinTools" and isinstance(merged.get(key), list) and isinstance(value, list):
            merged[key] = _union(merged[key], value)
        elif key == "builtinToolPolicy" and isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = _tool_policy(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _tool_policy(base: Mapping[str, str], role: Mapping[str, str]) -> dict[str, str]:
    merged = dict(base)
    for tool, state in role.items():
        if base.get(tool, "allow") == "allow":
            merged[tool] = state
    return merged


def _union(first: list[Any], second: list[Any]) -> list[Any]:
    return list(dict.fromkeys([*first, *second]))


def bare_tools(deny: Any) -> list[str]:
    """The ``permissions.deny`` entries Desktop can disable: whole built-in tools, not scoped
    rules (``Bash(npm *)``) nor MCP tools (``mcp__server__tool``)."""
    if not isinstance(deny, list):
        return []
    return [e for e in deny if isinstance(e, str) and _BARE_TOOL.fullmatch(e) and not e.startswith("mcp__")]


def _sandbox_domains(settings: Mapping[str, Any]) -> list[Any] | None:
    sandbox = settings.get("sandbox")
    network = sandbox.get("network") if isinstance(sandbox, dict) else None
    domains = network.get("allowedDomains") if isinstance(network, dict) else None
    return domains if isinstance(domains, list) else None


def _protocol(settings: Mapping[str, Any]) -> str:
    # Matched.settings carries the gateway's telemetry env under the policy's own
    # values, so this reads the policy's choice when it made one.
    env = settings.get("env")
    chosen = env.get("OTEL_EXPORTER_OTLP_PROTOCOL") if isinstance(env, dict) else None
    return "http/json" if chosen == "http/json" else "http/protobuf"


def identity_attributes(principal: Any) -> dict[str, str]:
    """The caller's identity as Desktop's OTLP resource attributes (protocol §9.4); a value
    Desktop could not carry is left out rather than cut."""
    out: dict[str, str] = {}
    email = principal.email
    if email and _carriable(email):
        out["user.email"] = email
        out["enduser.id"] = email
    groups = ",".join(principal.groups)
    if groups and not any("," in g or "=" in g for g in principal.groups) and _short(groups):
        out["user.groups"] = groups
    if principal.sub and _carriable(principal.sub):
        out["enduser.sub"] = principal.sub
    return out


def _carriable(value: str) -> bool:
    return _short(value) and all(" " < ch <= "~" and ch not in _ATTRIBUTE_FORBIDDEN for ch in value)


def _short(value: str) -> bool:
    return len(quote(value, safe="")) <= MAX_ATTRIBUTE_CHARS


def boot_warnings(cfg: Any) -> list[str]:
    """Desktop blocks that boot but may not do what was meant: deprecated keys, and a
    policy trying to relax a tool the base set to ask."""
    listed = tuple(cfg.managed.policies) if cfg.managed is not None else ()
    base_index = _base_index(listed)
    base_policy = (listed[base_index].desktop or {}) if base_index is not None else {}
    base_tools = base_policy.get("builtinToolPolicy")
    warnings: list[str] = []
    for i, policy in enumerate(listed):
        if policy.desktop is None:
            continue
        path = f"managed.policies[{i}].desktop"
        warnings += desktop_keys.deprecations(policy.desktop, path)
        tools = policy.desktop.get("builtinToolPolicy")
        if i == base_index or not isinstance(base_tools, dict) or not isinstance(tools, dict):
            continue
        for tool, state in tools.items():
            if state == "allow" and base_tools.get(tool, "allow") != "allow":
                warnings.append(
                    f"{path}.builtinToolPolicy.{tool}: the match: {{}} base sets it to {base_tools[tool]}, "
                    "which a policy cannot relax; these people keep it"
                )
    return warnings
