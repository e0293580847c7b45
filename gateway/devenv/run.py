"""``make dev``: a working gateway on embedded defaults, in one command.

Starts, on loopback only:

* PostgreSQL: a throwaway cluster (or ``GATEWAY_POSTGRES_URL`` if set);
* a development OIDC provider (``oidc-provider-mock``) with a few users;
* the simulated Anthropic upstream — or the real API when ``ANTHROPIC_API_KEY``
  is set;
* the gateway itself, with ``conf/examples/dev.yaml``.

Then prints the URL, a ready-to-use session token and the exact ``claude``
command to try. Ctrl-C (or SIGTERM) stops everything it started and exits 0:
an asked stop is a success, so ``make dev`` ends quietly.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from gateway.devenv.postgres import Cluster

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "conf" / "examples" / "dev.yaml"
BIN = Path(sys.executable).parent

DEV_USERS = [
    '{"sub":"alice","email":"alice@example.com","email_verified":true,"name":"Alice Example","groups":["eng","platform-admins"]}',
    '{"sub":"bob","email":"bob@example.com","email_verified":true,"name":"Bob Example","groups":["contractors"]}',
    '{"sub":"carol","email":"carol@example.com","email_verified":true,"name":"Carol Example","groups":["eng"]}',
]


def free_port(preferred: int | None = None) -> int:
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status < 500:
                    return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:g}s")


class AskedStop(BaseException):
    """SIGINT or SIGTERM arrived: stop what was started (``make dev`` then exits 0).

    A BaseException, like KeyboardInterrupt, so no ``except Exception`` on the
    way up swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def catch_stop_signals() -> None:
    """Turn the first SIGINT or SIGTERM into AskedStop; ignore any later ones.

    Installed explicitly rather than relying on Python's KeyboardInterrupt: a
    shell that starts us in the background hands us SIGINT ignored, and Python
    then never raises. Later signals are ignored so a second Ctrl-C cannot cut
    the clean-up short (every wait in it is bounded).
    """

    def on_signal(signum: int, _frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        raise AskedStop(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)


def _own_group() -> None:
    """In the child before exec: leave the terminal's process group.

    Ctrl-C reaches the whole foreground group. If the children were in it they
    would get SIGINT from the terminal and SIGTERM from us, and the gateway
    treats a second signal as "exit now" instead of draining. In their own
    group each child gets exactly one signal, ours. On Linux the child also
    gets SIGTERM if this process dies without cleaning up (SIGKILL).
    """
    os.setpgid(0, 0)
    die_with_parent()


def die_with_parent() -> None:
    """In a child before exec, Linux only: SIGTERM it when the parent dies without cleaning up."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    # No terminal input: a process outside the foreground group that reads it is stopped (SIGTTIN).
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=_own_group, **kwargs)


def set_example_cap(url: str, admin_key: str) -> None:
    """$1.00 a day per contractor, through the admin API like an administrator would."""
    payload = {"scope": {"type": "rbac_group", "rbac_group_id": "contractors"}, "amount": "100", "period": "daily"}
    req = urllib.request.Request(
        url + "/v1/organizations/spend_limits",
        data=json.dumps(payload).encode(),
        headers={"x-api-key": admin_key, "content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


def main() -> int:
    procs: list[subprocess.Popen[bytes]] = []
    cluster: Cluster | None = None

    def stop_all() -> None:
        # A signal now must not cut the clean-up short (each wait below is bounded).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if cluster is not None:
            cluster.stop()

    try:
        catch_stop_signals()
        if os.environ.get("GATEWAY_POSTGRES_URL"):
            pg_url = os.environ["GATEWAY_POSTGRES_URL"]
            print("* PostgreSQL: using GATEWAY_POSTGRES_URL")
        else:
            cluster = Cluster.start()
            pg_url = cluster.create_database("gatehouse")
            print(f"* PostgreSQL: throwaway cluster at {cluster.url} (pid {cluster.pid})")

        idp_port = free_port()
        idp_args = [str(BIN / "oidc-provider-mock"), "-H", "127.0.0.1", "-p", str(idp_port)]
        for user in DEV_USERS:
            idp_args += ["--user-claims", user]
        procs.append(spawn(idp_args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        issuer = f"http://127.0.0.1:{idp_port}"
        wait_http(issuer + "/.well-known/openid-configuration", 30, procs[-1])
        print(f"* Development IdP (oidc-provider-mock): {issuer}  users: alice, bob, carol @example.com")

        api_key = os.environ.get("ANTHROPIC_API_KEY")
        if api_key:
            upstream_url, upstream_key = "https://api.anthropic.com", api_key
            print("* Upstream: the real Anthropic API (ANTHROPIC_API_KEY is set)")
        else:
            up_port = free_port()
            procs.append(
                spawn(
                    [sys.executable, "-m", "protocol_spec.fakes.upstream", "--host", "127.0.0.1", "--port", str(up_port)],
                    stdout=subprocess.DEVNULL,
                )
            )
            upstream_url, upstream_key = f"http://127.0.0.1:{up_port}", "sk-ant-simulated"
            wait_http(upstream_url + "/v1/models", 30, procs[-1])
            print(f"* Upstream: simulated Anthropic API at {upstream_url}")

        port = int(os.environ.get("GATEHOUSE_DEV_PORT", "8080"))
        port = free_port(port)
        url = f"http://127.0.0.1:{port}"
        # A cloud upstream added to the dev config must not send credential lookups to a
        # metadata address (169.254.169.254) by accident: the chains stay off unless set.
        quiet_chains = {
            "AWS_EC2_METADATA_DISABLED": "true",
            "GCE_METADATA_HOST": "127.0.0.1:9",
            "GCE_METADATA_IP": "127.0.0.1:9",
            "AZURE_TOKEN_CREDENTIALS": "EnvironmentCredential",
        }
        env = dict(
            {**quiet_chains, **os.environ},
            CLAUDE_GATEWAY_ALLOW_LOOPBACK="1",
            GATEHOUSE_DEV_PORT=str(port),
            GATEHOUSE_DEV_OIDC_ISSUER=issuer,
            GATEHOUSE_DEV_OIDC_CLIENT_SECRET="dev-client-secret",
            GATEHOUSE_DEV_JWT_SECRET=os.environ.get("GATEHOUSE_DEV_JWT_SECRET") or secrets.token_hex(32),
            GATEHOUSE_DEV_POSTGRES_URL=pg_url,
            GATEHOUSE_DEV_UPSTREAM_URL=upstream_url,
            GATEHOUSE_DEV_UPSTREAM_API_KEY=upstream_key,
            GATEHOUSE_DEV_ADMIN_KEY=os.environ.get("GATEHOUSE_DEV_ADMIN_KEY") or "dev-admin-" + secrets.token_hex(16),
        )
        gatehouse = str(BIN / "gatehouse")
        procs.append(spawn([gatehouse, "serve", "--config", str(CONFIG)], env=env))
        wait_http(url + "/readyz", 60, procs[-1])
        set_example_cap(url, env["GATEHOUSE_DEV_ADMIN_KEY"])
        env_file = Path(os.environ.get("GATEHOUSE_DEV_STATE_DIR") or ROOT / ".dev") / "env"
        env_file.parent.mkdir(parents=True, exist_ok=True)
        env_file.write_text(
            "".join(f"{k}={v}\n" for k, v in sorted(env.items()) if k.startswith("GATEHOUSE_DEV_"))
            + "CLAUDE_GATEWAY_ALLOW_LOOPBACK=1\n"
        )
        env_file.chmod(0o600)

        def mint(email: str, sub: str, groups: str) -> str:
            args = [gatehouse, "token", "--config", str(CONFIG), "--email", email, "--sub", sub, "--groups", groups]
            return subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout.strip()

        token = mint("alice@example.com", "alice", "eng,platform-admins")
        bob = mint("bob@example.com", "bob", "contractors")
        offline = "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1 "
        print(
            "\n"
            f"Gatehouse is running at {url}  (config: {CONFIG.relative_to(ROOT)})\n\n"
            "A session token for alice@example.com (valid for the configured ttl):\n\n"
            f"  {token}\n\n"
            "Point Claude Code at it:\n\n"
            f"  {offline}ANTHROPIC_BASE_URL={url} ANTHROPIC_AUTH_TOKEN={shlex.quote(token)} \\\n"
            "    claude -p \"say hi\"\n\n"
            "Or with curl:\n\n"
            f"  curl -s {url}/v1/messages -H 'Authorization: Bearer <token>' -H 'content-type: application/json' \\\n"
            "    -d '{\"model\":\"claude-sonnet-4-6\",\"max_tokens\":64,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'\n\n"
            "Example policy (conf/examples/dev.yaml): bob@example.com is a contractor, limited to Haiku and Sonnet\n"
            "with a $1.00/day spend cap set through the admin API. His token (add --model claude-sonnet-4-6\n"
            "to the claude command above when you use it):\n\n"
            f"  {bob}\n\n"
            "This run's settings are in .dev/env; load them to use the CLI against it:\n"
            "  set -a; . .dev/env; set +a\n"
            "  .venv/bin/gatehouse token --config conf/examples/dev.yaml --email you@example.com\n"
            "  .venv/bin/gatehouse limits list --config conf/examples/dev.yaml\n"
            "\nTo sign in with /login instead (device flow through the development IdP), a developer\n"
            "machine needs this managed-settings file:\n\n"
            f'  {{"forceLoginMethod":"gateway","forceLoginGatewayUrl":"{url}"}}\n\n'
            "  Linux:   /etc/claude-code/managed-settings.json\n"
            "  macOS:   /Library/Application Support/ClaudeCode/managed-settings.json\n"
            "  Windows: C:\\Program Files\\ClaudeCode\\managed-settings.json\n\n"
            "  Warning: while that file exists, Claude Code on that machine signs in ONLY through this\n"
            "  gateway. Delete the file to undo it. Then run `claude`, type /login, open the link,\n"
            "  approve, and pick a user (alice, bob or carol) at the development IdP.\n\n"
            "Press Ctrl-C to stop everything.\n",
            flush=True,
        )
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        failed = [p for p in procs if p.poll() is not None]
        print(f"\n{failed[0].args!r} exited ({failed[0].returncode}); stopping the rest.", file=sys.stderr)
        return 1
    except AskedStop as stop:
        print(f"\n{stop}: stopping everything…", file=sys.stderr, flush=True)
        return 0
    finally:
        stop_all()


if __name__ == "__main__":
    raise SystemExit(main())
