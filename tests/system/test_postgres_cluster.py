"""The throwaway PostgreSQL helper: starts fast, cleans up after itself, fails loudly."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import textwrap

import asyncpg
import pytest

from gateway.devenv import postgres
from gateway.devenv.postgres import Cluster


def process_gone(pid: int) -> bool:
    return not postgres._alive(pid)


@pytest.fixture(scope="module")
def pg_cluster():
    with Cluster.start() as cluster:
        yield cluster


async def test_cluster_answers_on_loopback_and_stops_without_leftovers():
    cluster = Cluster.start()
    pid, base = cluster.pid, cluster.base
    try:
        assert cluster.url == f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
        conn = await asyncpg.connect(cluster.url)
        try:
            assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
            assert await conn.fetchval("SHOW fsync") == "off"
            assert int(await conn.fetchval("SHOW max_connections")) >= 200
            assert await conn.fetchval("SHOW unix_socket_directories") == cluster.socket_dir
        finally:
            await conn.close()
        assert not process_gone(pid)
    finally:
        cluster.stop()
    assert process_gone(pid)
    assert not os.path.exists(base)
    cluster.stop()  # a second stop is harmless


def test_server_files_belong_to_the_user_running_the_server(pg_cluster):
    # initdb refuses root, so as root everything belongs to the postgres user.
    expected = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert os.stat(pg_cluster.data).st_uid == expected
    assert os.stat(pg_cluster.base).st_uid == expected


async def test_create_database_returns_a_working_url(pg_cluster):
    url = pg_cluster.create_database("created_by_test")
    assert url.endswith("/created_by_test")
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT current_database()") == "created_by_test"
    finally:
        await conn.close()


async def test_pause_and_resume_keep_port_and_data(pg_cluster):
    url = pg_cluster.create_database("survives_pause")
    pg_cluster.pause()
    with pytest.raises(OSError):
        await asyncpg.connect(url, timeout=2)
    pg_cluster.resume()
    conn = await asyncpg.connect(url)
    await conn.close()


def test_a_crashed_run_does_not_leave_a_server_behind():
    # The child starts a cluster and dies of an exception without stopping it;
    # the atexit fallback must end the server and remove the folder.
    script = textwrap.dedent(
        """
        from gateway.devenv.postgres import Cluster
        cluster = Cluster.start()
        print(cluster.pid, cluster.base, flush=True)
        raise SystemExit("simulated crash")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    pid, base = out.stdout.split()
    assert process_gone(int(pid))
    assert not os.path.exists(base)


def test_module_entry_point_prints_url_and_stops_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.devenv.postgres", "--database", "dev"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("postgresql://postgres@127.0.0.1:") and url.endswith("/dev")
        pid = int(proc.stderr.readline().split("(pid ")[1].split(")")[0])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert process_gone(pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_missing_postgresql_fails_with_an_install_hint(tmp_path):
    with pytest.raises(RuntimeError) as err:
        postgres.find_bindir(path=str(tmp_path), versioned_dirs=(str(tmp_path / "none" / "*"),))
    assert "Install PostgreSQL" in str(err.value)
    assert "pg_config --bindir" in str(err.value)


def test_finds_binaries_in_a_versioned_folder_newest_first(tmp_path):
    for version in ("9.6", "14", "16"):
        folder = tmp_path / version / "bin"
        folder.mkdir(parents=True)
        for tool in postgres.SERVER_TOOLS:
            (folder / tool).touch(mode=0o755)
    found = postgres.find_bindir(path=str(tmp_path / "empty"), versioned_dirs=(str(tmp_path / "*" / "bin"),))
    assert found == str(tmp_path / "16" / "bin")


def test_finds_binaries_on_this_machine():
    folder = postgres.find_bindir()
    for tool in postgres.SERVER_TOOLS:
        assert os.access(os.path.join(folder, tool), os.X_OK)
