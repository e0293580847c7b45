"""The conformance suite against Gatehouse, end to end, as an implementer would run it.

``python -m protocol_spec.conformance fixtures`` (fake Anthropic API, fake
Bedrock, fake Vertex and its token endpoint, test IdP, writing gateway.yaml,
.env and the state file), then ``gatehouse serve`` with that config, then
``python -m protocol_spec.conformance run``; all three are separate processes
talking over loopback, exactly as with any other gateway. The run is told the
ping interval the fixtures' ``gatehouse:`` section sets (1 s), so the SSE-4
check holds a Bedrock stream silent for about 3 s, not the protocol's 15 s.

Sections of the fixture config that Gatehouse refuses as "not supported yet"
are removed before it starts, so the suite reports those features as SKIP;
every MUST that the suite can judge must PASS.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.load import load, unsupported_reasons
from protocol_spec import requirements
from protocol_spec.conformance.fixtures import (
    ENV_NAMES,
    GATEHOUSE_PING_INTERVAL_S,
    load_state,
    state_path_for,
)

FIXTURES_START_S = 40.0
GATEWAY_START_S = 30.0
# The whole run is meant to take well under a minute against Gatehouse.
RUN_TIMEOUT_S = 120.0

# MUST requirements Gatehouse is known to miss today, each with who fixes it. (SHOULDs may fail
# without failing this test: BEDROCK-9, counting abandoned Bedrock requests, is not built.)
# The test fails when a FAIL appears that is not listed here; delete an entry
# as soon as the gap is closed (the test then also insists on exit status 0).
KNOWN_GAPS: dict[str, str] = {}


def _wait_for_file(path: Path, proc: subprocess.Popen[str], log: Path, timeout_s: float) -> None:
    """The fixtures write their state file last, once everything listens."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"fixtures exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        if path.exists():
            return
        time.sleep(0.1)
    raise AssertionError(f"no {path.name} within {timeout_s} s:\n{log.read_text()[-3000:]}")


def _env_file(path: str) -> dict[str, str]:
    env = {}
    for line in Path(path).read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    return env


def _strip_unsupported(config: Path, env: dict[str, str]) -> tuple[Path, list[str]]:
    """A copy of ``config`` without the top-level sections Gatehouse does not implement yet."""
    cfg = load(str(config), env)
    removed = sorted({path.split(".")[0].split("[")[0] for path, _ in unsupported_reasons(cfg)})
    if not removed:
        return config, []
    data = yaml.safe_load(config.read_text())
    for section in removed:
        assert section not in ("listen", "oidc", "session", "store", "upstreams"), f"cannot drop required section {section}"
        data.pop(section, None)
    trimmed = config.with_name("gateway-gatehouse.yaml")
    trimmed.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return trimmed, removed


@pytest.fixture
def fixtures(tmp_path: Path, pg_cluster: Any) -> Iterator[dict[str, Any]]:
    import uuid

    db = pg_cluster.create_database("conformance_" + uuid.uuid4().hex[:10])
    config = tmp_path / "gateway.yaml"
    log = tmp_path / "fixtures.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "protocol_spec.conformance", "fixtures", "--config-out", str(config), "--postgres-url", db, "--quiet"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        state_file = state_path_for(config)
        _wait_for_file(state_file, proc, log, FIXTURES_START_S)
        yield {"config": config, "state_file": state_file, "state": load_state(state_file), "proc": proc}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert not state_path_for(config).exists(), "the fixtures remove their state file when they stop"


@pytest.fixture
def gatehouse(fixtures: dict[str, Any]) -> Iterator[dict[str, Any]]:
    state = fixtures["state"]
    env = {**os.environ, **_env_file(state.env_path)}
    config, removed = _strip_unsupported(fixtures["config"], env)
    # Its stderr (an audit line per request) goes to a file: a pipe nobody reads while
    # the suite runs would fill up and stall the gateway mid-run.
    log = config.with_name("gatehouse.log")
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            text=True,
        )
    try:
        _wait_ready(state.public_url, proc, log)
        yield {**fixtures, "removed": removed, "env": env, "log": log}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen[str], log: Path) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + GATEWAY_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gatehouse exited {proc.returncode}:\n{log.read_text()[-5000:]}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise AssertionError("gatehouse did not become ready")


