"""Running the app: one process or ``--workers N`` forked processes on one port.

Each worker binds the same address with SO_REUSEPORT, so the kernel spreads
connections across them and no process is a single point of failure. The
parent serves nothing: :mod:`gateway.app.supervisor` restarts a worker that dies
and passes shutdown signals on. Before forking, the soft open-file limit
is raised to the hard one (each connection holds a descriptor); every connection
keeps the read deadlines of :mod:`gateway.app.connections`.

Shutdown (SIGTERM or SIGINT): stop accepting, let in-flight requests and
streams finish for up to ``CLAUDE_GATEWAY_DRAIN_TIMEOUT_MS`` (default 25 s),
cancel what is left, flush pending usage records, exit 0. A second signal, a
second or more after the first, exits at once.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import signal
import ssl
import time
from typing import Any

from aiohttp import web

from gateway import audit
from gateway.app.build import build, parser_limits
from gateway.app.connections import Deadlines, GuardedAppRunner
from gateway.app.supervisor import Supervisor
from gateway.http.keys import RUNTIME

DEFAULT_DRAIN_MS = 25_000
# A stop signal is often delivered twice to a worker: once to every process (Ctrl-C in a
# terminal, systemd's default KillMode) and once passed on by the supervisor. Only a
# repeat after this long means "stop now".
REPEAT_WINDOW_S = 1.0


def drain_timeout_s(environ: dict[str, str] | os._Environ[str] = os.environ) -> float:
    raw = environ.get("CLAUDE_GATEWAY_DRAIN_TIMEOUT_MS")
    if raw and raw.isdigit() and int(raw) > 0:
        return int(raw) / 1000
    return DEFAULT_DRAIN_MS / 1000


def _ssl_context(cfg: Any) -> ssl.SSLContext | None:
    tls = cfg.listen.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


async def serve(cfg: Any, *, reuse_port: bool = False, ready_line: bool = True) -> None:
    drain_s = drain_timeout_s()
    app = build(cfg)
    deadlines = Deadlines.from_config(cfg)
    runner = GuardedAppRunner(
        app,
        deadlines=deadlines,
        handler_cancellation=True,
        shutdown_timeout=drain_s,
        access_log=None,
        auto_decompress=False,  # the body is forwarded as received
        **parser_limits(cfg),  # type: ignore[arg-type]
    )
    await runner.setup()
    ctx = _ssl_context(cfg)
    site = web.TCPSite(runner, cfg.listen.host, cfg.listen.port, ssl_context=ctx, reuse_port=reuse_port, backlog=2048)
    await site.start()
    _tune_gc()
    scheme = "https" if ctx else "http"
    if ready_line:
        audit.log("info", f"gatehouse listening on {scheme}://{cfg.listen.host}:{cfg.listen.port} (pid {os.getpid()})")

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []
    first_at = [0.0]

    def on_signal(name: str) -> None:
        if received:
            if time.monotonic() - first_at[0] < REPEAT_WINDOW_S:
                return  # the same stop heard twice: sent to the whole process group and passed on by the supervisor
            audit.log("warn", f"second {name}: exiting immediately")
            os._exit(1)
        received.append(name)
        first_at[0] = time.monotonic()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    await stop.wait()

    rt = app[RUNTIME]
    rt.draining = True
    open_now = rt.inflight
    audit.log(
        "info",
        f"{received[0]} received: no new connections; {open_now} open request(s) get up to {drain_s:g}s to finish",
    )
    started = time.monotonic()
    await runner.cleanup()
    deadlines.flush()
    took = time.monotonic() - started
    if took >= drain_s and open_now:
        audit.log("warn", f"drain window over after {drain_s:g}s; requests still open were cut")
    else:
        audit.log("info", "shutdown complete: every open request finished")


# Container objects allocated between collections of the youngest generation (CPython's
# default is 700). Every request allocates a few hundred (aiohttp's request, headers and
# futures); at the default, collections cost about an eighth of the gateway's CPU under load
# (bench/README.md). Garbage without cycles is freed at once either way; only cyclic garbage
# waits a little longer.
GC_GEN0_THRESHOLD = 10_000


def _tune_gc() -> None:
    """Collect less often, and never rescan what boot left behind (config, routes, modules)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)


# Where the hard limit is "unlimited", the kernel still caps open files at fs.nr_open.
NR_OPEN_PATH = "/proc/sys/fs/nr_open"


def raise_open_file_limit() -> tuple[int, int, int]:
    """Lift the soft open-file limit to the hard one; (soft before, soft now, hard).

    Each client connection, upstream connection and database connection holds a
    file descriptor. The soft limit is often 1,024 while the hard limit is far
    higher, and a process may raise its own soft limit up to the hard one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open(NR_OPEN_PATH) as fh:
                target = int(fh.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            audit.log("warn", f"could not raise the open-file limit from {soft} to {target}: {exc}")
            return soft, soft, hard
        return soft, target, hard
    return soft, soft, hard


def _log_open_file_limit(before: int, now: int, hard: int) -> None:
    shown = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    raised = f" (raised from {before})" if now != before else ""
    audit.log("info", f"open-file limit {now}{raised}, hard limit {shown}: about that many client connections at once")


def run(cfg: Any, workers: int = 1) -> int:
    _log_open_file_limit(*raise_open_file_limit())
    if workers <= 1:
        _run_one(cfg, reuse_port=False)
        return 0
    return Supervisor(workers, lambda: _run_one(cfg, reuse_port=True), drain_s=drain_timeout_s()).run()


def _run_one(cfg: Any, *, reuse_port: bool) -> None:
    import uvloop

    uvloop.run(serve(cfg, reuse_port=reuse_port))
