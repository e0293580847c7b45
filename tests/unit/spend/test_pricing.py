"""gateway.spend.pricing: list prices, id forms, overrides, multiplier, unknown tier, integer money."""

from __future__ import annotations

import json
from decimal import Decimal
from importlib import resources
from typing import Any

import pytest
import yaml

from gateway.config.load import loads
from gateway.spend.pricing import Pricing, micro_to_cents_str, normalize
from gateway.upstreams.routing import load_builtin_models
from gateway.upstreams.sse import UsageTotals

ENV = {"CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1"}


def config(extra: dict[str, Any] | None = None, upstreams: list[dict[str, Any]] | None = None):
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 18080},
        "oidc": {"issuer": "http://127.0.0.1:18100", "client_id": "gw", "client_secret": "s" * 20},
        "session": {"jwt_secret": "j" * 40},
        "store": {"postgres_url": "postgres://gw:pw@127.0.0.1:5432/gw"},
        "upstreams": upstreams
        or [
            {
                "provider": "anthropic",
                "name": "primary",
                "base_url": "http://127.0.0.1:1",
                "auth": {"api_key": "k"},
            },
            {
                "provider": "anthropic",
                "name": "backup",
                "base_url": "http://127.0.0.1:2",
                "auth": {"api_key": "k"},
            },
        ],
        "admin": {"write_keys": [{"id": "a", "key": "w" * 40}]},
    }
    data.update(extra or {})
    return loads(yaml.safe_dump(data), ENV)


def usage(i=0, o=0, cc=0, cc5=0, cc1=0, cr=0) -> UsageTotals:
    return UsageTotals(i, o, cc, cc5, cc1, cr, False)


def test_observed_meter_rates():
    # Anthropic's gateway metered sonnet-4-6 at $3/$15 and haiku-4-5 at $1/$5 (gateway-observed.md §7).
    p = Pricing(config())
    sonnet = p.rates("primary", "claude-sonnet-4-6", "claude-sonnet-4-6")
    assert p.cost_micro(sonnet, usage(i=12, o=40_000)) == 600_036  # $0.600036
    haiku = p.rates("primary", "claude-haiku-4-5", "claude-haiku-4-5-20251001")
    assert p.cost_micro(haiku, usage(i=1_000_000, o=1_000_000)) == 6_000_000
    assert not sonnet.unknown and not haiku.unknown


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        ("anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-7[1m]", "claude-opus-4-7"),
        ("Claude-Opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
    ],
)
def test_dated_bedrock_and_vertex_forms_share_a_row(model, key):
    assert normalize(model) == key
    assert Pricing(config()).rates("primary", model, model).key == key


def test_cache_writes_by_ttl_and_reads():
    p = Pricing(config())
    r = p.rates("primary", "claude-opus-4-7", "claude-opus-4-7")  # 5 / 25 / 6.25 / 10 / 0.50
    # Split known: 5m and 1h writes at their own rates.
    assert p.cost_micro(r, usage(cc=3_000_000, cc5=1_000_000, cc1=2_000_000)) == 6_250_000 + 20_000_000
    # No split: every write is a 5-minute write.
    assert p.cost_micro(r, usage(cc=1_000_000)) == 6_250_000
    assert p.cost_micro(r, usage(cr=1_000_000)) == 500_000
    # Fractions of a micro-dollar round up, never down.
    assert p.cost_micro(r, usage(cr=1)) == 1
    assert p.cost_micro(r, usage()) == 0


def test_long_prompt_band():
    p = Pricing(config())
    r = p.rates("primary", "claude-haiku-5-5", "claude-haiku-5-5")
    assert p.cost_micro(r, usage(i=100_000, o=1_000)) == 10_000 + 500
    # One token over the threshold moves every token of the request to the long band.
    assert p.cost_micro(r, usage(i=90_000, cr=10_001, o=1_000)) == 45_000 + 501 + 2_500


def test_unknown_model_tier_warns_once_at_run_time():
    heard: list[str] = []
    p = Pricing(config(), warn=heard.append)
    r = p.rates("primary", "mystery-model", "mystery-model")
    assert r.unknown and (r.input, r.output) == (5_000_000, 25_000_000)
    p.rates("primary", "mystery-model", "mystery-model")
    assert len(heard) == 1 and "mystery-model" in heard[0] and "$5 / $25" in heard[0]


def test_unknown_configured_model_warns_at_boot():
    cfg = config(
        {"models": [{"id": "house-model", "upstream_model": {"primary": "vendor-model-x"}}]},
    )
    p = Pricing(cfg)
    assert any("house-model" in w and "vendor-model-x" in w for w in p.warnings)


def test_custom_model_mapped_to_a_listed_upstream_id_is_priced():
    cfg = config({"models": [{"id": "team-sonnet", "upstream_model": {"primary": "claude-sonnet-4-6"}}]})
    p = Pricing(cfg)
    assert p.warnings == []
    assert p.rates("primary", "team-sonnet", "claude-sonnet-4-6").key == "claude-sonnet-4-6"
    # An ARN the table does not know falls back to the client's id (rate choice step 3).
    assert p.rates(
        "primary", "claude-opus-4-7", "arn:aws:bedrock:us-east-1:1:application-inference-profile/x"
    ).key == ("claude-opus-4-7")


