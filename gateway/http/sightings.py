"""Which managed-settings checksum each person's client reports holding.

Apart from :mod:`gateway.http.managed` so the runtime can hold one without
importing a handler module.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from gateway import audit

_CHECKSUM = re.compile(r"^sha256:[0-9a-f]{64}$")
SIGHTINGS_MAX = 10_000
FLUSH_INTERVAL_S = 300.0


class ChecksumSightings:
    """Counts which settings checksum each user's client reports in
    ``x-claude-code-managed-settings-checksum``, to show administrators who still
    runs stale settings.

    The header value is an unkeyed SHA-256 over settings that may hold secrets in
    ``env``, so it is never logged as sent: events carry a truncated SHA-256 of
    it, enough to tell versions apart, plus whether it was the one being served.
    ``note`` runs on the hot path: no await, no I/O, bounded memory (sightings
    beyond the bound are counted as dropped and reported).
    """

    def __init__(self, *, max_entries: int = SIGHTINGS_MAX, emit: Callable[..., None] = audit.emit) -> None:
        self._max = max_entries
        self._emit = emit
        self._counts: dict[tuple[str, str], list[Any]] = {}  # (sub, checksum) → [count, served checksum]
        self.dropped = 0

    def note(self, sub: str, checksum: str, served: str | None = None) -> None:
        """Record one request's header value; ``served`` is the checksum the caller's
        policy serves now, when the caller knows it."""
        if not _CHECKSUM.match(checksum):
            return  # not a checksum: nothing useful to aggregate, never stored
        entry = self._counts.get((sub, checksum))
        if entry is None:
            if len(self._counts) >= self._max:
                self.dropped += 1
                return
            self._counts[(sub, checksum)] = [1, served]
        else:
            entry[0] += 1
            entry[1] = served if served is not None else entry[1]

    def flush(self) -> None:
        """Log what was gathered since the last flush: every ``FLUSH_INTERVAL_S`` and once more
        at shutdown (the ``sightings`` job, gateway.app.jobs)."""
        counts, self._counts = self._counts, {}
        for (sub, checksum), (count, served) in counts.items():
            fields: dict[str, Any] = {"sub": sub, "checksum_hash": _short_hash(checksum), "requests": count}
            if served is not None:
                fields["stale"] = checksum != served
            self._emit("managed.checksum_seen", **fields)
        if self.dropped:
            self._emit("managed.checksum_seen.dropped", sightings=self.dropped)
            self.dropped = 0


def _short_hash(checksum: str) -> str:
    return hashlib.sha256(checksum.encode()).hexdigest()[:16]
