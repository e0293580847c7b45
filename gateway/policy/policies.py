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
  the same way and win over the allowlist. A refusal names the catalog models
  the person may use (a bounded list), so the 400 says what to pick instead.
* **Boot warnings.** A policy that refuses one of the client's default models
  (``client_defaults`` in data/models.json: one per way of reaching a gateway)
  and names no ``model`` nor ``enforceAvailableModels: true`` is reported, since
  its people would get a 400 on their very first request.

Pure: no I/O beyond the package's model list, no awaits.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

import msgspec

from gateway.policy import canonical_json
from gateway.upstreams.routing import load_builtin_models
from protocol_spec.wire import ManagedSettings, encoder

__all__ = ["ALLOW_ALL", "ClientDefault", "Matched", "ModelAccess", "Policies", "client_defaults", "merge_settings"]

FAMILIES = ("opus", "sonnet", "haiku", "fable")
# Claude Code aliases that stand for more than one family or for a family by another name.
_ALIAS_FAMILIES = {"opusplan": ("opus", "sonnet"), "best": ("opus",)}
_DATED = re.compile(r"^(?P<base>.+)-(?P<date>\d{8})$")
MATCH_CACHE_ENTRIES = 4096
MODEL_CACHE_ENTRIES = 1024
HINT_HEADERS_ENV = "CLAUDE_CODE_GATEWAY_HINT_HEADERS"
# A refusal names the models the person may use; a policy allowing whole families
# can match dozens, so the message stops at whichever of these comes first.
OFFER_MAX_MODELS = 10
OFFER_MAX_CHARS = 300


class ClientDefault(NamedTuple):
    """A model Claude Code asks for when nobody chose one (SPEC MODEL-8)."""

    id: str
    when: str  # how the client reached the gateway, in words for a warning
    reads_managed_settings: bool  # whether `model`/`enforceAvailableModels` can steer it


