"""``run``: every registered check, one after another, against one target.

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
    report,
)
from protocol_spec.conformance.context import Ctx, Suite
from protocol_spec.conformance.fixtures import FixtureState, load_state
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


class SetupError(Exception):
    """The run could not start (no fixtures, target or fake unreachable)."""


def selected(only: list[str]) -> list[Check]:
    if not only:
        return list(REGISTRY.checks)
    wanted = [w.lower() for w in only]
    return [
        c for c in REGISTRY.checks
        if any(w in c.name.lower() or any(rid.lower() == w or rid.lower().startswith(w + "-") for rid in c.ids) for w in wanted)
    ]


async def run_check(suite: Suite, item: Check) -> report.CheckResult:
    verdicts = Verdicts(item.ids)
    started = time.monotonic()
    try:
        await asyncio.wait_for(item.fn(Ctx(suite, verdicts)), item.timeout_s)
    except Skip as skip:
        verdicts.skip(skip.reason)
    except TimeoutError:
        verdicts.crashed(f"no result within {item.timeout_s} s")
    except Exception as err:  # a check that breaks fails what it had not judged
        verdicts.crashed(f"{type(err).__name__}: {err}")
    verdicts.finish()
    return report.CheckResult(item.name, item.ids, verdicts, time.monotonic() - started)


async def _preflight(target: Target, suite: Suite) -> None:
    try:
        await target.get("/healthz", timeout_s=PREFLIGHT_TIMEOUT_S)
    except (aiohttp.ClientError, TimeoutError) as err:
        raise SetupError(f"the target {target.base_url} does not answer: {err}") from None
    try:
        await suite.fake.reset()
    except (aiohttp.ClientError, TimeoutError) as err:
        raise SetupError(f"the fake upstream {suite.state.fake_url} does not answer (are the fixtures running?): {err}") from None


async def execute(options: Options, state: FixtureState) -> tuple[list[report.CheckResult], dict[str, Any]]:
    base_url = options.base_url or state.public_url
    started = datetime.now(UTC)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        target = Target(base_url, session)
        suite = Suite(target, state, session, signin=options.signin, token=options.token, admin_key=options.admin_key)
        await _preflight(target, suite)
        results = []
        for item in selected(options.only):
            result = await run_check(suite, item)
            results.append(result)
            if not options.quiet:
                print(f"  {result.outcome().value:<4}  {item.name}  ({result.duration_s:.2f} s)", file=sys.stderr, flush=True)
    meta = {
        "target": base_url,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 2),
        "signin": options.signin,
        "admin_key": bool(options.admin_key),
        "checks_selected": [c.name for c in selected(options.only)],
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
    folded = report.fold(requirements.load(), results)
    if options.only:
        checked = {rid for r in results for rid in r.ids}
        folded = [item for item in folded if item.requirement.id in checked]
    for line in report.lines(folded):
        print(line)
    print(report.summary_line(folded))
    document = report.as_json(folded, results, meta=meta, strict=options.strict)
    if options.json_out:
        Path(options.json_out).write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    ok = report.passed(folded, strict=options.strict)
    print("conformance: " + ("every MUST that was checked passed" if ok else "some MUST requirements failed"))
    return 0 if ok else 1
