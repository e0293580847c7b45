"""A non-editable install ships every package, the SQL, the data and the transcripts,
and the wheel alone boots: installed in a fresh venv, run as a user other than root,
from a folder outside the source tree, it serves against PostgreSQL.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
import zipfile
from pathlib import Path

import aiohttp
import pytest

from tests.system.test_process import JWT_SECRET, _LogReader, free_port, wait_exit, wait_ready, write_config

ROOT = Path(__file__).resolve().parents[2]
# initdb refuses root, so wherever the suite runs as root this user exists (tests/conftest.py).
NON_ROOT_USER = "postgres"


def test_every_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("gateway", "protocol_spec")
        for p in (ROOT / top).rglob("__init__.py")
    }
    assert found <= listed, f"add to pyproject packages: {sorted(found - listed)}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built offline as the image builds it (no deps, no isolation)."""
    out_dir = tmp_path_factory.mktemp("wheel")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out_dir), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return next(out_dir.glob("gatehouse-*.whl"))


def test_wheel_contains_sql_data_and_transcripts(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "gateway/sql/migrations/0001_init.sql" in names
    assert "gateway/data/models.json" in names
    # Every module of every gateway package, the hot path in gateway/http/ included.
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "gateway").rglob("*.py")}
    assert "gateway/http/messages.py" in modules
    assert modules <= names, f"missing from the wheel: {sorted(modules - names)}"
    assert any(n.startswith("protocol_spec/transcripts/cli/") for n in names)
    # The implementer's guide to the conformance suite ships next to SPEC.md.
    assert {"protocol_spec/SPEC.md", "protocol_spec/README.md"} <= names


# Run by the wheel's own interpreter: where gateway comes from, and what it carries.
PROBE = """
import json, os, sys
from importlib import resources
import gateway
sql = resources.files("gateway.sql")
print(json.dumps({
    "gateway": gateway.__file__,
    "uid": os.getuid(),
    "path": sys.path,
    "migrations": sorted(p.name for p in sql.joinpath("migrations").iterdir() if p.name.endswith(".sql")),
    "queries": sorted(p.name for p in sql.joinpath("queries").iterdir() if p.name.endswith(".sql")),
    "models": resources.files("gateway.data").joinpath("models.json").is_file(),
}))
"""


def as_user() -> dict:
    """Popen arguments that drop root to NON_ROOT_USER; nothing when not root already."""
    if os.geteuid() != 0:
        return {}
    return {"user": NON_ROOT_USER, "group": NON_ROOT_USER, "extra_groups": []}


