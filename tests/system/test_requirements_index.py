"""SPEC.md parses into a sound requirements index (SPEC §1.3, §1.6)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict

import msgspec
import pytest

from protocol_spec import requirements as spec

REQS = spec.load()
SECTIONS = spec.sections()
TEXT = spec.spec_bytes().decode("utf-8")


def test_spec_parses_into_a_thorough_index():
    assert 150 <= len(REQS) <= 360


def test_ids_are_unique_and_well_formed():
    ids = [r.id for r in REQS]
    assert len(ids) == len(set(ids))
    spec.check(REQS)
    for r in REQS:
        prefix, number = r.id.split("-")
        assert prefix in spec.PREFIXES
        assert number == str(int(number)) and int(number) >= 1


def test_levels_sources_and_endpoints_are_valid():
    for r in REQS:
        assert r.level in spec.LEVELS, r.id
        assert r.source in spec.SOURCES, r.id
        assert spec.endpoint_is_valid(r.endpoint), r.id
        assert r.summary.endswith("."), r.id


def test_every_prefix_has_requirements_numbered_from_one_without_gaps():
    numbers: dict[str, list[int]] = defaultdict(list)
    for r in REQS:
        prefix, number = r.id.split("-")
        numbers[prefix].append(int(number))
    for prefix in spec.PREFIXES:
        assert numbers[prefix], f"no {prefix} requirement"
        assert sorted(numbers[prefix]) == list(range(1, len(numbers[prefix]) + 1)), prefix


def test_each_prefix_lives_in_one_top_level_section():
    tops: dict[str, set[str]] = defaultdict(set)
    for r in REQS:
        tops[r.id.split("-")[0]].add(r.section.split(".")[0])
    assert {p: t for p, t in tops.items() if len(t) != 1} == {}


def test_every_requirement_sits_in_a_known_section():
    numbers = {s.number for s in SECTIONS}
    assert all(r.section in numbers for r in REQS)


def test_ids_cited_in_the_text_exist():
    known = {r.id for r in REQS}
    pattern = r"\b(?:" + "|".join(spec.PREFIXES) + r")-[0-9]+\b"
    cited = set(re.findall(pattern, TEXT))
    assert cited - known == set()


def test_section_references_exist():
    numbers = {s.number for s in SECTIONS}
    # "§N.M" citations of this document; RFC section citations are not ours.
    cited = set(re.findall(r"(?<!RFC \d{4} )§([0-9]+(?:\.[0-9]+)*)", TEXT))
    assert cited - numbers == set()


def _section_text(title: str) -> str:
    match = re.search(r"^## (\d+)\. " + re.escape(title) + r"\s*$", TEXT, re.M)
    assert match, f"no section titled {title!r}"
    rest = TEXT[match.end() :]
    following = re.search(r"^## \d+\. ", rest, re.M)
    return rest[: following.start()] if following else rest


def test_differences_section_names_every_known_difference():
    body = _section_text(spec.DIFFERENCES_TITLE)
    goes_further = [
        "Revocation endpoint",
        "x-should-retry: false` on every bearer 401",
        "Hard spend limits",
        "Refresh-token rotation with a reuse window",
        "Refresh depends on PostgreSQL",
        "`email` in the token response",
    ]
    departs = [
        "Plain-text 411 and 413",
        "No `x-should-retry` on expired tokens",
        "`deny_cidrs` on health probes",
    ]
    for phrase in goes_further + departs:
        assert phrase in body, phrase
    assert "Where Gatehouse goes further" in body
    assert "Where Anthropic's gateway departs from its own protocol text" in body


def test_index_json_round_trips():
    index = msgspec.json.decode(spec.index_json())
    assert index["document"] == spec.DOCUMENT
    decoded = msgspec.convert(index["requirements"], list[spec.Requirement])
    assert decoded == REQS
    assert [s["number"] for s in index["sections"]] == [s.number for s in SECTIONS]


def test_a_malformed_item_is_an_error_not_a_silent_skip():
    bad = "## 3. Discovery\n\n- **DISC-1** · MUST · protocol — missing endpoint.\n"
    with pytest.raises(spec.SpecError) as err:
        spec.parse(bad)
    assert "line 3" in str(err.value)


@pytest.mark.parametrize(
    "item, problem",
    [
        ("- **DISC-1** · MUST · folklore · * — A summary.", "source"),
        ("- **DISC-1** · OUGHT · protocol · * — A summary.", "level"),
        ("- **FOO-1** · MUST · protocol · * — A summary.", "prefix"),
        ("- **DISC-0** · MUST · protocol · * — A summary.", "PREFIX-N"),
        ("- **DISC-1** · MUST · protocol · `FETCH /x` — A summary.", "endpoint"),
        ("- **DISC-1** · MUST · protocol · * — No full stop", "full stop"),
    ],
)
def test_bad_fields_are_reported(item, problem):
    with pytest.raises(spec.SpecError) as err:
        spec.parse("## 3. Discovery\n\n" + item + "\n")
    assert problem in str(err.value)


def test_duplicate_ids_are_reported():
    text = "## 3. Discovery\n\n- **DISC-1** · MUST · protocol · * — One.\n- **DISC-1** · MAY · protocol · * — Two.\n"
    with pytest.raises(spec.SpecError, match="more than once"):
        spec.parse(text)


def test_items_in_code_blocks_and_unnumbered_text_are_ignored_or_refused():
    fenced = "## 3. Discovery\n\n```\n- **DISC-1** · whatever\n```\n"
    assert spec.parse(fenced) == ([], [spec.Section("3", "Discovery")])
    with pytest.raises(spec.SpecError, match="not under a numbered section"):
        spec.parse("# Title\n\n- **DISC-1** · MUST · protocol · * — One.\n")


def test_requirements_module_does_not_import_gateway():
    code = (
        "import sys, protocol_spec.requirements as r; r.load(); "
        "bad = [m for m in sys.modules if m == 'gateway' or m.startswith('gateway.')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