def test_gatehouse_passes_every_checked_must(gatehouse: dict[str, Any], tmp_path: Path) -> None:
    state = gatehouse["state"]
    report_file = tmp_path / "report.json"
    started = time.monotonic()
    out = subprocess.run(
        [
            sys.executable, "-m", "protocol_spec.conformance", "run",
            "--base-url", state.public_url,
            "--fixtures", str(gatehouse["state_file"]),
            "--signin", "device",
            f"--admin-key={gatehouse['env'][ENV_NAMES['admin_write_key']]}",
            "--json", str(report_file),
            "--ping-interval", str(GATEHOUSE_PING_INTERVAL_S),
        ],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )
    elapsed = time.monotonic() - started
    assert report_file.exists(), (
        f"the suite wrote no report (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}\n"
        f"gatehouse's log ends:\n{gatehouse['log'].read_text()[-3000:]}"
    )
    report = json.loads(report_file.read_text())
    by_id = {r["id"]: r for r in report["requirements"]}
    failing_musts = {r["id"] for r in report["requirements"] if r["level"] == "MUST" and r["outcome"] == "FAIL"}
    unexpected = failing_musts - set(KNOWN_GAPS)
    detail = "\n".join(line for line in out.stdout.splitlines() if line.startswith(("FAIL", "SKIP")))
    assert not unexpected, f"MUST requirements failing:\n{detail}\n{out.stderr[-3000:]}"
    assert out.returncode == (0 if not failing_musts else 1), out.stdout[-3000:] + out.stderr[-3000:]
    assert report["ok"] is (not failing_musts)
    # Skips are allowed only for features this Gatehouse does not offer yet, or
    # that the fixture config leaves out; say which, so they stay visible.
    skipped = sorted(r["id"] for r in report["requirements"] if r["outcome"] == "SKIP")
    if skipped:
        print(f"skipped ({', '.join(gatehouse['removed']) or 'no sections removed'}): {', '.join(skipped)}")
    # The report covers the whole spec, in order, one entry per requirement.
    assert [r["id"] for r in report["requirements"]] == [r.id for r in requirements.load()]
    assert by_id["DISC-2"]["outcome"] == "PASS"
    # The sessions API check runs last and ends families; it must have been judged, not skipped.
    assert {rid: by_id[rid]["outcome"] for rid in ("ADMIN-13", "ADMIN-14", "ADMIN-15", "ADMIN-16", "ADMIN-17")} == dict.fromkeys(
        ("ADMIN-13", "ADMIN-14", "ADMIN-15", "ADMIN-16", "ADMIN-17"), "PASS"
    )
    # SHOULDs the fixtures' gatehouse: section switches on: a FAIL here would not fail the run.
    should = {rid: by_id[rid]["outcome"] for rid in ("TEL-11", "TEL-12")}
    assert should == {"TEL-11": "PASS", "TEL-12": "PASS"}, [f for rid in should for f in by_id[rid]["findings"]]
    assert elapsed < RUN_TIMEOUT_S


def test_every_check_names_known_requirements() -> None:
    from protocol_spec.conformance import checks  # noqa: F401
    from protocol_spec.conformance.verdicts import REGISTRY

    known = {r.id for r in requirements.load()}
    for item in REGISTRY.checks:
        assert item.ids, item.name
        assert set(item.ids) <= known, (item.name, set(item.ids) - known)
    client_only = {r.id for r in requirements.load() if r.endpoint == "client"}
    assert not REGISTRY.covered() & client_only, "a gateway cannot be judged on what the client does"


def test_fixture_config_is_valid_for_gatehouse_and_without_its_section(tmp_path: Path) -> None:
    from protocol_spec.conformance.fixtures import (
        CLOUD_MODELS,
        PAIR_MODEL,
        CloudUrls,
        render_config,
        without_gatehouse,
    )

    key_file = tmp_path / "sa.json"
    key_file.write_text("{}")
    clouds = CloudUrls(bedrock_url="http://127.0.0.1:18300", vertex_url="http://127.0.0.1:18400", service_account_path=str(key_file))
    urls: dict[str, Any] = {"port": 18080, "fake_url": "http://127.0.0.1:18200", "idp_url": "http://127.0.0.1:18100"}
    sinks = {"full": "http://127.0.0.1:18500", "defaults": "http://127.0.0.1:18501"}
    grpc = {"grpc": "http://127.0.0.1:18600", "spans": "http://127.0.0.1:18601"}
    text = render_config(**urls, clouds=clouds, collector=sinks, grpc_collector=grpc)
    env = {name: "x" * 40 for name in ENV_NAMES.values()} | {"CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1"}
    env[ENV_NAMES["postgres_url"]] = "postgresql://u@127.0.0.1:5432/db"
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    cfg = load(str(path), env)
    assert [(u.name, u.provider) for u in cfg.upstreams] == [
        ("primary", "anthropic"), ("secondary", "anthropic"), ("bedrock", "bedrock"), ("bedrock-role", "bedrock"), ("vertex", "vertex"),
    ]
    assert cfg.upstreams[4].base_url == "http://127.0.0.1:18400/v1"
    routes = {m.id: dict(m.upstream_model) for m in cfg.models}
    assert routes[PAIR_MODEL].keys() == {"primary", "secondary"}
    assert all(routes[model] == CLOUD_MODELS[model] for model in CLOUD_MODELS)
    assert cfg.gatehouse.upstream.ping_interval_seconds == GATEHOUSE_PING_INTERVAL_S
    assert not unsupported_reasons(cfg)
    assert cfg.telemetry is not None
    assert [(d.url, d.metrics, d.logs, d.traces, d.gatehouse.protocol) for d in cfg.telemetry.forward_to] == [
        ("http://127.0.0.1:18500/otlp", True, True, False, "http"), ("http://127.0.0.1:18501", True, False, False, "http"),
        ("http://127.0.0.1:18600", True, True, False, "grpc"),
    ]
    assert cfg.telemetry.forward_to[0].headers["Authorization"] == "Bearer " + env[ENV_NAMES["collector_key"]]
    ours = cfg.gatehouse.telemetry
    assert ours.stamp_identity and ours.metrics.prometheus.enabled and ours.metrics.prometheus.listen is None
    assert ours.traces.otlp is not None and ours.traces.otlp.endpoint == grpc["spans"] and ours.traces.sample_ratio == 0
    bare = render_config(**urls, gatehouse_section=False, clouds=clouds, collector=sinks, grpc_collector=grpc)
    assert "gatehouse" not in bare and "18600" not in bare, "no Gatehouse-only key anywhere, nor the gRPC destination"
    assert yaml.safe_load(bare).keys() == yaml.safe_load(text).keys() - {"gatehouse"}
    assert without_gatehouse(yaml.safe_load(text)) == yaml.safe_load(bare), "what other gateways get from the full config"
    anthropic_only = yaml.safe_load(render_config(**urls))
    assert [u["name"] for u in anthropic_only["upstreams"]] == ["primary", "secondary"]
    assert {m["id"] for m in anthropic_only["models"]}.isdisjoint(CLOUD_MODELS)
    assert "telemetry" not in anthropic_only, "no collector, no telemetry section"


