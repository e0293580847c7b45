"""``gatehouse serve --workers 2`` as a process: a killed worker is replaced, SIGTERM drains both."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

import aiohttp

from protocol_spec.fakes import Reply
from tests.system.test_process import ENV, free_port, spawn, token, wait_exit, wait_ready, write_config

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


_seen: dict[int, str] = {}


def _all(proc: subprocess.Popen) -> str:
    """Everything the process has logged so far (``proc.stderr.read`` returns only what is new)."""
    _seen[proc.pid] = _seen.get(proc.pid, "") + proc.stderr.read()
    return _seen[proc.pid]