def interpreter_for(run_as: dict) -> str:
    """This Python if the user may run it, else Debian's of the same version.

    The suite's interpreter may live where only root can reach it (a home folder);
    the dependencies the fresh venv borrows are compiled for this minor version.
    """
    candidates = [getattr(sys, "_base_executable", sys.executable), "/usr/bin/python3"]
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in candidates:
        try:
            out = subprocess.run(
                [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True, text=True, timeout=30, cwd="/", **run_as,
            )
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == want:
            return python
    raise AssertionError(f"no Python {want} that {NON_ROOT_USER} may run among {candidates}: apt-get install python3")


def dependencies_for(run_as: dict, home: Path) -> str:
    """The suite's installed dependencies as a folder the user may read: where they are, or,
    when a parent folder keeps the user out (a fresh clone under a private temporary folder),
    a copy in ``home`` (hard links where the file system allows, which takes a second)."""
    purelib = sysconfig.get_paths()["purelib"]
    readable = subprocess.run(
        ["/bin/sh", "-c", 'test -r "$1/msgspec/__init__.py"', "sh", purelib], cwd="/", timeout=30, **run_as
    )  # fmt: skip
    if readable.returncode == 0:
        return purelib
    copy = home / "dependencies"
    linked = subprocess.run(["cp", "-al", purelib, str(copy)], capture_output=True, timeout=120)
    if linked.returncode != 0:
        shutil.rmtree(copy, ignore_errors=True)
        subprocess.run(["cp", "-a", purelib, str(copy)], check=True, timeout=300)
    return str(copy)


async def test_the_wheel_boots_from_a_fresh_venv_as_a_non_root_user(wheel, pg_cluster, fake_upstream):
    """The wheel is the whole gateway: a venv with it and nothing else of the project, run by
    a user who cannot write it, from a folder away from the source tree, migrates a fresh
    database, serves a signed request and drains. The venv borrows the suite's installed
    dependencies through a .pth (nothing is downloaded); a .pth line adds a folder without
    running the .pth files in it, so the suite's editable install of the project stays out."""
    run_as = as_user()
    home = Path(tempfile.mkdtemp(prefix="gatehouse-wheel-"))
    try:
        home.chmod(0o755)
        venv = home / "venv"
        python = interpreter_for(run_as)
        subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
        install = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                   "--no-index", "--no-deps", str(wheel)]  # fmt: skip
        out = subprocess.run(install, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        site = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()
        (Path(site) / "_suite_dependencies.pth").write_text(dependencies_for(run_as, home) + "\n")
        subprocess.run(["chmod", "-R", "a+rX,go-w", str(home)], check=True)

        env = {
            "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "OIDC_SECRET": "oidc-secret", "JWT": JWT_SECRET, "UPSTREAM_KEY": "sk-ant-upstream-secret-value",
            "CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1",
        }  # fmt: skip

        def gatehouse(*args: str) -> subprocess.CompletedProcess:
            cmd = [str(venv / "bin" / "gatehouse"), *args]
            return subprocess.run(cmd, env=env, cwd=home, capture_output=True, text=True, timeout=60, **run_as)

        probe = subprocess.run(
            [str(venv / "bin" / "python"), "-c", PROBE], env=env, cwd=home, capture_output=True, text=True,
            timeout=60, **run_as,
        )  # fmt: skip
        assert probe.returncode == 0, probe.stderr
        found = json.loads(probe.stdout)
        assert found["gateway"] == f"{site}/gateway/__init__.py"
        assert found["uid"] != 0
        assert not any(entry == str(ROOT) or entry.startswith(f"{ROOT}/gateway") for entry in found["path"])
        assert found["migrations"] == sorted(p.name for p in (ROOT / "sql" / "migrations").glob("*.sql"))
        assert found["queries"] == sorted(p.name for p in (ROOT / "sql" / "queries").glob("*.sql"))
        assert found["models"]

        version = gatehouse("--version")
        assert version.returncode == 0 and version.stdout.strip() == "gatehouse 0.1.0"
        example = home / "minimal.yaml"
        shutil.copy(ROOT / "conf" / "examples" / "minimal.yaml", example)
        example.chmod(0o644)
        check = gatehouse("check-config", "--config", str(example))
        assert check.returncode == 2 and "GATEHOUSE_OIDC_CLIENT_SECRET" in check.stderr  # secrets come from the environment
        env.update(GATEHOUSE_OIDC_CLIENT_SECRET="s", GATEHOUSE_JWT_SECRET=JWT_SECRET, ANTHROPIC_API_KEY="k",
                   GATEHOUSE_POSTGRES_URL="postgres://gw@127.0.0.1:9/gw")  # fmt: skip
        check = gatehouse("check-config", "--config", str(example))
        assert check.returncode == 0, check.stderr
        assert check.stdout.rstrip().endswith("# every feature switched on here is supported")

        port = free_port()
        config = write_config(home, pg_cluster.create_database("wheel_boot"), fake_upstream.url, port)
        config.chmod(0o644)
        log = tempfile.TemporaryFile("w+")
        proc = subprocess.Popen(
            [str(venv / "bin" / "gatehouse"), "serve", "--config", str(config)],
            env=env, cwd=home, stdout=log, stderr=log, text=True, **run_as,
        )  # fmt: skip
        proc.stderr = _LogReader(log)  # what wait_ready shows if it exits early
        try:
            await wait_ready(port, proc)
            token = gatehouse("token", "--config", str(config), "--email", "wheel@example.com")
            assert token.returncode == 0, token.stderr
            body = {"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
            headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
            async with aiohttp.ClientSession() as s:
                async with s.post(f"http://127.0.0.1:{port}/v1/messages", json=body, headers=headers) as r:
                    assert r.status == 200, await r.text()
            proc.send_signal(signal.SIGTERM)
            assert await wait_exit(proc) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        text = proc.stderr.read()
        assert "migration 1 applied" in text and "shutdown complete" in text and "Traceback" not in text
    finally:
        shutil.rmtree(home, ignore_errors=True)
