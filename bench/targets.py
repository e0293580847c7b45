"""The lab (PostgreSQL, IdP, simulated upstream) and the targets measured against it.

Targets:
  direct               the simulated upstream itself: the physical limit
  gatehouse            Gatehouse, token check only (policy off)
  gatehouse-policy     Gatehouse with managed: (model allowlist) and admin:
                       (spend limits) when this build accepts admin:
  gatehouse-2w         Gatehouse --workers 2, policy on
  claude-gateway       Anthropic's gateway, same file minus gatehouse:
  claude-gateway-full  the same with its admin: and managed: blocks
  litellm              LiteLLM's proxy, pass-through (no database)

Every gateway gets the same base file (bench/configs/base.yaml), its own
database in the one PostgreSQL cluster, and the same JWT secret, so a token
minted with ``gatehouse token`` is accepted by Gatehouse and by Anthropic's
gateway alike.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIGS = HERE / "configs"
PEERS_DIR = HERE / ".peers"
CLAUDE_PACKAGE = "@anthropic-ai/claude-code"

JWT_SECRET = "bench-jwt-secret-0123456789abcdef0123456789abcdef"
ADMIN_WRITE_KEY = "bench-admin-write-key-0123456789abcdef0123"
ADMIN_READ_KEY = "bench-admin-read-key-0123456789abcdef01234"
LITELLM_MASTER_KEY = "sk-bench-litellm-master-0123456789"
OIDC_SECRET = "bench-oidc-secret"
UPSTREAM_KEY = "sk-ant-bench-upstream-key"
# A monthly organization cap far above anything the bench spends: every
# request goes through reservation and settlement but none is refused.
ORG_CAP = {"scope": {"type": "organization"}, "amount": "100000000000", "period": "monthly"}

BASE_ENV = {
    "OIDC_CLIENT_SECRET": OIDC_SECRET,
    "GATEWAY_JWT_SECRET": JWT_SECRET,
    "ANTHROPIC_API_KEY": UPSTREAM_KEY,
    "GATEWAY_ADMIN_WRITE_KEY": ADMIN_WRITE_KEY,
    "GATEWAY_ADMIN_READ_KEY": ADMIN_READ_KEY,
    "CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1",
    "PYTHONUNBUFFERED": "1",
}


@dataclass
class Target:
    name: str
    kind: str  # direct | gatehouse | claude | litellm
    policy: bool = False
    workers: int = 1
    port: int = 0
    proc: procs.Proc | None = None
    token: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        h = {"anthropic-version": "2023-06-01"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h


def fill(text: str, **values: str | int) -> str:
    for key, value in values.items():
        text = text.replace(f"@@{key.upper()}@@", str(value))
    return text


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_http(url: str, proc: procs.Proc | None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; log: {proc.log_path}")
        try:
            if http("GET", url, timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:g}s")


class Lab:
    """Shared infrastructure, all on the load cores."""

    def __init__(self, out: Path, *, log: callable = print) -> None:
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.gw_cores, self.load_cores = procs.core_sets()
        self.cluster = None
        self.idp: procs.Proc | None = None
        self.fake: procs.Proc | None = None
        self.fake_port = 0
        self.idp_port = 0
        self.targets: list[Target] = []
        # Every process started, registered before it is waited on: a stop
        # asked for half way through a start must still end it.
        self.started: list[procs.Proc] = []
        self.env = dict(os.environ, **BASE_ENV)
        self.spend_supported: bool | None = None

    # ------------------------------------------------------------ infrastructure

    def start(self) -> None:
        from gateway.devenv.postgres import Cluster

        procs.pin([os.getpid()], self.load_cores)
        self.cluster = Cluster.start()
        procs.pin(procs.tree(self.cluster.pid), self.load_cores)
        self.idp_port = procs.free_port()
        self.idp = self.spawn(
            "idp", [str(Path(sys.executable).parent / "oidc-provider-mock"), "-p", str(self.idp_port), "-H", "127.0.0.1"],
            cores=self.load_cores, env=self.env, log_path=str(self.logs / "idp.log"),
        )
        self.fake_port = procs.free_port()
        self.fake = self.spawn(
            "upstream",
            [sys.executable, "-m", "protocol_spec.fakes.upstream", "--port", str(self.fake_port), "--no-record", "--uvloop"],
            cores=self.load_cores, env=self.env, log_path=str(self.logs / "upstream.log"), cwd=str(REPO),
        )
        wait_http(f"http://127.0.0.1:{self.idp_port}/.well-known/openid-configuration", self.idp)
        wait_http(f"http://127.0.0.1:{self.fake_port}/v1/models", self.fake)

    def spawn(self, name: str, argv: list[str], **kwargs: Any) -> procs.Proc:
        proc = procs.start(name, argv, **kwargs)
        self.started.append(proc)
        return proc

    def pids(self) -> dict[str, int]:
        """Every process this lab runs now, by name (PostgreSQL's postmaster as "postgres")."""
        running = {p.name: p.pid for p in self.started if p.popen.poll() is None}
        if self.cluster is not None and self.cluster.pid:
            running["postgres"] = self.cluster.pid
        return running

    def set_upstream(self, **reply: object) -> None:
        """Change what the simulated upstream answers (a Reply as plain JSON)."""
        status, body = http("POST", f"http://127.0.0.1:{self.fake_port}/_fake/default",
                            json.dumps([reply] if reply else []).encode(), {"Content-Type": "application/json"})
        if status != 200:
            raise RuntimeError(f"fake upstream refused the default reply: {body[:200]!r}")

    def stop(self) -> None:
        """Stop everything started, newest first; safe to call again (each stop is idempotent)."""
        for p in reversed(self.started):
            p.stop()
        if self.cluster is not None:
            self.cluster.stop()

    # ------------------------------------------------------------ configs

    def config_text(self, target: Target, port: int, db_url: str) -> str:
        text = fill((CONFIGS / "base.yaml").read_text(), port=port, issuer=f"http://127.0.0.1:{self.idp_port}",
                    postgres_url=db_url, upstream=f"http://127.0.0.1:{self.fake_port}")
        if target.kind == "gatehouse":
            text += "\n" + (CONFIGS / "gatehouse.yaml").read_text()
        if target.policy:
            policy = (CONFIGS / "policy.yaml").read_text()
            if target.kind == "gatehouse" and not self.gatehouse_accepts_admin(text, policy):
                policy = policy.split("\nadmin:", 1)[0] + "\n"
                target.notes.append("spend limits not measured: this Gatehouse build refuses admin: at boot")
            text += "\n" + policy
        elif target.kind == "gatehouse" and target.name == "gatehouse-minimal":
            text = text.split("\ngatehouse:", 1)[0] + "\n"
        return text

    def gatehouse_accepts_admin(self, base: str, policy: str) -> bool:
        if self.spend_supported is None:
            probe = self.out / "configs" / "probe-admin.yaml"
            probe.parent.mkdir(exist_ok=True)
            probe.write_text(base + "\n" + policy)
            out = subprocess.run([sys.executable, "-m", "gateway", "check-config", "--config", str(probe)],
                                 env=self.env, capture_output=True, text=True, timeout=60, cwd=str(REPO))
            unsupported = out.stdout.split("not supported by Gatehouse yet", 1)
            self.spend_supported = out.returncode == 0 and not (
                len(unsupported) > 1 and any(line.strip("# ").startswith("admin") for line in unsupported[1].splitlines())
            )
            probe.unlink()
        return self.spend_supported

    # ------------------------------------------------------------ targets

    def add(self, target: Target, claude_bin: str | None = None) -> Target:
        """Start one target and wait until it is ready."""
        if target.kind == "direct":
            target.port = self.fake_port
        elif target.kind == "gatehouse":
            self._start_gatehouse(target)
        elif target.kind == "claude":
            self._start_claude(target, claude_bin or "")
        elif target.kind == "litellm":
            self._start_litellm(target)
        else:
            raise ValueError(target.kind)
        self.targets.append(target)
        return target

    def _db(self, name: str) -> str:
        return self.cluster.create_database(name.replace("-", "_"))

    def _write_config(self, target: Target) -> Path:
        target.port = procs.free_port()
        path = self.out / "configs" / f"{target.name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(self.config_text(target, target.port, self._db(target.name)))
        return path

    def _start_gatehouse(self, target: Target) -> None:
        cfg = self._write_config(target)
        argv = [sys.executable, "-m", "gateway", "serve", "--config", str(cfg)]
        if target.workers > 1:
            argv += ["--workers", str(target.workers)]
        # --workers N spreads over every core (the lab gives no linearity target there).
        cores = self.gw_cores | (self.load_cores if target.workers > 1 else set())
        target.proc = self.spawn(target.name, argv, cores=cores, env=self.env,
                                  log_path=str(self.logs / f"{target.name}.log"), cwd=str(REPO))
        wait_http(f"http://127.0.0.1:{target.port}/readyz", target.proc)
        target.token = self.mint_token(cfg)
        if target.policy and self.spend_supported:
            self._set_org_cap(target)

    def mint_token(self, cfg: Path) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "gateway", "token", "--config", str(cfg), "--email", "bench@example.com",
             "--sub", "bench-user", "--groups", "eng", "--ttl-seconds", "14400"],
            env=self.env, capture_output=True, text=True, timeout=60, cwd=str(REPO),
        )
        if out.returncode != 0:
            raise RuntimeError(f"gatehouse token failed: {out.stderr}")
        return out.stdout.strip()

    def _set_org_cap(self, target: Target) -> None:
        status, body = http("POST", f"http://127.0.0.1:{target.port}/v1/organizations/spend_limits",
                            json.dumps(ORG_CAP).encode(),
                            {"x-api-key": ADMIN_WRITE_KEY, "Content-Type": "application/json"})
        if status != 200:
            target.notes.append(f"setting the organization spend limit answered {status}: {body[:120]!r}")

    def _start_claude(self, target: Target, claude_bin: str) -> None:
        cfg = self._write_config(target)
        home = self.out / "raw" / "home" / target.name
        home.mkdir(parents=True, exist_ok=True)
        env = dict(
            self.env, HOME=str(home), CLAUDE_CONFIG_DIR=str(home / ".claude"), DISABLE_TELEMETRY="1",
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1", DISABLE_ERROR_REPORTING="1",
            # Same per-process cap on concurrent upstream requests as Gatehouse's bench config.
            BUN_CONFIG_MAX_HTTP_REQUESTS="8192",
        )
        target.proc = self.spawn(target.name, [claude_bin, "gateway", "--config", str(cfg)], cores=self.gw_cores,
                                  env=env, log_path=str(self.logs / f"{target.name}.log"))
        wait_http(f"http://127.0.0.1:{target.port}/readyz", target.proc)
        # Same secret and public_url as Gatehouse: a Gatehouse-minted token fits.
        target.token = self.shared_token()
        if target.policy:
            self._set_org_cap(target)

    def shared_token(self) -> str:
        for t in self.targets:
            if t.kind == "gatehouse" and t.token:
                return t.token
        tmp = self.out / "configs" / "token-only.yaml"
        tmp.parent.mkdir(exist_ok=True)
        tmp.write_text(fill((CONFIGS / "base.yaml").read_text(), port=1, issuer=f"http://127.0.0.1:{self.idp_port}",
                            postgres_url="postgresql://x@127.0.0.1:1/x", upstream="http://127.0.0.1:1"))
        return self.mint_token(tmp)

    def _start_litellm(self, target: Target) -> None:
        exe = PEERS_DIR / "litellm" / "bin" / "litellm"
        if not exe.exists():
            raise RuntimeError(f"LiteLLM is not installed: python3 -m venv {exe.parent.parent} && "
                               f"{exe.parent}/pip install 'litellm[proxy]'")
        target.port = procs.free_port()
        cfg = self.out / "configs" / f"{target.name}.yaml"
        cfg.parent.mkdir(exist_ok=True)
        cfg.write_text(fill((CONFIGS / "litellm.yaml").read_text(), upstream=f"http://127.0.0.1:{self.fake_port}"))
        env = dict(self.env, LITELLM_MASTER_KEY=LITELLM_MASTER_KEY, LITELLM_LOCAL_MODEL_COST_MAP="True",
                   LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False", HOME=str(self.out / "raw" / "home" / target.name))
        target.proc = self.spawn(
            target.name, [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(target.port),
                          "--num_workers", "1"],
            cores=self.gw_cores, env=env, log_path=str(self.logs / f"{target.name}.log"),
        )
        wait_http(f"http://127.0.0.1:{target.port}/health/liveliness", target.proc, timeout=120)
        target.token = LITELLM_MASTER_KEY
        target.notes.append("pass-through mode: no database, master-key auth, no budgets")


def find_claude(spec: str, out: Path) -> str:
    """The claude binary: a given path, or fetched from the npm registry into bench/.peers/."""
    if spec and spec != "npm":
        if not Path(spec).exists():
            raise RuntimeError(f"claude binary not found at {spec}")
        return spec
    local = PEERS_DIR / "npm" / "node_modules" / ".bin" / "claude"
    if local.exists():
        return str(local)
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("BENCH_PEERS names claude-gateway without a path and npm is not installed")
    (PEERS_DIR / "npm").mkdir(parents=True, exist_ok=True)
    subprocess.run([npm, "install", "--prefix", str(PEERS_DIR / "npm"), CLAUDE_PACKAGE], check=True, timeout=600)
    return str(local)
