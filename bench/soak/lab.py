"""The soak's processes: PostgreSQL, two fake upstreams, the IdP, three replicas, HAProxy.

Everything listens on 127.0.0.1 and dies with the soak (``die_with_parent`` and a
``stop()`` that ends each process it started, by pid). Nothing is pinned: the soak
measures behaviour through faults, not speed, and shares the cores like a pod would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs
from gateway.devenv.postgres import Cluster

REPO = Path(__file__).resolve().parents[2]
JWT_SECRET = "soak-jwt-secret-0123456789abcdef0123456789abcdef"
WRITE_KEY = "soak-admin-write-key-0123456789abcdef012345"
READ_KEY = "soak-admin-read-key-0123456789abcdef0123456"
UPSTREAM_KEY = "sk-ant-soak-upstream-key"
REPLICAS = 3
# Short on purpose so the soak sees them happen (the defaults are 1800 s and 60 s).
RESERVATION_TTL_S = 5
LEASE_TTL_S = 8
HEADER_DEADLINE_S = 5.0
UPSTREAM_TTFB_MS = 2000
OUTPUT_ALLOWANCE = 100
# Every soak user is a member of this group; the org-wide cap is far above the run.
ORG_CAP_CENTS = 10_000_000


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 5.0) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def ready(url: str) -> bool:
    try:
        return http("GET", url + "/readyz", timeout=1.0)[0] == 200
    except OSError:
        return False


@dataclass
class Replica:
    index: int  # 1-based, as HAProxy names it (r1, r2, r3)
    port: int
    config: Path
    log: Path
    proc: procs.Proc | None = None
    starts: int = 0
    kills: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        return f"r{self.index}"


@dataclass
class Lab:
    out: Path
    with_idp: bool = True
    # store.readiness_grace_seconds of the replicas: how long /readyz stays 200 while
    # PostgreSQL does not answer (the production overlay's 30; the gateway's default is 0).
    readiness_grace_s: int = 30
    fail_closed: bool = False  # enforcement.fail_closed_on_error of the replicas
    # CPU seconds of PostgreSQL servers already stopped (a postmaster is nobody's child here,
    # so its time is read from /proc before it goes).
    pg_cpu_s: float = 0.0
    log: Any = print
    cluster: Cluster | None = None
    db_url: str = ""
    started: list[procs.Proc] = field(default_factory=list)
    replicas: list[Replica] = field(default_factory=list)
    upstream_ports: dict[str, int] = field(default_factory=dict)
    idp: Any = None
    lb_port: int = 0
    lb: procs.Proc | None = None
    env: dict[str, str] = field(default_factory=dict)
    # HAProxy's admin socket: a short path of its own (a unix socket's path is at most 107 bytes).
    sock_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="gatehouse-soak-"))

    # ------------------------------------------------------------ start / stop

    def start(self) -> None:
        haproxy = shutil.which("haproxy")
        if haproxy is None:
            raise RuntimeError("haproxy not found: apt-get install haproxy (Debian 12 ships 2.6)")
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        (self.out / "configs").mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        self.env.update(
            JWT=JWT_SECRET, UPSTREAM_KEY=UPSTREAM_KEY, OIDC_SECRET="soak-oidc-secret", WRITE_KEY=WRITE_KEY,
            READ_KEY=READ_KEY, CLAUDE_GATEWAY_ALLOW_LOOPBACK="1", PYTHONUNBUFFERED="1",
            AWS_EC2_METADATA_DISABLED="true", GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9",
        )
        self.cluster = Cluster.start()
        self.db_url = self.cluster.create_database("soak")
        for name in ("primary", "secondary"):
            port = procs.free_port()
            self.upstream_ports[name] = port
            self._spawn(f"upstream-{name}", [sys.executable, "-m", "protocol_spec.fakes.upstream", "--port", str(port),
                                             "--no-record", "--uvloop"])
        issuer = "http://127.0.0.1:9"
        if self.with_idp:
            from protocol_spec.idp_process import IdpProcess

            self.idp = IdpProcess([{"sub": "soak-alice", "email": "alice@example.com", "email_verified": True,
                                    "name": "Alice", "groups": ["soak"]}]).start()
            issuer = self.idp.issuer
        self.lb_port = procs.free_port()
        for i in range(1, REPLICAS + 1):
            port = procs.free_port()
            cfg = self.out / "configs" / f"r{i}.yaml"
            cfg.write_text(self.replica_yaml(port, issuer))
            self.replicas.append(Replica(i, port, cfg, self.out / "logs" / f"r{i}.log"))
        for name, port in self.upstream_ports.items():
            wait_for(lambda p=port: _answers(f"http://127.0.0.1:{p}/v1/models"), 30, f"fake upstream {name}")
        # The first replica migrates the database alone; the others then boot at once.
        self.start_replica(self.replicas[0])
        for r in self.replicas[1:]:
            self.start_replica(r, wait=False)
        for r in self.replicas[1:]:
            self.wait_replica(r)
        lb_cfg = self.out / "configs" / "haproxy.cfg"
        lb_cfg.write_text(self.haproxy_cfg())
        check = subprocess.run([haproxy, "-c", "-q", "-f", str(lb_cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its config: {check.stderr or check.stdout}")
        self.lb = self._spawn("haproxy", [haproxy, "-db", "-f", str(lb_cfg)])
        lb = self.lb

        def all_up() -> bool:
            if lb.popen.poll() is not None:
                raise RuntimeError(f"haproxy exited with {lb.popen.returncode}; log: {lb.log_path}")
            return len(self.lb_up()) == REPLICAS

        wait_for(all_up, 30, "HAProxy seeing three replicas up")

    def stop_replicas(self) -> dict[str, int | None]:
        """SIGTERM the replicas (they drain and give back their leases); exit codes by name."""
        codes: dict[str, int | None] = {}
        for r in self.replicas:
            if r.proc is not None and r.proc.popen.poll() is None:
                r.proc.popen.send_signal(signal.SIGTERM)
        for r in self.replicas:
            if r.proc is not None:
                try:
                    codes[r.name] = r.proc.popen.wait(30)
                except subprocess.TimeoutExpired:
                    codes[r.name] = None
        return codes

    def stop(self) -> None:
        """Stop everything still running, newest first; safe to call twice."""
        if self.cluster is not None and self.cluster.pid:
            self.pg_cpu_s += procs.cpu_seconds(procs.tree(self.cluster.pid))
        for p in reversed(self.started):
            p.stop()
        if self.idp is not None:
            self.idp.stop()
        if self.cluster is not None:
            self.cluster.stop()
        shutil.rmtree(self.sock_dir, ignore_errors=True)

    def _spawn(self, name: str, argv: list[str], log: Path | None = None) -> procs.Proc:
        cores = set(os.sched_getaffinity(0))
        proc = procs.start(name, argv, cores=cores, env=self.env,
                           log_path=str(log or self.out / "logs" / f"{name}.log"), cwd=str(REPO))
        self.started.append(proc)
        return proc

    # ------------------------------------------------------------ replicas

    def start_replica(self, r: Replica, wait: bool = True) -> float:
        """Start (or restart) one replica; seconds until its /readyz answered 200 when ``wait``."""
        t0 = time.monotonic()
        with open(r.log, "a") as fh:
            fh.write(f"\n=== soak: start #{r.starts + 1} at {time.strftime('%H:%M:%S')} ===\n")
        r.proc = self._spawn(r.name, [sys.executable, "-m", "gateway", "serve", "--config", str(r.config)], log=r.log)
        r.starts += 1
        if wait:
            self.wait_replica(r)
        return time.monotonic() - t0

    def wait_replica(self, r: Replica, timeout: float = 60) -> None:
        def up() -> bool:
            if r.proc is None or r.proc.popen.poll() is not None:
                raise RuntimeError(f"{r.name} exited during start; log: {r.log}")
            return ready(r.url)

        wait_for(up, timeout, f"{r.name} ready")

    def kill(self, r: Replica) -> None:
        assert r.proc is not None
        os.kill(r.proc.pid, signal.SIGKILL)
        r.proc.popen.wait(10)
        r.kills += 1

    def crashed(self) -> list[str]:
        """Replicas that exited though nobody killed them."""
        return [r.name for r in self.replicas if r.proc is not None and r.proc.popen.poll() is not None]

    def tracebacks(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for path in sorted((self.out / "logs").glob("*.log")):
            if path.name.startswith("r") or path.name.startswith("upstream"):
                n = path.read_text(errors="replace").count("Traceback (most recent call last)")
                if n:
                    found[path.stem] = n
        return found

    # ------------------------------------------------------------ PostgreSQL

    def restart_postgres(self) -> float:
        """``pg_ctl restart -m fast`` as the server user; seconds it took."""
        assert self.cluster is not None
        c = self.cluster
        self.pg_cpu_s += procs.cpu_seconds(procs.tree(c.pid))
        t0 = time.monotonic()
        c._run("pg_ctl", "-D", c.data, "-l", c.logfile, "-m", "fast", "-w", "-t", "60", "-o", f"-p {c.port}",
               "restart")
        c.pid = c._read_pid()
        return time.monotonic() - t0

    def stop_postgres(self) -> None:
        assert self.cluster is not None
        self.pg_cpu_s += procs.cpu_seconds(procs.tree(self.cluster.pid))
        self.cluster.pause()

    def start_postgres(self) -> None:
        assert self.cluster is not None
        self.cluster.resume()

    # ------------------------------------------------------------ upstreams

    def upstream(self, name: str, replies: list[dict[str, Any]] | None) -> None:
        """Set what one fake upstream answers from now on (None: its generated default)."""
        status, body = http("POST", f"http://127.0.0.1:{self.upstream_ports[name]}/_fake/default", replies or [])
        if status != 200:
            raise RuntimeError(f"fake upstream {name} refused the reply: {body[:200]!r}")

    # ------------------------------------------------------------ HAProxy

    @property
    def lb_url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    def lb_stat(self) -> list[dict[str, str]]:
        sock = Path(self.sock_dir) / "haproxy.sock"
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2.0)
            s.connect(str(sock))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().strip().splitlines()
        header = lines[0].lstrip("# ").split(",")
        return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]

    def lb_up(self) -> set[str]:
        try:
            return {row["svname"] for row in self.lb_stat() if row.get("pxname") == "gw"
                    and row["svname"].startswith("r") and row["status"].startswith("UP")}
        except OSError:
            return set()

    # ------------------------------------------------------------ configs

    def replica_yaml(self, port: int, issuer: str) -> str:
        ups = "\n".join(
            f"  - {{provider: anthropic, name: {name}, base_url: \"http://127.0.0.1:{p}\", "
            f"auth: {{api_key: \"${{UPSTREAM_KEY}}\"}}}}"
            for name, p in self.upstream_ports.items()
        )
        return f"""# Written by bench/soak/lab.py: one of three replicas sharing one database.
