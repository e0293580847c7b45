"""``make interop``: the conformance suite against Anthropic's gateway and Gatehouse, side by side.

What it does, all on loopback, with every file under ``./interop/`` (ignored by git):

1. Finds the ``claude`` binary: ``$INTEROP_CLAUDE`` or ``--claude`` when set, else
   installs ``@anthropic-ai/claude-code@latest`` and its native ``-linux-x64``
   package with npm into ``interop/npm`` (about 400 MB; the native binary is
   needed, since the JavaScript entry point refuses to run the gateway under
   Node). An existing ``interop/npm`` is reused: delete it to update.
2. Starts a throwaway PostgreSQL (``python -m gateway.devenv.postgres``: a
   subprocess, so this package still never imports ``gateway``) with one
   database per gateway, and the suite's fixtures (fake Anthropic API, fake
   Bedrock, fake Vertex and its Google token endpoint, test IdP).
3. Boots ``claude gateway`` with the fixtures' ``gateway.yaml`` minus its
   ``gatehouse:`` section, runs the suite against it; then the same for
   ``gatehouse serve`` with the whole file. Each gateway is run twice (:data:`RUNS`),
   with the default profile (all of SPEC.md) and with ``--profile protocol``,
   each time freshly started on its own database; the two runs are compared
   requirement by requirement (:func:`profile_drift`). Anthropic's gateway
   posts Google token grants to ``https://oauth2.googleapis.com/token`` whatever
   the key file says and calls AssumeRole at ``https://sts.us-east-1.amazonaws.com``
   whatever ``AWS_ENDPOINT_URL_STS`` says, so it also gets the fixtures' front
   door for those hosts (``HTTPS_PROXY``, ``NODE_EXTRA_CA_CERTS``:
   :func:`~protocol_spec.conformance.fixtures.front_door_env`); Gatehouse, which
   honours both, gets no proxy. The SSE-4
   check waits for the protocol's 15 s ping on Anthropic's gateway and for the
   1 s Gatehouse's section configures on Gatehouse.
4. Runs the real ``claude -p`` through Gatehouse with ``ANTHROPIC_BASE_URL``
   and checks the reply: once on a built-in model (the fake Anthropic API
   answers) and once on a model only the Bedrock upstream serves (the fake
   Bedrock answers, after verifying Gatehouse's SigV4 signature); then once
   signed in to Gatehouse as a gateway (:func:`claude_p_telemetry`), so that it
   fetches managed settings, turns telemetry on from the environment they push
   (SPEC TEL-6) and exports through Gatehouse to the fixtures' OTLP collector,
   whose log shows what arrived and whom each export names (TEL-7).
5. Measures Anthropic's gateway's prices: for each row of Gatehouse's built-in
   table (``gateway/data/pricing.json``, read as a file), one request per token
   kind with a known usage, read back through its admin API, compared with the
   table.
6. Writes ``protocol_spec/INTEROP.md`` (dates, versions, per-requirement
   outcome on both gateways, prices), using :data:`NOTES` to say why each of
   Anthropic's failures is what it is.

Run: ``python -m protocol_spec.interop [--claude PATH] [--out FILE] [--skip-prices]``.
Nothing of the ``claude`` package is copied into the repository.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from protocol_spec.conformance.fixtures import BEDROCK_MODEL, RESOURCE_ATTRIBUTES, USERS

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "interop"
PRICING_TABLE = ROOT / "gateway" / "data" / "pricing.json"
DEFAULT_OUT = Path(__file__).resolve().with_name("INTEROP.md")
NPM_PACKAGES = ("@anthropic-ai/claude-code", "@anthropic-ai/claude-code-linux-x64")
NPM_TAG = "latest"
BOOT_TIMEOUT_S = 60.0
SUITE_TIMEOUT_S = 300.0
CLAUDE_P_TIMEOUT_S = 120.0
PROBE_TOKENS = 10_000
LONG_PROMPT_TOKENS = 200_000
PRICING_USER = "conf-pricing"
# Environment that keeps the claude binary quiet and offline.
QUIET_CLAUDE = {
    "DISABLE_TELEMETRY": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
}

# Why a requirement fails on Anthropic's gateway (or Gatehouse), by ID:
# (kind, explanation). Kinds: "difference" (documented in SPEC §27),
# "departure" (Anthropic's gateway departs from its own protocol text),
# "gatehouse" (a Gatehouse requirement Anthropic's gateway has no reason to
# meet), "misreading" (our spec was wrong; fixed or to be fixed).
_DIFF = "difference"
_DEPART = "departure"
_OURS = "gatehouse"
_MISREAD = "misreading"
NOTES: dict[str, tuple[str, str]] = {
    "ROLE-4": (_OURS, "its id is a UUID in `x-request-id` (and `request-id` on proxied answers), not `req_` + 32 hex"),
    "ROLE-6": (_OURS, "`GET /protocol` serves Anthropic's own protocol text, not SPEC.md"),
    "ROLE-7": (_OURS, "no `GET /protocol.json`: it answers 401 like every unknown path"),
    "ROLE-11": (_DIFF, "SPEC §27.1: an unknown path without a token gets 401, with one a plain-text 404"),
    "DISC-3": (_DIFF, "SPEC §27.1: no revocation endpoint"),
    # Random codes: one run samples one code, so this fails only in runs whose code has a Y.
    "DEV-13": (_OURS, "its user codes may include `Y` (e.g. `KCYZ-TJCP`); RFC 8628's set is Gatehouse's choice"),
    "ERR-9": (_OURS, "a header line with a DEL byte is read as a bad token (401), not refused as unparseable (400)"),
    "ERR-10": (_OURS, "an unknown `Expect` is ignored: the request goes on to authentication (401)"),
    "TOKEN-10": (_DIFF, "SPEC §27.1: no `email` in the token response"),
    "REFRESH-3": (_DIFF, "SPEC §27.1: the IdP's refresh token is returned unchanged, never rotated"),
    "REVOKE-1": (_DIFF, "SPEC §27.1: no revocation endpoint (all of §8 skipped)"),
    "REVOKE-2": (_DIFF, "as REVOKE-1"),
    "REVOKE-3": (_DIFF, "as REVOKE-1"),
    "REVOKE-4": (_DIFF, "as REVOKE-1"),
    "REVOKE-5": (_DIFF, "as REVOKE-1"),
    "BEARER-7": (_DIFF, "as REVOKE-1: no sign-in families to revoke"),
    "BEARER-11": (_DIFF, "SPEC §27.1: `Authorization: bearer …` (lower case) is refused"),
    "MODEL-9": (_DIFF, "SPEC §27.1: a dated id it does not know (`claude-opus-4-7-20990101`) is refused"),
    "BEARER-3": (_OURS, "no `sid` claim (it has no sign-in families)"),
    "BEARER-6": (_DEPART, "SPEC §27.2: no `x-should-retry` on any 401"),
    "RETRY-2": (_DEPART, "as BEARER-6"),
    "MSG-12": (_OURS, "it drops unknown `anthropic-*` headers, `x-claude-code-session-id`, and appends ` cc-gateway/<version>` to `user-agent`"),
    "HINT-1": (_OURS, "it drops `x-claude-code-*` hint headers toward the upstream"),
    "MSG-19": (_DIFF, "SPEC §27.1: the body is re-serialised when the model id changes"),
    "MSG-32": (_OURS, "a stream that breaks before its first byte is not failed over: the reset reaches the client"),
    "SSE-5": (_OURS, "as MSG-32: status and headers are committed when the upstream's headers arrive"),
    "SSE-6": (_OURS, "an upstream reset mid-stream resets the client connection; no `error` event is written"),
    "ERR-5": (_DEPART, "as SSE-6: the protocol asks for an SSE `error` event in a committed stream"),
    "LIMIT-1": (_DEPART, "SPEC §27.2: 411 is `text/plain` `length required`"),
    "LIMIT-2": (_DEPART, "SPEC §27.2: 413 is `text/plain` `payload too large`"),
    "LIMIT-3": (_OURS, "as LIMIT-2 on every endpoint"),
    "LIMIT-4": (_DEPART, "414 is `text/plain` `uri too long` (same family as SPEC §27.2)"),
    "LIMIT-5": (_DEPART, "431 is `text/plain` (same family as SPEC §27.2)"),
    "LIMIT-6": (_OURS, "no `x-should-retry` on 411/413/414/431"),
    "ERR-1": (_DEPART, "SPEC §27.2: a plain-text 404 `not found` for an unknown path"),
    "ERR-2": (_OURS, "its error bodies' `request_id` matches `x-request-id`; no `request-id` header on errors"),
    "ERR-3": (_DIFF, "SPEC §27.1: plain-text 403/404/411/413"),
    "MANAGED-5": (_DEPART, "the 304 carries no `ETag`; the protocol text has the checksum as the ETag of the answer"),
    "MANAGED-6": (_OURS, "an `If-None-Match` list is not searched; only a single exact value gets 304"),
    "MANAGED-11": (_OURS, "the 401 of `/managed/settings` has no `x-cc-gateway-version`"),
    "BEDROCK-13": (_OURS, "a Bedrock frame failing its checksum ends the stream with `upstream error`, as an exception frame "
                   "does; Gatehouse says `upstream stream interrupted`, as for any broken stream"),
    "BEDROCK-14": (_OURS, "the client's own `x-stainless-*` values (e.g. `x-stainless-lang: conformance-lang`) reach Bedrock; "
                   "Gatehouse sends none of the client's headers there"),
    "BEDROCK-9": (_DEPART, "no CountTokens call after the client hangs up on a Bedrock stream before any usage came back (a SHOULD)"),
    "VERTEX-6": (_DIFF, "SPEC §27.1: Vertex's stream is re-emitted without Vertex's own `ping` events"),
    "TEL-8": (_DIFF, "SPEC §27.1: each export is tried once; those sent while a destination answers 503 are lost, none arrives "
              "when it is back"),
    "TEL-9": (_DIFF, "SPEC §27.1: no OTLP/gRPC destinations (Gatehouse's `gatehouse:` extension, left out of this config)"),
    "TEL-10": (_DIFF, "SPEC §27.1: no server-side identity stamping (a `gatehouse:` option)"),
    "TEL-11": (_DIFF, "SPEC §27.1: no metrics of its own; `/metrics` is not served"),
    "TEL-12": (_DIFF, "SPEC §27.1: no request spans of its own"),
    "ADMIN-13": (_DIFF, "SPEC §27.1: no sessions over its admin API; `/v1/organizations/sessions` answers 401 "
                 "`invalid token` even to an admin key, like every unknown path"),
    "ADMIN-14": (_DIFF, "as ADMIN-13"),
    "ADMIN-15": (_DIFF, "as ADMIN-13"),
    "ADMIN-16": (_DIFF, "as ADMIN-13"),
    "ADMIN-17": (_DIFF, "as ADMIN-13"),
    "MSG-47": (_DEPART, "`upstream_ttfb_ms` (1.5 s here) also bounds streaming and count_tokens requests to Bedrock and Vertex, as "
               "its boot log says (\"older gateways applied it to provider: anthropic upstreams only\"); a non-streaming invoke waits"),
}
# The suite runs, each on a fresh gateway and database: run key -> (gateway, profile).
# Each gateway is judged on the whole spec (``gatehouse``, the default) and under
# ``--profile protocol``, what a gateway built from the published protocol owes.
RUNS: dict[str, tuple[str, str]] = {
    "anthropic": ("anthropic", "gatehouse"),
    "anthropic_protocol": ("anthropic", "protocol"),
    "gatehouse": ("gatehouse", "gatehouse"),
    "gatehouse_protocol": ("gatehouse", "protocol"),
}
GATEWAY_NAMES = {"anthropic": "Anthropic's gateway", "gatehouse": "Gatehouse"}
PROTOCOL_SOURCES = ("protocol", "observed")

# Requirements Gatehouse itself fails in this run, and what to fix (reported to the lead).
GATEHOUSE_GAPS: dict[str, str] = {
    "BEDROCK-7": "a count no upstream can make (an inference-profile ARN on Bedrock, nothing else mapped) answers 502 "
    "`all upstreams failed (N attempted)`; the protocol wants 501 `not_supported` with `x-should-retry: false`, "
    "which Anthropic's gateway sends (gateway/http/messages.py: a skipped upstream leaves no failure for final_error)",
    "BEDROCK-9": "not built (a SHOULD): a request abandoned before Bedrock sent any usage is not counted with CountTokens, "
    "so its input tokens are never metered",
}
# Prices that differ between Gatehouse's table and Anthropic's gateway, and why (as far as known).
PRICE_NOTES: dict[str, str] = {
    "claude-3-haiku": "Anthropic's gateway charges the unknown-model rate ($5 / $25): the model is not in its table",
    "claude-3-opus": "Anthropic's gateway charges the unknown-model rate ($5 / $25): the model is not in its table",
}


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self, grace_s: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def spawn(name: str, argv: list[str], env: dict[str, str], run_dir: Path) -> Proc:
    log = run_dir / f"{name}.log"
    with open(log, "wb") as sink:
        popen = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=run_dir)
    return Proc(name, popen, log)


# ---------------------------------------------------------------------------
# The claude binary


def find_claude(explicit: str | None) -> Path:
    given = explicit or os.environ.get("INTEROP_CLAUDE")
    if given:
        path = Path(given)
        if not path.exists():
            raise SystemExit(f"no claude binary at {path}")
        return path
    prefix = WORK / "npm"
    binary = prefix / "node_modules" / "@anthropic-ai" / "claude-code" / "bin" / "claude.exe"
    if not binary.exists():
        prefix.mkdir(parents=True, exist_ok=True)
        print(f"installing {NPM_PACKAGES[0]}@{NPM_TAG} into {prefix} (about 400 MB)", flush=True)
        # Named by its dist-tag: with a bare name npm picks the newest release whose
        # `engines.node` this Node satisfies, which on an older Node is months old,
        # although the native binary that runs the gateway needs no Node at all.
        subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-fund", "--no-audit", f"{NPM_PACKAGES[0]}@{NPM_TAG}"], check=True)
        version = json.loads((prefix / "node_modules" / "@anthropic-ai" / "claude-code" / "package.json").read_text())["version"]
        subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-fund", "--no-audit", f"{NPM_PACKAGES[1]}@{version}"], check=True)
    shim = prefix / "node_modules" / ".bin" / "claude"
    return binary if binary.exists() else shim


def claude_version(claude: Path) -> str:
    out = subprocess.run([str(claude), "--version"], capture_output=True, text=True, timeout=60, env=_claude_env({}))
    return out.stdout.strip() or out.stderr.strip()


def _claude_env(extra: dict[str, str]) -> dict[str, str]:
    home = WORK / "home"
    home.mkdir(parents=True, exist_ok=True)
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")}
    return {**keep, **QUIET_CLAUDE, "HOME": str(home), "CLAUDE_CONFIG_DIR": str(home / ".claude"), **extra}


# ---------------------------------------------------------------------------
# Processes


def start_postgres(run_dir: Path) -> tuple[Proc, str]:
    proc = spawn("postgres", [sys.executable, "-m", "gateway.devenv.postgres"], dict(os.environ), run_dir)
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while time.monotonic() < deadline:
        match = re.search(r"postgres(?:ql)?://\S+", proc.tail())
        if match:
            return proc, match.group(0)
        if proc.popen.poll() is not None:
            break
        time.sleep(0.2)
    proc.stop()
    raise SystemExit(f"PostgreSQL did not start:\n{proc.tail()}")


def create_database(url: str, name: str) -> str:
    import asyncpg  # a dependency of the project; used here only to make databases

    async def create() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return url.rsplit("/", 1)[0] + "/" + name


def start_fixtures(run_dir: Path, postgres_url: str) -> tuple[Proc, Path]:
    config = run_dir / "gateway.yaml"
    state_file = run_dir / "gateway.fixtures.json"
    state_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "protocol_spec.conformance", "fixtures", "--config-out", str(config), "--postgres-url", postgres_url, "--quiet"]
    proc = spawn("fixtures", argv, dict(os.environ), run_dir)
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while not state_file.exists():
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            proc.stop()
            raise SystemExit(f"the fixtures did not start:\n{proc.tail()}")
        time.sleep(0.2)
    return proc, state_file


def env_file(path: str) -> dict[str, str]:
    pairs = (line.partition("=") for line in Path(path).read_text().splitlines() if line and not line.startswith("#"))
    return {name: value for name, _, value in pairs}


def wait_ready(url: str, proc: Proc) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited {proc.popen.returncode}:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url + "/.well-known/oauth-authorization-server", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready within {BOOT_TIMEOUT_S} s:\n{proc.tail()}")


def wait_port_free(port: int, timeout_s: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return
            except OSError:
                time.sleep(0.2)


def write_config(source: Path, target: Path, *, drop: tuple[str, ...] = (), models: list[dict[str, Any]] | None = None) -> Path:
    from protocol_spec.conformance.fixtures import without_gatehouse

    data = yaml.safe_load(source.read_text())
    if "gatehouse" in drop:
        # The gatehouse: section and what lives only under per-entry gatehouse: keys (the gRPC collector).
        data = without_gatehouse(data)
    for section in drop:
        data.pop(section, None)
    if models is not None:
        data["models"] = models
    target.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return target


def start_anthropic(claude: Path, config: Path, env: dict[str, str], run_dir: Path, name: str) -> Proc:
    return spawn(name, [str(claude), "gateway", "--config", str(config)], _claude_env(env), run_dir)


def start_gatehouse(config: Path, env: dict[str, str], run_dir: Path, name: str) -> Proc:
    return spawn(name, [sys.executable, "-m", "gateway", "serve", "--config", str(config)], {**os.environ, **env}, run_dir)


def run_suite(
    state_file: Path, admin_key: str, out: Path, run_dir: Path, name: str, profile: str = "gatehouse", ping_interval_s: float | None = None
) -> dict[str, Any]:
    argv = [
        sys.executable, "-m", "protocol_spec.conformance", "run", "--fixtures", str(state_file),
        "--signin", "device", f"--admin-key={admin_key}", "--profile", profile, "--json", str(out), "--quiet",
    ]
    if ping_interval_s is not None:
        argv += ["--ping-interval", str(ping_interval_s)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S, cwd=run_dir)
    (run_dir / f"{name}-suite.txt").write_text(result.stdout + "\n" + result.stderr)
    if not out.exists():
        raise RuntimeError(f"the suite wrote no report for {name}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(out.read_text())
    return report


# ---------------------------------------------------------------------------
# claude -p through Gatehouse


FAKE_REPLY = "Hello from the simulated upstream."
CLIENT_USER = USERS["normal"]
# (row label, model): a built-in model the fake Anthropic API answers, and one only the Bedrock upstream serves.
CLIENT_ROUTES = (("Anthropic API (fake)", "claude-sonnet-4-6"), ("Bedrock (fake, SigV4 checked)", BEDROCK_MODEL))


def gatehouse_token(config: Path, env: dict[str, str]) -> str:
    """A Gatehouse bearer for the fixtures' normal user (``gatehouse token``)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "token", "--config", str(config), "--email", CLIENT_USER["email"], "--sub", CLIENT_USER["sub"],
         "--groups", ",".join(CLIENT_USER["groups"])],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()


