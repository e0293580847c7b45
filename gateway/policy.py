"""Managed policies: which policy applies to a caller, what it serves, which models it allows.

Theory of operation. Everything is decided at boot from ``managed.policies``:

* **Selection** (SPEC MANAGED-19). Policies are tried in order and the first
  whose ``match`` fits the caller wins. ``{}`` fits everyone; ``groups`` fits
  when the token's groups share a member with the list (case-sensitive);
  ``email_domain`` fits the part after the last ``@`` of the token's email
  (without case); both keys must both fit. No policy fits → nothing is served
  (404) and every catalog model is allowed.
* **Merge** (SPEC MANAGED-20). The winner's ``cli`` document is laid over the
  ``match: {}`` policy's (the base; the first such policy when there are
  several): allow-lists replace, deny-lists and hook lists are united, records
  are merged one level deep, anything else is replaced. When the winner is the
  base, its document is served as written.
* **Serving.** Each policy's merged document, its canonical bytes, checksum and
  the exact 200 body are computed once here; a request costs a cached match
  (keyed by groups and email domain) and a dict lookup.
* **Model access** (SPEC MSG-9). ``availableModels`` entries are ids (allowing
  that id and its dated forms ``<id>-YYYYMMDD``), version prefixes such as
  ``claude-opus-4`` or ``opus-4-5`` (allowing every id that continues them at a
  ``-``), or family aliases ``opus``/``sonnet``/``haiku``/``fable`` (allowing the
  family). ``availableModelsMatch: exact`` makes an id entry allow only itself.
  A family alias listed next to a more specific entry of the same family does
  not widen it, as in Claude Code's own picker. ``deniedModels`` entries match
  the same way and win over the allowlist.

Pure: no I/O beyond the package's model list, no awaits.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from gateway import canonical_json
from gateway.routing import load_builtin_models
from protocol_spec.wire import ManagedSettings, encoder

__all__ = ["ALLOW_ALL", "Matched", "ModelAccess", "Policies", "merge_settings", "STARTING_MODEL"]

# The model a gateway-signed-in Claude Code starts on when nobody chose one (SPEC MODEL-8).
STARTING_MODEL = "claude-opus-4-7"
FAMILIES = ("opus", "sonnet", "haiku", "fable")
# Claude Code aliases that stand for more than one family or for a family by another name.
_ALIAS_FAMILIES = {"opusplan": ("opus", "sonnet"), "best": ("opus",)}
_DATED = re.compile(r"^(?P<base>.+)-(?P<date>\d{8})$")
MATCH_CACHE_ENTRIES = 4096
MODEL_CACHE_ENTRIES = 1024
HINT_HEADERS_ENV = "CLAUDE_CODE_GATEWAY_HINT_HEADERS"

# ---------------------------------------------------------------- merging

# Lists whose entries restrict: the base's entries stay in force under every policy.
_UNION_KEYS = frozenset({"disabledMcpjsonServers", "deniedMcpServers", "blockedMarketplaces", "deniedModels"})
_UNION_PERMISSIONS = frozenset({"deny", "ask"})
# Records: the policy's entries win key by key, the base's others remain.
_RECORD_KEYS = frozenset({"env", "modelOverrides", "skillOverrides"})


def merge_settings(base: Mapping[str, Any], role: Mapping[str, Any]) -> dict[str, Any]:
    """``role`` laid over ``base`` by the rules above; neither input is changed."""
    merged = copy.deepcopy(dict(base))
    for key, value in role.items():
        old = merged.get(key)
        if key in _UNION_KEYS and isinstance(old, list) and isinstance(value, list):
            merged[key] = _union(old, value)
        elif key in _RECORD_KEYS and isinstance(old, dict) and isinstance(value, dict):
            merged[key] = {**old, **copy.deepcopy(value)}
        elif key == "permissions" and isinstance(old, dict) and isinstance(value, dict):
            merged[key] = _merge_permissions(old, value)
        elif key == "hooks" and isinstance(old, dict) and isinstance(value, dict):
            merged[key] = _merge_hooks(old, value)
        else:
            # availableModels and permissions.allow land here too: an allow-list replaces.
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_permissions(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    merged = dict(old)
    for key, value in new.items():
        if key in _UNION_PERMISSIONS and isinstance(old.get(key), list) and isinstance(value, list):
            merged[key] = _union(old[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_hooks(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    # Every event's matcher list is united, so a base hook (audit, guard) runs under every policy.
    merged = dict(old)
    for event, value in new.items():
        if isinstance(old.get(event), list) and isinstance(value, list):
            merged[event] = _union(old[event], value)
        else:
            merged[event] = copy.deepcopy(value)
    return merged


def _union(first: list[Any], second: list[Any]) -> list[Any]:
    """Base entries, then the policy's new ones; entries compared by their canonical JSON
    since hook matchers and MCP server rules are objects."""
    seen: set[bytes] = set()
    out: list[Any] = []
    for item in [*first, *second]:
        key = canonical_json.dumps(item)
        if key not in seen:
            seen.add(key)
            out.append(copy.deepcopy(item))
    return out


# ---------------------------------------------------------------- model access


def _family_of(model: str) -> str | None:
    for part in model.split("-"):
        if part in FAMILIES:
            return part
    return None


def _normalize_entry(entry: str) -> str:
    entry = entry.strip().lower().removesuffix("[1m]")
    if entry.split("-", 1)[0] in FAMILIES and "-" in entry:
        return "claude-" + entry  # "opus-4-5" is the version prefix claude-opus-4-5
    return entry


class _Rules:
    """One list of entries (availableModels or deniedModels), compiled for matching."""

    def __init__(self, entries: Iterable[str], exact: bool, narrow: bool) -> None:
        normalized = [_normalize_entry(e) for e in entries]
        ids = [e for e in normalized if e not in FAMILIES and e not in _ALIAS_FAMILIES]
        # Only an allowlist narrows; a family in a deny-list blocks the whole family.
        specific = {_family_of(e) for e in ids} if narrow else set()
        families: set[str] = set()
        for e in normalized:
            for fam in _ALIAS_FAMILIES.get(e, (e,) if e in FAMILIES else ()):
                # A bare family next to a narrower entry of that family does not widen it.
                if fam not in specific:
                    families.add(fam)
        self.families = frozenset(families)
        self.ids = frozenset(ids)
        self.prefixes = () if exact else tuple(ids)

    def matches(self, candidates: Iterable[str]) -> bool:
        for model in candidates:
            if model in self.ids or _family_of(model) in self.families:
                return True
            if any(model.startswith(p + "-") for p in self.prefixes):
                return True
        return False


class ModelAccess:
    """Which models one policy allows; ``check`` answers from a bounded cache."""

    def __init__(
        self,
        available: list[str] | None,
        denied: list[str] | None,
        exact: bool,
        aliases: Mapping[str, str],
    ) -> None:
        self._allow = None if available is None else _Rules(available, exact, narrow=True)
        self._deny = None if not denied else _Rules(denied, exact, narrow=False)
        self._aliases = aliases  # each alias ↔ its dated id, both directions
        self._cache: dict[str, str | None] = {}

    @property
    def restricted(self) -> bool:
        return self._allow is not None or self._deny is not None

    def check(self, model: str) -> str | None:
        """None when ``model`` is allowed, else the 400 message naming it."""
        try:
            return self._cache[model]
        except KeyError:
            pass
        answer = self._decide(model)
        if len(self._cache) >= MODEL_CACHE_ENTRIES:
            self._cache.pop(next(iter(self._cache)))  # oldest first; model names are few
        self._cache[model] = answer
        return answer

    def allows(self, model: str) -> bool:
        return self.check(model) is None

    def _decide(self, model: str) -> str | None:
        if not self.restricted:
            return None
        candidates = self._candidates(model)
        if self._deny is not None and self._deny.matches(candidates):
            return f"model {model} is blocked by your role's deniedModels list"
        if self._allow is not None and not self._allow.matches(candidates):
            return f"model {model} is not in your role's availableModels allowlist"
        return None

    def _candidates(self, model: str) -> tuple[str, ...]:
        # The id as sent, the undated id of a dated form, and the other name of a
        # built-in model (alias ↔ dated id): an entry naming any of them counts.
        found = [model.strip().lower()]
        dated = _DATED.match(found[0])
        if dated:
            found.append(dated["base"])
        for m in list(found):
            other = self._aliases.get(m)
            if other:
                found.append(other)
        return tuple(dict.fromkeys(found))


ALLOW_ALL = ModelAccess(None, None, False, {})


def _builtin_aliases() -> dict[str, str]:
    pairs: dict[str, str] = {}
    for b in load_builtin_models():
        if b.alias:
            pairs[b.alias.lower()] = b.id.lower()
            pairs[b.id.lower()] = b.alias.lower()
    return pairs


# ---------------------------------------------------------------- policies


@dataclass(frozen=True, slots=True)
class Matched:
    """What one policy serves; ``body`` is the exact 200 response body."""

    index: int
    settings: dict[str, Any]
    checksum: str
    body: bytes
    etag: str
    access: ModelAccess
    hint_headers: bool  # the policy turns on the client's x-claude-code-* hint headers


@dataclass(frozen=True, slots=True)
class _Matcher:
    groups: frozenset[str] | None
    domain: str | None

    def fits(self, groups: tuple[str, ...], domain: str | None) -> bool:
        if self.groups is not None and self.groups.isdisjoint(groups):
            return False
        return self.domain is None or self.domain == domain

    @property
    def everyone(self) -> bool:
        return self.groups is None and self.domain is None


class Policies:
    """All managed policies, compiled at boot.

    ``catalog_ids``: the ids ``/v1/models`` lists (used for boot warnings).
    ``pricing_rows``: the ``modelPricing`` value to inject into every policy that
    does not set its own (None when ``pricing`` is not configured).
    """

    def __init__(
        self, cfg: Any, catalog_ids: tuple[str, ...], pricing_rows: Mapping[str, Any] | None = None
    ) -> None:
        policies = tuple(cfg.managed.policies) if cfg.managed is not None else ()
        self.configured = bool(policies)
        self.catalog_ids = catalog_ids
        self.warnings: list[str] = []
        self._matchers = tuple(_matcher(p.match) for p in policies)
        base_index = next((i for i, m in enumerate(self._matchers) if m.everyone), None)
        base = (policies[base_index].cli or {}) if base_index is not None else {}
        aliases = _builtin_aliases()
        self._served: tuple[Matched, ...] = tuple(
            _compile(
                i,
                merge_settings(base, p.cli or {}) if i != base_index else copy.deepcopy(dict(base)),
                pricing_rows,
                aliases,
            )
            for i, p in enumerate(policies)
        )
        self._cache: dict[tuple[tuple[str, ...], str | None], Matched | None] = {}
        self.hint_headers = any(m.hint_headers for m in self._served)
        self._warn(base_index)

    def match(self, principal: Any) -> Matched | None:
        """The policy serving ``principal`` (anything with ``.groups`` and ``.email``), or None."""
        if not self.configured:
            return None
        key = (tuple(principal.groups), _domain_of(principal.email))
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = next((self._served[i] for i, m in enumerate(self._matchers) if m.fits(*key)), None)
        if len(self._cache) >= MATCH_CACHE_ENTRIES:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = found
        return found

    def access_for(self, principal: Any) -> ModelAccess:
        matched = self.match(principal)
        return ALLOW_ALL if matched is None else matched.access

    def _warn(self, base_index: int | None) -> None:
        for i, served in enumerate(self._served):
            available = served.settings.get("availableModels")
            where = f"managed.policies[{i}]"
            if isinstance(available, list) and not available:
                self.warnings.append(
                    f"{where}: availableModels is empty, so the gateway refuses every model for these "
                    "developers; list the models they may use, or remove the key"
                )
            elif (
                served.access.check(STARTING_MODEL) is not None
                and "model" not in served.settings
                and served.settings.get("enforceAvailableModels") is not True
            ):
                self.warnings.append(
                    f"{where}: the policy does not allow {STARTING_MODEL}, the model Claude Code starts on when "
                    "nobody picked one, and sets neither model nor enforceAvailableModels: true; these developers "
                    "get a 400 on every request until they choose an allowed model with /model. Set "
                    "enforceAvailableModels: true (Default then resolves to an allowed model) or set model"
                )
        if base_index is not None:
            for i in range(base_index + 1, len(self._served)):
                self.warnings.append(
                    f"managed.policies[{i}] never applies: managed.policies[{base_index}] has match: {{}} and "
                    "matches everyone first; list the catch-all last"
                )


def _matcher(match: Any) -> _Matcher:
    groups = frozenset(match.groups) if match.groups is not None else None
    domain = None
    if match.email_domain is not None:
        # The same normalization the loader validated: trimmed, one leading @ dropped.
        domain = match.email_domain.strip().removeprefix("@").lower()
    return _Matcher(groups, domain)


def _domain_of(email: str | None) -> str | None:
    if not email or "@" not in email:
        return None
    return email.rsplit("@", 1)[1].lower()


def _compile(
    index: int, settings: dict[str, Any], pricing_rows: Mapping[str, Any] | None, aliases: Mapping[str, str]
) -> Matched:
    if pricing_rows is not None and "modelPricing" not in settings:
        # A policy that sets modelPricing (even {} to opt out) keeps its own.
        settings["modelPricing"] = copy.deepcopy(dict(pricing_rows))
    checksum = canonical_json.checksum(settings)
    # The settings go out as the very canonical bytes the checksum covers (Raw is
    # copied, never re-encoded); uuid names the served document, so it is the
    # checksum too (SPEC MANAGED-4).
    canonical = msgspec.Raw(canonical_json.dumps(settings))
    body = encoder.encode(ManagedSettings(uuid=checksum, checksum=checksum, settings=canonical))
    available = settings.get("availableModels")
    denied = settings.get("deniedModels")
    access = ModelAccess(
        [str(m) for m in available] if isinstance(available, list) else None,
        [str(m) for m in denied] if isinstance(denied, list) else None,
        settings.get("availableModelsMatch") == "exact",
        aliases,
    )
    env = settings.get("env")
    hints = isinstance(env, dict) and str(env.get(HINT_HEADERS_ENV, "")).strip().lower() in ("1", "true")
    return Matched(index, settings, checksum, body, '"' + checksum + '"', access, hints)
