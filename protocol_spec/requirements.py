"""The requirements of ``SPEC.md``, read from the document itself.

``SPEC.md`` is the one source of truth: every requirement is a Markdown list item
of the form (SPEC §1.3)::

    - **MSG-12** · MUST · observed · `POST /v1/messages` — One-sentence summary.

and belongs to the numbered heading above it. This module parses those items
into :class:`Requirement` values, checks them (well-formed and unique IDs, known
prefixes, levels and sources), and renders the JSON index served at
``GET /protocol.json``. A list item that starts like a requirement but does not
match the form is an error, never silently skipped, so a typo cannot drop a
requirement from the index.

Pure, and independent of ``gateway``: the spec is found with
:mod:`importlib.resources`, so this works from a source checkout and from an
installed package alike.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

import msgspec

SPEC_RESOURCE = "SPEC.md"
DOCUMENT = "protocol_spec/SPEC.md"

# Section prefixes, in the order the spec introduces them (SPEC §1.3).
PREFIXES: tuple[str, ...] = (
    "ROLE",
    "DISC",
    "DEV",
    "VERIFY",
    "TOKEN",
    "REFRESH",
    "REVOKE",
    "BEARER",
    "MSG",
    "COUNT",
    "SSE",
    "LIMIT",
    "ERR",
    "RETRY",
    "MODEL",
    "MANAGED",
    "HINT",
    "SPEND",
    "USAGE",
    "TEL",
    "BEDROCK",
    "VERTEX",
    "NET",
    "TLS",
    "ADMIN",
)
LEVELS: tuple[str, ...] = ("MUST", "SHOULD", "MAY")
SOURCES: tuple[str, ...] = ("protocol", "observed", "gatehouse")
# Endpoints that are not a method and path.
ALL_ENDPOINTS = "*"
CLIENT = "client"
METHODS: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

DIFFERENCES_TITLE = "Differences from Anthropic's gateway"


class Requirement(msgspec.Struct, frozen=True):
    id: str  # e.g. "MSG-12"
    level: str  # one of LEVELS
    source: str  # one of SOURCES
    endpoint: str  # "POST /v1/messages", "*" or "client"
    summary: str  # the one-sentence summary, Markdown as written
    section: str  # number of the enclosing heading, e.g. "10.6"


class Section(msgspec.Struct, frozen=True):
    number: str
    title: str


class SpecError(ValueError):
    """SPEC.md breaks the requirement format; ``issues`` holds one line per problem."""

    def __init__(self, issues: list[str]) -> None:
        super().__init__("\n".join(issues))
        self.issues = issues


_ID = re.compile(r"^(?P<prefix>[A-Z]+)-(?P<number>[1-9][0-9]*)$")
_HEADING = re.compile(r"^#{2,6} (?P<number>[0-9]+(?:\.[0-9]+)*)\.? (?P<title>\S.*?)\s*$")
_FENCE = re.compile(r"^\s*```")
# Anything that looks like the start of a requirement item must be a whole one.
_ITEM_START = re.compile(r"^- \*\*[A-Z]+-[0-9]+\*\*")
_ITEM = re.compile(
    r"^- \*\*(?P<id>[A-Z]+-[0-9]+)\*\* · (?P<level>\S+) · (?P<source>\S+) · "
    r"(?P<endpoint>`[^`]+`|\S+) — (?P<summary>\S.*)$"
)
_ENDPOINT = re.compile(r"^(?P<methods>[A-Z]+(?:\|[A-Z]+)*) (?P<path>/\S*)$")


def spec_bytes() -> bytes:
    """SPEC.md exactly as shipped (served as ``GET /protocol``)."""
    return resources.files("protocol_spec").joinpath(SPEC_RESOURCE).read_bytes()


@functools.cache
def _spec_text() -> str:
    return spec_bytes().decode("utf-8")


def parse(text: str) -> tuple[list[Requirement], list[Section]]:
    """Requirements and numbered sections of a spec text; raises :class:`SpecError`."""
    requirements: list[Requirement] = []
    sections: list[Section] = []
    issues: list[str] = []
    current: str | None = None
    in_fence = False
    for lineno, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        heading = _HEADING.match(line)
        if heading:
            current = heading["number"]
            sections.append(Section(current, heading["title"]))
            continue
        if not _ITEM_START.match(line):
            continue
        item = _ITEM.match(line)
        if item is None:
            issues.append(
                f"line {lineno}: requirement item does not follow the SPEC §1.3 form: {line[:80]!r}"
            )
            continue
        if current is None:
            issues.append(f"line {lineno}: {item['id']} is not under a numbered section")
            continue
        endpoint = item["endpoint"]
        if endpoint.startswith("`"):
            endpoint = endpoint[1:-1]
        requirements.append(
            Requirement(
                id=item["id"],
                level=item["level"],
                source=item["source"],
                endpoint=endpoint,
                summary=item["summary"].rstrip(),
                section=current,
            )
        )
    issues.extend(problems(requirements))
    if issues:
        raise SpecError(issues)
    return requirements, sections


def problems(requirements: list[Requirement]) -> list[str]:
    """Every way these requirements break SPEC §1.3 (empty when they are fine)."""
    found: list[str] = []
    seen: set[str] = set()
    for req in requirements:
        where = req.id
        match = _ID.match(req.id)
        if match is None:
            found.append(f"{where}: ID is not PREFIX-N with N counted from 1")
        elif match["prefix"] not in PREFIXES:
            found.append(f"{where}: unknown prefix {match['prefix']!r}")
        if req.id in seen:
            found.append(f"{where}: ID used more than once")
        seen.add(req.id)
        if req.level not in LEVELS:
            found.append(f"{where}: level {req.level!r} is not one of {', '.join(LEVELS)}")
        if req.source not in SOURCES:
            found.append(f"{where}: source {req.source!r} is not one of {', '.join(SOURCES)}")
        if not endpoint_is_valid(req.endpoint):
            found.append(f"{where}: endpoint {req.endpoint!r} is not a method and path, '*' or 'client'")
        if not req.summary.endswith("."):
            found.append(f"{where}: summary does not end with a full stop")
    return found


def endpoint_is_valid(endpoint: str) -> bool:
    if endpoint in (ALL_ENDPOINTS, CLIENT):
        return True
    match = _ENDPOINT.match(endpoint)
    return match is not None and all(m in METHODS for m in match["methods"].split("|"))


def check(requirements: list[Requirement]) -> None:
    """Raise :class:`SpecError` unless the requirements are well-formed and unique."""
    found = problems(requirements)
    if found:
        raise SpecError(found)


def load() -> list[Requirement]:
    """Every requirement of the shipped SPEC.md, in document order."""
    return list(_parsed()[0])


def sections() -> list[Section]:
    """Every numbered section of the shipped SPEC.md, in document order."""
    return list(_parsed()[1])


@functools.cache
def _parsed() -> tuple[tuple[Requirement, ...], tuple[Section, ...]]:
    requirements, secs = parse(_spec_text())
    return tuple(requirements), tuple(secs)


def index_json() -> bytes:
    """The requirements index (SPEC §1.6), served as ``GET /protocol.json``."""
    return _index_json()


@functools.cache
def _index_json() -> bytes:
    requirements, secs = _parsed()
    return msgspec.json.encode(
        {"document": DOCUMENT, "sections": list(secs), "requirements": list(requirements)}
    )