def claude_p(claude: Path, base_url: str, config: Path, env: dict[str, str], model: str = "claude-sonnet-4-6") -> tuple[bool, str]:
    token = gatehouse_token(config, env)
    extra = {"ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_AUTH_TOKEN": token}
    try:
        out = subprocess.run(
            [str(claude), "-p", "Say hi.", "--model", model],
            env=_claude_env(extra), capture_output=True, text=True, timeout=CLAUDE_P_TIMEOUT_S, cwd=str(WORK),
        )
    except subprocess.TimeoutExpired:
        return False, f"no answer within {CLAUDE_P_TIMEOUT_S:g} s"
    ok = out.returncode == 0 and FAKE_REPLY in out.stdout
    # A good run shows its answer; a failed one everything it said (warnings go to stderr).
    reply = out.stdout.strip() if ok else (out.stdout + out.stderr).strip()
    return ok, reply[-500:]


def claude_p_routes(claude: Path, state: Any, config: Path, env: dict[str, str]) -> list[tuple[str, bool, str]]:
    """``claude -p`` once per :data:`CLIENT_ROUTES`; the Bedrock row also needs the fake Bedrock to have
    served it, signed with the fixture's key (its ``/_fake/received`` log says so)."""
    rows = []
    for label, model in CLIENT_ROUTES:
        bedrock = "Bedrock" in label
        if bedrock:
            if not state.bedrock_url:
                rows.append((label, False, "the fixtures run no fake Bedrock"))
                continue
            _fake_call(state.bedrock_url, "/_fake/reset", b"")
        ok, reply = claude_p(claude, state.public_url, config, env, model)
        if bedrock:
            served = [r for r in json.loads(_fake_call(state.bedrock_url, "/_fake/received"))
                      if r.get("operation") in ("invoke", "stream") and r.get("principal") == state.aws_access_key_id]
            ok = ok and bool(served)
            reply = f"{reply} [{len(served)} signed Bedrock call(s): {', '.join(sorted({r['path'] for r in served}))}]"
        rows.append((label, ok, reply))
    return rows


