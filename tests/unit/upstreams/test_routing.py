"""gateway.upstreams.routing: the catalog, which upstreams serve a model and under which id (SPEC §16)."""

from __future__ import annotations

import pytest

from gateway.config.schema import Model, Upstream
from gateway.errors import GatewayError, Kind
from gateway.upstreams.routing import CatalogEntry, Routes, Target, load_builtin_models

BUILTINS = load_builtin_models()
BY_ID = {b.id: b for b in BUILTINS}
ALIASED = next(b for b in BUILTINS if b.alias is not None)  # e.g. claude-haiku-4-5 → its dated id
PLAIN = next(b for b in BUILTINS if b.alias is None)  # e.g. claude-opus-5-5

UPSTREAMS = (
    Upstream(provider="anthropic", name="primary"),
    Upstream(provider="anthropic", name="secondary"),
    Upstream(provider="anthropic", name="tertiary"),
)


def routes(models: tuple[Model, ...] = (), *, builtin: bool = True, upstreams=UPSTREAMS) -> Routes:
    return Routes(upstreams, models, builtin)


def refusal(r: Routes, model: str) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        r.plan(model)
    assert caught.value.kind is Kind.INVALID_REQUEST
    return caught.value


# ---------------------------------------------------------------- the built-in table


def test_builtin_table_is_well_formed():
    ids = [b.id for b in BUILTINS]
    aliases = [b.alias for b in BUILTINS if b.alias is not None]
    assert ids and len(set(ids)) == len(ids)
    assert not set(aliases) & set(ids) and len(set(aliases)) == len(aliases)
    for b in BUILTINS:
        assert b.id.startswith("claude-") and b.display_name
        assert b.max_input_tokens is None or b.max_input_tokens > 0
        # An alias is the undated form of its dated id.
        assert b.alias is None or b.id.startswith(b.alias + "-")


# ---------------------------------------------------------------- catalog


def test_catalog_lists_builtins_in_table_order_under_their_catalog_id():
    r = routes()
    assert r.catalog == tuple(CatalogEntry(b.id, b.display_name, None, b.max_input_tokens) for b in BUILTINS)
    # Aliases route but are not listed: the catalog shows the dated form.
    assert ALIASED.alias not in {e.id for e in r.catalog}


def test_custom_models_follow_the_builtins_with_their_label_and_description():
    custom = Model(
        id="claude-team-sonnet", upstream_model={"secondary": "sonnet-x"}, label="Team", description="d"
    )
    bare = Model(id="claude-bare", upstream_model={"primary": "bare-x"})
    r = routes((custom, bare))
    assert r.catalog[-2:] == (
        CatalogEntry("claude-team-sonnet", "Team", "d", None),
        CatalogEntry("claude-bare", "claude-bare", None, None),  # no label: the id is shown
    )


def test_a_relabelled_builtin_keeps_its_place_and_takes_the_admins_words():
    listed = Model(id=PLAIN.id, upstream_model={}, label="House model", description="for us")
    r = routes((listed,))
    ids = [e.id for e in r.catalog]
    assert ids == [b.id for b in BUILTINS]
    entry = r.catalog[ids.index(PLAIN.id)]
    assert (entry.display_name, entry.description) == ("House model", "for us")


def test_without_builtins_the_catalog_is_the_models_section_alone():
    r = routes((Model(id="claude-only", upstream_model={"primary": "x"}),), builtin=False)
    assert r.catalog == (CatalogEntry("claude-only", "claude-only", None, None),)
    assert routes(builtin=False).catalog == ()


def test_upstream_names_are_in_configured_order():
    assert routes().upstream_names == ("primary", "secondary", "tertiary")


# ---------------------------------------------------------------- built-in routing (MODEL-4)


def test_a_builtin_is_tried_on_every_upstream_in_order_under_its_own_id():
    assert routes().plan(PLAIN.id) == (Target(0, PLAIN.id), Target(1, PLAIN.id), Target(2, PLAIN.id))


def test_an_alias_reaches_each_upstream_as_the_dated_id():
    plan = routes().plan(ALIASED.alias)
    assert plan == tuple(Target(i, ALIASED.id) for i in range(3))
    assert routes().plan(ALIASED.id) == plan


