"""``run``: the registered checks of a profile, one after another, against one target.

Checks run sequentially because they share the fake upstream's request log
(each resets it, scripts it and reads it back). Each has its own deadline,
so one hung endpoint costs that check, not the run.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from protocol_spec import requirements
from protocol_spec.conformance import (
    checks,  # noqa: F401  (registers the checks)
    profiles,
    report,
)
from protocol_spec.conformance.context import Ctx, Suite
from protocol_spec.conformance.fixtures import PROTOCOL_PING_INTERVAL_S, FixtureState, load_state
from protocol_spec.conformance.target import Target
from protocol_spec.conformance.verdicts import REGISTRY, Check, Skip, Verdicts

PREFLIGHT_TIMEOUT_S = 10.0


@dataclass
class Options:
    base_url: str | None
    fixtures: str
    signin: str
    token: str | None
    admin_key: str | None
    json_out: str | None
    only: list[str]
    strict: bool
    quiet: bool
    profile: str = profiles.DEFAULT_PROFILE
    # Seconds of upstream silence after which the gateway under test pings (SSE-4).
    ping_interval_s: float = PROTOCOL_PING_INTERVAL_S


class SetupError(Exception):
    """The run could not start (no fixtures, target or fake unreachable)."""


def selection(options: Options) -> profiles.Selection:
    return profiles.select(REGISTRY.checks, requirements.load(), profiles.get(options.profile), options.only)


async def run_check(suite: Suite, item: Check, counted: tuple[str, ...] | None = None) -> report.CheckResult:
    verdicts = Verdicts(item.ids)
    started = time.monotonic()
    try:
        await asyncio.wait_for(item.fn(Ctx(suite, verdicts)), item.timeout_s)
    except Skip as skip:
        verdicts.skip(skip.reason)
    except TimeoutError:
        # Either the check's own deadline, or a timeout inside it (a client's) that it let escape.
        elapsed = time.monotonic() - started
        verdicts.crashed(
            f"no result within {item.timeout_s} s" if elapsed >= item.timeout_s else f"a timeout inside the check after {elapsed:.1f} s"
        )
    except Exception as err:  # a check that breaks fails what it had not judged
        verdicts.crashed(f"{type(err).__name__}: {err}")
    verdicts.finish()
    return report.CheckResult(item.name, item.ids, verdicts, time.monotonic() - started, counted)


async def _preflight(target: Target, suite: Suite) -> None:
    try:
        await target.get("/healthz", timeout_s=PREFLIGHT_TIMEOUT_S)
    except (aiohttp.ClientError, TimeoutError) as err:
        raise SetupError(f"the target {target.base_url} does not answer: {err}") from None
    fakes = [(suite.state.fake_url, suite.fake), (suite.state.bedrock_url, suite.bedrock), (suite.state.vertex_url, suite.vertex)]
    for url, fake in fakes:
        if fake is None:
            continue
        try:
            await fake.reset()
        except (aiohttp.ClientError, TimeoutError) as err:
            raise SetupError(f"the fake upstream {url} does not answer (are the fixtures running?): {err}") from None


async def execute(options: Options, state: FixtureState) -> tuple[list[report.CheckResult], dict[str, Any]]:
    base_url = options.base_url or state.public_url
    chosen = selection(options)
    started = datetime.now(UTC)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        target = Target(base_url, session)
        suite = Suite(
            target, state, session, signin=options.signin, token=options.token, admin_key=options.admin_key,
            ping_interval_s=options.ping_interval_s,
        )
        await _preflight(target, suite)
        results = []
        if not options.quiet:
            print(
                f"profile {options.profile}: {len(chosen.run)} checks to run, "
                f"{len(chosen.out_of_profile)} left out (they judge only requirements out of profile)",
                file=sys.stderr,
                flush=True,
            )
        for item in chosen.run:
            result = await run_check(suite, item, chosen.counted(item))
            results.append(result)
            if not options.quiet:
                print(f"  {result.outcome().value:<4}  {item.name}  ({result.duration_s:.2f} s)", file=sys.stderr, flush=True)
    meta = {
        "target": base_url,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 2),
        "signin": options.signin,
        "admin_key": bool(options.admin_key),
        "profile": {"name": options.profile, "sources": list(profiles.get(options.profile).sources)},
        "ping_interval_s": options.ping_interval_s,
        "checks_selected": [c.name for c in chosen.run],
        "checks_out_of_profile": [c.name for c in chosen.out_of_profile],
    }
    return results, meta


def main(options: Options) -> int:
    try:
        state = load_state(options.fixtures)
    except (OSError, ValueError) as err:
        print(f"cannot read the fixtures state {options.fixtures}: {err}", file=sys.stderr)
        return 2
    try:
        results, meta = asyncio.run(execute(options, state))
    except SetupError as err:
        print(str(err), file=sys.stderr)
        return 2
    text, document = outcome(options, results, meta)
    for line in text:
        print(line)
    if options.json_out:
        Path(options.json_out).write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    return 0 if document["ok"] else 1


def outcome(options: Options, results: list[report.CheckResult], meta: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The text report (one line per requirement, then the summaries) and the JSON report of a run's results."""
    profile = profiles.get(options.profile)
    folded = report.fold(requirements.load(), results, profile)
    if options.only:
        checked = {rid for r in results for rid in r.ids}
        folded = [item for item in folded if item.requirement.id in checked]
    document = report.as_json(folded, results, meta=meta, strict=options.strict)
    verdict = "every MUST that was checked passed" if document["ok"] else "some MUST requirements failed"
    text = [
        *report.lines(folded),
        report.profile_line(profile, folded, meta.get("checks_out_of_profile", [])),
        report.summary_line(folded),
        report.source_line(folded),
        f"conformance ({profile.name} profile): {verdict}",
    ]
    return text, document
