"""Every piece of background work the gateway does, and the scheduler of the periodic ones.

The periodic jobs, registered by :func:`schedule` (the bodies live in their packages;
none of these periods is configurable):

=================  =========================  ==================================================
job                every                      what one run does
=================  =========================  ==================================================
``sightings``      5 min                      log the managed-settings checksums clients reported
                                              (``managed.checksum_seen``); once more at stop
``signin.prune``   5 min                      delete spent device grants, old rate counters and
                                              long-ended sign-in families (with ``oidc``)
``signin.reseal``  10 s                       re-seal one page of stored IdP refresh tokens that
                                              only an older ``session.jwt_secret`` opens (with
                                              ``oidc`` and more than one secret; after a pass
                                              that found none, rests 1 h)
``retention``      1 h                        roll usage rows older than
                                              ``gatehouse.retention.usage_records_days`` up
                                              into daily sums and delete them (always); delete
                                              admin audit entries, idle principals and spend
                                              counters older than the ``admin`` retention
                                              settings (with ``admin``)
``spend``          1 s, and at once when a    reload spend limits (every 30 s, on a change, or
                   limit changes              after the listener reconnected), store
                                              owed settlements and last-seen identities, renew
                                              leases, expire reservations (every 5 s), prune
                                              finished ones (every hour); with ``admin``
=================  =========================  ==================================================

A job waits its period, runs once, and waits again (so runs never overlap and a
slow run delays the next). Each body handles the failures it expects itself,
with the messages it always had (a database outage skips a round with a
warning); anything else it raises is logged here and the job runs again on its
period instead of stopping for good.

Shutdown order (:func:`gateway.app.build`, in its lifecycle's ``finally``):

1. ``stop(*PRODUCERS)``: the jobs no request depends on — sightings (which
   logs what it gathered one last time), sign-in pruning, re-sealing,
   retention.
2. The settlements and top-ups of requests that already ended are drained
   (``Runtime.tasks``, up to 10 s), while the ``spend`` job still runs: owed
   settlements keep being retried and leases renewed meanwhile.
3. ``stop()``: the ``spend`` job.
4. ``SpendStore.close()``: no new leases, the settlement queue's final drain
   (up to 10 s, the rest written out as ``spend.unsettled``), leases given back,
   last-seen identities stored — unchanged; it unsubscribes from the listener.
5. The revocation watcher unsubscribes; then the listener (``db.listener``)
   closes its connection, once no one listens on it.

Background work that is not periodic stays with its owner (listed here so this
module shows all of it):

* the settlement flusher (``spend.settlements``): a task started when a
  settlement is queued, storing batches until the queue is empty;
* lease grants (``spend.lease_keeper``): one task per lease asked for;
* admission and top-up batches (``db.coalescing``): a task per queue while it
  has work;
* the usage recorder (``db.recorder``): writes queued usage rows, retrying with
  back-off through an outage;
* the listener (``db.listener``): the process's one LISTEN connection, for
  revoked sessions (``auth.revocations``) and limit changes (the spend store);
  it checks that connection every keep-alive period, reconnects with back-off
  and then lets each subscriber resynchronise (the watcher reloads recent
  revocations; the spend store wakes the ``spend`` job to reload limits);
  closed last of the three;
* OIDC discovery at startup (once, ``build._start_signin``);
* per-request tasks a hang-up must not cancel (``db.tasks.TaskSet``, drained at
  shutdown as in step 2).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from gateway import audit
from gateway.http import signin
from gateway.http.runtime import Boot
from gateway.http.sightings import FLUSH_INTERVAL_S

if TYPE_CHECKING:
    from gateway.spend.store import SpendStore

Sleep = Callable[[float], Awaitable[None]]
Log = Callable[[str, str], None]


@dataclass(frozen=True)
class Job:
    name: str
    every_s: float
    run: Callable[[], Awaitable[None]]  # one run
    does: str  # one line: what a run does
    # Set: run now instead of at the end of the period. The run must clear it (or
    # stop being woken), else the job runs back to back.
    wake: asyncio.Event | None = None
    at_stop: Callable[[], None] | None = None  # once, after the job stopped


class Scheduler:
    """Runs each registered job on its period, one task per job.

    ``sleep`` is the timer (tests pass a fake one); ``log`` gets a line for a
    run that failed and for the first good run after failures.
    """

    def __init__(self, *, sleep: Sleep = asyncio.sleep, log: Log = audit.log) -> None:
        self._sleep = sleep
        self._log = log
        self._jobs: dict[str, Job] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def every(
        self,
        name: str,
        every_s: float,
        run: Callable[[], Awaitable[None]],
        does: str,
        *,
        wake: asyncio.Event | None = None,
        at_stop: Callable[[], None] | None = None,
    ) -> None:
        if name in self._jobs:
            raise ValueError(f"job {name!r} is registered twice")
        self._jobs[name] = Job(name, every_s, run, does, wake, at_stop)

    @property
    def jobs(self) -> tuple[Job, ...]:
        return tuple(self._jobs.values())

    def start(self) -> None:
        for job in self._jobs.values():
            if job.name not in self._tasks:
                self._tasks[job.name] = asyncio.create_task(self._loop(job), name=f"job-{job.name}")

    async def stop(self, *names: str) -> None:
        """Stop the named jobs in the order given; without names, every job still running,
        in the order registered. A run in progress is cancelled; ``at_stop`` follows."""
        for name in names or tuple(self._tasks):
            task = self._tasks.pop(name, None)
            if task is None:
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            job = self._jobs[name]
            if job.at_stop is not None:
                job.at_stop()

    async def _loop(self, job: Job) -> None:
        failing = False
        while True:
            await self._wait(job)
            try:
                await job.run()
            except Exception as exc:
                if not failing:
                    self._log("error", f"background job {job.name} failed ({exc!r}); it runs again every {job.every_s:g} s")
                failing = True
                continue
            if failing:
                self._log("info", f"background job {job.name} runs again")
            failing = False

    async def _wait(self, job: Job) -> None:
        if job.wake is None:
            await self._sleep(job.every_s)
            return
        if job.wake.is_set():
            return
        sleeping = asyncio.ensure_future(self._sleep(job.every_s))
        woken = asyncio.ensure_future(job.wake.wait())
        try:
            await asyncio.wait((sleeping, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            woken.cancel()


# The app's scheduler, for tests and probes that want to see or run its jobs.
JOBS: web.AppKey[Scheduler] = web.AppKey("jobs", Scheduler)

# Stopped first at shutdown (step 1 above); ``spend`` outlives the drain of ended requests.
PRODUCERS = ("sightings", "signin.prune", "signin.reseal", "retention")


def schedule(app: web.Application, boot: Boot, spend: SpendStore | None) -> Scheduler:
    """Register the gateway's periodic jobs on ``app[JOBS]`` (made by ``build``); not started.

    ``boot`` is the runtime being started (or, in tests, the boot values of an app
    never started); ``spend`` its spend store, with ``admin``.
    """
    jobs = app[JOBS]
    sightings = boot.sightings

    async def flush_sightings() -> None:
        sightings.flush()

    jobs.every(
        "sightings", FLUSH_INTERVAL_S, flush_sightings,
        "log the managed-settings checksums clients reported", at_stop=sightings.flush,
    )
    if signin.SIGNIN_BOOT in app:
        # Registered with the app; the sign-in it prunes is complete once started.
        jobs.every(
            "signin.prune", signin.PRUNE_EVERY_S, lambda: signin.prune_expired(app[signin.SIGNIN]),
            "delete spent device grants, old rate counters and long-ended sign-in families",
        )
        boot_si = app[signin.SIGNIN_BOOT]
        if boot_si.idp_tokens.secret_count > 1:
            # Only while an older jwt_secret is listed is there anything to move.
            from gateway.auth.resealing import RESEAL_EVERY_S, Resealer
            from gateway.http.keys import RUNTIME

            resealer = Resealer(lambda: app[RUNTIME].store.pool, boot_si.idp_tokens, clock=boot_si.clock)
            jobs.every(
                "signin.reseal", RESEAL_EVERY_S, resealer.run_once,
                "re-seal stored IdP refresh tokens that only an older jwt_secret opens",
            )
    _schedule_retention(app, boot, jobs)
    if spend is not None:
        from gateway.spend.store import TICK_S

        jobs.every(
            "spend", TICK_S, spend.background_round,
            "reload limits, store owed settlements and identities, renew leases, expire and prune reservations",
            wake=spend.wake,
        )
    return jobs


def _schedule_retention(app: web.Application, boot: Boot, jobs: Scheduler) -> None:
    """The retention sweep runs on every deployment; with ``admin`` on the admin API's store and
    clock (tests give it their own), else on the runtime's store and the gateway's clock."""
    from datetime import UTC, datetime

    from gateway.admin import retention
    from gateway.http.keys import RUNTIME

    cfg = boot.config
    if cfg.admin is not None:
        from gateway.http import admin as admin_api

        ctx = app[admin_api.ADMIN]
        store, now = (lambda: ctx.store(app)), ctx.now
    else:
        store, now = (lambda: app[RUNTIME].store), (lambda: datetime.fromtimestamp(boot.clock(), UTC))
    jobs.every(
        "retention", retention.PRUNE_EVERY_S, lambda: retention.sweep(store, cfg, now),
        "roll up and delete old usage rows; prune what the admin retention settings say is too old",
    )