def test_an_upstream_model_entry_renames_a_builtin_on_that_upstream_only():
    override = Model(id=PLAIN.id, upstream_model={"secondary": "vendor-opus"})
    assert routes((override,)).plan(PLAIN.id) == (
        Target(0, PLAIN.id),
        Target(1, "vendor-opus"),
        Target(2, PLAIN.id),
    )


def test_an_entry_for_an_alias_renames_the_alias_not_its_dated_id():
    override = Model(id=ALIASED.alias, upstream_model={"primary": "vendor-haiku"})
    r = routes((override,))
    assert r.plan(ALIASED.alias) == (Target(0, "vendor-haiku"), Target(1, ALIASED.id), Target(2, ALIASED.id))
    assert r.plan(ALIASED.id) == tuple(Target(i, ALIASED.id) for i in range(3))


def test_without_builtins_a_builtin_id_is_refused():
    refusal(routes(builtin=False), PLAIN.id)


# ---------------------------------------------------------------- custom models (MODEL-5)


def test_a_custom_model_goes_only_to_the_upstreams_its_map_names_in_configured_order():
    # The map's own order does not matter: failover order is the upstreams' order.
    custom = Model(id="claude-team", upstream_model={"tertiary": "t-id", "primary": "p-id"})
    assert routes((custom,)).plan("claude-team") == (Target(0, "p-id"), Target(2, "t-id"))


def test_a_custom_model_served_by_no_configured_upstream_is_refused():
    custom = Model(id="claude-orphan", upstream_model={"elsewhere": "x"})
    refusal(routes((custom,)), "claude-orphan")


# ---------------------------------------------------------------- dated ids (MODEL-6, MODEL-9)


def test_a_dated_form_of_a_builtin_routes_like_it_and_is_forwarded_as_written():
    dated = f"{PLAIN.id}-20991231"
    assert routes().plan(dated) == tuple(Target(i, dated) for i in range(3))


def test_a_dated_form_of_an_alias_follows_the_alias_upstreams():
    dated = f"{ALIASED.alias}-20300101"
    assert routes().plan(dated) == tuple(Target(i, dated) for i in range(3))


def test_a_dated_form_of_a_custom_model_goes_to_its_upstreams_as_written():
    custom = Model(id="claude-team", upstream_model={"secondary": "s-id"})
    assert routes((custom,)).plan("claude-team-20300101") == (Target(1, "claude-team-20300101"),)


@pytest.mark.parametrize(
    "model",
    [
        "claude-unknown-20300101",  # base not in the catalog
        f"{PLAIN.id}-19991231",  # not a 20xx date
        f"{PLAIN.id}-2030010",  # seven digits
        f"{PLAIN.id}-203001011",  # nine digits
        f"{PLAIN.id}20300101",  # no separator
        f"{PLAIN.id}-2030-01-01",
        f"{PLAIN.id}-20300101-",
        "-20300101",
    ],
)
def test_what_is_not_a_dated_catalog_id_is_refused(model):
    refusal(routes(), model)


def test_a_dated_form_of_a_model_no_upstream_serves_is_refused():
    custom = Model(id="claude-orphan", upstream_model={"elsewhere": "x"})
    refusal(routes((custom,)), "claude-orphan-20300101")


def test_dated_lookups_stay_correct_past_the_memo_bound():
    r = routes()
    for n in range(10_050):
        dated = f"{PLAIN.id}-20{n:06d}"
        assert r.plan(dated)[0] == Target(0, dated)
    # The memo of dated ids is bounded; input cannot grow it without end.
    assert len(r._plans) <= 10_000
    assert r.plan(f"{PLAIN.id}-20{10_049:06d}")[2] == Target(2, f"{PLAIN.id}-20{10_049:06d}")


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("count", [1, 3])
def test_an_unknown_model_is_refused_with_one_clause_per_upstream(count):
    err = refusal(routes(upstreams=UPSTREAMS[:count]), "gpt-4")
    clause = "model gpt-4 is not in the operator's model allowlist"
    assert err.message == "; ".join([clause] * count)
    assert err.rule.status == 400


@pytest.mark.parametrize("model", ["", " ", PLAIN.id.upper(), f" {PLAIN.id}", f"{PLAIN.id} "])
def test_ids_match_exactly(model):
    refusal(routes(), model)
