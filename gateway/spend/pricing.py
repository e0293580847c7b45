"""What a request costs: list prices, `pricing.overrides`, the multiplier.

Pure: values in, values out. Built once at boot from the config and the
checked-in price table (``gateway/data/pricing.json``); a request then costs a
dict lookup for its rates and a few integer multiplications for its cost.

Money is integers only. Rates are kept in pico-dollars per token (a list price
of $3 per million tokens is 3 000 000 pUSD per token), which holds every
published rate exactly; costs come out in micro-dollars, rounded up, so the
meter never undercharges by rounding. The multiplier is kept in parts per
million.

Rate choice for a request, most specific first (as Anthropic's gateway does):
an override row for the serving upstream, the list price of the upstream's
model string, the list price of the id the client asked for, and otherwise the
unknown-model tier ($5 / $25 per MTok), which warns once per id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from importlib import resources
from typing import Any, NamedTuple

PICO_PER_USD_PER_MTOK = 10**6  # $1 per MTok = 1e-6 USD per token = 1e6 pUSD per token
_PPM = 10**6
_PICO_PER_MICRO = 10**6
UNKNOWN_KEY = "<unknown>"
_RATE_CACHE_MAX = 4096

# Dated, Bedrock, Vertex and 1M-context forms of one model all price as the
# model: "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5@20250929",
# "claude-sonnet-4-5[1m]" and "claude-sonnet-4-5-20250929" are "claude-sonnet-4-5".
_BEDROCK_PREFIX = re.compile(r"^(?:[a-z0-9-]+\.)?anthropic\.")
_BEDROCK_VERSION = re.compile(r"-v\d+(?::\d+)?$")
_DATE_SUFFIX = re.compile(r"-(?:20\d{6}|latest)$")


class Rates(NamedTuple):
    """Rates for one request, in pUSD per token. ``key`` says which row they came from."""

    key: str
    input: int
    output: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int
    # A model priced by prompt length: above this many prompt tokens the whole
    # request uses ``long_prompt`` instead (0 = no such band).
    long_prompt_above: int = 0
    long_prompt: Rates | None = None
    unknown: bool = False

    @property
    def max_input(self) -> int:
        """The dearest rate an input token can be billed at (a 1h cache write, usually)."""
        band = self.long_prompt if self.long_prompt is not None else self
        return max(self.input, self.cache_write_5m, self.cache_write_1h, band.input, band.cache_write_1h)


def normalize(model: str) -> str:
    """The undated, provider-neutral name of a model id (lower case)."""
    name = model.strip().lower()
    if "/" in name:  # an ARN or a path-like deployment name: the id is the last part
        name = name.rsplit("/", 1)[1]
    if name.endswith("[1m]"):
        name = name[:-4]
    name = name.split("@", 1)[0]
    name = _BEDROCK_PREFIX.sub("", name)
    name = _BEDROCK_VERSION.sub("", name)
    return _DATE_SUFFIX.sub("", name)


def _pico(value: str | float) -> int:
    # str() first so a YAML float like 0.3 is read as the decimal the admin wrote.
    exact = Decimal(str(value)) * PICO_PER_USD_PER_MTOK
    return int(exact.to_integral_value())


def _row_rates(key: str, row: Mapping[str, Any], unknown: bool = False) -> Rates:
    long = row.get("long_prompt")
    return Rates(
        key,
        _pico(row["input"]),
        _pico(row["output"]),
        _pico(row["cache_write_5m"]),
        _pico(row["cache_write_1h"]),
        _pico(row["cache_read"]),
        int(long["above_tokens"]) if long else 0,
        _row_rates(key, long) if long else None,
        unknown,
    )


def load_table() -> tuple[dict[str, Rates], Rates, dict[str, dict[str, Any]]]:
    """(rates by normalized id, the unknown-model tier, raw rows by id) from the data file."""
    raw = json.loads(resources.files("gateway").joinpath("data/pricing.json").read_text())
    table = {normalize(r["id"]): _row_rates(normalize(r["id"]), r) for r in raw["models"]}
    unknown = _row_rates(UNKNOWN_KEY, raw["unknown_model"], unknown=True)
    return table, unknown, {r["id"]: r for r in raw["models"]}


class _Override(NamedTuple):
    model: str
    rates: Rates
    row: dict[str, float]


class Pricing:
    """Rates and costs for the configured gateway. Build once at boot.

    ``warn`` receives the run-time warning for an id that has no price (once
    per id); boot-time warnings are in ``.warnings`` for the caller to log.
    """

    def __init__(self, cfg: Any, *, warn: Callable[[str], None] | None = None) -> None:
        self._table, self._unknown, self.rows = load_table()
        pricing = getattr(cfg, "pricing", None)
        multiplier = pricing.multiplier if pricing is not None else 1
        self.multiplier = multiplier
        self.multiplier_ppm = int((Decimal(str(multiplier)) * _PPM).to_integral_value())
        self._warn = warn
        self._warned: set[str] = set()
        self._cache: dict[tuple[str, str, str], Rates] = {}
        self.warnings: list[str] = []
        # Per upstream: override rows by exact (lower-cased) string and by built-in name.
        self._exact: dict[str, dict[str, _Override]] = {}
        self._builtin: dict[str, dict[str, _Override]] = {}
        for row in pricing.overrides if pricing is not None else ():
            plain = {
                "input": row.input,
                "output": row.output,
                "cache_read": row.cache_read,
                "cache_write": row.cache_write,
            }
            # An override gives one cache-write rate; it applies to 5m and 1h writes alike.
            rates = Rates(
                f"override:{row.upstream}:{row.model}",
                _pico(row.input),
                _pico(row.output),
                _pico(row.cache_write),
                _pico(row.cache_write),
                _pico(row.cache_read),
            )
            entry = _Override(row.model, rates, plain)
            self._exact.setdefault(row.upstream, {})[row.model.lower()] = entry
            if normalize(row.model) in self._table:
                self._builtin.setdefault(row.upstream, {})[normalize(row.model)] = entry
        if self.multiplier_ppm > _PPM:
            self.warnings.append(
                f"pricing.multiplier is {multiplier:g}: a markup above 1 counts toward every spend cap"
            )
        self._boot_warnings(cfg)

    def _boot_warnings(self, cfg: Any) -> None:
        upstream_names = [u.name for u in getattr(cfg, "upstreams", ())]
        for model in getattr(cfg, "models", ()):
            mapping = model.upstream_model or {}
            for upstream in upstream_names:
                upstream_model = mapping.get(upstream, model.id)
                if upstream not in mapping and mapping:
                    continue
                if self.rates(upstream, model.id, upstream_model, warn=False).unknown:
                    self.warnings.append(
                        f"models[{model.id}]: no list price for {upstream_model!r} on upstream {upstream!r}; "
                        "it is metered at the unknown-model rate of $5 / $25 per million input / output "
                        "tokens (add a pricing.overrides row to set its price)"
                    )

    def rates(self, upstream: str, client_model: str, upstream_model: str, *, warn: bool = True) -> Rates:
        key = (upstream, client_model, upstream_model)
        found = self._cache.get(key)
        if found is None:
            found = self._choose(upstream, client_model, upstream_model)
            if len(self._cache) < _RATE_CACHE_MAX:  # ids come from clients; never let them grow memory
                self._cache[key] = found
        if found.unknown and warn and self._warn is not None and upstream_model not in self._warned:
            if len(self._warned) < _RATE_CACHE_MAX:
                self._warned.add(upstream_model)
            self._warn(
                f"no price known for model {upstream_model!r} (asked as {client_model!r}); "
                "metering it at $5 / $25 per million input / output tokens"
            )
        return found

    def _choose(self, upstream: str, client_model: str, upstream_model: str) -> Rates:
        exact = self._exact.get(upstream, {})
        builtin = self._builtin.get(upstream, {})
        for candidate in (
            exact.get(upstream_model.lower()),
            exact.get(client_model.lower()),
            builtin.get(normalize(upstream_model)),
            builtin.get(normalize(client_model)),
        ):
            if candidate is not None:
                return candidate.rates
        listed = self._table.get(normalize(upstream_model)) or self._table.get(normalize(client_model))
        return listed if listed is not None else self._unknown

    def _micro(self, pico: int) -> int:
        """pUSD (before the multiplier) → µUSD after it, rounded up."""
        scaled = pico * self.multiplier_ppm
        return -(-scaled // (_PICO_PER_MICRO * _PPM))

    def cost_micro(self, rates: Rates, usage: Any) -> int:
        """The cost of a finished request from its usage totals (gateway.upstreams.sse.UsageTotals)."""
        written = usage.cache_creation_input_tokens
        one_hour = usage.cache_creation_1h
        # Without the 5m/1h split every write is a 5-minute write (the API default).
        five_min = max(written - one_hour, usage.cache_creation_5m, 0)
        prompt = usage.input_tokens + max(written, five_min + one_hour) + usage.cache_read_input_tokens
        if rates.long_prompt is not None and prompt > rates.long_prompt_above:
            rates = rates.long_prompt
        pico = (
            usage.input_tokens * rates.input
            + usage.output_tokens * rates.output
            + five_min * rates.cache_write_5m
            + one_hour * rates.cache_write_1h
            + usage.cache_read_input_tokens * rates.cache_read
        )
        return self._micro(pico)

    def estimate_micro(self, rates: Rates, input_tokens: int, output_tokens: int) -> int:
        """An upper-bound cost before the request runs.

        Input is priced at the dearest rate an input token can have (a 1-hour
        cache write), because how the prompt will split between fresh input,
        cache writes and cache reads is known only afterwards; an estimate
        below the real cost would let a cap be overshot by input, which the
        spend guarantee rules out.
        """
        band = rates.long_prompt if rates.long_prompt is not None else rates
        output_rate = max(rates.output, band.output)
        return self._micro(input_tokens * rates.max_input + output_tokens * output_rate)

    def output_micro(self, rates: Rates, output_tokens: int) -> int:
        """The cost of ``output_tokens`` more output (a top-up step)."""
        band = rates.long_prompt if rates.long_prompt is not None else rates
        return self._micro(output_tokens * max(rates.output, band.output))

    def model_pricing_rows(
        self, first_upstream: Mapping[str, tuple[str, str]]
    ) -> dict[str, dict[str, float]]:
        """Override rows to push to clients as the ``modelPricing`` managed setting.

        ``first_upstream`` maps each requestable model id to (upstream name,
        upstream model id) of the first upstream that serves it; a model gets
        the override row that upstream would meter it with, if any. List
        prices are left out: the client already knows them.
        """
        rows: dict[str, dict[str, float]] = {}
        for model, (upstream, upstream_model) in first_upstream.items():
            exact = self._exact.get(upstream, {})
            builtin = self._builtin.get(upstream, {})
            for candidate in (
                exact.get(upstream_model.lower()),
                exact.get(model.lower()),
                builtin.get(normalize(upstream_model)),
                builtin.get(normalize(model)),
            ):
                if candidate is not None:
                    rows[model] = dict(candidate.row)
                    break
        return rows

    def known(self, models: Iterable[str]) -> list[str]:
        """The ids among ``models`` that have a list price (for boot checks of the catalog)."""
        return [m for m in models if normalize(m) in self._table]


def cents_to_micro(cents: int) -> int:
    return cents * 10_000


def micro_to_cents_str(micro: int) -> str:
    """µUSD as a decimal string of cents with 3 decimals (``period_to_date_spend``), rounded half up."""
    thousandths = (micro + 5) // 10  # 1 thousandth of a cent = 10 µUSD
    whole, frac = divmod(thousandths, 1000)
    return f"{whole}.{frac:03d}"
