"""A non-editable install ships every package, the SQL, the data and the transcripts."""

import ast
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("gateway", "protocol_spec")
        for p in (ROOT / top).rglob("__init__.py")
    }
    assert found <= listed, f"add to pyproject packages: {sorted(found - listed)}"


def test_wheel_contains_sql_data_and_transcripts(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    wheel = next(tmp_path.glob("gatehouse-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "gateway/sql/migrations/0001_init.sql" in names
    assert "gateway/data/models.json" in names
    # Every module of every gateway package, the hot path in gateway/http/ included.
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "gateway").rglob("*.py")}
    assert "gateway/http/messages.py" in modules
    assert modules <= names, f"missing from the wheel: {sorted(modules - names)}"
    assert any(n.startswith("protocol_spec/transcripts/cli/") for n in names)
    # The implementer's guide to the conformance suite ships next to SPEC.md.
    assert {"protocol_spec/SPEC.md", "protocol_spec/README.md"} <= names
