"""The ``--workers N`` supervisor with real processes and tiny workers (gateway.app.supervisor).

Each test runs the supervisor in a child Python process whose workers do only what
the test needs (crash, ignore SIGTERM, wait politely), with short backoff and
drain windows. The gateway's own workers under it are tested in
tests/system/test_supervision.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = r"""
import os, signal, sys, time
from pathlib import Path
from gateway.app.supervisor import Backoff, Supervisor

mode, workdir, workers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
starts = workdir / "starts"

def polite():
    def bye(*_):
        (workdir / f"termed-{os.getpid()}").write_text("")
        os._exit(0)
    signal.signal(signal.SIGTERM, bye)
    (workdir / f"up-{os.getpid()}").write_text("")
    while True:
        signal.pause()

def crash_four_times_then_serve():
    with open(starts, "a") as fh:
        fh.write("x")
    if len(starts.read_text()) <= 4:
        os._exit(3)
    polite()

def stubborn():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    (workdir / f"up-{os.getpid()}").write_text("")
    while True:
        time.sleep(1)

run_one = {"polite": polite, "crashy": crash_four_times_then_serve, "stubborn": stubborn}[mode]
policy = Backoff(first_s=0.05, cap_s=0.4, settled_s=10.0, warn_after=3)
sys.exit(Supervisor(workers, run_one, drain_s=0.2, kill_margin_s=0.3, policy=policy).run())
"""


def start(mode: str, workdir: Path, workers: int = 1) -> subprocess.Popen:
    log = open(workdir / "log", "w+")
    return subprocess.Popen([sys.executable, "-c", SCRIPT, mode, str(workdir), str(workers)], stdout=log, stderr=log, text=True)


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def up(workdir: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in workdir.glob("up-*")]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a supervisor that is gone) is not serving either.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def test_a_worker_that_keeps_dying_backs_off_and_says_so(tmp_path):
    proc = start("crashy", tmp_path)
    try:
        wait_for(lambda: len(up(tmp_path)) == 1)
        log = (tmp_path / "log").read_text()
        assert log.count("died (exit code 3)") == 4
        # The wait doubles per quick death, up to the cap; from the third on it is an error.
        assert "restarting it in 0.05s" in log and "restarting it in 0.1s" in log
        assert "worker slot 0 of 1 keeps dying" in log and "3 times in a row" in log and "next start in 0.2s" in log
        assert "4 times in a row" in log and "next start in 0.4s (restarts at most 0.4s apart)" in log
        assert log.count("worker slot 0 restarted as pid") == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "all 1 workers stopped" in (tmp_path / "log").read_text()
    finally:
        proc.kill()


def test_a_worker_ignoring_sigterm_is_killed_after_the_drain_window(tmp_path):
    proc = start("stubborn", tmp_path, workers=2)
    try:
        wait_for(lambda: len(up(tmp_path)) == 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 1
        log = (tmp_path / "log").read_text()
        assert "SIGTERM received: draining 2 worker(s); any still running after 0.5s are killed" in log
        assert log.count("still running 0.5s after the stop signal: killing it") == 2
        assert "not all cleanly" in log and "killed by SIGKILL" in log
        assert not any(alive(pid) for pid in up(tmp_path))
    finally:
        proc.kill()


def test_polite_workers_drain_on_sigterm_and_the_supervisor_exits_0(tmp_path):
    proc = start("polite", tmp_path, workers=3)
    try:
        wait_for(lambda: len(up(tmp_path)) == 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert len(list(tmp_path.glob("termed-*"))) == 3
    finally:
        proc.kill()


def test_workers_stop_when_the_supervisor_is_killed(tmp_path):
    proc = start("polite", tmp_path, workers=2)
    try:
        wait_for(lambda: len(up(tmp_path)) == 2)
        proc.kill()  # SIGKILL: no chance to pass anything on
        proc.wait(timeout=10)
        wait_for(lambda: len(list(tmp_path.glob("termed-*"))) == 2)
        wait_for(lambda: not any(alive(pid) for pid in up(tmp_path)))
    finally:
        proc.kill()


def test_as_a_containers_pid_1_the_supervisor_still_hears_sigterm(tmp_path):
    # PID 1 of a PID namespace is not sent signals it leaves at the default disposition;
    # a supervisor that missed SIGTERM there would never drain on `docker stop`.
    if subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a PID namespace here (needs root or user namespaces)")
    log = open(tmp_path / "log", "w+")
    outer = subprocess.Popen(
        ["unshare", "--pid", "--fork", sys.executable, "-c", SCRIPT, "polite", str(tmp_path), "2"],
        stdout=log, stderr=log, text=True,
    )
    try:
        wait_for(lambda: len(up(tmp_path)) == 2)
        (supervisor,) = subprocess.run(["pgrep", "-P", str(outer.pid)], capture_output=True, text=True).stdout.split()
        (nspid,) = [line for line in Path(f"/proc/{supervisor}/status").read_text().splitlines() if line.startswith("NSpid:")]
        assert nspid.split()[-1] == "1"  # its own pid inside the namespace
        os.kill(int(supervisor), signal.SIGTERM)
        assert outer.wait(timeout=10) == 0
        assert len(list(tmp_path.glob("termed-*"))) == 2
    finally:
        outer.kill()