# ---------------------------------------------------------------------------
# claude -p with telemetry on, signed in to Gatehouse as a gateway


# What a client signed in through the gateway stamps on every export (SPEC TEL-7).
TELEMETRY_IDENTITY = {
    "user.id": CLIENT_USER["sub"],
    "user.email": CLIENT_USER["email"],
    "user.groups": ",".join(CLIENT_USER["groups"]),
    "identity.source": "gateway-oidc",
}
TELEMETRY_WAIT_S = 15.0
# The client flushes what it has at exit; a one-second interval only makes a slow run export
# sooner. The local endpoint is one the client must ignore once signed in to a gateway
# (TEL-7): nothing listens on port 9.
TELEMETRY_CLIENT_ENV = {
    "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    "OTEL_LOGS_EXPORT_INTERVAL": "1000",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
}
# Inside a private mount namespace: /etc gets an overlay (the machine's own /etc is never
# written) holding the managed settings that make the client sign in to a gateway (they are
# honoured only from a managed source on the machine, protocol.md §3.1), then the client runs.
# Exit 97: the namespace or the overlay could not be made.
MANAGED_ETC_SCRIPT = (
    'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/upper,workdir=$1/work" /etc || exit 97; '
    'mkdir -p /etc/claude-code && cp "$1/managed-settings.json" /etc/claude-code/managed-settings.json || exit 97; '
    'shift; exec "$@"'
)
NAMESPACE_FAILED = 97


