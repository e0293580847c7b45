"""Per-replica memory of upstreams that keep failing, so requests stop paying for them.

Anthropic's gateway keeps none (protocol §6.3): every request tries a down
upstream first and waits out its connect error or timeout before failing over.
Here, an upstream that failed for transport reasons — connect errors, timeouts,
5xx answers — ``threshold`` times in a row is **cooling**: requests skip it for
a cooldown that starts at ``base_s`` and doubles with each failed probe up to
``max_s``. When the cooldown is over, exactly one request at a time probes it;
a probe that gets any answer short of a transport failure lets it back in.

Never for 4xx: those are about the request (or the gateway's credential), and
an upstream that answers them is up. A request whose every target is cooling
still tries them all, in order — a cooldown is a shortcut, never a refusal.

Pure: time comes from ``clock``; the caller logs the transitions returned.
``gatehouse.upstream.health.enabled: false`` turns it off (SPEC Differences).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _State:
    failures: int = 0  # transport failures in a row
    trips: int = 0  # cooldowns in a row (each failed probe doubles the next)
    until: float = 0.0  # cooling until this clock value
    probing: bool = False  # one request is trying it after a cooldown


class Health:
    def __init__(
        self,
        names: tuple[str, ...],
        *,
        enabled: bool = True,
        threshold: int = 3,
        base_s: float = 5.0,
        max_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.names = names
        self.enabled = enabled
        self.threshold = threshold
        self.base_s = base_s
        self.max_s = max_s
        self.clock = clock
        self._states = [_State() for _ in names]
        self.cooldowns = [0] * len(names)  # cooldowns started, per upstream (the gateway's own metrics)

    def admit(self, i: int) -> bool:
        """May a request try upstream ``i`` now? Claims the probe when a cooldown is over."""
        st = self._states[i]
        if not self.enabled or st.failures < self.threshold:
            return True
        if st.probing or self.clock() < st.until:
            return False
        st.probing = True
        return True

    def succeeded(self, i: int) -> str | None:
        """The upstream answered (2xx, or a 4xx about the request). Returns a log line on recovery."""
        st = self._states[i]
        recovered = st.failures >= self.threshold
        st.failures = st.trips = 0
        st.probing = False
        return f"upstream {self.names[i]} answered again; no longer skipped" if recovered and self.enabled else None

    def failed(self, i: int) -> str | None:
        """A transport failure or 5xx. Returns a log line when the upstream starts (or resumes) cooling."""
        st = self._states[i]
        st.failures += 1
        st.probing = False
        if not self.enabled or st.failures < self.threshold:
            return None
        cooldown = min(self.base_s * (2**st.trips), self.max_s)
        st.trips += 1
        self.cooldowns[i] += 1
        st.until = self.clock() + cooldown
        return (
            f"upstream {self.names[i]} failed {st.failures} times in a row; "
            f"skipping it for {cooldown:g}s (one probe request then)"
        )

    def released(self, i: int) -> None:
        """The attempt ended without a verdict (the client left, a credential failed)."""
        self._states[i].probing = False

    def detail(self) -> dict[str, dict[str, object]]:
        """For ``/readyz``: each upstream's state on this replica."""
        now = self.clock()
        out: dict[str, dict[str, object]] = {}
        for name, st in zip(self.names, self._states, strict=True):
            cooling = self.enabled and st.failures >= self.threshold
            out[name] = {
                "state": ("probing" if st.probing else "cooling") if cooling else "ok",
                "failures_in_a_row": st.failures,
                **({"retry_in_s": round(max(0.0, st.until - now), 1)} if cooling else {}),
            }
        return out