def test_the_suites_own_canonical_serialization_reproduces_the_spec_vectors() -> None:
    from protocol_spec.conformance.canonical import checksum, serialize

    assert checksum({}) == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    doc = json.loads('{"env":{"B":"ünïcødé ✓","A":"line\\nbreak \\"q\\" \\\\ \\u0001"},"n":[1.0,0.5,1e21,1e-7,123456789012,-0,0.1],'
                     '"b":[true,false,null],"é":1,"z":2,"Z":3}')
    assert serialize(doc) == ('{"Z":3,"b":[true,false,null],"env":{"A":"line\\nbreak \\"q\\" \\\\ \\u0001","B":"ünïcødé ✓"},'
                              '"n":[1,0.5,1e+21,1e-7,123456789012,0,0.1],"z":2,"é":1}')
    assert checksum(doc) == "sha256:81afdface1535ed398fba1e4aa8d937358b46a765446a69ba5ea176640a2e27e"


def test_outcomes_fold_fail_over_pass_over_skip() -> None:
    from protocol_spec.conformance import report
    from protocol_spec.conformance.verdicts import Outcome, Verdicts

    reqs = [r for r in requirements.load() if r.id in ("DISC-1", "DISC-2", "DISC-4", "DISC-8")]
    one = Verdicts(("DISC-1", "DISC-2"))
    one.expect("DISC-1", True)
    one.expect("DISC-2", True)
    other = Verdicts(("DISC-2", "DISC-4"))
    other.expect("DISC-2", False, "issuer", observed=None, expected="x")
    other.skip("not offered", "DISC-4")
    folded = {r.requirement.id: r for r in report.fold(reqs, [report.CheckResult("a", one.ids, one, 0), report.CheckResult("b", other.ids, other, 0)])}
    assert folded["DISC-1"].outcome is Outcome.PASS
    assert folded["DISC-2"].outcome is Outcome.FAIL and folded["DISC-2"].findings[0][1].observed == "(absent)"
    assert folded["DISC-4"].outcome is Outcome.SKIP
    assert folded["DISC-8"].outcome is Outcome.NOT_CHECKED and "client" in folded["DISC-8"].reason
    assert not report.passed(list(folded.values()))


async def test_cloud_checks_skip_when_the_fixtures_run_no_cloud_fakes() -> None:
    import aiohttp

    from protocol_spec.conformance import checks, runner  # noqa: F401  (registers the checks)
    from protocol_spec.conformance.context import Suite
    from protocol_spec.conformance.fixtures import USERS, FixtureState
    from protocol_spec.conformance.target import Target
    from protocol_spec.conformance.verdicts import REGISTRY, Outcome

    state = FixtureState(
        pid=0, config_path="", env_path="", public_url="http://127.0.0.1:9", gateway_port=9, fake_url="http://127.0.0.1:9",
        idp_url="http://127.0.0.1:9", users=USERS, env={}, jwt_secret="unused", primary_key="k", secondary_key="k2",
        admin_write_key="", admin_read_key="",
    )
    cloud = [item for item in REGISTRY.checks if any(rid.startswith(("BEDROCK-", "VERTEX-")) for rid in item.ids)]
    assert len(cloud) >= 10
    async with aiohttp.ClientSession() as session:
        suite = Suite(Target(state.public_url, session), state, session, signin="token", token="t", admin_key=None)
        results = [await runner.run_check(suite, item) for item in cloud]
    for result in results:
        assert {result.verdicts.outcome(rid) for rid in result.ids} == {Outcome.SKIP}, result.name
        assert "--no-cloud-upstreams" in result.verdicts.reasons(result.ids[0])[0].what
