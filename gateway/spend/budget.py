"""How much output to reserve for a request, and when a running stream needs more (pure).

The spend gate reserves a request's estimated cost before calling an upstream.
The output part of that estimate is an allowance that :class:`AllowanceTracker`
learns per person and model; while a stream runs, :class:`StreamBudget` says
when the reservation must grow (a top-up) and when a stream has passed what
was granted. Values in, values out: the spend store does the I/O.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterable


class AllowanceTracker:
    """Learns how much output each person's requests to each model produce.

    The reservation for a request's output is the 95th percentile of that
    person's recent output-token counts on that model, capped by the request's
    max_tokens. Claude Code asks for 32k–128k max_tokens while most replies
    are a few hundred tokens, so reserving max_tokens would block people far
    below their cap. Memory is bounded: ``window`` samples per key and at most
    ``max_keys`` keys, least recently used evicted first.
    """

    def __init__(self, window: int = 64, max_keys: int = 20_000) -> None:
        self.window = window
        self.max_keys = max_keys
        # key → (samples in arrival order, the same samples sorted, cached p95 or -1)
        self._data: OrderedDict[tuple[str, str], tuple[list[int], list[int], list[int]]] = OrderedDict()

    def observe(self, sub: str, model: str, tokens: int) -> None:
        key = (sub, model)
        entry = self._data.get(key)
        if entry is None:
            entry = ([], [], [-1])
            self._data[key] = entry
            if len(self._data) > self.max_keys:
                self._data.popitem(last=False)
        else:
            self._data.move_to_end(key)
        recent, ordered, p95 = entry
        if len(recent) >= self.window:
            oldest = recent.pop(0)
            del ordered[bisect.bisect_left(ordered, oldest)]
        recent.append(tokens)
        bisect.insort(ordered, tokens)
        p95[0] = -1

    def p95(self, sub: str, model: str) -> int | None:
        entry = self._data.get((sub, model))
        if entry is None or not entry[0]:
            return None
        _, ordered, cached = entry
        if cached[0] < 0:
            # Nearest-rank percentile: the smallest sample with at least 95 % at or below it.
            rank = -(-95 * len(ordered) // 100)
            cached[0] = ordered[max(rank, 1) - 1]
        return cached[0]

    def allowance(self, sub: str, model: str, max_tokens: int | None, fallback: int) -> int:
        learned = self.p95(sub, model)
        tokens = fallback if learned is None else learned
        if max_tokens is not None and max_tokens >= 0:
            tokens = min(tokens, max_tokens)
        return tokens

    def seed(self, rows: Iterable[tuple[str, str, int]]) -> None:
        """Load (sub, model, output_tokens) history, oldest first."""
        for sub, model, tokens in rows:
            self.observe(sub, model, tokens)

    def __len__(self) -> int:
        return len(self._data)


class StreamBudget:
    """When a running stream needs more of its reservation, and when it ran past it.

    Tokens only; the relay turns a step into money with
    Pricing.output_micro. Feed it the tap's running output estimate after each
    relayed chunk: the comparison is cheap, and a top-up is requested at most
    once per step. With ``ahead`` (``cut_streams_at_cap``) it asks for the next
    step while half a step (or half the grant, if smaller) is still unused, so
    a refused step leaves room to stop at the grant rather than after it.
    Without it nothing is ever cut, so it asks only once output passes the
    grant: a stream within its allowance, the usual case, costs no top-up.

    ``ceiling`` is the request's ``max_tokens``: the upstream never writes
    more output than that, so a grant that reaches it is final. No top-up is
    asked beyond it and the stream is never cut, whatever the running
    estimate (text length ÷ 4, only an approximation of tokens) says.
    """

    __slots__ = ("granted", "step", "ceiling", "ahead", "pending", "denied")

    def __init__(self, granted_tokens: int, step_tokens: int, ceiling: int | None = None, *, ahead: bool = True) -> None:
        self.granted = granted_tokens
        self.step = max(1, step_tokens)
        self.ceiling = ceiling
        self.ahead = ahead
        self.pending = False
        self.denied = False

    def final(self) -> bool:
        """True when the grant already covers the most the upstream may write."""
        return self.ceiling is not None and self.granted >= self.ceiling

    def want(self, output_tokens: int) -> int:
        """Tokens to ask for now (and mark pending), or 0."""
        if self.pending or self.denied or self.final():
            return 0
        if self.ahead:
            if output_tokens + min(self.step, self.granted) // 2 < self.granted:
                return 0
        elif output_tokens <= self.granted:
            return 0
        # Catch up in one step if output already ran past the grant (a burst).
        behind = max(0, output_tokens - self.granted)
        tokens = self.step + behind
        if self.ceiling is not None:
            tokens = min(tokens, self.ceiling - self.granted)
        self.pending = True
        return tokens

    def answer(self, tokens: int, granted: bool) -> None:
        self.pending = False
        if granted:
            self.granted += tokens
        else:
            self.denied = True

    def over(self, output_tokens: int) -> bool:
        """True once output has passed what was granted (the cut point with cut_streams_at_cap)."""
        return output_tokens > self.granted and not self.final()
