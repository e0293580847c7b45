"""Last-seen identities: who used the gateway, with which email, name and groups (pure: no I/O).

The spend store writes them to ``principals`` in batches from its background
task; this decides what is due: a person is written again only when their
fields changed or ``REFRESH_S`` has passed, so a busy person costs one row a
few minutes, not one per request.
"""

from __future__ import annotations

import time
from typing import Any

REFRESH_S = 300.0
MAX_REMEMBERED = 100_000

Fields = tuple[Any, ...]  # email, name, groups


class LastSeen:
    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, Fields]] = {}
        self._due: dict[str, Fields] = {}

    def note(self, principal: Any) -> None:
        fields = (principal.email, principal.name, tuple(principal.groups))
        now = time.monotonic()
        seen = self._seen.get(principal.sub)
        if seen is not None and seen[1] == fields and now - seen[0] < REFRESH_S:
            return
        if len(self._seen) > MAX_REMEMBERED:
            self._seen.clear()
        self._seen[principal.sub] = (now, fields)
        self._due[principal.sub] = fields

    def take(self) -> dict[str, Fields]:
        """What is due to be written (and no longer due here)."""
        due, self._due = self._due, {}
        return due

    def give_back(self, due: dict[str, Fields]) -> None:
        """``due`` could not be written: keep it for the next round, unless newer values arrived meanwhile."""
        for sub, fields in due.items():
            self._due.setdefault(sub, fields)
