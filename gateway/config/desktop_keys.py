"""Boot-time checks of a policy's ``desktop`` block (SPEC MANAGED-24).

The block holds flat Claude Desktop managed-config keys that the gateway serves
to Desktop from ``GET /user/bootstrap``. Desktop drops a key it does not know
or whose value it rejects, silently, so an administrator who misspelt
``chatTabEnabld`` would believe a tab is off when it is not. The gateway
therefore refuses to start on, each at its dotted path:

* a key missing from :data:`ADMIN_KEYS`, or a value of the wrong type or form;
* a key the gateway computes itself (:data:`COMPUTED`, and any other
  ``inference*`` or ``otlp*`` key): the inference connection, the model list
  and the OTLP relay come from the rest of the configuration;
* a key Desktop reads only from the device's own MDM profile (:data:`MDM_ONLY`),
  or only when signed in to claude.ai (:data:`FIRST_PARTY_ONLY`);
* an old name of a key (:data:`LEGACY`), naming the current one.

A deprecated key (:data:`DEPRECATED`) is served but warned about.

The list was compiled on :data:`COMPILED` from the protocol notes (§4.5:
``disabledBuiltinTools``, ``coworkEgressAllowedHosts``, ``builtinToolPolicy``,
``banner``, ``chatTabEnabled``, ``bootstrapUrl``) and Claude Desktop's public
third-party configuration reference and its changelog up to Desktop 1.14271;
a newer Desktop key needs a Gatehouse upgrade first, as with the other gateway.

Values are native YAML/JSON types (``true``, not the string ``"true"`` an MDM
profile would hold): the bootstrap response is JSON.

Pure: values in, (path, message) pairs out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from gateway.config.schema import Unresolved, dotted, kind

__all__ = [
    "ADMIN_KEYS",
    "COMPILED",
    "COMPUTED",
    "DEPRECATED",
    "FIRST_PARTY_ONLY",
    "LEGACY",
    "MDM_ONLY",
    "TOOL_POLICY_VALUES",
    "check",
    "deprecations",
]

COMPILED = "2026-11-25"

# A value check: (value, path) → problems at that path or below it.
Check = Callable[[Any, str], list[tuple[str, str]]]

# builtinToolPolicy pins the approval state of a tool that stays enabled; removing
# a tool is disabledBuiltinTools' job. "ask" is the stricter of the two.
TOOL_POLICY_VALUES = ("allow", "ask")

_HOST = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# A bare tool name: no scope such as Bash(npm *), which Desktop has no equivalent for.
_TOOL = re.compile(r"[A-Za-z0-9_.:-]+")
_MAX_INT = 2**31 - 1


def _boolean(value: Any, path: str) -> list[tuple[str, str]]:
    return [] if isinstance(value, bool) else [(path, f"expected true/false, got {kind(value)}")]


def _count(value: Any, path: str) -> list[tuple[str, str]]:
    if isinstance(value, bool) or not isinstance(value, int):
        return [(path, f"expected a whole number, got {kind(value)}")]
    if not 0 < value <= _MAX_INT:
        return [(path, f"must be between 1 and {_MAX_INT}")]
    return []


def _https_url(value: Any, path: str) -> list[tuple[str, str]]:
    if not isinstance(value, str):
        return [(path, f"expected a string, got {kind(value)}")]
    if not value.startswith("https://") or len(value) == len("https://"):
        return [(path, "must be an https:// URL")]
    return []


def _uuid(value: Any, path: str) -> list[tuple[str, str]]:
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        return [(path, "must be a UUID such as 00000000-0000-0000-0000-000000000000")]
    return []


def _list_of(item: Callable[[Any], str | None]) -> Check:
    """A list whose entries each pass ``item`` (which returns why an entry fails, or None)."""

    def check(value: Any, path: str) -> list[tuple[str, str]]:
        if not isinstance(value, list):
            return [(path, f"expected a list, got {kind(value)}")]
        return [(f"{path}[{i}]", why) for i, entry in enumerate(value) if (why := item(entry)) is not None]

    return check


def _folder(entry: Any) -> str | None:
    return None if isinstance(entry, str) and entry.strip() else "must be a non-empty path"


def _host(entry: Any) -> str | None:
    if isinstance(entry, str) and (entry == "*" or _HOST.fullmatch(entry)):
        return None
    return 'must be a host name such as github.com or *.example.com ("*" allows every host), not a URL'


def _tool(entry: Any) -> str | None:
    if isinstance(entry, str) and _TOOL.fullmatch(entry):
        return None
    return "must be a bare tool name such as WebFetch (Desktop has no scoped rules like Bash(npm *))"


def _tool_policy(value: Any, path: str) -> list[tuple[str, str]]:
    if not isinstance(value, dict):
        return [(path, f"expected a mapping of tool name to {' or '.join(TOOL_POLICY_VALUES)}, got {kind(value)}")]
    issues = []
    for tool, state in value.items():
        here = dotted(path, tool)
        if _tool(tool) is not None:
            issues.append((here, "must be keyed by a bare tool name such as WebFetch"))
        elif state not in TOOL_POLICY_VALUES:
            issues.append((here, f"must be {' or '.join(TOOL_POLICY_VALUES)} (to remove a tool, list it in disabledBuiltinTools)"))
    return issues


def _object(value: Any, path: str) -> list[tuple[str, str]]:
    if not isinstance(value, dict):
        return [(path, f"expected a mapping, got {kind(value)}")]
    return _plain_json(value, path)


def _mcp_servers(value: Any, path: str) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        return [(path, f"expected a list of servers, got {kind(value)}")]
    issues = []
    for i, server in enumerate(value):
        here = f"{path}[{i}]"
        if not isinstance(server, dict):
            issues.append((here, f"expected a mapping with name and url, got {kind(server)}"))
            continue
        for field in ("name", "url"):
            if not isinstance(server.get(field), str) or not server[field].strip():
                issues.append((f"{here}.{field}", "is required, as a non-empty string"))
        issues += _plain_json(server, here)
    return issues


def _plain_json(value: Any, path: str) -> list[tuple[str, str]]:
    """Only what JSON carries unchanged can be served (YAML can also write dates and the like)."""
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            if not isinstance(key, str):
                out.append((dotted(path, key), "keys must be strings; quote it"))
            else:
                out += _plain_json(item, dotted(path, key))
        return out
    if isinstance(value, list):
        return [issue for i, item in enumerate(value) for issue in _plain_json(item, f"{path}[{i}]")]
    if isinstance(value, float) and not math.isfinite(value):
        return [(path, "must be a finite number")]
    if value is not None and not isinstance(value, (str, int, float, bool)):
        return [(path, f"{type(value).__name__} values cannot be sent as JSON")]
    return []


# Keys an administrator may set in a desktop block, with the check of their value.
ADMIN_KEYS: dict[str, Check] = {
    # Tabs and surfaces
    "chatTabEnabled": _boolean,
    "coworkTabEnabled": _boolean,
    "isClaudeCodeForDesktopEnabled": _boolean,
    "chatAdvancedFileAnalysisEnabled": _boolean,
    "autoModeEnabled": _boolean,
    "skillCreationEnabled": _boolean,
    "claudeAiImport": _boolean,
    "betaFeaturesEnabled": _boolean,
    # Sandbox, workspace and tools
    "allowedWorkspaceFolders": _list_of(_folder),
    "coworkEgressAllowedHosts": _list_of(_host),
    "disabledBuiltinTools": _list_of(_tool),
    "builtinToolPolicy": _tool_policy,
    # Connectors, extensions, plugins
    "managedMcpServers": _mcp_servers,
    "organizationPluginsUrl": _https_url,
    "isDesktopExtensionEnabled": _boolean,
    "isDesktopExtensionDirectoryEnabled": _boolean,
    "isDesktopExtensionSignatureRequired": _boolean,
    "isLocalDevMcpEnabled": _boolean,
    # Updates and Anthropic-bound telemetry
    "disableAutoUpdates": _boolean,
    "autoUpdaterEnforcementHours": _count,
    "disableEssentialTelemetry": _boolean,
    "disableNonessentialTelemetry": _boolean,
    "disableNonessentialServices": _boolean,
    # Usage limits per device (not the connection, despite the prefix)
    "inferenceMaxTokensPerWindow": _count,
    "inferenceTokenWindowHours": _count,
    # Organization and appearance
    "deploymentOrganizationUuid": _uuid,
    "banner": _object,
}

# Served, but Desktop is retiring them.
DEPRECATED: dict[str, str] = {
    "betaFeaturesEnabled": "Desktop has deprecated betaFeaturesEnabled (1.14271) and may stop reading it",
}

_FROM_POLICY = "the gateway derives it from the policy"
COMPUTED: dict[str, str] = {
    "inferenceProvider": "the gateway sends inferenceProvider: gateway",
    "inferenceGatewayBaseUrl": "the gateway sends its own address (listen.public_url)",
    "inferenceGatewayApiKey": "Desktop uses its own gateway sign-in; a shared key would bypass it",
    "inferenceGatewayAuthScheme": "Desktop uses its own gateway sign-in",
    "inferenceCustomHeaders": "the gateway owns the inference connection",
    "inferenceSessionLifetimeSec": "session.ttl_hours decides how long a gateway sign-in lasts",
    "inferenceModels": f"{_FROM_POLICY}'s availableModels (set it in cli)",
    "modelDiscoveryEnabled": f"{_FROM_POLICY}'s availableModels (set it in cli)",
    "otlpEndpoint": "the gateway points Desktop at its own OTLP relay when telemetry.forward_to is set",
    "otlpProtocol": "set OTEL_EXPORTER_OTLP_PROTOCOL in the policy's cli.env instead",
    "otlpHeaders": "the gateway owns the OTLP relay; set telemetry.forward_to[].headers for the collector",
    "otlpResourceAttributes": "set telemetry.resource_attributes; the gateway adds the person's identity",
}
# Families of keys the gateway computes, for keys not named above.
_COMPUTED_PREFIXES = (
    ("inference", "it belongs to the inference connection, which is this gateway"),
    ("otlp", "it belongs to the OTLP relay, which is this gateway"),
)

MDM_ONLY: frozenset[str] = frozenset({"bootstrapUrl", "bootstrapOidc", "bootstrapEnabled", "disableDeploymentModeChooser"})
FIRST_PARTY_ONLY: frozenset[str] = frozenset(
    {"forceLoginOrgUUID", "loginSsoOrgDomain", "requireCoworkFullVmSandbox", "secureVmFeaturesEnabled"}
)
LEGACY: dict[str, str] = {
    "isDxtEnabled": "isDesktopExtensionEnabled",
    "isDxtDirectoryEnabled": "isDesktopExtensionDirectoryEnabled",
    "isDxtSignatureRequired": "isDesktopExtensionSignatureRequired",
}


def check(block: Mapping[Any, Any], path: str) -> list[tuple[str, str]]:
    """Every problem of the desktop block ``block`` found at ``path``
    (e.g. ``managed.policies[2].desktop``), as (dotted path, message)."""
    issues: list[tuple[str, str]] = []
    for key, value in block.items():
        here = dotted(path, key)
        if not isinstance(key, str):
            issues.append((here, "keys must be strings; quote it"))
            continue
        refusal = _refusal(key)
        if refusal is not None:
            issues.append((here, refusal))
        elif not isinstance(value, Unresolved):  # a ${VAR} left unread stands for any value
            issues += ADMIN_KEYS[key](value, here)
    return issues


def _refusal(key: str) -> str | None:
    if key in ADMIN_KEYS:
        return None
    if key in LEGACY:
        return f"is the old name of {LEGACY[key]}; use {LEGACY[key]}"
    if key in MDM_ONLY:
        return "Desktop reads it only from the device's MDM profile, never from the gateway; set it there"
    if key in FIRST_PARTY_ONLY:
        return "applies only when Desktop signs in to claude.ai, never through a gateway"
    if key in COMPUTED:
        return f"is computed by the gateway: {COMPUTED[key]}"
    for prefix, why in _COMPUTED_PREFIXES:
        if key.startswith(prefix):
            return f"is computed by the gateway: {why}"
    return (
        f"not a Claude Desktop key Gatehouse knows (its list is from {COMPILED}); check the spelling, "
        "or upgrade Gatehouse if the key is newer"
    )


def deprecations(block: Mapping[Any, Any], path: str) -> list[str]:
    """Boot warnings for deprecated keys that ``block`` still sets."""
    return [f"{dotted(path, key)}: {DEPRECATED[key]}" for key in block if key in DEPRECATED]
