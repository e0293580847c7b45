"""Which upstreams may serve a model, and under which id (SPEC "Models and routing").

Built once at boot from the config into plain dicts, so a request costs one
dict lookup:

* A **built-in** model (when ``auto_include_builtin_models``) is tried on every
  upstream in order, under the id that upstream's map gives or the provider's
  default id (for the Anthropic API: the dated id of an alias).
* A **custom** ``models[].id`` goes only to the upstreams named in its
  ``upstream_model`` map.
* A dated form ``<id>-YYYYMMDD`` of a catalog id routes like that id but keeps
  the dated id the client asked for.
* Anything else is refused before any network call, with one clause per upstream.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import TYPE_CHECKING, NamedTuple

from gateway.errors import GatewayError, Kind

if TYPE_CHECKING:
    from gateway.config.schema import Model, Upstream

# Providers that take Anthropic's own model ids, dated forms included.
_ANTHROPIC_IDS = frozenset({"anthropic", "anthropicAws"})
_DATED = re.compile(r"^(?P<base>.+)-(?P<date>20\d{6})$")


class BuiltinModel(NamedTuple):
    id: str
    display_name: str
    max_input_tokens: int | None
    alias: str | None
    bedrock: str | None = None
    vertex: str | None = None


def load_builtin_models() -> tuple[BuiltinModel, ...]:
    raw = json.loads(resources.files("gateway").joinpath("data/models.json").read_text())
    return tuple(
        BuiltinModel(
            m["id"], m["display_name"], m.get("max_input_tokens"), m.get("alias"), m.get("bedrock"), m.get("vertex")
        )
        for m in raw["models"]
    )


class Target(NamedTuple):
    upstream: int  # index into config.upstreams
    model: str  # the id that upstream receives


class CatalogEntry(NamedTuple):
    id: str
    display_name: str
    description: str | None
    max_input_tokens: int | None


class Routes:
    """Model id → ordered targets; also the catalog ``/v1/models`` lists."""

    def __init__(self, upstreams: tuple[Upstream, ...], models: tuple[Model, ...], include_builtin: bool) -> None:
        self.upstream_names = tuple(u.name for u in upstreams)
        self._providers = tuple(u.provider for u in upstreams)
        self._plans: dict[str, tuple[Target, ...]] = {}
        catalog: dict[str, CatalogEntry] = {}
        custom = {m.id: m for m in models}

        if include_builtin:
            for b in load_builtin_models():
                for client_id in (b.id, b.alias):
                    if client_id is None:
                        continue
                    override = custom.get(client_id)
                    mapping = override.upstream_model if override is not None else {}
                    self._plans[client_id] = tuple(
                        Target(i, upstream_id)
                        for i, u in enumerate(upstreams)
                        if (upstream_id := (mapping or {}).get(u.name) or _default_id(u.provider, b)) is not None
                    )
                catalog[b.id] = CatalogEntry(b.id, b.display_name, None, b.max_input_tokens)

        for m in models:
            if m.id in self._plans:
                # A built-in name listed under models: keeps built-in routing
                # (already merged above) but takes the admin's label.
                catalog[m.id] = CatalogEntry(m.id, m.label or m.id, m.description, None)
                continue
            mapping = m.upstream_model or {}
            self._plans[m.id] = tuple(
                Target(i, mapping[u.name]) for i, u in enumerate(upstreams) if u.name in mapping
            )
            catalog[m.id] = CatalogEntry(m.id, m.label or m.id, m.description, None)
        self.catalog = tuple(catalog.values())

    def plan(self, model: str) -> tuple[Target, ...]:
        targets = self._plans.get(model)
        if targets is None:
            targets = self._dated(model)
        if not targets:
            clause = f"model {model} is not in the operator's model allowlist"
            raise GatewayError(Kind.INVALID_REQUEST, "; ".join([clause] * max(1, len(self.upstream_names))))
        return targets

    def _dated(self, model: str) -> tuple[Target, ...]:
        match = _DATED.match(model)
        if match is None:
            return ()
        base = self._plans.get(match["base"])
        if not base:
            return ()
        # The client named an exact dated version: send that version as asked where the
        # upstream takes Anthropic's ids; a cloud's own id (a Bedrock profile, a Vertex
        # name) has no dated form to build, so it stays.
        targets = tuple(
            Target(t.upstream, model if self._providers[t.upstream] in _ANTHROPIC_IDS else t.model) for t in base
        )
        if len(self._plans) < 10_000:  # bounded: dated ids are few, but never trust input to stay so
            self._plans[model] = targets
        return targets


def _default_id(provider: str, model: BuiltinModel) -> str | None:
    """The id a provider takes for a built-in model, or None when it has none by default.

    The Anthropic API and Claude Platform on AWS take the dated id for an alias;
    Bedrock and Vertex their own ids (the catalog's); Foundry deployments are named
    by whoever deployed them, so only a ``models[].upstream_model`` entry routes there.
    """
    if provider == "bedrock":
        return model.bedrock
    if provider == "vertex":
        return model.vertex
    if provider == "foundry":
        return None
    return model.id