listen: {{host: 127.0.0.1, port: {port}, public_url: "http://127.0.0.1:{self.lb_port}"}}
oidc: {{issuer: "{issuer}", client_id: gatehouse-soak, client_secret: "${{OIDC_SECRET}}"}}
session: {{jwt_secret: "${{JWT}}", ttl_hours: 1}}
store: {{postgres_url: "{self.db_url}", max_connections: 10, readiness_grace_seconds: {self.readiness_grace_s}}}
upstreams:
{ups}
timeouts: {{upstream_ttfb_ms: {UPSTREAM_TTFB_MS}}}
enforcement: {{fail_closed_on_error: {str(self.fail_closed).lower()}}}
rate_limits:
  device_authorization: {{max: 100000, window_seconds: 600}}
  device_verify: {{max: 100000, window_seconds: 600}}
admin:
  write_keys: [{{id: soak, key: "${{WRITE_KEY}}"}}]
  read_keys: [{{id: soak-read, key: "${{READ_KEY}}"}}]
gatehouse:
  spend:
    output_allowance_tokens: {OUTPUT_ALLOWANCE}
    reservation_ttl_seconds: {RESERVATION_TTL_S}
    lease_ttl_seconds: {LEASE_TTL_S}
  connections:
    header_read_timeout_seconds: {HEADER_DEADLINE_S}
"""

    def haproxy_cfg(self) -> str:
        sock = Path(self.sock_dir) / "haproxy.sock"
        servers = "\n".join(f"    server {r.name} 127.0.0.1:{r.port} check" for r in self.replicas)
        return f"""# Written by bench/soak/lab.py. Roundrobin over three replicas; a replica is
# out after 3 failed /readyz checks a second apart and back after 2 good ones.
global
    maxconn 4000
    stats socket {sock} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout http-request 10s
    timeout http-keep-alive 10s
    # A connection refused by a dead replica is retried on another one; a request
    # already sent is never replayed (POST is not idempotent).
    retries 3
    option redispatch 1

frontend fe
    bind 127.0.0.1:{self.lb_port}
    default_backend gw

backend gw
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host 127.0.0.1
    http-check expect status 200
    default-server inter 1s fall 3 rise 2
    http-response set-header x-soak-server %s
{servers}
"""


def _answers(url: str) -> bool:
    try:
        http("GET", url, timeout=1.0)
        return True
    except OSError:
        return False


def wait_for(cond: Any, timeout: float, what: str, every: float = 0.1) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
