"""Checks, the requirement IDs they cover, and what each one concluded.

A check is an async function registered with :func:`check`, naming the SPEC
requirement IDs it covers. While it runs it records *expectations* against
those IDs (``c.expect("MSG-12", ok, observed=..., expected=...)``). When it
ends, each of its IDs gets one outcome:

* FAIL when any expectation recorded for that ID failed;
* PASS when at least one passed and none failed;
* SKIP when the check raised :class:`Skip` (or called ``c.skip``) before
  judging it, with the reason.

A check that crashes fails every ID it had not judged yet, with the error as
the observation: a gateway that answers something the suite cannot even parse
has not met the requirement. An ID the check declared but never judged is a
SKIP saying so, which keeps a check honest about what it really looked at.

Pure: no I/O here, so the aggregation rules are easy to test.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# How much of an observed value goes into a report line.
SHOWN_CHARS = 300
# Marks "the check gave no observation" apart from an observed None (an absent header).
NOT_GIVEN: Any = object()


class Outcome(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"
    # Only for requirements: no check covers it (not observable from outside).
    NOT_CHECKED = "NOT_CHECKED"
    # Only for requirements: its source is outside the run's profile (profiles.py).
    OUT_OF_PROFILE = "OUT_OF_PROFILE"


class Skip(Exception):
    """Raised by a check that cannot judge its requirements against this target."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Finding:
    """One judged expectation (or a skip) for one requirement ID within one check."""

    rid: str
    outcome: Outcome
    what: str = ""
    observed: str | None = None
    expected: str | None = None

    def as_plain(self) -> dict[str, Any]:
        out: dict[str, Any] = {"outcome": self.outcome.value, "what": self.what}
        if self.observed is not None:
            out["observed"] = self.observed
        if self.expected is not None:
            out["expected"] = self.expected
        return out


def shown(value: Any) -> str:
    """A short printable form of an observed or expected value."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + f"… ({len(text)} chars)"


class Verdicts:
    """The findings one check run records; ``outcome(rid)`` folds them by the rules above."""

    def __init__(self, ids: tuple[str, ...]) -> None:
        self.ids = ids
        self.findings: list[Finding] = []

    def expect(
        self, rid: str, ok: bool, what: str = "", *, observed: Any = NOT_GIVEN, expected: Any = NOT_GIVEN
    ) -> bool:
        if rid not in self.ids:
            raise ValueError(f"check records {rid} but does not declare it")
        self.findings.append(
            Finding(
                rid,
                Outcome.PASS if ok else Outcome.FAIL,
                what,
                None if ok or observed is NOT_GIVEN else ("(absent)" if observed is None else shown(observed)),
                None if ok or expected is NOT_GIVEN else shown(expected),
            )
        )
        return ok

    def skip(self, reason: str, *rids: str) -> None:
        """Skip ``rids`` (every ID not judged yet when none are named)."""
        for rid in rids or self.unjudged():
            if rid not in self.ids:
                raise ValueError(f"check skips {rid} but does not declare it")
            self.findings.append(Finding(rid, Outcome.SKIP, reason))

    def judged(self, rid: str) -> bool:
        return any(f.rid == rid for f in self.findings)

    def unjudged(self) -> tuple[str, ...]:
        return tuple(rid for rid in self.ids if not self.judged(rid))

    def crashed(self, error: str) -> None:
        for rid in self.unjudged():
            self.findings.append(Finding(rid, Outcome.FAIL, "the check could not complete", error))

    def outcome(self, rid: str) -> Outcome:
        mine = [f.outcome for f in self.findings if f.rid == rid]
        if Outcome.FAIL in mine:
            return Outcome.FAIL
        if Outcome.PASS in mine:
            return Outcome.PASS
        return Outcome.SKIP

    def reasons(self, rid: str) -> list[Finding]:
        """The findings that explain ``outcome(rid)``: the failures, else the skips, else the passes."""
        mine = [f for f in self.findings if f.rid == rid]
        verdict = self.outcome(rid)
        return [f for f in mine if f.outcome == verdict] or mine

    def finish(self) -> None:
        for rid in self.unjudged():
            self.findings.append(Finding(rid, Outcome.SKIP, "the check did not reach this requirement"))


CheckFn = Callable[[Any], Awaitable[None]]


@dataclass(frozen=True)
class Check:
    name: str
    ids: tuple[str, ...]
    fn: CheckFn
    # Seconds before the check is abandoned (its unjudged IDs then FAIL).
    timeout_s: float = 20.0
    doc: str = ""


@dataclass
class Registry:
    checks: list[Check] = field(default_factory=list)

    def add(self, item: Check) -> None:
        if any(c.name == item.name for c in self.checks):
            raise ValueError(f"two checks are named {item.name!r}")
        self.checks.append(item)

    def covered(self) -> set[str]:
        return {rid for c in self.checks for rid in c.ids}


REGISTRY = Registry()


def check(name: str, *ids: str, timeout_s: float = 20.0) -> Callable[[CheckFn], CheckFn]:
    """Register the decorated coroutine function as a check covering ``ids``."""

    def register(fn: CheckFn) -> CheckFn:
        REGISTRY.add(Check(name, tuple(ids), fn, timeout_s, (fn.__doc__ or "").strip()))
        return fn

    return register
