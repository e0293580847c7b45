"""Processes under test: start them pinned to a core, watch their CPU and memory, stop them.

Fairness on a small host: the gateway under test gets ``GATEWAY_CORES`` and
everything else (load tool, simulated upstream, PostgreSQL, the driver) gets
``LOAD_CORES``. CPU is read from ``/proc/<pid>/stat`` (utime + stime of the
whole process tree, so forked workers and PostgreSQL backends count) and
memory from ``VmRSS``, summed over the tree.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.devenv.run import die_with_parent

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def core_sets() -> tuple[set[int], set[int]]:
    """(gateway cores, load cores). One core each on a 2-core host; halves on bigger ones."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return set(cores), set(cores)
    half = len(cores) // 2
    return set(cores[:half]), set(cores[half:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile(wanted: int = 65536) -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def tree(root: int) -> list[int]:
    kids = children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is state (field 3); utime, stime are fields 14, 15.
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time every core spent not idle since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat", "rb") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    # guest time is already inside user time; leave it out.
    return (sum(fields[:8]) - idle) / CLK_TCK


def rss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as fh:
                total += int(fh.read().split()[1]) * PAGE
        except OSError:
            continue
    return total


def pin(pids: Iterable[int], cores: set[int]) -> None:
    for pid in pids:
        try:
            os.sched_setaffinity(pid, cores)
        except OSError:
            pass


@dataclass
class Proc:
    """A started process (and its tree) with a name for the report."""

    name: str
    popen: subprocess.Popen
    log_path: str | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        return tree(self.popen.pid) if self.popen.poll() is None else []

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM this process (by pid), then SIGKILL its tree if it lingers."""
        if self.popen.poll() is not None:
            return
        pids = self.pids()
        try:
            self.popen.send_signal(signal.SIGTERM)
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.popen.wait(5)


def start(name: str, argv: list[str], *, cores: set[int], env: dict[str, str] | None = None,
          log_path: str | None = None, cwd: str | None = None) -> Proc:
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL

    def before() -> None:
        os.sched_setaffinity(0, cores)
        die_with_parent()  # a SIGKILLed bench leaves no gateway behind

    popen = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=before, cwd=cwd,
                             start_new_session=True)
    return Proc(name, popen, log_path)


@dataclass
class Watch:
    """CPU and peak RSS of named process trees over one measured interval."""

    procs: dict[str, list[int] | Proc]
    every_s: float = 0.25
    cpu_s: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    # Every process on the machine, ours or not: what is left after the watched
    # ones (and the load tool) is someone else's work competing for the cores.
    machine_busy_s: float = 0.0
    # The bench process itself (this sampler included), on the load cores.
    self_cpu_s: float = 0.0

    def _pids(self, what: list[int] | Proc) -> list[int]:
        if isinstance(what, Proc):
            return what.pids()
        return [p for root in what for p in tree(root)]

    def __enter__(self) -> Watch:
        self._stop = threading.Event()
        self._start_cpu = {k: cpu_seconds(self._pids(v)) for k, v in self.procs.items()}
        self._t0 = time.monotonic()
        self._busy0 = machine_busy_seconds()
        self._self0 = time.process_time()
        self.peak_rss = {k: rss_bytes(self._pids(v)) for k, v in self.procs.items()}
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            for k, v in self.procs.items():
                self.peak_rss[k] = max(self.peak_rss.get(k, 0), rss_bytes(self._pids(v)))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.wall_s = time.monotonic() - self._t0
        self.machine_busy_s = machine_busy_seconds() - self._busy0
        self.self_cpu_s = time.process_time() - self._self0
        self.cpu_s = {k: cpu_seconds(self._pids(v)) - self._start_cpu[k] for k, v in self.procs.items()}

    def share(self, name: str) -> float:
        """CPU of ``name`` as a fraction of one core over the interval."""
        return self.cpu_s.get(name, 0.0) / self.wall_s if self.wall_s else 0.0
