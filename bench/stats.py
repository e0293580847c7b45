"""Percentiles and CDF points from raw samples (no numpy needed)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

CDF_POINTS = (1, 5, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 92, 94, 95, 96, 97, 98, 99, 99.5, 99.9, 99.99, 100)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary(values: list[float], unit: str, prefix: str = "") -> dict[str, float | int]:
    """p50/p90/p99/p99.9 and max of ``values`` as ``<prefix>p50_<unit>`` and so on."""
    v = sorted(values)
    if not v:
        return {f"{prefix}n": 0}
    out: dict[str, float | int] = {f"{prefix}n": len(v)}
    for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)):
        out[f"{prefix}{name}_{unit}"] = percentile(v, p)
    out[f"{prefix}max_{unit}"] = v[-1]
    return out


def cdf(values: list[float]) -> list[tuple[float, float]]:
    v = sorted(values)
    return [(p, percentile(v, p)) for p in CDF_POINTS] if v else []


def per_call_us(fn: Callable[[], object], calls: int, batches: int = 7) -> float:
    """Microseconds per call of ``fn``: the median of ``batches`` timed runs of ``calls`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(times)