def test_multiplier_scales_and_markup_warns():
    half = Pricing(config({"pricing": {"multiplier": 0.5}}))
    r = half.rates("primary", "claude-sonnet-4-6", "claude-sonnet-4-6")
    assert half.cost_micro(r, usage(o=1_000_000)) == 7_500_000
    assert half.warnings == []
    double = Pricing(config({"pricing": {"multiplier": 2}}))
    assert double.cost_micro(r, usage(o=1_000_000)) == 30_000_000
    assert any("markup" in w for w in double.warnings)


def _override(upstream: str, model: str, rate: float) -> dict[str, Any]:
    return {
        "upstream": upstream,
        "model": model,
        "input": rate,
        "output": rate,
        "cache_read": rate,
        "cache_write": rate,
    }


def test_override_matching_most_specific_wins():
    cfg = config(
        {
            "pricing": {
                "overrides": [
                    _override("primary", "claude-sonnet-4-6", 1),  # built-in name: covers all its forms
                    _override("primary", "MY-ALIAS", 2),  # a client id, case-insensitive
                    _override("primary", "claude-sonnet-4-6-20990101", 3),  # an exact upstream string
                ]
            }
        }
    )
    p = Pricing(cfg)

    def rate(upstream: str, client: str, upstream_model: str) -> int:
        return p.rates(upstream, client, upstream_model).input

    assert rate("primary", "claude-sonnet-4-6", "us.anthropic.claude-sonnet-4-6-v1:0") == 1_000_000
    # The client id beats the built-in name the upstream string normalizes to...
    assert rate("primary", "my-alias", "us.anthropic.claude-sonnet-4-6-v1:0") == 2_000_000
    # ...but an upstream string written exactly as a row's model is the most specific match.
    assert rate("primary", "my-alias", "claude-sonnet-4-6") == 1_000_000
    assert (
        rate("primary", "my-alias", "claude-sonnet-4-6-20990101") == 3_000_000
    )  # upstream string beats both
    assert (
        rate("backup", "claude-sonnet-4-6", "claude-sonnet-4-6") == 3_000_000
    )  # list price on other upstreams
    assert p.rates("backup", "claude-sonnet-4-6", "claude-sonnet-4-6").key == "claude-sonnet-4-6"


def test_override_floats_become_exact_integers():
    p = Pricing(config({"pricing": {"overrides": [_override("primary", "claude-opus-4-7", 0.3)]}}))
    r = p.rates("primary", "claude-opus-4-7", "claude-opus-4-7")
    assert r.input == 300_000  # 0.3 $/MTok exactly, not 299_999.99…
    assert p.cost_micro(r, usage(i=10_000_000)) == 3_000_000


def test_estimate_prices_input_at_its_dearest_rate_and_output_at_output():
    p = Pricing(config())
    r = p.rates("primary", "claude-opus-4-7", "claude-opus-4-7")
    # 1h cache write ($10) is the dearest an input token can be.
    assert p.estimate_micro(r, 100_000, 4_000) == 1_000_000 + 100_000
    assert p.output_micro(r, 2_048) == 51_200
    for usage_case in (
        usage(i=100_000, o=4_000),
        usage(cc=100_000, cc1=100_000, o=4_000),
        usage(cr=100_000, o=4_000),
    ):
        assert p.cost_micro(r, usage_case) <= p.estimate_micro(r, 100_000, 4_000)


def test_model_pricing_rows_for_clients():
    cfg = config({"pricing": {"overrides": [_override("backup", "claude-opus-4-7", 4)]}})
    p = Pricing(cfg)
    rows = p.model_pricing_rows(
        {
            "claude-opus-4-7": ("backup", "claude-opus-4-7"),
            "claude-sonnet-4-6": ("primary", "claude-sonnet-4-6"),
        }
    )
    assert rows == {"claude-opus-4-7": {"input": 4, "output": 4, "cache_read": 4, "cache_write": 4}}


def test_every_builtin_model_has_a_price_with_source_and_date():
    raw = json.loads(resources.files("gateway").joinpath("data/pricing.json").read_text())
    for row in [*raw["models"], raw["unknown_model"]]:
        assert row["source"] and row["date"]
        for field in ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read"):
            assert isinstance(row[field], str) and Decimal(row[field]) > 0
    p = Pricing(config())
    builtin = [m.id for m in load_builtin_models()]
    assert p.known(builtin) == builtin
    assert p.warnings == []
    assert (raw["unknown_model"]["input"], raw["unknown_model"]["output"]) == ("5", "25")


@pytest.mark.parametrize(
    ("micro", "text"),
    [(0, "0.000"), (1_050_770, "105.077"), (670, "0.067"), (4, "0.000"), (5, "0.001"), (10_000, "1.000")],
)
def test_cents_with_three_decimals(micro, text):
    assert micro_to_cents_str(micro) == text
