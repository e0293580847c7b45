"""Boot-time checks of a policy's ``cli`` document (a managed-settings document).

A misspelt key in a managed-settings document is silently ignored by Claude
Code, so an administrator who wrote ``availableModel`` would believe a model
allowlist is in force when none is. The gateway therefore refuses to start on
a top-level key missing from the checked-in list ``data/managed_settings_keys.json``
(dated, with its sources), and on a value whose JSON type that key never takes.
Sub-trees are left to the client, except that everything must be plain JSON:
the gateway serializes the document canonically and checksums it (SPEC §17.2).

``env``, ``pluginConfigs`` and ``permissions`` are open by design: their keys
are environment variables, plugin ids and permission lists that grow with
every client release.

Pure: reads one data file shipped with the package.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any, NamedTuple

from gateway.config.schema import dotted, kind

__all__ = ["KeyList", "check", "key_list"]


class KeyList(NamedTuple):
    compiled: str
    types: dict[str, tuple[str, ...]]  # key → JSON types it may take ("any" skips the check)
    open: frozenset[str]
    rejected: dict[str, str]  # key → why, with what to use instead


@cache
def key_list() -> KeyList:
    raw = json.loads(resources.files("gateway").joinpath("data/managed_settings_keys.json").read_text())
    return KeyList(
        raw["compiled"],
        {k: tuple(v) for k, v in raw["keys"].items()},
        frozenset(raw["open"]),
        dict(raw["rejected"]),
    )


def check(doc: Mapping[Any, Any], path: str) -> list[tuple[str, str]]:
    """Every problem of the managed-settings document ``doc`` found at ``path``
    (e.g. ``managed.policies[0].cli``), as (dotted path, message)."""
    keys = key_list()
    issues: list[tuple[str, str]] = []
    for key, value in doc.items():
        here = dotted(path, key)
        if not isinstance(key, str):
            issues.append((here, "keys must be strings; quote it"))
            continue
        if key in keys.rejected:
            issues.append((here, keys.rejected[key]))
            continue
        types = keys.types.get(key)
        if types is None:
            issues.append(
                (
                    here,
                    f"not a managed-settings key Gatehouse knows (its list of Claude Code settings is from "
                    f"{keys.compiled}); check the spelling, or upgrade Gatehouse if the setting is newer",
                )
            )
            continue
        if "any" not in types and _json_type(value) not in types:
            issues.append((here, f"expected {' or '.join(_NAMES[t] for t in types)}, got {kind(value)}"))
            continue
        _check_plain_json(value, here, issues)
    return issues


_NAMES = {
    "string": "a string",
    "boolean": "true/false",
    "number": "a number",
    "array": "a list",
    "object": "a mapping",
}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null" if value is None else type(value).__name__


def _check_plain_json(value: Any, path: str, issues: list[tuple[str, str]]) -> None:
    """Only values JSON can carry unchanged may be served (and checksummed)."""
    if isinstance(value, dict):
        for key, item in value.items():
            here = dotted(path, key)
            if not isinstance(key, str):
                issues.append((here, "keys must be strings; quote it"))
            else:
                _check_plain_json(item, here, issues)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain_json(item, f"{path}[{i}]", issues)
    elif isinstance(value, float) and not math.isfinite(value):
        issues.append((path, "must be a finite number; JSON has no infinity or NaN"))
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        issues.append((path, "is too large: clients read numbers as doubles and would see a different value"))
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        issues.append((path, f"{type(value).__name__} values cannot be sent as JSON"))
