"""The ``gatehouse`` command as a process: boot, workers, drain, subcommands."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import pytest

from protocol_spec.fakes import Reply
from tests.harness import JWT_SECRET

GATEHOUSE = [sys.executable, "-m", "gateway"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, pg_url: str, upstream_url: str, port: int, extra: str = "") -> Path:
    path = tmp_path / f"gateway-{port}.yaml"
    path.write_text(
        f"""
listen:
  host: 127.0.0.1
  port: {port}
  public_url: http://127.0.0.1:{port}
oidc:
  issuer: http://127.0.0.1:9
  client_id: gatehouse-tests
  client_secret: ${{OIDC_SECRET}}
session:
  jwt_secret: ${{JWT}}
store:
  postgres_url: {pg_url}
upstreams:
  - provider: anthropic
    base_url: {upstream_url}
    auth:
      api_key: ${{UPSTREAM_KEY}}
{extra}
"""
    )
    return path


ENV = dict(
    os.environ,
    OIDC_SECRET="oidc-secret",
    JWT=JWT_SECRET,
    UPSTREAM_KEY="sk-ant-upstream-secret-value",
    CLAUDE_GATEWAY_ALLOW_LOOPBACK="1",
)


def spawn(*args: str, env=None) -> subprocess.Popen:
    """Start ``gatehouse *args``; ``proc.stderr`` reads what it has logged so far.

    Its output goes to a file, not a pipe: a gateway serving many requests writes an
    audit line for each, and a pipe nobody reads fills at 64 KB and stalls it.
    """
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([*GATEHOUSE, *args], env=env or ENV, stdout=log, stderr=log, text=True)
    proc.stderr = _LogReader(log)  # type: ignore[assignment]
    return proc


class _LogReader:
    """Reads a spawned process's log file from the start, as a pipe would have been read."""

    def __init__(self, file) -> None:
        self._file = file
        self._at = 0

    def read(self) -> str:
        self._file.flush()
        self._file.seek(self._at)
        text = self._file.read()
        self._at = self._file.tell()
        return text


async def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"exited {proc.returncode}: {proc.stderr.read()}")
            try:
                async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("gateway did not become ready")


