"""A gateway in a container that listens on loopback only is warned about at boot."""

from __future__ import annotations

import subprocess

import pytest

from gateway.__main__ import boot_warnings, running_in_container
from gateway.config.load import load
from tests.system.test_process import ENV, GATEHOUSE, write_config

WARNING = "inside a container"


def config(tmp_path, host: str):
    path = write_config(tmp_path, "postgresql://u@127.0.0.1:1/db", "http://127.0.0.1:9", 8080)
    path.write_text(path.read_text().replace("host: 127.0.0.1", f"host: '{host}'", 1))
    return load(str(path), ENV)


@pytest.mark.parametrize(
    ("files", "environ", "expected"),
    [
        ({"/.dockerenv"}, {}, True),  # Docker
        ({"/run/.containerenv"}, {}, True),  # Podman
        (set(), {"container": "systemd-nspawn"}, True),
        (set(), {"container": ""}, False),
        (set(), {}, False),
    ],
)
def test_the_container_probe(files, environ, expected):
    assert running_in_container(exists=files.__contains__, environ=environ) is expected


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_loopback_in_a_container_is_warned_about(tmp_path, host):
    warnings = boot_warnings(config(tmp_path, host), in_container=True)
    (warning,) = [w for w in warnings if WARNING in w]
    assert f"listen.host is {host}" in warning and "listen.host: 0.0.0.0" in warning
    assert not [w for w in boot_warnings(config(tmp_path, host), in_container=False) if WARNING in w]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "gateway.internal"])
def test_other_addresses_in_a_container_are_not(tmp_path, host):
    assert not [w for w in boot_warnings(config(tmp_path, host), in_container=True) if WARNING in w]


def test_check_config_shows_it_with_the_real_probe(tmp_path):
    path = write_config(tmp_path, "postgresql://u@127.0.0.1:1/db", "http://127.0.0.1:9", 8080)
    # Podman and systemd-nspawn set this variable for the container's processes.
    out = subprocess.run([*GATEHOUSE, "check-config", "--config", str(path)], env={**ENV, "container": "podman"},
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert f"# warning: listen.host is 127.0.0.1 {WARNING}" in out.stdout, out.stdout + out.stderr
