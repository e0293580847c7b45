"""Supervising ``serve --workers N``: restart a worker that dies, drain them all on SIGTERM.

The parent process never serves. It forks N workers (each binds the port with
SO_REUSEPORT) and then only waits, so a worker lost to a crash, the OOM killer or
a stray ``kill -9`` costs that worker's open requests, not the replica: the
kernel stops handing it connections the moment its socket closes, and the
supervisor starts a replacement in its slot.

Restarts back off per slot (:func:`after_death`, pure): a worker that dies soon
after starting (a bad host, a database that refuses connections at boot) is
restarted half a second later, then one, two, four… seconds later, at most
:attr:`Backoff.cap_s` apart, and an error line says the slot keeps dying. A worker
that served for a while before dying starts a new streak.

The parent waits in ``sigtimedwait`` with SIGCHLD, SIGTERM and SIGINT blocked, so
no signal can arrive between "check the children" and "go to sleep" and be
missed; every wait is bounded anyway, and children are reaped without blocking.

Shutdown: the first SIGTERM or SIGINT is passed on to every worker, which drains
on its own (see :mod:`gateway.app.server`); pending restarts are dropped. A
worker still running after the drain timeout plus :data:`KILL_MARGIN_S` (time to
flush usage records) is killed. The supervisor exits 0 only if every worker
exited 0. A second signal is passed on too: workers exit at once when it comes a
second or more after the first (sooner, it is the same stop heard twice).

Workers ask the kernel for SIGTERM if the supervisor itself dies (``kill -9`` of
the parent), so they drain and exit instead of holding the port unsupervised.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway import audit

WATCHED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}

# Past the workers' own drain timeout: time for them to cancel what is left and
# flush pending usage records before they are killed.
KILL_MARGIN_S = 5.0

# The longest single wait, so a lost SIGCHLD (or a clock jump) is noticed within a second.
MAX_WAIT_S = 1.0


@dataclass(frozen=True)
class Backoff:
    """How soon a dead worker's slot is filled again."""

    first_s: float = 0.5
    cap_s: float = 30.0
    # A worker that lived at least this long before dying starts a fresh streak.
    settled_s: float = 10.0
    # From this many quick deaths in a row on, each death is logged as an error.
    warn_after: int = 3


def after_death(streak: int, lived_s: float, policy: Backoff = Backoff()) -> tuple[int, float]:
    """(the slot's new streak of quick deaths, seconds to wait before restarting it)."""
    streak = 1 if lived_s >= policy.settled_s else streak + 1
    doublings = min(streak - 1, 30)  # 2**30 half-seconds is far past any cap
    return streak, min(policy.cap_s, policy.first_s * 2**doublings)


