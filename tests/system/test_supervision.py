"""``gatehouse serve --workers 2`` as a process: a killed worker is replaced, SIGTERM drains both."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time

import aiohttp

from protocol_spec.fakes import Reply
from tests.system.test_process import (
    ENV,
    GATEHOUSE,
    _LogReader,
    free_port,
    spawn,
    token,
    wait_exit,
    wait_ready,
    write_config,
)

BODY = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 1, "messages": []})


def workers_of(proc: subprocess.Popen) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
    return {int(pid) for pid in out.split()}


def two_workers(proc: subprocess.Popen, without: int = 0) -> set[int] | None:
    pids = workers_of(proc)
    return pids if len(pids) == 2 and without not in pids else None


async def until(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def served(port: int, tok: str, n: int) -> list[int]:
    """Statuses of ``n`` requests, each on a new connection (so the kernel picks a worker each time)."""
    statuses = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for _ in range(n):
            async with s.post(
                f"http://127.0.0.1:{port}/v1/messages", data=BODY, headers={"Authorization": f"Bearer {tok}"}
            ) as r:
                statuses.append(r.status)
    return statuses


async def test_a_killed_worker_is_replaced_and_sigterm_drains_every_worker(tmp_path, pg_url, fake_upstream):
    port = free_port()
    cfg = write_config(tmp_path, pg_url, fake_upstream.url, port)
    proc = spawn("serve", "--config", str(cfg), "--workers", "2", env={**ENV, "CLAUDE_GATEWAY_DRAIN_TIMEOUT_MS": "10000"})
    try:
        await wait_ready(port, proc)
        tok = token(cfg)
        first, second = sorted(await until(lambda: two_workers(proc)))

        os.kill(first, signal.SIGKILL)
        now = await until(lambda: two_workers(proc, without=first))
        (replacement,) = now - {second}
        await until(lambda: f"listening on http://127.0.0.1:{port} (pid {replacement})" in _all(proc))

        # With the other original worker gone too (its own replacement still backing off),
        # every connection lands on the replacement, and it serves them.
        os.kill(second, signal.SIGKILL)
        await until(lambda: second not in workers_of(proc))
        assert await served(port, tok, 10) == [200] * 10

        log = _all(proc)
        assert f"worker {first} died (killed by SIGKILL)" in log and "restarting it in 0.5s" in log
        workers = await until(lambda: two_workers(proc, without=second))
        await until(lambda: all(f"(pid {pid})" in _all(proc) for pid in workers))

        # SIGTERM with a stream open: both workers drain, the stream finishes, exit 0.
        fake_upstream.script(Reply(stream=True, deltas=6, gap=0.25))
        stream_body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "stream": True, "messages": []})
        async with aiohttp.ClientSession() as s:
            r = await s.post(f"http://127.0.0.1:{port}/v1/messages", data=stream_body, headers={"Authorization": f"Bearer {tok}"})
            assert r.status == 200
            await r.content.readuntil(b"\n\n")
            proc.send_signal(signal.SIGTERM)
            rest = await r.read()
            assert rest.rstrip().endswith(b'{"type":"message_stop"}')
        assert await wait_exit(proc) == 0
        assert not workers & workers_of(proc)
        log = _all(proc)
        assert "SIGTERM received: draining 2 worker(s)" in log
        assert log.count("shutdown complete") == 2 and "all 2 workers stopped" in log
        assert "restarted as pid" in log and "keeps dying" not in log
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_a_stop_heard_twice_by_each_worker_still_drains(tmp_path, pg_url, fake_upstream):
    # systemd (KillMode=control-group) and Ctrl-C signal every process at once: each worker
    # hears the stop twice, directly and again when the supervisor passes it on, which can
    # come a little later on a busy machine. A repeat within a second is the same stop.
    port = free_port()
    cfg = write_config(tmp_path, pg_url, fake_upstream.url, port)
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        [*GATEHOUSE, "serve", "--config", str(cfg), "--workers", "2"],
        env={**ENV, "CLAUDE_GATEWAY_DRAIN_TIMEOUT_MS": "10000"},
        stdout=log, stderr=log, text=True, start_new_session=True,  # a failed test kills its whole group
    )
    proc.stderr = _LogReader(log)  # type: ignore[assignment]
    try:
        await wait_ready(port, proc)
        workers = await until(lambda: two_workers(proc))
        await until(lambda: all(f"(pid {pid})" in _all(proc) for pid in workers))
        tok = token(cfg)
        fake_upstream.script(Reply(stream=True, deltas=6, gap=0.25))
        stream_body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "stream": True, "messages": []})
        async with aiohttp.ClientSession() as s:
            r = await s.post(f"http://127.0.0.1:{port}/v1/messages", data=stream_body, headers={"Authorization": f"Bearer {tok}"})
            assert r.status == 200
            await r.content.readuntil(b"\n\n")
            for pid in workers:
                os.kill(pid, signal.SIGTERM)
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)  # passed on to both workers again
            rest = await r.read()
            assert rest.rstrip().endswith(b'{"type":"message_stop"}')
        assert await wait_exit(proc) == 0
        log_text = _all(proc)
        assert "exiting immediately" not in log_text
        assert log_text.count("shutdown complete") == 2 and "all 2 workers stopped" in log_text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


_seen: dict[int, str] = {}


def _all(proc: subprocess.Popen) -> str:
    """Everything the process has logged so far (``proc.stderr.read`` returns only what is new)."""
    _seen[proc.pid] = _seen.get(proc.pid, "") + proc.stderr.read()
    return _seen[proc.pid]