@dataclass
class TelemetryRun:
    """What ``claude -p`` with telemetry on made arrive at the collector."""

    ok: bool
    summary: str
    # (destination, path, bytes, data points or log records, what they say of the user)
    exports: list[tuple[str, str, int, int, str]] = field(default_factory=list)


def _signed_in_home(home: Path, base_url: str, token: str) -> None:
    """A client home holding a gateway sign-in, as ``/login`` stores it (reference client-wire §1b)."""
    shutil.rmtree(home, ignore_errors=True)
    (home / ".claude").mkdir(parents=True)
    credentials = {
        "gatewayTrust": {"127.0.0.1": "http-loopback"},
        "enterpriseGateway": {
            "url": base_url, "jwt": token, "expiresAt": int(time.time() * 1000) + 3_600_000,
            "tokenEndpoint": base_url + "/oauth/token", "idpRefreshToken": "", "vouchedAtLogin": False,
        },
    }
    path = home / ".claude" / ".credentials.json"
    path.write_text(json.dumps(credentials))
    path.chmod(0o600)


def _in_managed_namespace(argv: list[str], base_url: str) -> list[str]:
    overlay = WORK / "managed-etc"
    shutil.rmtree(overlay, ignore_errors=True)
    for part in ("upper", "work"):
        (overlay / part).mkdir(parents=True)
    managed = {"forceLoginMethod": "gateway", "forceLoginGatewayUrl": base_url}
    (overlay / "managed-settings.json").write_text(json.dumps(managed))
    # As root a mount namespace is enough; otherwise a user namespace maps us to root in it.
    unshare = ["unshare", "--mount", "--propagation", "private"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    return [*unshare, "sh", "-c", MANAGED_ETC_SCRIPT, "sh", str(overlay), *argv]


def _exports_seen(records: list[dict[str, Any]], token: str) -> tuple[list[tuple[str, str, int, int, str]], list[str]]:
    """One row per export, and what is wrong with them (an export not stamped as TEL-7 says, a leaked bearer)."""
    from protocol_spec.conformance import otlp

    rows, wrong = [], []
    for record in records:
        headers = {k.lower(): v for k, v in record["headers"]}
        signal_name = record["path"].rsplit("/", 1)[-1]
        message = otlp.decode(signal_name, record["body"], headers.get("content-encoding"))
        if any(token in value for value in headers.values()):
            wrong.append(f"{record['sink']}: the client's bearer reached the collector")
        if message is None:
            rows.append((record["sink"], record["path"], len(record["body"]), 0, "not an OTLP protobuf export"))
            wrong.append(f"{record['sink']} {record['path']}: not an OTLP protobuf export")
            continue
        resources = [attrs for kind, attrs in otlp.attribute_sets(message) if kind == "resource"]
        if not resources or any(attrs.get(k) != v for attrs in resources for k, v in RESOURCE_ATTRIBUTES.items()):
            wrong.append(f"{record['sink']} {record['path']}: the resource lacks the pushed OTEL_RESOURCE_ATTRIBUTES {RESOURCE_ATTRIBUTES}")
        stamps = otlp.identity_of(message, tuple(TELEMETRY_IDENTITY))
        off = [s for s in stamps if s != TELEMETRY_IDENTITY]
        seen = "; ".join(f"{k}={v}" for k, v in (off[0] if off else TELEMETRY_IDENTITY).items())
        rows.append((record["sink"], record["path"], len(record["body"]), len(stamps), ("NOT ALL: " if off else "") + seen))
        if off or not stamps:
            wrong.append(f"{record['sink']} {record['path']}: {len(off)} of {len(stamps)} not stamped as {TELEMETRY_IDENTITY}")
    return rows, wrong


def claude_p_telemetry(claude: Path, state: Any, config: Path, env: dict[str, str]) -> TelemetryRun:
    """``claude -p`` signed in to Gatehouse as a gateway, telemetry from the pushed env, exports checked at the collector."""
    if not state.collector_url:
        return TelemetryRun(False, "the fixtures run no OTLP collector")
    token = gatehouse_token(config, env)
    home = WORK / "home-gateway"
    _signed_in_home(home, state.public_url, token)
    _fake_call(state.collector_url, "/_fake/reset", b"{}")
    extra = {**TELEMETRY_CLIENT_ENV, "HOME": str(home), "CLAUDE_CONFIG_DIR": str(home / ".claude")}
    argv = _in_managed_namespace([str(claude), "-p", "Say hi.", "--model", "claude-sonnet-4-6"], state.public_url)
    try:
        out = subprocess.run(argv, env=_claude_env(extra), capture_output=True, text=True, timeout=CLAUDE_P_TIMEOUT_S, cwd=str(WORK))
    except (subprocess.TimeoutExpired, OSError) as err:
        return TelemetryRun(False, f"claude -p did not finish: {err}")
    if out.returncode == NAMESPACE_FAILED:
        return TelemetryRun(False, f"not run: no private mount namespace with an overlay on /etc here ({out.stderr.strip()[-200:]})")
    replied = out.returncode == 0 and FAKE_REPLY in out.stdout
    # Metrics and logs to the first destination, metrics to the second (the fixtures' forward_to).
    wanted = {"full": ("metrics", "logs"), "defaults": ("metrics",)}
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + TELEMETRY_WAIT_S
    for sink, signals in wanted.items():
        left = max(deadline - time.monotonic(), 0.1)
        query = f"/_fake/wait?sink={sink}&count={len(signals)}&timeout={left:.1f}&status=200"
        records += json.loads(_fake_call(state.collector_url, query))["records"]
    for record in records:
        record["body"] = base64.b64decode(record.pop("body_b64"))
    rows, wrong = _exports_seen(records, token)
    for sink, signals in wanted.items():
        got = sorted({r["path"].rsplit("/", 1)[-1] for r in records if r["sink"] == sink and r["status"] == 200})
        if got != sorted(signals):
            wrong.append(f"{sink} destination received {got or 'nothing'}, expected {list(signals)}")
    reply = out.stdout.strip() if replied else (out.stdout + out.stderr).strip()[-300:]
    ok = replied and not wrong
    summary = f"reply: {reply[:120]!r}; " + ("; ".join(wrong) if wrong else f"{len(records)} exports, every one stamped as TEL-7 says, "
                                                                       "with the pushed resource attributes")
    return TelemetryRun(ok, summary, rows)


def _fake_call(base: str, path: str, body: bytes | None = None) -> bytes:
    request = urllib.request.Request(base + path, data=body, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=10) as resp:
        data: bytes = resp.read()
        return data


# ---------------------------------------------------------------------------
# Prices


@dataclass
class PriceRow:
    model: str
    checked: dict[str, tuple[Decimal, Decimal | None]] = field(default_factory=dict)  # kind -> (table $/MTok, measured $/MTok)
    note: str = ""

    @property
    def agrees(self) -> bool:
        return bool(self.checked) and all(m is not None and abs(m - t) <= Decimal("0.0005") for t, m in self.checked.values())


KINDS = ("input", "output", "cache_read", "cache_write_5m", "cache_write_1h")


def _usage(kind: str, tokens: int) -> dict[str, int]:
    field_of = {
        "input": "input_tokens",
        "output": "output_tokens",
        "cache_read": "cache_read_input_tokens",
        "cache_write_5m": "ephemeral_5m_input_tokens",
        "cache_write_1h": "ephemeral_1h_input_tokens",
    }
    usage = {name: 0 for name in field_of.values()}
    usage[field_of[kind]] = tokens
    return usage


def probe_models(table: dict[str, Any]) -> list[dict[str, Any]]:
    """One custom model per priced id: a client-facing probe id mapped to the priced upstream id."""
    ids = [row["id"] for row in table["models"]] + ["claude-unpriced-0-0"]
    return [
        {"id": f"claude-price-probe-{i}", "label": f"probe {model}", "upstream_model": {"primary": model}}
        for i, model in enumerate(ids)
    ]


async def measure_prices(base_url: str, state: Any, table: dict[str, Any], probes: list[dict[str, Any]]) -> list[PriceRow]:
    import aiohttp

    from protocol_spec.conformance.checks.bearer import mint
    from protocol_spec.fakes import Reply, Usage
    from protocol_spec.fakes.remote import RemoteFake
    from protocol_spec.fakes.replies import message_json

    now = int(time.time())
    token = mint(state.jwt_secret, {"iss": state.public_url, "aud": "claude-gateway", "sub": PRICING_USER,
                                    "email": "pricing@example.com", "groups": [], "iat": now, "exp": now + 3600})
    rows: list[PriceRow] = []
    rates = {row["id"]: row for row in table["models"]} | {"claude-unpriced-0-0": table["unknown_model"]}
    async with aiohttp.ClientSession() as session:
        fake = RemoteFake(state.fake_url, session)
        admin = {"x-api-key": state.admin_write_key}

        async def spent() -> Decimal | None:
            url = f"{base_url}/v1/organizations/spend_limits/effective?user_ids[]={PRICING_USER}&period[]=monthly"
            async with session.get(url, headers=admin) as resp:
                doc = await resp.json(content_type=None)
            for item in doc.get("data", []) if isinstance(doc, dict) else []:
                if item.get("period") == "monthly" and item.get("period_to_date_spend") is not None:
                    return Decimal(str(item["period_to_date_spend"]))
            return None

        async def send(model: str, usage: dict[str, int]) -> int:
            await fake.reset()
            await fake.script(Reply(json=message_json("priced", model=model, usage=Usage(**usage))))
            body = json.dumps({"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "p"}]})
            async with session.post(f"{base_url}/v1/messages", data=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}) as resp:
                await resp.read()
                return resp.status

        async def settled_after(before: Decimal | None) -> Decimal | None:
            deadline = time.monotonic() + 5.0
            value = await spent()
            while time.monotonic() < deadline and (value is None or value == before):
                await asyncio.sleep(0.1)
                value = await spent()
            return value

        await send(probes[0]["id"], _usage("input", 1))  # makes the principal known
        await asyncio.sleep(0.5)
        for probe in probes:
            upstream = probe["upstream_model"]["primary"]
            row = PriceRow(upstream)
            rate = rates[upstream]
            for kind in KINDS:
                before = await spent()
                status = await send(probe["id"], _usage(kind, PROBE_TOKENS))
                if status != 200:
                    row.note = f"HTTP {status} for {probe['id']}"
                    break
                after = await settled_after(before)
                measured = None if after is None or before is None else (after - before) / 100 * Decimal(1_000_000) / PROBE_TOKENS
                row.checked[kind] = (Decimal(rate[kind]), measured)
            if rate.get("long_prompt") and not row.note:
                band = rate["long_prompt"]
                before = await spent()
                await send(probe["id"], _usage("input", LONG_PROMPT_TOKENS))
                after = await settled_after(before)
                measured = None if after is None or before is None else (after - before) / 100 * Decimal(1_000_000) / LONG_PROMPT_TOKENS
                row.checked[f"input above {band['above_tokens']}"] = (Decimal(band["input"]), measured)
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# INTEROP.md


def _outcomes(report: dict[str, Any] | None) -> dict[str, str]:
    return {r["id"]: r["outcome"] for r in (report or {}).get("requirements", [])}


def _first_finding(report: dict[str, Any] | None, rid: str) -> str:
    for item in (report or {}).get("requirements", []):
        if item["id"] == rid and item["findings"]:
            f = item["findings"][0]
            text = f["what"]
            if f.get("observed") is not None or f.get("expected") is not None:
                text += f": observed {f.get('observed', '?')}, expected {f.get('expected', '?')}"
            return text.replace("|", "\\|").replace("\n", " ")[:220]
    return ""


def _usd(value: Decimal | None) -> str:
    return "?" if value is None else format(value.normalize(), "f")


MARKS = {"NOT_CHECKED": "----", "OUT_OF_PROFILE": "OUT"}


def _mark(outcomes: dict[str, str], rid: str) -> str:
    value = outcomes.get(rid, "-")
    return MARKS.get(value, value)


def must_failures_by_source(report: dict[str, Any]) -> dict[str, int]:
    """MUST failures per requirement source, from the report's ``summary_by_source``."""
    return {source: counts["MUST"]["FAIL"] for source, counts in report["summary_by_source"].items()}


def profile_drift(full: dict[str, Any] | None, protocol: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """Requirements of the protocol profile whose outcome differs from the full run's, and why.

    Both runs judge these requirements with the same checks, so the outcomes
    should agree; a difference means a check behaved differently when it ran
    under the profile (for example it stopped early, or relied on a check the
    profile leaves out). Also lists a FAIL whose source is outside the profile,
    which the report must never produce. (ID, full outcome, protocol outcome, finding).
    """
    if not full or not protocol:
        return []
    before = _outcomes(full)
    drift = []
    for item in protocol["requirements"]:
        rid, outcome = item["id"], item["outcome"]
        stray = outcome == "FAIL" and item["source"] not in PROTOCOL_SOURCES
        if stray or (outcome != "OUT_OF_PROFILE" and outcome != before.get(rid)):
            drift.append((rid, before.get(rid, "-"), outcome, _first_finding(protocol, rid)))
    return drift


def _summary_rows(results: dict[str, Any]) -> list[str]:
    lines = [
        "| gateway | profile | MUST pass | MUST fail | MUST skip | SHOULD pass | SHOULD fail | not checked | out of profile |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_source = ["| gateway | profile | " + " | ".join(f"MUST fail, source {s}" for s in ("protocol", "observed", "gatehouse")) + " |", "|---|---|---|---|---|"]
    for run, (gateway, profile) in RUNS.items():
        report = results.get(run)
        if report is None:
            lines.append(f"| {GATEWAY_NAMES[gateway]} | {profile} | did not run: {results.get(run + ' error', 'skipped')} | | | | | | |")
            continue
        s = report["summary"]
        not_checked = sum(s[level]["NOT_CHECKED"] for level in s)
        out = sum(s[level]["OUT_OF_PROFILE"] for level in s)
        lines.append(
            f"| {GATEWAY_NAMES[gateway]} | {profile} | {s['MUST']['PASS']} | {s['MUST']['FAIL']} | {s['MUST']['SKIP']} "
            f"| {s['SHOULD']['PASS']} | {s['SHOULD']['FAIL']} | {not_checked} | {out} |"
        )
        fails = must_failures_by_source(report)
        judged = set(report["profile"]["sources"])
        cells = [str(fails[src]) if src in judged else "out of profile" for src in ("protocol", "observed", "gatehouse")]
        by_source.append(f"| {GATEWAY_NAMES[gateway]} | {profile} | " + " | ".join(cells) + " |")
    return [*lines, "", *by_source]


def _profile_section(results: dict[str, Any], gateway: str) -> list[str]:
    full, protocol = results.get(gateway), results.get(gateway + "_protocol")
    name = GATEWAY_NAMES[gateway]
    if protocol is None:
        return [f"{name} under `--profile protocol`: did not run ({results.get(gateway + '_protocol error', 'skipped')})."]
    failed = [r for r in protocol["requirements"] if r["outcome"] == "FAIL" and r["level"] == "MUST"]
    per_source = {src: [r["id"] for r in failed if r["source"] == src] for src in sorted({r["source"] for r in failed})}
    outside = sum(r["outcome"] == "OUT_OF_PROFILE" for r in protocol["requirements"])
    lines = [
        f"**{name}**: {len(failed)} MUST requirements fail under `--profile protocol`"
        + ("".join(f"; source `{src}`: {', '.join(ids)}" for src, ids in per_source.items()) if failed else "")
        + f". {outside} requirements are out of profile and {len(protocol['checks_out_of_profile'])} checks not run "
        "(they judge only Gatehouse's requirements).",
        "",
    ]
    drift = profile_drift(full, protocol)
    if not drift:
        lines.append("Every requirement of the profile has the same outcome as in the full run.")
    else:
        lines += [
            "Requirements whose outcome under the profile differs from the full run's:",
            "",
            "| ID | full run | protocol profile | what the protocol run saw |",
            "|---|---|---|---|",
            *(f"| {rid} | {a} | {b} | {seen} |" for rid, a, b, seen in drift),
        ]
    return lines


CLOUD_PREFIXES = ("BEDROCK-", "VERTEX-")
TELEMETRY_PREFIX = "TEL-"


def _cloud_section(results: dict[str, Any]) -> list[str]:
    """Bedrock and Vertex (SPEC §22-23) on both gateways, with the checks' first finding for what did not pass."""
    from protocol_spec import requirements

    a, g = _outcomes(results.get("anthropic")), _outcomes(results.get("gatehouse"))
    reqs = [r for r in requirements.load() if r.id.startswith(CLOUD_PREFIXES)]
    lines = [
        "## Bedrock and Vertex",
        "",
        "Both gateways had a Bedrock upstream (explicit keys, a configured header, a guardrail) and a Vertex upstream "
        "(a service-account key file, a Private Service Connect style `base_url`) after the two Anthropic ones, on the "
        "fixtures' fakes; checks reach them through custom models routed to them only, and through built-in models "
        "after both Anthropic upstreams answer 404. A second Bedrock upstream on the same fake signs with credentials "
        "from AssumeRole at a fake STS (`session_name: email`). Anthropic's gateway reached the fake Google token "
        "endpoint and the fake STS through the fixtures' front door for `oauth2.googleapis.com` and "
        "`sts.us-east-1.amazonaws.com` (a CONNECT proxy answering for those names with a throwaway CA, "
        "`NODE_EXTRA_CA_CERTS`); Gatehouse through the key file's `token_uri` and `AWS_ENDPOINT_URL_STS`.",
        "",
    ]
    for name, outcomes in (("Anthropic's gateway", a), ("Gatehouse", g)):
        groups = {kind: [r.id for r in reqs if outcomes.get(r.id) == kind] for kind in ("PASS", "FAIL", "SKIP", "NOT_CHECKED")}
        lines.append(
            f"- **{name}**: PASS {', '.join(groups['PASS']) or 'none'}; FAIL {', '.join(groups['FAIL']) or 'none'}"
            + (f"; SKIP {', '.join(groups['SKIP'])}" if groups["SKIP"] else "")
            + f"; not checked {', '.join(groups['NOT_CHECKED']) or 'none'}."
        )
    lines += ["", "| ID | level | Anthropic's | Gatehouse | what did not pass |", "|---|---|---|---|---|"]
    for req in reqs:
        seen = [
            f"{who}: {NOTES.get(req.id, ('', ''))[1] if who == 'Anthropic' and req.id in NOTES else _first_finding(results.get(key), req.id)}"
            for who, key, outcomes in (("Anthropic", "anthropic", a), ("Gatehouse", "gatehouse", g))
            if outcomes.get(req.id) in ("FAIL", "SKIP")
        ]
        lines.append(f"| {req.id} | {req.level} | {_mark(a, req.id)} | {_mark(g, req.id)} | {'; '.join(seen)} |")
    return lines


def _by_outcome(reqs: list[Any], outcomes: dict[str, str]) -> str:
    groups = {kind: [r.id for r in reqs if outcomes.get(r.id) == kind] for kind in ("PASS", "FAIL", "SKIP", "NOT_CHECKED")}
    return (
        f"PASS {', '.join(groups['PASS']) or 'none'}; FAIL {', '.join(groups['FAIL']) or 'none'}"
        + (f"; SKIP {', '.join(groups['SKIP'])}" if groups["SKIP"] else "")
        + f"; not checked {', '.join(groups['NOT_CHECKED']) or 'none'}"
    )


def _telemetry_section(results: dict[str, Any]) -> list[str]:
    """SPEC §21 on both gateways, and the real client's exports through Gatehouse."""
    from protocol_spec import requirements

    a, g = _outcomes(results.get("anthropic")), _outcomes(results.get("gatehouse"))
    reqs = [r for r in requirements.load() if r.id.startswith(TELEMETRY_PREFIX)]
    lines = [
        "## Telemetry",
        "",
        "Both gateways had two `telemetry.forward_to` destinations on the fixtures' fake OTLP/HTTP collector: one taking "
        "metrics and logs, with a path under its base URL and two headers (one `${VAR}` expanded), one with only a URL "
        "(so metrics alone), and `resource_attributes`; the checks send OTLP exports and judge what each destination "
        "received, byte for byte, while the collector fails, stalls, rejects and recovers on script. TEL-5 (https and the "
        "address guard) needs a destination off loopback and TEL-7 describes the client, so the suite does not judge them; "
        "the real client's run below shows TEL-7 through Gatehouse.",
        "",
        f"- **Anthropic's gateway**: {_by_outcome(reqs, a)}.",
        f"- **Gatehouse**: {_by_outcome(reqs, g)}.",
        "",
        "| ID | level | source | Anthropic's | Gatehouse | what did not pass |",
        "|---|---|---|---|---|---|",
    ]
    for req in reqs:
        seen = [
            f"{who}: {NOTES[req.id][1] if who == 'Anthropic' and req.id in NOTES else _first_finding(results.get(key), req.id)}"
            for who, key, outcomes in (("Anthropic", "anthropic", a), ("Gatehouse", "gatehouse", g))
            if outcomes.get(req.id) in ("FAIL", "SKIP")
        ]
        lines.append(f"| {req.id} | {req.level} | {req.source} | {_mark(a, req.id)} | {_mark(g, req.id)} | {'; '.join(seen)} |")
    lines += [
        "",
        "### The real client's telemetry through Gatehouse",
        "",
        "`claude -p \"Say hi.\" --model claude-sonnet-4-6` signed in to Gatehouse as a gateway: managed settings "
        "`forceLoginMethod: gateway` and `forceLoginGatewayUrl` on an overlay of `/etc` in a private mount namespace (the "
        "machine's `/etc` untouched), and the stored sign-in `/login` writes, holding a `gatehouse token` bearer for "
        f"`{CLIENT_USER['email']}`. Nothing in the client's environment turns telemetry on: it comes from the environment "
        "Gatehouse's managed settings push (TEL-6); the environment sets only one-second export intervals and a local "
        "`OTEL_EXPORTER_OTLP_ENDPOINT` on a closed port, which a signed-in client ignores (TEL-7).",
        "",
    ]
    run = results.get("telemetry_client")
    if run is None:
        lines.append("Not run (Gatehouse did not start).")
        return lines
    version, outcome = run
    lines += [f"{version}: **{'exports received, stamped' if outcome.ok else 'FAILED'}**: {outcome.summary}", ""]
    if outcome.exports:
        lines += ["| destination | path | bytes | points / records | identity stamped on every one |", "|---|---|---|---|---|"]
        lines += [f"| {sink} | `{path}` | {size} | {count} | {who} |" for sink, path, size, count, who in outcome.exports]
    return lines


def render(results: dict[str, Any]) -> str:
    from protocol_spec import requirements

    anthropic, gatehouse = results.get("anthropic"), results.get("gatehouse")
    a, g = _outcomes(anthropic), _outcomes(gatehouse)
    ap, gp = _outcomes(results.get("anthropic_protocol")), _outcomes(results.get("gatehouse_protocol"))
    lines = [
        "# Interoperability: the conformance suite on Anthropic's gateway and on Gatehouse",
        "",
        f"Run: {results['date']} with `python -m protocol_spec.interop` (`make interop`), on {results['host']}.",
        "",
        "| | |",
        "|---|---|",
        f"| Anthropic's gateway | `claude gateway`, {results['claude_version']} |",
        f"| Gatehouse | {results['gatehouse_version']} (this checkout) |",
        f"| Python | {platform.python_version()} |",
        "| Fixtures | `python -m protocol_spec.conformance fixtures` (fake Anthropic API, fake Bedrock checking SigV4, fake Vertex "
        "and Google token endpoint, oidc-provider-mock 0.3.4) |",
        "",
        "Both gateways ran the same `gateway.yaml` (Anthropic's without the `gatehouse:` section) and the same "
        "suite with `--signin device --admin-key`, twice each: with the default profile, which judges all of "
        "SPEC.md, and with `--profile protocol`, which judges only requirements whose source is the published "
        "protocol or the observed wire (protocol_spec/README.md, Profiles). Every run had a freshly started gateway "
        "and its own fresh PostgreSQL database. Under the full profile a requirement whose source is `gatehouse` "
        "(a Gatehouse decision or extension) is expected to fail on Anthropic's gateway; every failure there is "
        "classified below. Regenerate this file with `make interop` (`INTEROP_CLAUDE=/path/to/claude` skips the "
        "npm download).",
        "",
        "## Summary",
        "",
        *_summary_rows(results),
        "",
        "## The protocol profile",
        "",
        "What a third party sees running the suite against its own gateway. Each profile run is compared with the "
        "full run of the same gateway: a requirement of the profile should get the same outcome in both, since the "
        "same checks judge it.",
        "",
        *_profile_section(results, "anthropic"),
        "",
        *_profile_section(results, "gatehouse"),
        "",
        *_cloud_section(results),
        "",
        *_telemetry_section(results),
        "",
        "## The real client through Gatehouse",
        "",
        "`claude -p \"Say hi.\" --model <model>` with `ANTHROPIC_BASE_URL` set to Gatehouse and "
        "`ANTHROPIC_AUTH_TOKEN` from `gatehouse token`, once on `claude-sonnet-4-6` (the fake Anthropic API answers) and "
        "once on `claude-conformance-bedrock-1-0`, which only the Bedrock upstream serves (the fake Bedrock answers after "
        "verifying Gatehouse's SigV4 signature; its request log must show the signed call). Both fakes answer "
        "`Hello from the simulated upstream.`",
        "",
        "| client | route | outcome | reply |",
        "|---|---|---|---|",
    ]
    for version, route, ok, text in results.get("clients", []):
        reply = text.strip().replace("|", "\\|").replace("\n", " ")[-220:]
        lines.append(f"| {version} | {route} | {'reply received' if ok else 'FAILED'} | `{reply}` |")
    if not results.get("clients"):
        lines.append("| - | - | not run (Gatehouse did not start) | |")
    lines += [
        "",
        "## Where Anthropic's gateway does not pass",
        "",
        "Failures and skips of the full run, with the outcome of the same requirement under `--profile protocol` "
        "(`OUT`: out of profile). Kinds: *difference*, documented in SPEC §27; *departure*, Anthropic's gateway "
        "departs from its own protocol text; *gatehouse*, a Gatehouse requirement (source `gatehouse`) that "
        "Anthropic's gateway has no reason to meet; *misreading*, our spec was wrong.",
        "",
        "| ID | level | source | Anthropic's | protocol profile | Gatehouse | kind | why / what was seen |",
        "|---|---|---|---|---|---|---|---|",
    ]
    reqs = requirements.load()
    for req in reqs:
        if a.get(req.id) in ("FAIL", "SKIP") or ap.get(req.id) in ("FAIL", "SKIP"):
            kind, why = NOTES.get(req.id, ("unexplained", ""))
            seen = why or _first_finding(anthropic, req.id) or _first_finding(results.get("anthropic_protocol"), req.id)
            lines.append(
                f"| {req.id} | {req.level} | {req.source} | {_mark(a, req.id)} | {_mark(ap, req.id)} | {_mark(g, req.id)} | {kind} | {seen} |"
            )
    lines += ["", "## Where Gatehouse does not pass", ""]
    gaps = [req for req in reqs if g.get(req.id) in ("FAIL", "SKIP") or gp.get(req.id) in ("FAIL", "SKIP")]
    if gaps:
        lines += ["| ID | level | Gatehouse | protocol profile | what to fix |", "|---|---|---|---|---|"]
    else:
        lines.append("Nowhere: every requirement checked from outside passes, under both profiles.")
    for req in gaps:
        fix = GATEHOUSE_GAPS.get(req.id) or _first_finding(gatehouse, req.id) or _first_finding(results.get("gatehouse_protocol"), req.id)
        lines.append(f"| {req.id} | {req.level} | {_mark(g, req.id)} | {_mark(gp, req.id)} | {fix} |")
    lines += [
        "",
        "## Every requirement",
        "",
        "`----`: not checked from outside (or describes the client); `OUT`: out of the protocol profile.",
        "",
        "| ID | level | source | Anthropic's | Anthropic's, protocol profile | Gatehouse | Gatehouse, protocol profile |",
        "|---|---|---|---|---|---|---|",
    ]
    for req in reqs:
        lines.append(
            f"| {req.id} | {req.level} | {req.source} | {_mark(a, req.id)} | {_mark(ap, req.id)} | {_mark(g, req.id)} | {_mark(gp, req.id)} |"
        )
    lines += ["", "## Prices", ""]
    prices: list[PriceRow] | None = results.get("prices")
    if not prices:
        lines.append(f"Not measured: {results.get('prices_error', 'skipped')}.")
    else:
        lines += [
            f"Each token kind was priced with one request of {PROBE_TOKENS:,} tokens of that kind through a probe model "
            "mapped to the priced id (`models[].upstream_model`), and the change of the user's month-to-date spend read "
            "back from `GET /v1/organizations/spend_limits/effective`; shown in USD per million tokens, table / measured.",
            "",
            f"{sum(r.agrees for r in prices)} of {len(prices)} rows agree (to $0.0005 per MTok). The last row is a model "
            "in no table, which both gateways charge at the unknown-model rate.",
            "",
            "| model | " + " | ".join(KINDS) + " | other | agrees |",
            "|---|" + "---|" * (len(KINDS) + 2),
        ]
        for row in prices:
            cells = []
            for kind in KINDS:
                pair = row.checked.get(kind)
                cells.append("-" if pair is None else f"{pair[0]} / {_usd(pair[1])}")
            extra = [f"{k}: {t} / {_usd(m)}" for k, (t, m) in row.checked.items() if k not in KINDS]
            other = "; ".join([*extra, row.note, PRICE_NOTES.get(row.model, "") if not row.agrees else ""]).strip("; ")
            lines.append(f"| {row.model} | " + " | ".join(cells) + f" | {other} | {'yes' if row.agrees else 'NO'} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protocol_spec.interop", description=__doc__.split("\n")[0])
    parser.add_argument("--claude", default=None, help="an installed claude binary (else $INTEROP_CLAUDE, else npm install)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where to write INTEROP.md (default: %(default)s)")
    parser.add_argument("--skip-prices", action="store_true")
    parser.add_argument("--extra-client", action="append", default=[], help="another claude binary for the `claude -p` check only (repeatable)")
    args = parser.parse_args(argv)
    run_dir = WORK / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    claude = find_claude(args.claude)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "host": f"{platform.system()} {platform.machine()}",
        "claude_version": claude_version(claude),
        # The installed distribution's version: this package never imports gateway.
        "gatehouse_version": metadata.version("gatehouse"),
    }
    procs: list[Proc] = []
    try:
        pg, pg_url = start_postgres(run_dir)
        procs.append(pg)
        # One fresh database per gateway and profile: no run sees another's sign-ins or caps.
        dbs = {run: create_database(pg_url, f"interop_{run}") for run in RUNS}
        db_prices = create_database(pg_url, "interop_prices")
        fixtures_proc, state_file = start_fixtures(run_dir, dbs["gatehouse"])
        procs.append(fixtures_proc)
        from protocol_spec.conformance.fixtures import GATEHOUSE_PING_INTERVAL_S, front_door_env, load_state

        state = load_state(state_file)
        env = env_file(state.env_path)
        full = Path(state.config_path)
        without_ours = write_config(full, run_dir / "anthropic.yaml", drop=("gatehouse",))

        # Only Anthropic's gateway needs the front door for Google's and STS's names (module docstring, step 3).
        front = front_door_env(state.front_door_url, state.front_door_ca_path) if state.front_door_url else {}

        def starter(run: str, gateway: str) -> Any:
            own = {**env, "CONFORMANCE_POSTGRES_URL": dbs[run]}
            if gateway == "anthropic":
                return lambda: start_anthropic(claude, without_ours, {**own, **front}, run_dir, run)
            return lambda: start_gatehouse(full, own, run_dir, run)

        def clients() -> None:
            rows = []
            for binary in [claude, *map(Path, args.extra_client)]:
                version = claude_version(binary)
                rows += [(version, *row) for row in claude_p_routes(binary, state, full, env)]
            results["clients"] = rows
            results["telemetry_client"] = (claude_version(claude), claude_p_telemetry(claude, state, full, env))

        for run, (gateway, profile) in RUNS.items():
            after = clients if run == "gatehouse" else None
            # Gatehouse's section sets a 1 s ping interval; Anthropic's gateway pings after the protocol's 15 s.
            ping = GATEHOUSE_PING_INTERVAL_S if gateway == "gatehouse" else None
            results[run] = _one_gateway(
                run, starter(run, gateway), state, state_file, run_dir, results, profile=profile, after=after, ping_interval_s=ping
            )
        if not args.skip_prices:
            _prices(claude, full, state, env, db_prices, run_dir, results)
    finally:
        for proc in reversed(procs):
            proc.stop()
    Path(args.out).write_text(render(results))
    print(f"wrote {args.out}")
    return 0


def _one_gateway(
    name: str,
    start: Any,
    state: Any,
    state_file: Path,
    run_dir: Path,
    results: dict[str, Any],
    *,
    profile: str,
    after: Any = None,
    ping_interval_s: float | None = None,
) -> dict[str, Any] | None:
    wait_port_free(state.gateway_port)
    proc = start()
    try:
        wait_ready(state.public_url, proc)
        report = run_suite(state_file, state.admin_write_key, run_dir / f"{name}.json", run_dir, name, profile, ping_interval_s)
        if after is not None:
            after()
        return report
    except (RuntimeError, subprocess.SubprocessError) as err:
        results[name + " error"] = str(err)[:300]
        print(f"{name}: {err}", file=sys.stderr)
        return None
    finally:
        proc.stop()


def _prices(claude: Path, full: Path, state: Any, env: dict[str, str], db: str, run_dir: Path, results: dict[str, Any]) -> None:
    table = json.loads(PRICING_TABLE.read_text())
    probes = probe_models(table)
    config = write_config(full, run_dir / "prices.yaml", drop=("gatehouse", "managed"), models=probes)
    wait_port_free(state.gateway_port)
    proc = start_anthropic(claude, config, {**env, "CONFORMANCE_POSTGRES_URL": db}, run_dir, "anthropic-prices")
    try:
        wait_ready(state.public_url, proc)
        results["prices"] = asyncio.run(measure_prices(state.public_url, state, table, probes))
    except (RuntimeError, OSError) as err:
        results["prices_error"] = str(err)[:300]
    finally:
        proc.stop()


if __name__ == "__main__":
    raise SystemExit(main())
