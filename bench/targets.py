"""The lab (PostgreSQL, IdP, simulated upstream) and the targets measured against it.

Targets:
  direct               the simulated upstream itself: the physical limit
  gatehouse            Gatehouse, token check only (policy off)
  gatehouse-policy     Gatehouse with managed: (model allowlist) and admin:
                       (spend limits) when this build accepts admin:
  gatehouse-2w         Gatehouse --workers 2, policy on
  gatehouse-policy-metrics  gatehouse-policy with its own metrics on (Prometheus
                       at GET /metrics; scenario "metrics")
  gatehouse-policy-telemetry  gatehouse-policy relaying clients' metrics and logs
                       (telemetry.forward_to) to the counting OTLP sink; and
  gatehouse-policy-telemetry-stamp  the same with identity stamping (scenario
                       "telemetry")
  claude-gateway       Anthropic's gateway, same file minus gatehouse:
  claude-gateway-full  the same with its admin: and managed: blocks
  litellm              LiteLLM's proxy, pass-through (no database)

Cloud cells (scenario "cloud"): the same gateways with a Bedrock or a Vertex
upstream instead of the Claude API, named ``<target>-bedrock`` and
``<target>-vertex``, and ``direct-bedrock`` / ``direct-vertex`` (the fakes
themselves) as their physical limit. The fake Bedrock recomputes one SigV4
signature in ``BEDROCK_VERIFY_EVERY``; the fake Vertex checks every bearer
against its fake token endpoint. Anthropic's gateway gets its Google token
through the fakes' front door for oauth2.googleapis.com (it ignores the key
file's ``token_uri``).

Every gateway gets the same base file (bench/configs/base.yaml), its own
database in the one PostgreSQL cluster, and the same JWT secret, so a token
minted with ``gatehouse token`` is accepted by Gatehouse and by Anthropic's
gateway alike.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import procs

if TYPE_CHECKING:
    from gateway.devenv.postgres import Cluster

HERE = Path(__file__).resolve().parent
# What the gateways send for claude-sonnet-4-6 (the built-in catalogs of both).
BEDROCK_MODEL = "us.anthropic.claude-sonnet-4-6"
VERTEX_MODEL = "claude-sonnet-4-6"
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
# Throwaway AWS keys only the fake Bedrock knows, and a Bedrock API key the
# direct-bedrock target (wrk, which cannot sign) presents instead.
AWS_KEY = "AKIAGATEHOUSEBENCH001"
AWS_SECRET = "gatehouse/bench+secret/0123456789abcdef"
BEDROCK_API_KEY = "bedrock-api-key-gatehouse-bench-0123456789"
# One signature recomputed with botocore in this many requests (plus the first):
# checking all costs the fake ~100 µs each on the load core (bench/README.md).
BEDROCK_VERIFY_EVERY = 50
BEDROCK_REGION = "us-east-1"
VERTEX_REGION = "us-east5"
VERTEX_PROJECT = "lab-proj"
CLOUDS = ("bedrock", "vertex")
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
    # No credential chain may look for a cloud metadata server from the bench.
    "AWS_EC2_METADATA_DISABLED": "true",
    "GCE_METADATA_HOST": "127.0.0.1:9",
    "GCE_METADATA_IP": "127.0.0.1:9",
}
# Stripped from every target's environment: the lab is loopback only, and the one
# target that needs a proxy (Anthropic's gateway on Vertex) is given its own.
PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "all_proxy",
              "no_proxy")


@dataclass
class Target:
    name: str
    kind: str  # direct | gatehouse | claude | litellm
    policy: bool = False
    upstream: str = "anthropic"  # anthropic | bedrock | vertex
    workers: int = 1
    metrics: bool = False  # the gateway's own metrics on (configs/metrics.yaml)
    # Clients' telemetry relayed to the lab's OTLP sink (configs/telemetry.yaml): "relay" as
    # received, "stamp" with the caller's identity stamped on (configs/stamp.yaml).
    telemetry: str | None = None
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

    @property
    def baseline(self) -> str:
        """The direct target whose latency this one's added latency is measured against."""
        return "direct" if self.upstream == "anthropic" else f"direct-{self.upstream}"

    def path(self, stream: bool) -> str:
        """Where a Messages request goes: the gateway's /v1/messages, or a fake cloud's own route."""
        if self.kind != "direct" or self.upstream == "anthropic":
            return "/v1/messages"
        if self.upstream == "bedrock":
            return f"/model/{BEDROCK_MODEL}/" + ("invoke-with-response-stream" if stream else "invoke")
        verb = "streamRawPredict" if stream else "rawPredict"
        return (f"/v1/projects/{VERTEX_PROJECT}/locations/{VERTEX_REGION}/publishers/anthropic/models/"
                f"{VERTEX_MODEL}:{verb}")


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

    def __init__(self, out: Path, *, log: Callable[[str], None] = print) -> None:
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.gw_cores, self.load_cores = procs.core_sets()
        self.cluster: Cluster | None = None
        self.idp: procs.Proc | None = None
        self.fake: procs.Proc | None = None
        self.fake_port = 0
        # The cloud fakes, started only when a cloud cell asks (start_clouds).
        self.bedrock: procs.Proc | None = None
        self.bedrock_port = 0
        self.google: procs.Proc | None = None
        self.vertex_port = 0
        self.google_token_port = 0
        self.key_file: Path | None = None
        # Anthropic's gateway reaches the fake token endpoint only as oauth2.googleapis.com,
        # through this CONNECT port of the Google fakes' process, trusting this CA.
        self.front_door_port = 0
        self.front_door_ca: Path | None = None
        self.idp_port = 0
        # The counting OTLP sink of the telemetry scenario (start_sink).
        self.sink: procs.Proc | None = None
        self.sink_port = 0
        self.targets: list[Target] = []
        # Every process started, registered before it is waited on: a stop
        # asked for half way through a start must still end it.
        self.started: list[procs.Proc] = []
        self.env = {k: v for k, v in dict(os.environ, **BASE_ENV).items() if k not in PROXY_VARS}
        self.spend_supported: bool | None = None

    # ------------------------------------------------------------ infrastructure

    def start(self) -> None:
        from gateway.devenv.postgres import Cluster

        procs.pin([os.getpid()], self.load_cores)
        cluster = self.cluster = Cluster.start()
        procs.pin(procs.tree(cluster.pid), self.load_cores)
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

    def start_clouds(self, front_door: bool) -> None:
        """The fake Bedrock and the fake Google (token endpoint + Vertex); with ``front_door``,
        the CONNECT port Anthropic's gateway needs for its Google token."""
        if self.bedrock is not None:
            return
        self.bedrock_port = procs.free_port()
        self.bedrock = self.spawn(
            "bedrock",
            [sys.executable, "-m", "protocol_spec.fakes.bedrock_bench", "--port", str(self.bedrock_port),
             "--region", BEDROCK_REGION, "--access-key", AWS_KEY, "--secret", AWS_SECRET,
             "--bearer-token", BEDROCK_API_KEY, "--verify-every", str(BEDROCK_VERIFY_EVERY), "--no-record",
             "--uvloop"],
            cores=self.load_cores, env=self.env, log_path=str(self.logs / "bedrock.log"), cwd=str(REPO),
        )
        self.vertex_port, self.google_token_port = procs.free_port(), procs.free_port()
        self.key_file = self.out / "raw" / "google-sa.json"
        self.key_file.parent.mkdir(parents=True, exist_ok=True)
        self.key_file.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "protocol_spec.fakes.google_process", "--vertex-port", str(self.vertex_port),
                "--token-port", str(self.google_token_port), "--key-file", str(self.key_file), "--no-record", "--uvloop"]
        if front_door:
            self.front_door_port = procs.free_port()
            self.front_door_ca = self.out / "raw" / "front-door-ca.pem"
            self.front_door_ca.unlink(missing_ok=True)
            argv += ["--front-door-port", str(self.front_door_port), "--ca-file", str(self.front_door_ca)]
        self.google = self.spawn("google", argv, cores=self.load_cores, env=self.env,
                                 log_path=str(self.logs / "google.log"), cwd=str(REPO))
        # Connecting is enough: the fakes answer 403/401 to anything unsigned. The Google
        # process opens Vertex last, after writing the key file and the CA.
        wait_listening(self.bedrock_port, self.bedrock)
        wait_listening(self.vertex_port, self.google)
        if not self.key_file.exists() or (self.front_door_ca is not None and not self.front_door_ca.exists()):
            raise RuntimeError(f"the Google fakes wrote no key file or CA; log: {self.logs / 'google.log'}")

    def start_sink(self) -> None:
        """The OTLP sink the telemetry targets relay to (bench/otlp_sink.py), on the load core."""
        if self.sink is not None:
            return
        self.sink_port = procs.free_port()
        self.sink = self.spawn(
            "otlp-sink", [sys.executable, "-m", "bench.otlp_sink", "--port", str(self.sink_port), "--uvloop"],
            cores=self.load_cores, env=self.env, log_path=str(self.logs / "otlp-sink.log"), cwd=str(REPO),
        )
        wait_http(f"http://127.0.0.1:{self.sink_port}/_sink/stats", self.sink)

    def sink_stats(self) -> dict[str, Any]:
        """What the sink has received so far, per signal (counts only grow)."""
        status, body = http("GET", f"http://127.0.0.1:{self.sink_port}/_sink/stats")
        if status != 200:
            raise RuntimeError(f"the OTLP sink answered {status}")
        return json.loads(body)

    def fakes(self) -> list[int]:
        """Pids of every simulated upstream running (the load side's "upstream" share)."""
        return [p.pid for p in (self.fake, self.bedrock, self.google) if p is not None and p.popen.poll() is None]

    def bedrock_stats(self) -> dict[str, Any] | None:
        try:
            status, body = http("GET", f"http://127.0.0.1:{self.bedrock_port}/_fake/stats")
        except OSError:
            return None
        return json.loads(body) if status == 200 else None

    def vertex_token(self) -> str:
        """A live bearer for direct-vertex: the bench signs its own assertion with the key file."""
        import google.auth.transport.urllib3
        import urllib3
        from google.oauth2 import service_account

        creds = service_account.Credentials.from_service_account_file(
            str(self.key_file), scopes=["https://www.googleapis.com/auth/cloud-platform"])
        creds.refresh(google.auth.transport.urllib3.Request(urllib3.PoolManager()))
        return creds.token

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

    def upstream_block(self, upstream: str) -> str:
        block = (CONFIGS / f"upstream-{upstream}.yaml").read_text().rstrip("\n")
        return fill(block, upstream=f"http://127.0.0.1:{self.fake_port}", bedrock=f"http://127.0.0.1:{self.bedrock_port}",
                    aws_key=AWS_KEY, aws_secret=AWS_SECRET, vertex=f"http://127.0.0.1:{self.vertex_port}",
                    key_file=str(self.key_file))

    def config_text(self, target: Target, port: int, db_url: str) -> str:
        text = fill((CONFIGS / "base.yaml").read_text(), upstreams=self.upstream_block(target.upstream), port=port,
                    issuer=f"http://127.0.0.1:{self.idp_port}", postgres_url=db_url)
        if target.kind == "gatehouse":
            text += "\n" + (CONFIGS / "gatehouse.yaml").read_text()
            if target.metrics:  # under gatehouse:, which gatehouse.yaml leaves open
                text += (CONFIGS / "metrics.yaml").read_text()
            if target.telemetry == "stamp":  # also under gatehouse: (one telemetry: key there)
                if target.metrics:
                    raise ValueError(f"{target.name}: own metrics and stamping both write gatehouse.telemetry")
                text += (CONFIGS / "stamp.yaml").read_text()
        if target.policy:
            policy = (CONFIGS / "policy.yaml").read_text()
            if target.kind == "gatehouse" and not self.gatehouse_accepts_admin(text, policy):
                policy = policy.split("\nadmin:", 1)[0] + "\n"
                target.notes.append("spend limits not measured: this Gatehouse build refuses admin: at boot")
            text += "\n" + policy
        elif target.kind == "gatehouse" and target.name == "gatehouse-minimal":
            text = text.split("\ngatehouse:", 1)[0] + "\n"
        if target.telemetry:
            text += "\n" + fill((CONFIGS / "telemetry.yaml").read_text(), sink=f"http://127.0.0.1:{self.sink_port}")
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
            self._direct(target)
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

    def _direct(self, target: Target) -> None:
        if target.upstream == "anthropic":
            target.port = self.fake_port
        elif target.upstream == "bedrock":
            target.port, target.token = self.bedrock_port, BEDROCK_API_KEY
        else:
            target.port, target.token = self.vertex_port, self.vertex_token()

    @property
    def db(self) -> Cluster:
        """The PostgreSQL cluster, once started."""
        if self.cluster is None:
            raise RuntimeError("the lab's PostgreSQL is not started")
        return self.cluster

    def _db(self, name: str) -> str:
        return self.db.create_database(name.replace("-", "_"))

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
        if target.upstream == "vertex":
            if self.front_door_ca is None:
                raise RuntimeError("Anthropic's gateway on Vertex needs the front door (start_clouds(front_door=True))")
            # It posts its Google token request to oauth2.googleapis.com whatever the key file says:
            # through the front door (which tunnels only that name, to the fake), trusting its CA.
            env.update(HTTPS_PROXY=f"http://127.0.0.1:{self.front_door_port}", NO_PROXY="127.0.0.1,localhost",
                       NODE_EXTRA_CA_CERTS=str(self.front_door_ca))
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
        tmp.write_text(fill((CONFIGS / "base.yaml").read_text(), upstreams=self.upstream_block("anthropic"), port=1,
                            issuer=f"http://127.0.0.1:{self.idp_port}", postgres_url="postgresql://x@127.0.0.1:1/x"))
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


def scrape(target: Target) -> tuple[float, bytes]:
    """One Prometheus scrape of a metrics-on target: (milliseconds, the text)."""
    t0 = time.perf_counter()
    status, text = http("GET", f"http://127.0.0.1:{target.port}/metrics", headers={"x-api-key": ADMIN_READ_KEY},
                        timeout=30.0)
    if status != 200:
        raise RuntimeError(f"GET /metrics answered {status}: {text[:200]!r}")
    return (time.perf_counter() - t0) * 1000, text


def wait_listening(port: int, proc: procs.Proc, timeout: float = 30.0) -> None:
    """Wait until something accepts connections on ``port`` (any HTTP status will do)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; log: {proc.log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not listen on port {port} within {timeout:g}s")


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