async def wait_exit(proc: subprocess.Popen, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        raise AssertionError("process did not exit")
    return proc.returncode


def token(config: Path, **kw) -> str:
    args = ["token", "--config", str(config), "--email", kw.get("email", "dev@example.com")]
    out = subprocess.run([*GATEHOUSE, *args], env=ENV, capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


async def test_config_error_exits_before_binding_and_names_the_path(tmp_path, pg_url):
    port = free_port()
    cfg = write_config(tmp_path, pg_url, "http://127.0.0.1:9", port, "limits:\n  max_request_bytes: -1\n")
    out = subprocess.run([*GATEHOUSE, "serve", "--config", str(cfg)], env=ENV, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "limits.max_request_bytes" in out.stderr
    assert "sk-ant-upstream-secret-value" not in out.stderr + out.stdout
    with socket.socket() as s:  # the port was never bound
        s.bind(("127.0.0.1", port))


async def test_undefined_variable_fails_boot_naming_it(tmp_path, pg_url):
    cfg = write_config(tmp_path, pg_url, "http://127.0.0.1:9", free_port())
    env = {k: v for k, v in ENV.items() if k != "JWT"}
    out = subprocess.run([*GATEHOUSE, "serve", "--config", str(cfg)], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "JWT" in out.stderr and "session.jwt_secret" in out.stderr


async def test_serve_refuses_features_not_supported_yet(tmp_path, pg_url):
    feature = "cri (customer-routed inference; nothing about what it serves is described well enough to build"
    extra = "cri:\n  enabled: true\n"
    cfg = write_config(tmp_path, pg_url, "http://127.0.0.1:9", free_port(), extra)
    out = subprocess.run([*GATEHOUSE, "serve", "--config", str(cfg)], env=ENV, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert feature in out.stderr
    # check-config refuses the same file, the same way, after printing it.
    check = subprocess.run([*GATEHOUSE, "check-config", "--config", str(cfg)], env=ENV, capture_output=True, text=True, timeout=30)
    assert check.returncode == 2
    assert f"gatehouse: {feature}" in check.stderr
    assert feature in check.stdout.split("not supported by Gatehouse yet", 1)[1]
    assert "sk-ant-upstream-secret-value" not in check.stdout and JWT_SECRET not in check.stdout


def test_check_config_names_each_unsupported_upstream_and_exits_like_serve(tmp_path):
    extra = "  - provider: mantle\n    region: us-east-1\n    auth: {}\n"
    cfg = write_config(tmp_path, "postgres://gw@127.0.0.1:9/gw", "http://127.0.0.1:9", free_port(), extra)
    check = subprocess.run([*GATEHOUSE, "check-config", "--config", str(cfg)], env=ENV, capture_output=True, text=True, timeout=30)
    assert check.returncode == 2, check.stderr
    assert check.stderr.startswith("gatehouse: upstreams[1] (provider: mantle; ")
    ok = write_config(tmp_path, "postgres://gw@127.0.0.1:9/gw", "http://127.0.0.1:9", free_port())
    fine = subprocess.run([*GATEHOUSE, "check-config", "--config", str(ok)], env=ENV, capture_output=True, text=True, timeout=30)
    assert fine.returncode == 0 and fine.stdout.rstrip().endswith("# every feature switched on here is supported")


def test_check_config_no_env_checks_a_template_without_its_secrets(tmp_path):
    cfg = write_config(tmp_path, "${PG_URL}", "http://127.0.0.1:9", free_port(), "admin:\n  blocked_message: ask in #dev-tools\n")
    bare = {k: v for k, v in ENV.items() if k not in ("OIDC_SECRET", "JWT", "UPSTREAM_KEY")}
    without = subprocess.run([*GATEHOUSE, "check-config", "--config", str(cfg)], env=bare, capture_output=True, text=True, timeout=30)
    assert without.returncode == 2 and "environment variable PG_URL is not set" in without.stderr
    check = subprocess.run(
        [*GATEHOUSE, "check-config", "--no-env", "--config", str(cfg)], env=bare, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stderr
    assert "postgres_url: ${PG_URL}" in check.stdout
    # The value cut short by an unquoted " #" is a boot warning, printed here too.
    assert "# warning: admin.blocked_message (line " in check.stdout
    # Everything but the references is still checked.
    broken = cfg.read_text().replace("client_id: gatehouse-tests", "client_id: gatehouse-tests\n  bogus: 1")
    cfg.write_text(broken)
    bad = subprocess.run(
        [*GATEHOUSE, "check-config", "--no-env", "--config", str(cfg)], env=bare, capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 2 and "oidc.bogus" in bad.stderr and "PG_URL" not in bad.stderr


async def test_serve_token_and_drain(tmp_path, pg_url, fake_upstream):
    port = free_port()
    cfg = write_config(tmp_path, pg_url, fake_upstream.url, port)
    proc = spawn("serve", "--config", str(cfg), env={**ENV, "CLAUDE_GATEWAY_DRAIN_TIMEOUT_MS": "10000"})
    try:
        await wait_ready(port, proc)
        tok = token(cfg)
        fake_upstream.script(Reply(stream=True, deltas=6, gap=0.25))
        body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "stream": True, "messages": []})
        async with aiohttp.ClientSession() as s:
            r = await s.post(f"http://127.0.0.1:{port}/v1/messages", data=body, headers={"Authorization": f"Bearer {tok}"})
            assert r.status == 200
            await r.content.readuntil(b"\n\n")
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            with pytest.raises(aiohttp.ClientConnectionError):  # no new connections while draining
                async with aiohttp.ClientSession() as s2:
                    await s2.get(f"http://127.0.0.1:{port}/healthz")
            rest = await r.read()  # the open stream finishes
            assert rest.rstrip().endswith(b'{"type":"message_stop"}')
        assert await wait_exit(proc) == 0
        err = proc.stderr.read()
        events = [json.loads(l) for l in err.splitlines() if l.startswith("{")]
        assert events[0]["evt"] == "config.load" and len(events[0]["sha256"]) == 64
        assert any(e["evt"] == "inference" and e["status"] == 200 for e in events)
        assert "shutdown complete" in err
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_two_workers_share_the_port(tmp_path, pg_url, fake_upstream):
    port = free_port()
    cfg = write_config(tmp_path, pg_url, fake_upstream.url, port)
    proc = spawn("serve", "--config", str(cfg), "--workers", "2")
    try:
        await wait_ready(port, proc)
        tok = token(cfg)
        pids = set()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for _ in range(40):
                async with s.post(
                    f"http://127.0.0.1:{port}/v1/messages",
                    data=json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 1, "messages": []}),
                    headers={"Authorization": f"Bearer {tok}"},
                ) as r:
                    assert r.status == 200
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 2
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc) == 0
        listening = [l for l in proc.stderr.read().splitlines() if "listening on" in l]
        pids = {l.split("pid ")[1] for l in listening}
        assert len(pids) == 2
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_two_replicas_booting_at_once_on_a_fresh_database(tmp_path, pg_cluster, fake_upstream):
    fresh = pg_cluster.create_database("concurrent_boot")
    ports = [free_port(), free_port()]
    procs = [spawn("serve", "--config", str(write_config(tmp_path, fresh, fake_upstream.url, p))) for p in ports]
    try:
        for port, proc in zip(ports, procs):
            await wait_ready(port, proc)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert await wait_exit(proc) == 0
    applied = [l for proc in procs for l in proc.stderr.read().splitlines() if "migration 1 applied" in l]
    assert len(applied) == 1


async def test_migrate_command_is_idempotent(tmp_path, pg_cluster):
    db = pg_cluster.create_database("migrate_cmd")
    cfg = write_config(tmp_path, db, "http://127.0.0.1:9", free_port())
    for _ in range(2):
        out = subprocess.run([*GATEHOUSE, "migrate", "--config", str(cfg)], env=ENV, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
