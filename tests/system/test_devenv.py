"""``make dev`` as a person runs it: start, Ctrl-C (or SIGTERM), nothing left behind, exit 0.

The real entry point runs in its own session, like a terminal's foreground job:
SIGINT goes to the whole process group (what Ctrl-C and ``make`` do), SIGTERM to
the Python process alone (what a process manager does).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from gateway.devenv.postgres import _alive

READY_S = 25  # bounded waits: start-up, then the stop
STOP_S = 20


def child_pids(parent: int) -> list[int]:
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent:
            kids.append(int(name))
    return kids


def read_until(proc: subprocess.Popen[str], marker: str, timeout_s: float) -> str:
    """The output up to the line holding ``marker``; a reader thread keeps the wait bounded."""
    lines: list[str] = []
    found = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                found.set()
                break

    threading.Thread(target=reader, daemon=True).start()
    if not found.wait(timeout_s):
        raise AssertionError(f"no {marker!r} within {timeout_s}s:\n{''.join(lines)[-3000:]}")
    return "".join(lines)


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# The first case is the harder one: a shell that starts a job in the background
# hands it SIGINT ignored, so Python's own KeyboardInterrupt never fires.
@pytest.mark.parametrize("how", ["SIGINT to the group, inherited as ignored", "SIGTERM to the process"])
def test_an_asked_stop_ends_everything_and_exits_0(tmp_path, how):
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "GATEWAY_POSTGRES_URL")}
    env.update(GATEHOUSE_DEV_PORT="0", GATEHOUSE_DEV_STATE_DIR=str(tmp_path), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.devenv.run"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
        preexec_fn=ignore_sigint if "ignored" in how else None,
    )  # fmt: skip
    started: list[int] = []
    try:
        out = read_until(proc, "Press Ctrl-C", READY_S)
        postgres = int(re.search(r"throwaway cluster at \S+ \(pid (\d+)\)", out).group(1))
        children = child_pids(proc.pid)  # the IdP, the simulated upstream and the gateway
        started += [*children, postgres]
        assert len(children) == 3, out
        assert (tmp_path / "env").exists()
        if how.startswith("SIGINT"):
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_S) == 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(pid) for pid in [postgres, *children]):
            time.sleep(0.05)
        assert [pid for pid in [postgres, *children] if _alive(pid)] == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_leftovers(started)


def kill_leftovers(pids: list[int]) -> None:
    """A failed run must not leave its processes to the next test (or the machine)."""
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
