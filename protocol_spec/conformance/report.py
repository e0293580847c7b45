"""From check results to one outcome per requirement, as text lines and as JSON.

A requirement's outcome folds the outcomes of every check that covers it:
FAIL if any check failed it, else PASS if any passed it, else SKIP (with the
checks' reasons). A requirement no check covers is NOT_CHECKED: either it
describes the client (endpoint ``client``) or it cannot be observed from
outside (storage, logs, timing over minutes, other providers). Pure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from protocol_spec.conformance.verdicts import Finding, Outcome, Verdicts
from protocol_spec.requirements import CLIENT, LEVELS, Requirement

REPORT_VERSION = 1
MARKS = {Outcome.PASS: "PASS", Outcome.FAIL: "FAIL", Outcome.SKIP: "SKIP", Outcome.NOT_CHECKED: "----"}


@dataclass
class CheckResult:
    name: str
    ids: tuple[str, ...]
    verdicts: Verdicts
    duration_s: float

    def outcome(self) -> Outcome:
        outcomes = {self.verdicts.outcome(rid) for rid in self.ids}
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


def fold(requirements: list[Requirement], results: list[CheckResult]) -> list[RequirementResult]:
    folded = []
    for req in requirements:
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
    counts: dict[str, Counter[str]] = {level: Counter() for level in LEVELS}
    for item in folded:
        counts[item.requirement.level][item.outcome.value] += 1
    return {level: {o.value: counts[level][o.value] for o in Outcome} for level in LEVELS}


def passed(folded: list[RequirementResult], *, strict: bool = False) -> bool:
    """True when no MUST failed (with ``strict``, when every checked MUST passed)."""
    bad = {Outcome.FAIL, Outcome.SKIP} if strict else {Outcome.FAIL}
    return not any(item.requirement.level == "MUST" and item.outcome in bad for item in folded)


def _explain(item: RequirementResult) -> str:
    if item.outcome is Outcome.NOT_CHECKED:
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


def summary_line(folded: list[RequirementResult]) -> str:
    counts = summary(folded)
    parts = []
    for level in LEVELS:
        c = counts[level]
        parts.append(f"{level}: {c['PASS']} pass, {c['FAIL']} fail, {c['SKIP']} skip, {c['NOT_CHECKED']} not checked")
    return " | ".join(parts)


def as_json(
    folded: list[RequirementResult], results: list[CheckResult], *, meta: dict[str, Any], strict: bool = False
) -> dict[str, Any]:
    """The JSON report; its shape is documented in the package docstring."""
    return {
        "report_version": REPORT_VERSION,
        **meta,
        "ok": passed(folded, strict=strict),
        "summary": summary(folded),
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
                "per_id": {rid: r.verdicts.outcome(rid).value for rid in r.ids},
            }
            for r in results
        ],
    }