def describe_exit(status: int) -> str:
    """``exit code 1`` or ``killed by SIGKILL``, from an ``os.waitpid`` status."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


@dataclass
class _Slot:
    index: int
    pid: int = 0
    started_at: float = 0.0
    streak: int = 0
    due: float | None = 0.0  # when to (re)start; None while a worker runs


class Supervisor:
    """Keeps ``workers`` processes running ``run_one`` until told to stop."""

    def __init__(
        self,
        workers: int,
        run_one: Callable[[], None],
        *,
        drain_s: float,
        kill_margin_s: float = KILL_MARGIN_S,
        policy: Backoff = Backoff(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = [_Slot(i) for i in range(workers)]
        self.run_one = run_one
        self.drain_s = drain_s
        self.grace_s = drain_s + kill_margin_s
        self.policy = policy
        self.clock = clock
        self.stopping_since: float | None = None
        self.killed = False
        self.failed: list[str] = []
        self._dispositions: dict[Any, Any] = {}

    def run(self) -> int:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
        # Handlers rather than the defaults: Linux keeps a blocked signal pending even
        # where its default is to be ignored (SIGCHLD; SIGTERM to a container's PID 1),
        # but POSIX leaves that open. Blocked, the handlers never run: sigtimedwait
        # takes the signals.
        previous = {sig: signal.signal(sig, _noop) for sig in WATCHED}
        self._dispositions = previous
        try:
            return self._loop(mask)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _loop(self, mask: set[int | signal.Signals]) -> int:
        while True:
            self._reap()
            now = self.clock()
            if self.stopping_since is None:
                self._start_due(now, mask)
            elif not self._live():
                return self._report()
            elif not self.killed and now >= self.stopping_since + self.grace_s:
                self._kill_stragglers()
            info = signal.sigtimedwait(WATCHED, self._wait_s(now))
            if info is not None and info.si_signo != signal.SIGCHLD:
                self._on_stop_signal(signal.Signals(info.si_signo))

    def _report(self) -> int:
        if self.failed:
            audit.log("error", f"workers stopped, not all cleanly: {'; '.join(self.failed)}")
            return 1
        audit.log("info", f"all {len(self.slots)} workers stopped")
        return 0

    def _wait_s(self, now: float) -> float:
        due = [s.due for s in self.slots if s.due is not None and self.stopping_since is None]
        if self.stopping_since is not None and not self.killed:
            due.append(self.stopping_since + self.grace_s)
        soonest = min(due, default=now + MAX_WAIT_S)
        return min(MAX_WAIT_S, max(0.01, soonest - now))

    def _live(self) -> list[_Slot]:
        return [s for s in self.slots if s.pid]

    def _start_due(self, now: float, mask: set[int | signal.Signals]) -> None:
        for slot in self.slots:
            if slot.due is None or slot.due > now:
                continue
            restart = slot.started_at > 0
            try:
                slot.pid = _fork_worker(self.run_one, mask, self._dispositions)
            except OSError as exc:  # EAGAIN, ENOMEM: counts as a death at birth
                slot.started_at = now
                self._schedule(slot, now, f"could not fork: {exc}")
                continue
            slot.started_at, slot.due = now, None
            if restart:
                audit.log("info", f"worker slot {slot.index} restarted as pid {slot.pid}")

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            slot.pid = 0
            how = describe_exit(status)
            if self.stopping_since is not None:
                # Killed by the forwarded SIGTERM itself: it had not yet set up its handler,
                # so it was not serving anything that needed draining.
                if os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM):
                    self.failed.append(f"worker {pid}: {how}")
                continue
            self._schedule(slot, self.clock(), f"worker {pid} died ({how})")

    def _schedule(self, slot: _Slot, now: float, what: str) -> None:
        lived = now - slot.started_at
        slot.streak, delay = after_death(slot.streak, lived, self.policy)
        slot.due = now + delay
        n = len(self.slots)
        if slot.streak >= self.policy.warn_after:
            audit.log(
                "error",
                f"worker slot {slot.index} of {n} keeps dying: {what} {lived:.1f}s after starting, "
                f"{slot.streak} times in a row within {self.policy.settled_s:g}s of a start; "
                f"backing off, next start in {delay:g}s (restarts at most {self.policy.cap_s:g}s apart)",
            )
        else:
            audit.log("warn", f"{what} after {lived:.1f}s in slot {slot.index} of {n}; restarting it in {delay:g}s")

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        live = self._live()
        if self.stopping_since is None:
            self.stopping_since = self.clock()
            for slot in self.slots:
                slot.due = None
            audit.log(
                "info",
                f"{sig.name} received: draining {len(live)} worker(s); "
                f"any still running after {self.grace_s:g}s are killed",
            )
        for slot in live:
            _signal(slot.pid, sig)

    def _kill_stragglers(self) -> None:
        for slot in self._live():
            audit.log("error", f"worker {slot.pid} still running {self.grace_s:g}s after the stop signal: killing it")
            _signal(slot.pid, signal.SIGKILL)
        self.killed = True  # reaped, and so off the live list, on the next passes


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM when the supervisor dies (Linux; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def _noop(signum: int, frame: Any) -> None:
    pass


def _fork_worker(run_one: Callable[[], None], mask: set[int | signal.Signals], dispositions: dict[Any, Any]) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        for sig, handler in dispositions.items():  # the worker sets up its own when it serves
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _die_with_parent(parent)
        run_one()
    except BaseException as exc:  # a worker must never fall back into the supervisor's loop
        audit.log("error", f"worker {os.getpid()} failed: {exc!r}")
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code)
