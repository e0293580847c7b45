"""Sliding-window rate limits for sign-in, decided from recorded attempts (pure).

A fixed window (count per clock-aligned period) lets twice the limit through
around a boundary: the last seconds of one window and the first of the next.
Here every admitted attempt is recorded with its time, and one more is admitted
only while fewer than ``limit`` were admitted in the ``window_s`` seconds before
it. So no span of ``window_s`` seconds, wherever it starts, holds more than
``limit`` admitted attempts. Refused attempts are not recorded: storage stays at
``limit`` rows per key and window, however hard someone hammers, and they get
in again as soon as the oldest admitted attempt leaves the window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def wait_before_next(hits: Iterable[tuple[float, int]], now: float, window_s: float, limit: int) -> int | None:
    """None when one more attempt may go now; else whole seconds until one may.

    ``hits``: (Unix time, attempts admitted at that time) for the key; entries
    older than the window are ignored.
    """
    recent = sorted((at, n) for at, n in hits if at > now - window_s and n > 0)
    excess = sum(n for _, n in recent) - limit + 1
    if excess <= 0:
        return None
    # The attempt that must leave the window before there is room again.
    for at, n in recent:
        excess -= n
        if excess <= 0:
            return max(1, math.ceil(at + window_s - now))
    raise AssertionError("unreachable: excess is at most the sum of recent hits")