def client_defaults() -> tuple[ClientDefault, ...]:
    """The client's current default models, kept in data/models.json next to the catalog
    so one edit follows a client release."""
    raw = json.loads(resources.files("gateway").joinpath("data/models.json").read_text())
    return tuple(
        ClientDefault(m["id"], m["when"], bool(m["reads_managed_settings"])) for m in raw["client_defaults"]["models"]
    )

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
        catalog: tuple[str, ...] = (),
    ) -> None:
        self._allow = None if available is None else _Rules(available, exact, narrow=True)
        self._deny = None if not denied else _Rules(denied, exact, narrow=False)
        self._aliases = aliases  # each alias ↔ its dated id, both directions
        self._catalog = catalog  # the ids /v1/models may list, to name the allowed ones in a refusal
        self._offer: str | None = None
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
        reason = self._refusal(model)
        if reason is None:
            return None
        return f"model {model} {reason}{self._offer_text()}"

    def _refusal(self, model: str) -> str | None:
        if not self.restricted:
            return None
        candidates = self._candidates(model)
        if self._deny is not None and self._deny.matches(candidates):
            return "is blocked by your role's deniedModels list"
        if self._allow is not None and not self._allow.matches(candidates):
            return "is not in your role's availableModels allowlist"
        return None

    def _offer_text(self) -> str:
        """``; models you may use: …`` from the catalog, computed once, bounded in length."""
        if self._offer is not None:
            return self._offer
        if not self._catalog:
            self._offer = ""
            return ""
        allowed = [m for m in self._catalog if self._refusal(m) is None]  # as /v1/models lists them
        named: list[str] = []
        size = 0
        for m in allowed:
            if len(named) == OFFER_MAX_MODELS or (named and size + len(m) + 2 > OFFER_MAX_CHARS):
                break
            named.append(m[:OFFER_MAX_CHARS])
            size += len(named[-1]) + 2
        if not named:
            self._offer = "; your role allows none of this gateway's models"
        else:
            rest = len(allowed) - len(named)
            more = f" and {rest} more (GET /v1/models lists them all)" if rest else ""
            self._offer = f"; models you may use: {', '.join(named)}{more}"
        return self._offer

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
        telemetry = telemetry_env(cfg)
        self._served: tuple[Matched, ...] = tuple(
            _compile(
                i,
                merge_settings(base, p.cli or {}) if i != base_index else copy.deepcopy(dict(base)),
                pricing_rows,
                aliases,
                catalog_ids,
                telemetry,
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
        defaults = client_defaults()
        for i, served in enumerate(self._served):
            available = served.settings.get("availableModels")
            where = f"managed.policies[{i}]"
            if isinstance(available, list) and not available:
                self.warnings.append(
                    f"{where}: availableModels is empty, so the gateway refuses every model for these "
                    "developers; list the models they may use, or remove the key"
                )
                continue
            # A policy that names a starting model or enforces the list has chosen where its
            # people start; one that does neither and refuses a client default is an oversight.
            if "model" in served.settings or served.settings.get("enforceAvailableModels") is True:
                continue
            refused = [d for d in defaults if not served.access.allows(d.id)]
            if not refused:
                continue
            names = " or ".join(f"{d.id} (what Claude Code asks for when {d.when})" for d in refused)
            it = "it" if len(refused) == 1 else "them"
            unsteered = " or ".join(d.when for d in refused if not d.reads_managed_settings)
            caveat = (
                f" (a client {unsteered} never reads managed settings: only allowing the model spares it a --model)"
                if unsteered
                else ""
            )
            self.warnings.append(
                f"{where}: the policy does not allow {names}, and sets neither model nor "
                "enforceAvailableModels: true; these developers get a 400 on every request until they choose an "
                f"allowed model (/model or --model). Allow {it}, set enforceAvailableModels: true (Default then "
                f"resolves to an allowed model) or set model{caveat}"
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


def telemetry_env(cfg: Any) -> dict[str, str] | None:
    """What every served policy's ``env`` gains so signed-in clients export OTLP to this
    gateway (SPEC TEL-6): only with ``telemetry.forward_to`` and ``listen.public_url``."""
    telemetry, public_url = cfg.telemetry, cfg.listen.public_url
    if telemetry is None or not telemetry.forward_to or not public_url:
        return None
    wanted = {signal for d in telemetry.forward_to for signal in ("metrics", "logs", "traces") if getattr(d, signal)}
    env = {
        "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
        "OTEL_METRICS_EXPORTER": "otlp" if "metrics" in wanted else "none",
        "OTEL_LOGS_EXPORTER": "otlp" if "logs" in wanted else "none",
        "OTEL_TRACES_EXPORTER": "otlp" if "traces" in wanted else "none",
        "OTEL_EXPORTER_OTLP_ENDPOINT": public_url.rstrip("/"),
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    if telemetry.resource_attributes:
        # Values were checked at boot: nothing in them needs escaping in k=v,k=v.
        env["OTEL_RESOURCE_ATTRIBUTES"] = ",".join(f"{k}={v}" for k, v in telemetry.resource_attributes.items())
    return env


def _compile(
    index: int,
    settings: dict[str, Any],
    pricing_rows: Mapping[str, Any] | None,
    aliases: Mapping[str, str],
    catalog: tuple[str, ...],
    telemetry: Mapping[str, str] | None = None,
) -> Matched:
    if pricing_rows is not None and "modelPricing" not in settings:
        # A policy that sets modelPricing (even {} to opt out) keeps its own.
        settings["modelPricing"] = copy.deepcopy(dict(pricing_rows))
    if telemetry is not None:
        # A policy's own env value wins; the checksum covers what is added.
        own = settings.get("env")
        settings["env"] = {**telemetry, **(own if isinstance(own, dict) else {})}
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
        catalog,
    )
    env = settings.get("env")
    hints = isinstance(env, dict) and str(env.get(HINT_HEADERS_ENV, "")).strip().lower() in ("1", "true")
    return Matched(index, settings, checksum, body, '"' + checksum + '"', access, hints)
