"""``make image``: build the container image on a base made from Debian's packages, and prove it.

The Containerfile's base is a build argument (the public ``python:3.11-slim`` by
default). Where no container registry is reachable, only Debian's, this builds one:
``mmdebstrap`` makes a Debian 12 root file system with Debian's Python 3.11 (and
nothing else it does not need), ``podman import`` turns it into
``localhost/gatehouse-base:bookworm``, and the image is built on it with
``--build-arg PYTHON=python3``. Then the image runs as shipped: its non-root user,
a read-only root file system, against a throwaway PostgreSQL and the fake upstream
on this machine's loopback (``--network host``), and this checks

* the image: its size, its user, its HEALTHCHECK (docker format), no compiler in
  it, and the migrations and data files inside the installed wheel;
* ``/readyz``, and ``podman healthcheck run`` (the HEALTHCHECK itself);
* a signed request: a token minted inside the container, ``POST /v1/messages``
  answered 200, and the upstream seeing the gateway's own API key;
* a drain: ``podman stop`` during a stream; the stream finishes, the container
  exits 0 well inside the grace period, and its log has no traceback.

Podman runs with its own containers.conf (``build/image/containers.conf``): runc,
because crun was seen to fail on cgroup v1 hosts like these, and no default ulimits
(podman would raise the open-files limit above such a host's hard limit, and runc
then refuses to start the container). The build downloads the
locked wheels with this machine's CA bundle mounted in, so a TLS-inspecting
proxy the host trusts works in the build too; nothing of it stays in the image.

Everything it writes is under ``build/image/`` (git-ignored). Exit 0 when every
check passed; the summary is printed and written to ``build/image/summary.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from gateway.devenv.postgres import Cluster, free_port
from gateway.errors import Fault, Party
from protocol_spec.fakes.replies import Reply

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "image"
BASE_TAG = "localhost/gatehouse-base:bookworm"
IMAGE_TAG = "localhost/gatehouse:latest"
CONTAINER = "gatehouse-image-check"
# Debian's interpreter and venv module, the CA certificates TLS to upstreams needs,
# and useradd for the Containerfile's user. Nothing else is asked for.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
# Documentation, manuals and translations are left out of the base (the licences stay).
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*", "path-exclude=/usr/share/locale/*",
)  # fmt: skip
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n'
COMPILERS = ("cc", "gcc", "g++", "c++", "clang", "ld", "as", "make", "rustc")
UPSTREAM_KEY = "sk-ant-image-check-upstream"
JWT_SECRET = "image-check-" + "0123456789abcdef" * 4
DRAIN_MS = 15_000
# Above the drain (the README's advice for any orchestrator): podman's own default is 10 s.
STOP_TIMEOUT_S = 25
STREAM_DELTAS, STREAM_GAP_S = 8, 0.5

# Run inside the image: where the wheel put the gateway, and what it carries.
WHEEL_PROBE = """
import gateway, json, sys
from importlib import resources
sql = resources.files("gateway.sql")
print(json.dumps({
    "gateway": gateway.__file__,
    "migrations": sorted(p.name for p in sql.joinpath("migrations").iterdir() if p.name.endswith(".sql")),
    "queries": sorted(p.name for p in sql.joinpath("queries").iterdir() if p.name.endswith(".sql")),
    "models_json": resources.files("gateway.data").joinpath("models.json").is_file(),
    "uid": __import__("os").getuid(),
    "python": sys.version.split()[0],
}))
"""


class CheckFailed(Fault):
    """One of the checks did not hold; the message says which and what was seen."""

    fault = Party.GATEWAY


def log(message: str) -> None:
    print(f"image: {message}", flush=True)


def run(cmd: list[str], env: dict[str, str], *, check: bool = True, timeout: float = 1800) -> str:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise CheckFailed(f"{' '.join(cmd[:4])} … exited {out.returncode}:\n{out.stderr[-3000:] or out.stdout[-3000:]}")
    return out.stdout


def podman_env() -> dict[str, str]:
    OUT.mkdir(parents=True, exist_ok=True)
    conf = OUT / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def image_exists(tag: str, env: dict[str, str]) -> bool:
    return subprocess.run(["podman", "image", "exists", tag], env=env, check=False).returncode == 0


def build_base(env: dict[str, str]) -> float:
    """mmdebstrap a Debian 12 root file system and import it; seconds taken."""
    started = time.monotonic()
    rootfs = OUT / "bookworm-rootfs.tar"
    rootfs.unlink(missing_ok=True)
    # No mirror named: mmdebstrap then uses Debian's default one, with the updates and
    # security suites added for a stable release.
    cmd = [
        "mmdebstrap", "--variant=essential", "--include=" + ",".join(BASE_PACKAGES),
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        *(f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES), "bookworm", str(rootfs),
    ]  # fmt: skip
    run(cmd, env)
    run(["podman", "import", "--change", 'CMD ["/bin/bash"]', str(rootfs), BASE_TAG], env)
    return time.monotonic() - started


def build_image(env: dict[str, str], tag: str) -> float:
    started = time.monotonic()
    mounts: list[str] = []
    cafile = ssl.get_default_verify_paths().cafile
    if cafile and os.path.isfile(cafile):
        pip_conf = OUT / "pip.conf"
        pip_conf.write_text("[global]\ncert = /etc/gatehouse-build-ca.pem\n")
        mounts = ["-v", f"{pip_conf}:/etc/pip.conf:ro", "-v", f"{cafile}:/etc/gatehouse-build-ca.pem:ro"]
    cmd = [
        "podman", "build", "--format", "docker", "--network", "host", *mounts,
        "--build-arg", f"BASE={BASE_TAG}", "--build-arg", "PYTHON=python3",
        "-t", tag, "-f", str(ROOT / "Containerfile"), str(ROOT),
    ]  # fmt: skip
    with open(OUT / "build.log", "w") as build_log:
        done = subprocess.run(cmd, env=env, stdout=build_log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise CheckFailed(f"podman build failed ({done.returncode}); see {OUT / 'build.log'}")
    return time.monotonic() - started


def inspect_image(env: dict[str, str], tag: str) -> dict[str, Any]:
    """Size, user and health check from the image's config; compilers and wheel data from inside it."""
    info = json.loads(run(["podman", "image", "inspect", tag], env))[0]
    config = info.get("Config") or {}
    # podman shows it beside Config; docker's own inspect shows it inside.
    health = (info.get("Healthcheck") or config.get("Healthcheck") or {}).get("Test")
    if config.get("User") != "gatehouse":
        raise CheckFailed(f"the image runs as {config.get('User')!r}, not gatehouse")
    if health != ["CMD", "gatehouse", "healthcheck"]:
        raise CheckFailed(f"no HEALTHCHECK in the image (docker format?): {health!r}")
    base_size = json.loads(run(["podman", "image", "inspect", BASE_TAG], env))[0]["Size"]
    which = f"import shutil; print([c for c in {list(COMPILERS)!r} if shutil.which(c)])"
    found = run(["podman", "run", "--rm", "--network", "none", "--entrypoint", "python", tag, "-c", which], env).strip()
    if found != "[]":
        raise CheckFailed(f"compilers in the final image: {found}")
    wheel = json.loads(run(["podman", "run", "--rm", "--network", "none", "--entrypoint", "python", tag, "-c", WHEEL_PROBE], env))
    migrations = sorted(p.name for p in (ROOT / "sql" / "migrations").glob("*.sql"))
    queries = sorted(p.name for p in (ROOT / "sql" / "queries").glob("*.sql"))
    if not wheel["gateway"].startswith("/opt/gatehouse/lib/"):
        raise CheckFailed(f"gateway imported from {wheel['gateway']}, not the installed wheel")
    if wheel["migrations"] != migrations or wheel["queries"] != queries or not wheel["models_json"]:
        raise CheckFailed(f"the wheel in the image lacks SQL or data files: {wheel}")
    if wheel["uid"] == 0:
        raise CheckFailed("the image runs as root")
    return {
        "size_bytes": info["Size"],
        "base_size_bytes": base_size,
        "user": config["User"],
        "uid": wheel["uid"],
        "python": wheel["python"],
        "healthcheck": health,
        "compilers": [],
        "sql_files": len(migrations) + len(queries),
    }


def wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise CheckFailed(f"{url} did not answer 200 within {timeout_s:g} s")
        time.sleep(0.2)


@contextmanager
def fake_upstream() -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "protocol_spec.fakes.upstream", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/v1/models", 30)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def write_config(pg_url: str, upstream_url: str, port: int) -> Path:
    folder = OUT / "run"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    path = folder / "gateway.yaml"
    # Host networking: the container shares this machine's loopback, where the
    # database and the fake upstream listen (so the loopback warning at boot is expected).
    path.write_text(
        f"""listen:
  host: 127.0.0.1
  port: {port}
oidc:
  issuer: http://127.0.0.1:9
  client_id: gatehouse-image-check
  client_secret: ${{GATEHOUSE_OIDC_CLIENT_SECRET}}
session:
  jwt_secret: ${{GATEHOUSE_JWT_SECRET}}
store:
  postgres_url: {pg_url}
upstreams:
  - provider: anthropic
    base_url: {upstream_url}
    auth:
      api_key: ${{ANTHROPIC_API_KEY}}
"""
    )
    path.chmod(0o644)  # the image's user reads it
    return path


def post_json(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={**headers, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def check_running(env: dict[str, str], tag: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with Cluster.start() as cluster, fake_upstream() as upstream:
        pg_url = cluster.create_database("gatehouse_image")
        port = free_port()
        config = write_config(pg_url, upstream, port)
        base = f"http://127.0.0.1:{port}"
        run(["podman", "rm", "--force", "--ignore", CONTAINER], env)
        cmd = [
            "podman", "run", "--detach", "--name", CONTAINER, "--network", "host",
            "--read-only", "--tmpfs", "/tmp", "--stop-timeout", str(STOP_TIMEOUT_S),
            # The health check runs when asked (podman healthcheck run), not on a timer,
            # which would need systemd.
            "--health-interval", "disable",
            "-v", f"{config}:/etc/gatehouse/gateway.yaml:ro",
            "-e", "GATEHOUSE_OIDC_CLIENT_SECRET=image-check-oidc", "-e", f"GATEHOUSE_JWT_SECRET={JWT_SECRET}",
            "-e", f"ANTHROPIC_API_KEY={UPSTREAM_KEY}", "-e", "CLAUDE_GATEWAY_ALLOW_LOOPBACK=1",
            "-e", f"CLAUDE_GATEWAY_DRAIN_TIMEOUT_MS={DRAIN_MS}", tag,
        ]  # fmt: skip
        started = time.monotonic()
        run(cmd, env)
        try:
            wait_http(base + "/readyz", 60)
            results["boot_to_ready_s"] = round(time.monotonic() - started, 2)
            log(f"/readyz 200 after {results['boot_to_ready_s']} s")
            health = subprocess.run(["podman", "healthcheck", "run", CONTAINER], env=env, capture_output=True, text=True)
            if health.returncode != 0:
                raise CheckFailed(f"podman healthcheck run: {health.returncode} {health.stdout}{health.stderr}")
            results["healthcheck"] = "healthy"
            log("HEALTHCHECK (gatehouse healthcheck): healthy")
            results.update(check_inside(env))
            results.update(check_signed_request(env, base, upstream))
            results.update(check_drain(env, base, upstream))
        finally:
            (OUT / "container.log").write_text(container_log(env))
            run(["podman", "rm", "--force", "--ignore", CONTAINER], env, check=False)
    return results


def check_inside(env: dict[str, str]) -> dict[str, Any]:
    """The running container's user, and a root file system it cannot write."""
    probe = "import os\ntry:\n    open('/opt/gatehouse/x', 'w')\n    print('writable')\nexcept OSError as e:\n    print(e.errno)"
    uid = run(["podman", "exec", CONTAINER, "python", "-c", "import os; print(os.getuid())"], env).strip()
    wrote = run(["podman", "exec", CONTAINER, "python", "-c", probe], env).strip()
    if uid == "0" or wrote == "writable":
        raise CheckFailed(f"running as uid {uid}; root file system: {wrote}")
    log(f"running as uid {uid}; the root file system refuses writes (errno {wrote})")
    return {"running_uid": int(uid), "read_only_root": True}


def container_log(env: dict[str, str]) -> str:
    """What the gateway wrote; podman logs repeats its stderr on its own stderr."""
    out = subprocess.run(["podman", "logs", CONTAINER], env=env, capture_output=True, text=True, check=False)
    return out.stdout + out.stderr


def mint_token(env: dict[str, str]) -> str:
    cmd = ["podman", "exec", CONTAINER, "gatehouse", "token", "--config", "/etc/gatehouse/gateway.yaml",
           "--email", "image-check@example.com"]  # fmt: skip
    return run(cmd, env).strip()


def check_signed_request(env: dict[str, str], base: str, upstream: str) -> dict[str, Any]:
    token = mint_token(env)
    body = {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    status, answer = post_json(base + "/v1/messages", body, {"authorization": f"Bearer {token}"})
    if status != 200 or json.loads(answer).get("type") != "message":
        raise CheckFailed(f"POST /v1/messages answered {status}: {answer[:500]!r}")
    with urllib.request.urlopen(upstream + "/_fake/received", timeout=10) as resp:
        received = json.loads(resp.read())
    sent = [r for r in received if r["path"] == "/v1/messages"]
    keys = {v for r in sent for k, v in r["headers"] if k.lower() == "x-api-key"}
    if keys != {UPSTREAM_KEY}:
        raise CheckFailed(f"the upstream did not see the gateway's key (saw {len(sent)} requests, keys {keys})")
    log("POST /v1/messages with a session token: 200, signed upstream with the gateway's key")
    return {"signed_request": 200}


def check_drain(env: dict[str, str], base: str, upstream: str) -> dict[str, Any]:
    """``podman stop`` while a stream is open: the stream ends whole, the container exits 0."""
    token = mint_token(env)
    script = msgspec.json.encode([Reply(stream=True, deltas=STREAM_DELTAS, gap=STREAM_GAP_S)])
    urllib.request.urlopen(urllib.request.Request(upstream + "/_fake/script", data=script), timeout=10).read()
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    conn.request("POST", "/v1/messages", json.dumps(body), {"authorization": f"Bearer {token}", "content-type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise CheckFailed(f"the stream to drain answered {resp.status}: {resp.read()[:300]!r}")
    first = resp.readline()
    stop_at = time.monotonic()
    stopper = subprocess.Popen(["podman", "stop", "--time", str(STOP_TIMEOUT_S), CONTAINER], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    rest = resp.read()
    stream_done_s = time.monotonic() - stop_at
    conn.close()
    _, stop_err = stopper.communicate(timeout=STOP_TIMEOUT_S + 30)
    exited_s = time.monotonic() - stop_at
    state = json.loads(run(["podman", "inspect", CONTAINER], env))[0]["State"]
    logs = container_log(env)
    whole = (first + rest).rstrip()
    if not whole.endswith(b'{"type":"message_stop"}'):
        raise CheckFailed(f"the in-flight stream was cut during the drain: …{whole[-300:]!r}")
    if stopper.returncode != 0 or state.get("ExitCode") != 0:
        raise CheckFailed(f"podman stop {stopper.returncode} ({stop_err.strip()}), container exit {state.get('ExitCode')}")
    if exited_s >= STOP_TIMEOUT_S:
        raise CheckFailed(f"the container took {exited_s:.1f} s to stop: killed at the grace period, not drained")
    if "Traceback" in logs or "shutdown complete" not in logs:
        raise CheckFailed(f"the container's log after the drain:\n{logs[-3000:]}")
    log(f"drain: the open stream finished {stream_done_s:.1f} s after podman stop, exit 0 after {exited_s:.1f} s")
    return {"drain_stream_finished_s": round(stream_done_s, 2), "drain_exit_code": 0, "drain_exit_s": round(exited_s, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the image on a Debian-made base and check it runs as shipped.")
    parser.add_argument("--rebuild-base", action="store_true", help=f"make {BASE_TAG} again even if it exists")
    parser.add_argument("--no-build", action="store_true", help="check the image already built")
    parser.add_argument("--tag", default=IMAGE_TAG)
    args = parser.parse_args(argv)
    for tool in ("podman", "runc", "mmdebstrap"):
        if shutil.which(tool) is None:
            print(f"image: {tool} not found (apt-get install podman runc mmdebstrap)", file=sys.stderr)
            return 1
    env = podman_env()
    summary: dict[str, Any] = {"machine": f"{os.cpu_count()} cores", "image": args.tag, "base": BASE_TAG}
    started = time.monotonic()
    try:
        if args.rebuild_base or not image_exists(BASE_TAG, env):
            summary["base_build_s"] = round(build_base(env), 1)
            log(f"base {BASE_TAG} made from Debian packages in {summary['base_build_s']} s")
        else:
            log(f"base {BASE_TAG} exists (--rebuild-base to make it again)")
        if not args.no_build:
            summary["image_build_s"] = round(build_image(env, args.tag), 1)
            log(f"image {args.tag} built in {summary['image_build_s']} s (log: {OUT / 'build.log'})")
        summary.update(inspect_image(env, args.tag))
        log(
            f"size {summary['size_bytes'] / 1e6:.0f} MB (base {summary['base_size_bytes'] / 1e6:.0f} MB); "
            f"user {summary['user']} (uid {summary['uid']}); Python {summary['python']}; no compiler; "
            f"{summary['sql_files']} SQL files and models.json in the installed wheel"
        )
        summary.update(check_running(env, args.tag))
    except CheckFailed as err:
        print(f"image: FAILED: {err}", file=sys.stderr)
        return 1
    summary["total_s"] = round(time.monotonic() - started, 1)
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"every check passed in {summary['total_s']} s; summary in {OUT / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
