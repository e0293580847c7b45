"""Profiles of the conformance suite: which checks run, which verdicts count, and how the report says so.

Mostly no gateway here: results are built by hand from the real registry and
SPEC.md, so the selection and the summaries are checked without a full run. The
last test runs real checks against a small gateway on loopback that misses one
of Gatehouse's decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from protocol_spec import requirements
from protocol_spec.conformance import (
    checks,  # noqa: F401  (registers the checks)
    profiles,
    report,
    runner,
)
from protocol_spec.conformance.__main__ import _parser
from protocol_spec.conformance.context import Suite
from protocol_spec.conformance.fixtures import USERS, FixtureState
from protocol_spec.conformance.target import Target
from protocol_spec.conformance.verdicts import REGISTRY, Check, Outcome, Verdicts
from protocol_spec.fakes import FakeUpstream

SOURCE = {r.id: r.source for r in requirements.load()}


async def _never(_ctx: object) -> None:  # pragma: no cover - checks here are never run
    raise AssertionError


def _options(profile: str, only: list[str] | None = None, strict: bool = False) -> runner.Options:
    return runner.Options(
        base_url=None, fixtures="unused", signin="device", token=None, admin_key=None, json_out=None,
        only=only or [], strict=strict, quiet=True, profile=profile,
    )


def _results(selection: profiles.Selection, *, failing_source: str) -> list[report.CheckResult]:
    """Every check of the selection passes its IDs, except those of ``failing_source``, which it fails."""
    results = []
    for item in selection.run:
        verdicts = Verdicts(item.ids)
        for rid in item.ids:
            verdicts.expect(rid, SOURCE[rid] != failing_source, "answer", observed="a", expected="b")
        results.append(report.CheckResult(item.name, item.ids, verdicts, 0.0, selection.counted(item)))
    return results


def _meta(selection: profiles.Selection, profile: str) -> dict[str, object]:
    return {
        "profile": {"name": profile, "sources": list(profiles.get(profile).sources)},
        "checks_selected": [c.name for c in selection.run],
        "checks_out_of_profile": [c.name for c in selection.out_of_profile],
    }


def test_the_protocol_profile_runs_a_check_only_for_its_protocol_and_observed_requirements() -> None:
    reqs = requirements.load()
    chosen = profiles.select(REGISTRY.checks, reqs, profiles.get("protocol"))
    assert chosen.in_profile == {r.id for r in reqs if r.source in ("protocol", "observed")}
    assert {c.name for c in chosen.run} | {c.name for c in chosen.out_of_profile} == {c.name for c in REGISTRY.checks}
    assert chosen.out_of_profile, "some checks judge only Gatehouse's decisions"
    for item in chosen.out_of_profile:
        assert {SOURCE[rid] for rid in item.ids} == {"gatehouse"}, item.name
    mixed = [c for c in chosen.run if "gatehouse" in {SOURCE[rid] for rid in c.ids}]
    assert mixed, "some checks judge both kinds"
    for item in chosen.run:
        assert chosen.counted(item)
        assert all(SOURCE[rid] != "gatehouse" for rid in chosen.counted(item)), item.name


def test_the_gatehouse_profile_runs_every_check_and_counts_every_verdict() -> None:
    chosen = profiles.select(REGISTRY.checks, requirements.load(), profiles.get("gatehouse"))
    assert [c.name for c in chosen.run] == [c.name for c in REGISTRY.checks]
    assert not chosen.out_of_profile
    assert all(chosen.counted(c) == c.ids for c in chosen.run)


def test_only_and_profile_combine() -> None:
    reqs = [
        requirements.Requirement("DISC-1", "MUST", "protocol", "*", "One.", "3"),
        requirements.Requirement("DISC-3", "MUST", "gatehouse", "*", "Three.", "3"),
        requirements.Requirement("REVOKE-1", "MUST", "gatehouse", "*", "Four.", "8"),
    ]
    mixed = Check("discovery", ("DISC-1", "DISC-3"), _never)
    theirs = Check("revocation", ("REVOKE-1",), _never)
    chosen = profiles.select([mixed, theirs], reqs, profiles.get("protocol"), ["disc", "revoke"])
    assert chosen.run == [mixed] and chosen.out_of_profile == [theirs]
    assert chosen.counted(mixed) == ("DISC-1",)
    only_revoke = profiles.select([mixed, theirs], reqs, profiles.get("protocol"), ["REVOKE-1"])
    assert only_revoke.run == [] and only_revoke.out_of_profile == [theirs]
    assert profiles.select([mixed, theirs], reqs, profiles.get("gatehouse"), ["revocation"]).run == [theirs]


def test_a_verdict_out_of_profile_is_set_aside_not_counted_as_a_failure() -> None:
    reqs = [r for r in requirements.load() if r.id in ("DISC-1", "DISC-3")]
    assert {r.source for r in reqs} == {"protocol", "gatehouse"}
    verdicts = Verdicts(("DISC-1", "DISC-3"))
    verdicts.expect("DISC-1", True)
    verdicts.expect("DISC-3", False, "cache header", observed=None, expected="no-store")
    mixed = report.CheckResult("discovery", verdicts.ids, verdicts, 0.0, counted=("DISC-1",))
    folded = {r.requirement.id: r for r in report.fold(reqs, [mixed], profiles.get("protocol"))}
    assert folded["DISC-1"].outcome is Outcome.PASS
    assert folded["DISC-3"].outcome is Outcome.OUT_OF_PROFILE
    assert "outside the protocol profile" in folded["DISC-3"].reason
    assert report.passed(list(folded.values()), strict=True)
    assert mixed.outcome() is Outcome.PASS
    assert mixed.outcome_of("DISC-3") is Outcome.OUT_OF_PROFILE
    # The same verdicts judged on Gatehouse's whole spec fail.
    everything = report.CheckResult("discovery", verdicts.ids, verdicts, 0.0)
    assert not report.passed(report.fold(reqs, [everything], profiles.get("gatehouse")))
    assert everything.outcome() is Outcome.FAIL


def test_protocol_profile_report_passes_where_gatehouse_decisions_fail_and_says_what_it_left_out() -> None:
    chosen = profiles.select(REGISTRY.checks, requirements.load(), profiles.get("protocol"))
    results = _results(chosen, failing_source="gatehouse")
    text, document = runner.outcome(_options("protocol"), results, _meta(chosen, "protocol"))

    gatehouse_reqs = [r for r in requirements.load() if r.source == "gatehouse"]
    assert document["ok"] is True
    assert document["report_version"] == report.REPORT_VERSION == 2
    assert document["profile"] == {"name": "protocol", "sources": ["protocol", "observed"]}
    assert document["checks_out_of_profile"] == [c.name for c in chosen.out_of_profile]
    # Every requirement is still listed; the Gatehouse ones visibly out of profile.
    assert [r["id"] for r in document["requirements"]] == [r.id for r in requirements.load()]
    outside = [r for r in document["requirements"] if r["outcome"] == "OUT_OF_PROFILE"]
    assert {r["id"] for r in outside} == {r.id for r in gatehouse_reqs}
    assert all(r["reason"] == "source gatehouse is outside the protocol profile" for r in outside)
    for item in document["checks"]:
        assert all(
            (outcome == "OUT_OF_PROFILE") == (SOURCE[rid] == "gatehouse") for rid, outcome in item["per_id"].items()
        ), item["name"]

    by_source = document["summary_by_source"]
    assert set(by_source) == set(requirements.SOURCES)
    assert sum(by_source["gatehouse"]["MUST"].values()) == by_source["gatehouse"]["MUST"]["OUT_OF_PROFILE"]
    assert sum(n for level in by_source["gatehouse"].values() for n in level.values()) == len(gatehouse_reqs)
    for source in ("protocol", "observed"):
        assert all(level["FAIL"] == 0 and level["OUT_OF_PROFILE"] == 0 for level in by_source[source].values())
        assert sum(level["PASS"] for level in by_source[source].values()) > 0
    # Per level, the counts of each source add up to the summary.
    for level, counts in document["summary"].items():
        for outcome_name, n in counts.items():
            assert n == sum(by_source[s][level][outcome_name] for s in by_source), (level, outcome_name)

    for line in text:
        if line.startswith("OUT "):
            assert SOURCE[line.split()[1]] == "gatehouse", line
    assert sum(line.startswith("OUT ") for line in text) == len(gatehouse_reqs)
    assert (
        f"profile protocol: judges sources protocol, observed; {len(gatehouse_reqs)} requirements out of profile "
        f"(not counted); {len(chosen.out_of_profile)} checks not run (they judge only requirements out of profile)"
    ) in text
    source_line = next(line for line in text if line.startswith("by source: "))
    assert f"gatehouse: {len(gatehouse_reqs)} out of profile, not judged" in source_line
    assert "protocol: " in source_line and " 0 fail, " in source_line
    assert "out of profile" in next(line for line in text if line.startswith("MUST: "))
    assert text[-1] == "conformance (protocol profile): every MUST that was checked passed"


def test_gatehouse_profile_report_counts_failures_per_source() -> None:
    chosen = profiles.select(REGISTRY.checks, requirements.load(), profiles.get("gatehouse"))
    results = _results(chosen, failing_source="gatehouse")
    text, document = runner.outcome(_options("gatehouse"), results, _meta(chosen, "gatehouse"))

    by_source = document["summary_by_source"]
    fails = {s: sum(level["FAIL"] for level in by_source[s].values()) for s in by_source}
    assert fails["protocol"] == fails["observed"] == 0 and fails["gatehouse"] > 0
    assert document["ok"] is False
    assert not any(r["outcome"] == "OUT_OF_PROFILE" for r in document["requirements"])
    assert "profile gatehouse: judges sources protocol, observed, gatehouse" in text
    must_fails = by_source["gatehouse"]["MUST"]["FAIL"]
    source_line = next(line for line in text if line.startswith("by source: "))
    assert f"gatehouse: 0 pass, {fails['gatehouse']} fail ({must_fails} MUST)" in source_line
    # Out-of-profile counts appear only when there are any: today's summary line is unchanged.
    assert "out of profile" not in next(line for line in text if line.startswith("MUST: "))
    assert text[-1] == "conformance (gatehouse profile): some MUST requirements failed"


def test_the_command_line_takes_a_profile_and_defaults_to_gatehouse() -> None:
    base = ["run", "--fixtures", "state.json"]
    assert _parser().parse_args(base).profile == "gatehouse" == profiles.DEFAULT_PROFILE
    assert _parser().parse_args([*base, "--profile", "protocol"]).profile == "protocol"
    with pytest.raises(SystemExit):
        _parser().parse_args([*base, "--profile", "anthropic"])
    with pytest.raises(ValueError, match="unknown profile 'anthropic'"):
        profiles.get("anthropic")


def test_fixtures_can_leave_gatehouses_own_section_out(tmp_path) -> None:
    import yaml

    from protocol_spec.conformance.fixtures import new_secrets, write_files

    assert _parser().parse_args(["fixtures"]).gatehouse_section is True
    assert _parser().parse_args(["fixtures", "--no-gatehouse-section"]).gatehouse_section is False
    urls: dict[str, Any] = {"port": 18080, "fake_url": "http://127.0.0.1:18200", "idp_url": "http://127.0.0.1:18100", "postgres_url": None}
    full, bare = tmp_path / "full.yaml", tmp_path / "bare.yaml"
    sinks = ("http://127.0.0.1:18300", {"full": "http://127.0.0.1:18301", "defaults": "http://127.0.0.1:18302"})
    grpc = ("http://127.0.0.1:18400", {"grpc": "http://127.0.0.1:18401", "spans": "http://127.0.0.1:18402"})
    ours = write_files(full, **urls, values=new_secrets(), collector=sinks, grpc_collector=grpc)
    theirs = write_files(bare, **urls, values=new_secrets(), gatehouse_section=False, collector=sinks, grpc_collector=grpc)
    assert "gatehouse" in yaml.safe_load(full.read_text())
    assert yaml.safe_load(bare.read_text()).keys() == yaml.safe_load(full.read_text()).keys() - {"gatehouse"}
    # The state tells the checks of Gatehouse's telemetry extensions (TEL-9 to TEL-12) whether to SKIP.
    assert (ours.grpc_collector_url, ours.grpc_sinks, ours.stamp_identity, ours.prometheus) == (grpc[0], grpc[1], True, True)
    assert (theirs.grpc_collector_url, theirs.grpc_sinks, theirs.stamp_identity, theirs.prometheus) == ("", {}, False, False)
    assert "OTEL_BSP_SCHEDULE_DELAY" in ours.env and "OTEL_BSP_SCHEDULE_DELAY" not in theirs.env


# -- A check judging both kinds must still judge the protocol's requirements --------------------
#
# A gateway built from the published protocol may miss Gatehouse's decisions in ways that
# make a scenario hang or break. Such a scenario must not keep the same check from judging
# the protocol's requirements (they would be reported as failed or skipped without having
# been looked at). Driven for real: the fake upstream and a small gateway on loopback.

INTERRUPTED_EVENT = (
    b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"upstream stream interrupted"}}\n\n'
)
HOLD_S = 30.0


class HoldingGateway:
    """A loopback gateway that relays ``POST /v1/messages`` streams from the fake upstream.

    It commits each stream as soon as the request arrives. When the upstream breaks before
    the first body byte it does not fail over (Gatehouse's MSG-32 and SSE-5) but holds the
    committed stream open; a break after the first byte gets the SSE ``error`` event the
    protocol asks for (ERR-5).
    """

    def __init__(self, upstream_url: str) -> None:
        self.upstream_url = upstream_url
        self.release = asyncio.Event()
        self.url = ""
        # Streams held open because the upstream broke before their first byte.
        self.held = 0

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        relayed = 0
        try:
            async with self.session.post(
                self.upstream_url + "/v1/messages", data=body, headers={"Content-Type": "application/json", "x-api-key": "k"}
            ) as upstream:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                    relayed += len(chunk)
        except aiohttp.ClientError:
            if not relayed:
                self.held += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), HOLD_S)
                return response
            await response.write(INTERRUPTED_EVENT)
        await response.write_eof()
        return response

    async def __aenter__(self) -> HoldingGateway:
        self.session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self.runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        await web.SockSite(self.runner, sock).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await self.runner.cleanup()
        await self.session.close()


async def test_a_scenario_of_gatehouses_that_hangs_leaves_the_protocols_requirements_of_its_check_judged() -> None:
    async with FakeUpstream() as fake, HoldingGateway(fake.url) as gateway, aiohttp.ClientSession() as session:
        state = FixtureState(
            pid=0, config_path="", env_path="", public_url=gateway.url, gateway_port=0, fake_url=fake.url,
            idp_url="http://127.0.0.1:9", users=USERS, env={}, jwt_secret="unused", primary_key="k",
            secondary_key="k2", admin_write_key="", admin_read_key="",
        )
        suite = Suite(Target(gateway.url, session), state, session, signin="token", token="conformance-token", admin_key=None)
        chosen = profiles.select(REGISTRY.checks, requirements.load(), profiles.get("protocol"), ["ERR-5"])
        results = [await runner.run_check(suite, item, chosen.counted(item)) for item in chosen.run]

    folded = {item.requirement.id: item for item in report.fold(requirements.load(), results, profiles.get("protocol"))}
    err5 = folded["ERR-5"]
    findings = [finding for _, finding in err5.findings]
    assert err5.outcome is Outcome.PASS, report.lines([err5])
    assert all(f.what not in ("the check could not complete", "the check did not reach this requirement") for f in findings)
    # The hanging scenario judges only Gatehouse's requirements: under the protocol profile it is not even run.
    assert gateway.held == 0, "a scenario out of profile was run"


async def test_a_timeout_inside_a_check_is_not_reported_as_the_checks_deadline() -> None:
    async def times_out(_ctx: object) -> None:
        raise TimeoutError

    async with aiohttp.ClientSession() as session:
        state = FixtureState(
            pid=0, config_path="", env_path="", public_url="http://127.0.0.1:9", gateway_port=9, fake_url="http://127.0.0.1:9",
            idp_url="http://127.0.0.1:9", users=USERS, env={}, jwt_secret="unused", primary_key="k",
            secondary_key="k2", admin_write_key="", admin_read_key="",
        )
        suite = Suite(Target(state.public_url, session), state, session, signin="token", token="t", admin_key=None)
        result = await runner.run_check(suite, Check("times out", ("ERR-5",), times_out, timeout_s=20.0))
    finding = result.verdicts.reasons("ERR-5")[0]
    assert finding.what == "the check could not complete"
    assert finding.observed is not None and finding.observed.startswith("a timeout inside the check after ")


def test_interop_compares_each_profile_run_with_the_full_run_requirement_by_requirement() -> None:
    from protocol_spec.interop import must_failures_by_source, profile_drift

    def run(profile: str, outcomes: dict[str, tuple[str, str]]) -> dict[str, object]:
        chosen = profiles.select(REGISTRY.checks, requirements.load(), profiles.get(profile))
        _, document = runner.outcome(_options(profile), _results(chosen, failing_source="gatehouse"), _meta(chosen, profile))
        for item in document["requirements"]:
            if item["id"] in outcomes:
                item["source"], item["outcome"] = outcomes[item["id"]]
        return document

    full, protocol = run("gatehouse", {}), run("protocol", {})
    assert profile_drift(full, protocol) == []
    assert must_failures_by_source(protocol)["gatehouse"] == 0 < must_failures_by_source(full)["gatehouse"]
    # A requirement the profile run left unjudged, and a failure it should never report, are both named.
    skipped = run("protocol", {"ERR-5": ("protocol", "SKIP"), "ROLE-4": ("gatehouse", "FAIL")})
    assert [(rid, before, after) for rid, before, after, _ in profile_drift(full, skipped)] == [
        ("ROLE-4", "FAIL", "FAIL"),
        ("ERR-5", "PASS", "SKIP"),
    ]
