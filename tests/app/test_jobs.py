"""The background-job scheduler (gateway.app.jobs), on a fake timer: periods, failures, stop order.

The fake ``sleep`` parks each job until the test lets its period pass, so
nothing here depends on wall-clock time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.admin import retention
from gateway.app import build as gateway_app
from gateway.app import jobs as app_jobs
from gateway.app.build import BOOT
from gateway.app.jobs import JOBS, PRODUCERS, Scheduler
from gateway.http import signin
from gateway.http.sightings import FLUSH_INTERVAL_S
from tests.harness import make_config, upstream_block

GOOD = "sha256:" + "a" * 64


class FakeTimer:
    """``sleep`` for the scheduler: each call waits until ``elapse`` lets that period pass."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self._parked: list[tuple[float, asyncio.Future[None]]] = []

    async def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._parked.append((seconds, done))
        await done

    async def elapse(self, seconds: float) -> None:
        """Wake every sleeper whose period is at most ``seconds``, then let the woken runs finish."""
        await settle()
        ready = [(s, f) for s, f in self._parked if s <= seconds]
        self._parked = [(s, f) for s, f in self._parked if s > seconds]
        for _, f in ready:
            if not f.done():
                f.set_result(None)
        await settle()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, level: str, message: str) -> None:
        self.lines.append((level, message))


async def test_each_job_runs_once_per_period_after_waiting_it():
    timer, runs = FakeTimer(), []
    jobs = Scheduler(sleep=timer.sleep, log=Lines())

    async def fast() -> None:
        runs.append("fast")

    async def slow() -> None:
        runs.append("slow")

    jobs.every("fast", 1.0, fast, "a one-second job")
    jobs.every("slow", 5.0, slow, "a five-second job")
    jobs.start()
    try:
        await settle()
        assert runs == []  # nothing runs before its first period has passed
        await timer.elapse(1.0)
        await timer.elapse(1.0)
        assert runs == ["fast", "fast"]
        await timer.elapse(5.0)
        assert sorted(runs) == ["fast", "fast", "fast", "slow"]
        assert set(timer.asked) == {1.0, 5.0}
    finally:
        await jobs.stop()


async def test_a_failing_run_is_logged_and_the_job_keeps_its_period():
    timer, log, runs = FakeTimer(), Lines(), []
    jobs = Scheduler(sleep=timer.sleep, log=log)

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) in (1, 2):
            raise RuntimeError("boom")

    jobs.every("flaky", 60.0, flaky, "fails twice, then works")
    jobs.start()
    try:
        for _ in range(4):
            await timer.elapse(60.0)
        assert runs == [0, 1, 2, 3]  # still running after its failures
        # One line for the failures in a row, one when it works again.
        assert [level for level, _ in log.lines] == ["error", "info"]
        assert "flaky" in log.lines[0][1] and "boom" in log.lines[0][1]
    finally:
        await jobs.stop()


async def test_a_wake_runs_the_job_before_its_period():
    timer, runs = FakeTimer(), []
    wake = asyncio.Event()
    jobs = Scheduler(sleep=timer.sleep, log=Lines())

    async def round_() -> None:
        runs.append(wake.is_set())
        wake.clear()  # a woken job clears its wake (the spend store's round does)

    jobs.every("woken", 3600.0, round_, "runs hourly or when woken", wake=wake)
    jobs.start()
    try:
        await settle()
        wake.set()
        await settle()
        assert runs == [True]
        await timer.elapse(3600.0)
        assert runs == [True, False]
    finally:
        await jobs.stop()


async def test_stop_cancels_in_the_order_given_then_the_rest_in_registration_order():
    timer, order = FakeTimer(), []
    jobs = Scheduler(sleep=timer.sleep, log=Lines())
    started = asyncio.Event()

    async def hangs() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            order.append("c cancelled mid-run")

    async def nothing() -> None:
        pass

    jobs.every("a", 1.0, nothing, "a", at_stop=lambda: order.append("a stopped"))
    jobs.every("b", 1.0, nothing, "b", at_stop=lambda: order.append("b stopped"))
    jobs.every("c", 1.0, hangs, "c", at_stop=lambda: order.append("c stopped"))
    jobs.start()
    await timer.elapse(1.0)
    await started.wait()
    await jobs.stop("b")
    assert order == ["b stopped"]
    await jobs.stop()
    assert order == ["b stopped", "a stopped", "c cancelled mid-run", "c stopped"]
    await jobs.stop()  # stopping again does nothing
    assert len(order) == 4


async def test_a_name_is_registered_once():
    jobs = Scheduler()

    async def nothing() -> None:
        pass

    jobs.every("x", 1.0, nothing, "x")
    with pytest.raises(ValueError, match="registered twice"):
        jobs.every("x", 2.0, nothing, "x again")


async def test_the_app_registers_sightings_which_report_once_more_at_shutdown():
    # Built, not started: no database is reached. With oidc and without admin: retention
    # (usage rows only), no spend.
    app = gateway_app.build(make_config("postgresql://127.0.0.1:9/none", [upstream_block("http://127.0.0.1:9")]))
    boot: Any = app[BOOT]  # the runtime is made on startup; its boot values are there before
    events: list[str] = []
    boot.sightings._emit = lambda evt, **f: events.append(evt)
    jobs = app_jobs.schedule(app, boot, None)
    assert jobs is app[JOBS]
    assert [(j.name, j.every_s) for j in jobs.jobs] == [
        ("sightings", FLUSH_INTERVAL_S),
        ("signin.prune", signin.PRUNE_EVERY_S),
        ("retention", retention.PRUNE_EVERY_S),
    ]
    assert all(j.does for j in jobs.jobs)
    assert set(PRODUCERS) >= {j.name for j in jobs.jobs}
    jobs.start()
    boot.sightings.note("a", GOOD)
    await settle()
    await jobs.stop(*PRODUCERS)
    assert events == ["managed.checksum_seen"]
