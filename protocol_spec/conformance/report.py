"""From check results to one outcome per requirement, as text lines and as JSON.

A requirement's outcome folds the outcomes of every check that covers it:
FAIL if any check failed it, else PASS if any passed it, else SKIP (with the
checks' reasons). A requirement no check covers is NOT_CHECKED: either it
describes the client (endpoint ``client``) or it cannot be observed from
outside (storage, logs, timing over minutes, other providers). A requirement
whose source is outside the run's profile is OUT_OF_PROFILE whatever the
checks said (profiles.py). Counts are kept per level and per source. Pure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from protocol_spec.conformance.profiles import Profile
from protocol_spec.conformance.verdicts import Finding, Outcome, Verdicts
from protocol_spec.requirements import CLIENT, LEVELS, SOURCES, Requirement

# 2: the profile, OUT_OF_PROFILE outcomes and ``summary_by_source``.
REPORT_VERSION = 2
MARKS = {
    Outcome.PASS: "PASS",
    Outcome.FAIL: "FAIL",
    Outcome.SKIP: "SKIP",
    Outcome.NOT_CHECKED: "----",
    Outcome.OUT_OF_PROFILE: "OUT ",
}
# How the text summary names each outcome.
WORDS = {
    Outcome.PASS: "pass",
    Outcome.FAIL: "fail",
    Outcome.SKIP: "skip",
    Outcome.NOT_CHECKED: "not checked",
    Outcome.OUT_OF_PROFILE: "out of profile",
}


@dataclass
class CheckResult:
    name: str
    ids: tuple[str, ...]
    verdicts: Verdicts
    duration_s: float
    # The IDs whose verdicts count (those in the run's profile); None: all of them.
    counted: tuple[str, ...] | None = None

    def counts(self, rid: str) -> bool:
        return self.counted is None or rid in self.counted

    def outcome_of(self, rid: str) -> Outcome:
        return self.verdicts.outcome(rid) if self.counts(rid) else Outcome.OUT_OF_PROFILE

    def outcome(self) -> Outcome:
        outcomes = {self.verdicts.outcome(rid) for rid in self.ids if self.counts(rid)}
        for worst in (Outcome.FAIL, Outcome.PASS):
            if worst in outcomes:
                return worst
        return Outcome.SKIP


@dataclass
class RequirementResult:
    requirement: Requirement
    outcome: Outcome
    checks: list[str] = field(default_factory=list)
    # (check name, finding) explaining the outcome.
    findings: list[tuple[str, Finding]] = field(default_factory=list)
    reason: str = ""


def fold(
    requirements: list[Requirement], results: list[CheckResult], profile: Profile | None = None
) -> list[RequirementResult]:
    folded = []
    for req in requirements:
        if profile is not None and not profile.covers(req):
            why = f"source {req.source} is outside the {profile.name} profile"
            folded.append(RequirementResult(req, Outcome.OUT_OF_PROFILE, reason=why))
            continue
        mine = [r for r in results if req.id in r.ids]
        if not mine:
            why = "describes the client, not the gateway" if req.endpoint == CLIENT else "not checked from outside"
            folded.append(RequirementResult(req, Outcome.NOT_CHECKED, reason=why))
            continue
        outcomes = [r.verdicts.outcome(req.id) for r in mine]
        verdict = Outcome.FAIL if Outcome.FAIL in outcomes else Outcome.PASS if Outcome.PASS in outcomes else Outcome.SKIP
        explaining = [
            (r.name, f) for r in mine if r.verdicts.outcome(req.id) == verdict for f in r.verdicts.reasons(req.id)
        ]
        folded.append(RequirementResult(req, verdict, [r.name for r in mine], explaining))
    return folded


def summary(folded: list[RequirementResult]) -> dict[str, dict[str, int]]:
    """Outcome counts per level."""
    counts: dict[str, Counter[str]] = {level: Counter() for level in LEVELS}
    for item in folded:
        counts[item.requirement.level][item.outcome.value] += 1
    return {level: {o.value: counts[level][o.value] for o in Outcome} for level in LEVELS}


def summary_by_source(folded: list[RequirementResult]) -> dict[str, dict[str, dict[str, int]]]:
    """Outcome counts per source, then per level (the shape of :func:`summary` for each source)."""
    return {source: summary([item for item in folded if item.requirement.source == source]) for source in SOURCES}


def passed(folded: list[RequirementResult], *, strict: bool = False) -> bool:
    """True when no MUST failed (with ``strict``, when every checked MUST passed)."""
    bad = {Outcome.FAIL, Outcome.SKIP} if strict else {Outcome.FAIL}
    return not any(item.requirement.level == "MUST" and item.outcome in bad for item in folded)


def _explain(item: RequirementResult) -> str:
    if item.outcome in (Outcome.NOT_CHECKED, Outcome.OUT_OF_PROFILE):
        return item.reason
    if item.outcome is Outcome.PASS:
        return ", ".join(item.checks)
    parts = []
    seen: set[str] = set()
    for check_name, finding in item.findings:
        if item.outcome is Outcome.FAIL:
            text = f"[{check_name}] {finding.what}"
            if finding.observed is not None or finding.expected is not None:
                observed = "?" if finding.observed is None else repr(finding.observed) if finding.observed == "" else finding.observed
                text += f": observed {observed}, expected {'?' if finding.expected is None else finding.expected}"
        else:
            text = f"[{check_name}] {finding.what}"
        if text not in seen:
            seen.add(text)
            parts.append(text)
    shown = parts[:3]
    if len(parts) > 3:
        shown.append(f"(+{len(parts) - 3} more)")
    return "; ".join(shown)


def lines(folded: list[RequirementResult]) -> list[str]:
    """One line per requirement, in SPEC order."""
    return [
        f"{MARKS[item.outcome]}  {item.requirement.id:<11} {item.requirement.level:<6} {_explain(item)}" for item in folded
    ]


def _counted(c: dict[str, int], must_fail: int | None = None) -> str:
    """``3 pass, 1 fail, 0 skip, 2 not checked``, with ``, N out of profile`` when there are any."""
    parts = []
    for o in Outcome:
        if o is Outcome.OUT_OF_PROFILE and not c[o.value]:
            continue
        text = f"{c[o.value]} {WORDS[o]}"
        if o is Outcome.FAIL and c[o.value] and must_fail is not None:
            text += f" ({must_fail} MUST)"
        parts.append(text)
    return ", ".join(parts)


def summary_line(folded: list[RequirementResult]) -> str:
    counts = summary(folded)
    return " | ".join(f"{level}: {_counted(counts[level])}" for level in LEVELS)


def source_line(folded: list[RequirementResult]) -> str:
    """Counts per source over every level, naming the failed MUSTs (what decides the exit status)."""
    parts = []
    for source, per_level in summary_by_source(folded).items():
        total = {o.value: sum(per_level[level][o.value] for level in LEVELS) for o in Outcome}
        if total[Outcome.OUT_OF_PROFILE.value] and total[Outcome.OUT_OF_PROFILE.value] == sum(total.values()):
            parts.append(f"{source}: {total[Outcome.OUT_OF_PROFILE.value]} out of profile, not judged")
            continue
        parts.append(f"{source}: {_counted(total, must_fail=per_level['MUST']['FAIL'])}")
    return "by source: " + " | ".join(parts)


def profile_line(profile: Profile, folded: list[RequirementResult], checks_left_out: list[str]) -> str:
    """Which profile the run judged, and what it left out (never silently)."""
    text = f"profile {profile.name}: judges sources {', '.join(profile.sources)}"
    outside = sum(1 for item in folded if item.outcome is Outcome.OUT_OF_PROFILE)
    if outside:
        text += f"; {outside} requirements out of profile (not counted)"
    if checks_left_out:
        text += f"; {len(checks_left_out)} checks not run (they judge only requirements out of profile)"
    return text


def as_json(
    folded: list[RequirementResult], results: list[CheckResult], *, meta: dict[str, Any], strict: bool = False
) -> dict[str, Any]:
    """The JSON report; its shape is documented in the package docstring."""
    return {
        "report_version": REPORT_VERSION,
        **meta,
        "ok": passed(folded, strict=strict),
        "summary": summary(folded),
        "summary_by_source": summary_by_source(folded),
        "requirements": [
            {
                "id": item.requirement.id,
                "level": item.requirement.level,
                "source": item.requirement.source,
                "section": item.requirement.section,
                "endpoint": item.requirement.endpoint,
                "outcome": item.outcome.value,
                "checks": item.checks,
                "reason": item.reason or None,
                "findings": [{"check": name, **finding.as_plain()} for name, finding in item.findings],
            }
            for item in folded
        ],
        "checks": [
            {
                "name": r.name,
                "ids": list(r.ids),
                "outcome": r.outcome().value,
                "duration_s": round(r.duration_s, 3),
                "per_id": {rid: r.outcome_of(rid).value for rid in r.ids},
            }
            for r in results
        ],
    }
