"""The Containerfile's promises, read from the file (``make image`` builds and runs it).

The base stays a build argument with no digest written in (none can be looked up from
these machines, and an invented one breaks builds); the final stage installs nothing,
runs as a non-root user, and checks its health with a command the image has.
"""

from __future__ import annotations

import re
from pathlib import Path

from gateway.__main__ import parser

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "Containerfile").read_text(encoding="utf-8")
# Instructions with their continuation lines joined, comments dropped.
LINES = [line for line in TEXT.replace("\\\n", " ").splitlines() if line.strip() and not line.lstrip().startswith("#")]
STAGES = [i for i, line in enumerate(LINES) if line.startswith("FROM ")]
FINAL = LINES[STAGES[-1] :]


def test_the_base_is_a_build_argument_without_an_invented_digest():
    assert LINES[0] == "ARG BASE=docker.io/library/python:3.11-slim"
    assert all(LINES[i].split()[1] == "${BASE}" for i in STAGES)
    assert not re.search(r"sha256:[0-9a-f]{64}", TEXT)
    # The interpreter's name is an argument of the build stage, python by default.
    assert "ARG PYTHON=python" in LINES[STAGES[0] : STAGES[1]]
    assert "RUN ${PYTHON} -m venv /opt/gatehouse" in LINES


def test_the_final_stage_installs_nothing_and_runs_as_its_own_user():
    runs = [line for line in FINAL if line.startswith("RUN ")]
    assert runs == ["RUN useradd --system --uid 10001 gatehouse"]
    assert "USER gatehouse" in FINAL
    assert "COPY --from=build /opt/gatehouse /opt/gatehouse" in FINAL
    assert not re.search(r"\b(apt-get|gcc|build-essential|curl|wget)\b", "\n".join(FINAL))


def test_the_healthcheck_is_a_gatehouse_command_that_exists():
    (health,) = [line for line in FINAL if line.startswith("HEALTHCHECK ")]
    assert health.endswith('CMD ["gatehouse", "healthcheck"]')
    args = parser().parse_args(["healthcheck"])
    assert args.config == "/etc/gatehouse/gateway.yaml"
    assert 'CMD ["serve", "--config", "/etc/gatehouse/gateway.yaml"]' in FINAL
