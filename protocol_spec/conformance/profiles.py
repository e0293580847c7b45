"""Profiles: which requirements a run judges, chosen by the requirements' source.

Every requirement of SPEC.md names where it comes from (SPEC §1.3): the
published ``protocol``, behaviour ``observed`` on the wire, or a ``gatehouse``
decision. A gateway built from the published protocol owes nothing to the
third kind, so judging it on them only buries its real gaps under Gatehouse's
choices. A profile names the sources a run judges:

* ``protocol``: the published protocol and the observed wire; what any
  gateway that Claude Code talks to is expected to do;
* ``gatehouse``: everything, Gatehouse's own decisions included (the default,
  so ``make test`` judges Gatehouse on its whole spec; ``make interop`` runs
  both profiles).

A check runs when at least one requirement it covers is in the profile; its
verdicts on the others are set aside. A requirement outside the profile is
reported as OUT_OF_PROFILE, never as a failure, and never left out.

Pure: values in, values out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from protocol_spec.conformance.verdicts import Check
from protocol_spec.requirements import SOURCES, Requirement


@dataclass(frozen=True)
class Profile:
    name: str
    sources: tuple[str, ...]
    description: str

    def covers(self, requirement: Requirement) -> bool:
        return requirement.source in self.sources


PROFILES: dict[str, Profile] = {
    "protocol": Profile(
        "protocol",
        ("protocol", "observed"),
        "requirements from the published protocol and the observed wire: what any gateway owes Claude Code",
    ),
    "gatehouse": Profile("gatehouse", SOURCES, "every requirement, Gatehouse's own decisions included"),
}
DEFAULT_PROFILE = "gatehouse"


def get(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; profiles: {', '.join(PROFILES)}") from None


def matches_only(item: Check, only: Iterable[str]) -> bool:
    """``--only``: the check's name contains a word, or it covers that ID or an ID under that prefix."""
    wanted = [w.lower() for w in only]
    if not wanted:
        return True
    ids = [rid.lower() for rid in item.ids]
    return any(w in item.name.lower() or any(rid == w or rid.startswith(w + "-") for rid in ids) for w in wanted)


@dataclass(frozen=True)
class Selection:
    """The checks a run executes, and the ones it leaves out because all they judge is outside the profile."""

    run: list[Check]
    out_of_profile: list[Check]
    # IDs of the profile's requirements (what the run counts).
    in_profile: frozenset[str]

    def counted(self, item: Check) -> tuple[str, ...]:
        """The IDs of ``item`` whose verdicts count."""
        return tuple(rid for rid in item.ids if rid in self.in_profile)


def select(checks: Iterable[Check], requirements: Iterable[Requirement], profile: Profile, only: Iterable[str] = ()) -> Selection:
    in_profile = frozenset(r.id for r in requirements if profile.covers(r))
    only = list(only)
    run: list[Check] = []
    left_out: list[Check] = []
    for item in checks:
        if not matches_only(item, only):
            continue
        (run if any(rid in in_profile for rid in item.ids) else left_out).append(item)
    return Selection(run, left_out, in_profile)
