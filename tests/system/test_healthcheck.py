"""``gatehouse healthcheck``, the image's HEALTHCHECK: 0 only when the gateway answers 200.

Docker reads exit 0 as healthy and 1 as unhealthy and reserves 2, so every failure,
an unreadable config included, is 1.
"""

from __future__ import annotations

import signal
import subprocess

import pytest

from gateway.app.healthcheck_cli import local_url
from tests.system.test_process import ENV, GATEHOUSE, free_port, spawn, wait_exit, wait_ready, write_config


@pytest.mark.parametrize(
    ("host", "tls", "url"),
    [
        ("0.0.0.0", False, "http://127.0.0.1:8080/healthz"),
        ("::", False, "http://127.0.0.1:8080/healthz"),
        ("127.0.0.1", True, "https://127.0.0.1:8080/healthz"),
        ("::1", False, "http://[::1]:8080/healthz"),
        ("10.1.2.3", False, "http://10.1.2.3:8080/healthz"),
    ],
)
def test_the_url_reaches_the_listener_from_the_same_machine(host, tls, url):
    assert local_url(host, 8080, tls, "/healthz") == url


def healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATEHOUSE, "healthcheck", *args], env=ENV, capture_output=True, text=True, timeout=30)


async def test_healthy_while_serving_and_unhealthy_after(tmp_path, pg_url, fake_upstream):
    port = free_port()
    cfg = write_config(tmp_path, pg_url, fake_upstream.url, port)
    proc = spawn("serve", "--config", str(cfg))
    try:
        await wait_ready(port, proc)
        # The port comes from the config, not a default.
        alive = healthcheck("--config", str(cfg))
        assert alive.returncode == 0 and alive.stderr == ""
        assert healthcheck("--config", str(cfg), "--path", "/readyz").returncode == 0
        missing = healthcheck("--url", f"http://127.0.0.1:{port}/no-such-path")
        assert missing.returncode == 1 and "answered 404" in missing.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc) == 0
    gone = healthcheck("--config", str(cfg))
    assert gone.returncode == 1 and f"http://127.0.0.1:{port}/healthz" in gone.stderr


def test_an_unreadable_config_is_unhealthy_not_a_reserved_exit_code(tmp_path):
    missing = healthcheck("--config", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 1 and "cannot use" in missing.stderr
    broken = write_config(tmp_path, "postgres://gw@127.0.0.1:9/gw", "http://127.0.0.1:9", free_port(), "bogus: 1\n")
    invalid = healthcheck("--config", str(broken))
    assert invalid.returncode == 1 and "bogus" in invalid.stderr
