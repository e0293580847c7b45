"""conf/deploy/kubernetes: every overlay renders, validates, and keeps its promises.

Each overlay is rendered with ``kubectl kustomize`` (offline; no cluster) and every
object is checked against the Kubernetes JSON schemas that ``kubernetes-validate``
ships, strictly (an unknown field fails). The Prometheus Operator's ServiceMonitor
has no schema there, so its shape is checked here by hand. Then the properties the
README promises: probe paths the gateway serves, a grace period longer than the
drain and the flush after it, the non-root read-only security context, the
ConfigMap's gateway.yaml loading with Gatehouse's own loader from the Secret's
values (so the shipped config cannot rot), and selectors that find what they
should. kubectl missing is a failure, not a skip: CI's machine has it.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import yaml

from gateway.__main__ import boot_warnings, missing_extras, parser
from gateway.app.server import drain_timeout_s
from gateway.config.load import loads, unsupported_features
from gateway.http.routes import ROUTES
from tests.system.test_process import GATEHOUSE, free_port, spawn, wait_exit

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "conf" / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBE / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
# The oldest Kubernetes the manifests are written for (the preStop `sleep` action is
# on by default from 1.30) and a current one.
KUBE_VERSIONS = ("1.30", "1.35")
# Kinds from CRDs, which kubernetes-validate has no schema for: checked by hand below.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# After the drain, shutdown still waits for spend settlements (10 s), usage records
# (10 s) and relayed telemetry (5 s): gateway/app/build.py, the lifecycle's end.
SHUTDOWN_FLUSH_S = 25
CONFIG_PATH = "/etc/gatehouse/gateway.yaml"


@functools.cache
def kubectl() -> str:
    found = shutil.which("kubectl") or ("/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None)
    if found is None:
        pytest.fail(
            "kubectl is not installed: these tests render conf/deploy/kubernetes with `kubectl kustomize`"
        )
    # Components and generator labels need the kustomize v5 inside kubectl 1.27 and later.
    out = subprocess.run(
        [found, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30
    )
    kustomize = json.loads(out.stdout or "{}").get("kustomizeVersion", "")
    if not re.match(r"v([5-9]|\d\d)\.", kustomize):
        pytest.fail(
            f"{found} embeds kustomize {kustomize or 'of unknown version'}; these manifests need v5 or later"
        )
    return found


def render(overlay: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(KUBE / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_templates(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d["spec"]["template"] for d in docs if d["kind"] in ("Deployment", "Job")]


def gateway_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def environ(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """What the container's process sees: the Secret it takes whole, then its literal env."""
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        secret = secrets[source["secretRef"]["name"]]
        env.update({k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def gateway_yaml(docs: list[dict[str, Any]]) -> str:
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    (name,) = [v["configMap"]["name"] for v in volumes if "configMap" in v]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
    return cm["data"]["gateway.yaml"]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_both_overlays_are_there():
    assert {"production", "dev"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(rendered, overlay):
    for doc in rendered[overlay]:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                where = ".".join(str(p) for p in err.path)
                pytest.fail(
                    f"{overlay}: {doc['kind']}/{doc['metadata']['name']} on {version}: {where}: {err.message}"
                )
            except kubernetes_validate.SchemaNotFoundError as err:
                pytest.fail(f"{overlay}: {err.message}; add it to CRD_KINDS with a check of its own")


def test_strict_validation_refuses_an_unknown_field(rendered):
    deployment = json.loads(json.dumps(one(rendered["production"], "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


def test_the_servicemonitor_scrapes_the_prometheus_listener(rendered):
    docs = rendered["production"]
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
    assert endpoint["path"] == "/metrics"
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    (container_port,) = [p for p in gateway_container(docs)["ports"] if p["name"] == port["targetPort"]]
    cfg = loads(gateway_yaml(docs), environ(docs, gateway_container(docs)))
    listen = cfg.gatehouse.telemetry.metrics.prometheus.listen
    assert listen is not None and int(listen.rsplit(":", 1)[1]) == container_port["containerPort"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_config_loads_with_the_secrets_values(rendered, overlay):
    docs = rendered[overlay]
    container = gateway_container(docs)
    env = environ(docs, container)
    text = gateway_yaml(docs)
    cfg = loads(text, env, source=CONFIG_PATH)  # raises ConfigError naming the path of any problem
    assert unsupported_features(cfg) + missing_extras(cfg) == []
    assert boot_warnings(cfg, in_container=True) == []
    # Each secret is used: a key nobody references is a secret nobody rotates.
    referenced = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    secret_keys = {k for d in docs if d["kind"] == "Secret" for k in d["data"]}
    assert secret_keys == referenced
    (http,) = [p for p in container["ports"] if p["name"] == "http"]
    assert cfg.listen.port == http["containerPort"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secret_values_are_placeholders(rendered, overlay):
    for secret in (d for d in rendered[overlay] if d["kind"] == "Secret"):
        for key, value in secret["data"].items():
            assert base64.b64decode(value).decode().startswith("REPLACE-ME"), (
                f"{overlay}: {key} is not a placeholder"
            )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_what_the_gateway_serves(rendered, overlay):
    container = gateway_container(rendered[overlay])
    served = {r.path for r in ROUTES if r.method == "GET"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in served
        assert container[probe]["httpGet"]["port"] == "http"
    # /readyz pings PostgreSQL with a 2 s bound: the probe must wait longer.
    assert container["readinessProbe"]["timeoutSeconds"] > 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_grace_period_outlasts_the_sleep_the_drain_and_the_flush(rendered, overlay):
    pod = one(rendered[overlay], "Deployment")["spec"]["template"]["spec"]
    container = gateway_container(rendered[overlay])
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = drain_timeout_s(environ(rendered[overlay], container))
    assert sleep >= 5, "the endpoints need a few seconds to stop sending new connections"
    assert pod["terminationGracePeriodSeconds"] > sleep + drain + SHUTDOWN_FLUSH_S


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_the_images_user_without_privileges(rendered, overlay):
    uid = int(re.search(r"useradd [^\n]*--uid (\d+)", (ROOT / "Containerfile").read_text())[1])
    for template in pod_templates(rendered[overlay]):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == uid
            assert "@sha256:" in c["image"], f"{c['image']}: pin the image by digest"
            # A memory limit, and no CPU limit: a CFS quota throttles the event loop.
            assert "memory" in c["resources"]["limits"] and "cpu" not in c["resources"]["limits"]
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert {"/etc/gatehouse", "/tmp"} <= mounts


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_commands_are_ones_gatehouse_accepts(rendered, overlay):
    docs = rendered[overlay]
    gateway = gateway_container(docs)
    (migrate,) = one(docs, "Job")["spec"]["template"]["spec"]["containers"]
    served, migrating = parser().parse_args(gateway["args"]), parser().parse_args(migrate["args"])
    assert (served.command, served.config, served.workers) == ("serve", CONFIG_PATH, 1)
    assert (migrating.command, migrating.config) == ("migrate", CONFIG_PATH)
    # The Job runs the same bytes with the same config and secrets.
    for field in ("image", "envFrom", "volumeMounts"):
        assert migrate[field] == gateway[field]
    assert environ(docs, migrate) == {
        k: v for k, v in environ(docs, gateway).items() if k != "CLAUDE_GATEWAY_DRAIN_TIMEOUT_MS"
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_migrate_step_label_brings_what_the_job_needs(rendered, overlay):
    """`kubectl apply -k … -l gatehouse-step=migrate` applies the Job and what it mounts."""
    docs = rendered[overlay]
    labelled = {
        (d["kind"], d["metadata"]["name"])
        for d in docs
        if d["metadata"].get("labels", {}).get("gatehouse-step") == "migrate"
    }
    pod = one(docs, "Job")["spec"]["template"]["spec"]
    needed = {("Job", "gatehouse-migrate"), ("ServiceAccount", pod["serviceAccountName"])}
    needed |= {("ConfigMap", v["configMap"]["name"]) for v in pod["volumes"] if "configMap" in v}
    needed |= {("Secret", s["secretRef"]["name"]) for c in pod["containers"] for s in c["envFrom"]}
    needed |= {("Namespace", d["metadata"]["name"]) for d in docs if d["kind"] == "Namespace"}
    assert needed <= labelled
    assert {kind for kind, _ in labelled} <= {"Job", "ServiceAccount", "ConfigMap", "Secret", "Namespace"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_find_the_gateway_pods_only(rendered, overlay):
    docs = rendered[overlay]
    gateway_pods = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    job_pods = one(docs, "Job")["spec"]["template"]["metadata"]["labels"]
    for selector in (
        one(docs, "Service")["spec"]["selector"],
        one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ):
        assert matches(selector, gateway_pods) and not matches(selector, job_pods)
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    policy = one(docs, "NetworkPolicy")["spec"]
    assert matches(policy["podSelector"]["matchLabels"], gateway_pods)
    assert matches(policy["podSelector"]["matchLabels"], job_pods)
    container_ports = {p["containerPort"] for p in gateway_container(docs)["ports"]}
    assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} == container_ports
    assert {53, 5432, 443} <= {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    spread = one(docs, "Deployment")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert any(
        c["topologyKey"] == "kubernetes.io/hostname"
        and matches(c["labelSelector"]["matchLabels"], gateway_pods)
        for c in spread
    )


def test_production_scales_from_three_replicas_on_cpu(rendered):
    docs = rendered["production"]
    deployment, hpa = one(docs, "Deployment"), one(docs, "HorizontalPodAutoscaler")
    # The autoscaler owns the count; a count in the manifest would be reset by each apply.
    assert "replicas" not in deployment["spec"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] >= 3
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "cpu" in gateway_container(docs)["resources"]["requests"]


def test_the_documented_commands_name_what_the_manifests_hold(rendered):
    """README.md's Deploy section and conf/deploy/README.md: overlays, objects and the step label."""
    docs = rendered["production"]
    names = {(d["kind"].lower(), d["metadata"]["name"]) for d in docs}
    for readme in (ROOT / "README.md", ROOT / "conf" / "deploy" / "README.md"):
        text = readme.read_text(encoding="utf-8")
        for overlay in re.findall(r"conf/deploy/kubernetes/overlays/([a-z-]+)", text):
            assert overlay in OVERLAYS, f"{readme.name} names overlays/{overlay}"
        for kind, name in re.findall(r"\b(job|deployment)[/ ](gatehouse[a-z-]*)", text):
            assert (kind, name) in names, f"{readme.name} names {kind}/{name}"
        assert "-l gatehouse-step=migrate" in text


async def test_the_production_pod_migrates_boots_answers_its_probes_and_drains(
    rendered, pg_cluster, tmp_path
):
    """The Job's and the Deployment's commands, run as processes with the production
    ConfigMap and Secret: only addresses move to loopback (and TLS to PostgreSQL, which
    the test cluster does not offer, is the one thing left out)."""
    docs = rendered["production"]
    gateway, job = gateway_container(docs), one(docs, "Job")["spec"]["template"]["spec"]["containers"][0]
    doc = yaml.safe_load(gateway_yaml(docs))
    port, metrics_port = free_port(), free_port()
    doc["listen"].update(host="127.0.0.1", port=port, public_url=f"http://127.0.0.1:{port}")
    doc["oidc"]["issuer"] = "http://127.0.0.1:9"
    doc["store"]["postgres_url"] = pg_cluster.create_database("deploy_" + uuid.uuid4().hex[:10])
    doc["upstreams"][0]["base_url"] = "http://127.0.0.1:9"
    doc["gatehouse"]["telemetry"]["metrics"]["prometheus"]["listen"] = f"127.0.0.1:{metrics_port}"
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {**os.environ, **environ(docs, gateway), "CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1"}

    def command(container: dict[str, Any]) -> list[str]:
        return [str(config) if a == CONFIG_PATH else a for a in container["args"]]

    migrated = subprocess.run(
        [*GATEHOUSE, *command(job)], env=env, capture_output=True, text=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr
    assert "migrations are up to date" in migrated.stderr
    proc = spawn(*command(gateway), env=env)
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(400):
                if proc.poll() is not None:
                    raise AssertionError(f"serve exited {proc.returncode}: {proc.stderr.read()}")
                try:
                    async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                async with s.get(f"http://127.0.0.1:{port}" + gateway[probe]["httpGet"]["path"]) as r:
                    assert r.status == 200, probe
            async with s.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
                assert r.status == 200 and "gatehouse_" in await r.text()
        proc.send_signal(signal.SIGTERM)
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
        budget = pod["terminationGracePeriodSeconds"] - gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert await wait_exit(proc, timeout=budget) == 0
        log = proc.stderr.read()
        assert "shutdown complete" in log and "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
