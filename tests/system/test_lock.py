"""The locks are in step with pyproject.toml, and nothing installs around them.

`make install`, `.ci/run` (through `make test`), the bench and the Containerfile
install only from `requirements.lock` / `conf/deploy/runtime.lock`: exact versions
with sha256 hashes, so a dependency's new release changes nothing until someone runs
`make lock`. These checks read the files; they need no network.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
FULL_LOCK = ROOT / "requirements.lock"
RUNTIME_LOCK = ROOT / "conf" / "deploy" / "runtime.lock"

# One locked requirement: `name==version` with an optional marker, then its hashes.
ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+?)(?: ; (?P<marker>[^\\]+?))?\s*\\?$")


def read_lock(path: Path) -> dict[str, dict[str, set[str]]]:
    """name → {version → hashes}; a name may be pinned twice under different markers."""
    pins: dict[str, dict[str, set[str]]] = {}
    current: set[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := ENTRY.match(line):
            current = pins.setdefault(canonicalize_name(match["name"]), {}).setdefault(match["version"], set())
        elif (stripped := line.strip()).startswith("--hash=sha256:"):
            assert current is not None, f"{path.name}: a hash before any requirement"
            current.add(stripped.removeprefix("--hash=").rstrip(" \\"))
        elif stripped and not stripped.startswith("#"):
            raise AssertionError(f"{path.name}: a line that is neither a pin, a hash nor a comment: {line!r}")
    return pins


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def declared(extras: list[str] | None = None) -> list[Requirement]:
    meta = project()
    groups = [meta["dependencies"]] + [meta["optional-dependencies"][e] for e in (extras or meta["optional-dependencies"])]
    return [
        req for group in groups for req in map(Requirement, group) if canonicalize_name(req.name) != canonicalize_name(meta["name"])
    ]


def assert_pins_satisfy(pins: dict[str, dict[str, set[str]]], requirements: list[Requirement], lock: str) -> None:
    for req in requirements:
        versions = pins.get(canonicalize_name(req.name))
        assert versions, f"{req.name} is in pyproject.toml but not in {lock}: run `make lock`"
        assert any(req.specifier.contains(v, prereleases=True) for v in versions), (
            f"{lock} pins {req.name} at {sorted(versions)}, outside pyproject.toml's {req}: run `make lock`"
        )


def test_every_pin_carries_hashes():
    for path in (FULL_LOCK, RUNTIME_LOCK):
        pins = read_lock(path)
        assert pins, f"{path} pins nothing"
        unhashed = [f"{name}=={v}" for name, versions in pins.items() for v, hashes in versions.items() if not hashes]
        assert not unhashed, f"{path.name}: pins without hashes: {unhashed}"


def test_full_lock_satisfies_every_declared_requirement():
    assert_pins_satisfy(read_lock(FULL_LOCK), declared(), FULL_LOCK.name)


def test_runtime_lock_holds_the_runtime_and_build_requirements_at_the_full_locks_versions():
    full, runtime = read_lock(FULL_LOCK), read_lock(RUNTIME_LOCK)
    assert_pins_satisfy(runtime, declared(["build"]), "conf/deploy/runtime.lock")
    for name, versions in runtime.items():
        for version, hashes in versions.items():
            assert version in full.get(name, {}), f"runtime.lock pins {name}=={version}; requirements.lock does not"
            assert hashes == full[name][version], f"{name}=={version} has other hashes in the two locks"
    # Test-only packages stay out of the image.
    assert not {"pytest", "mypy", "matplotlib", "uv"} & set(runtime)


def test_nothing_installs_around_the_locks():
    """Every pip install in the build files is from a lock with hashes, or of the project itself without its dependencies."""
    sources = {name: (ROOT / name).read_text(encoding="utf-8") for name in ("Makefile", "Containerfile", ".ci/run")}
    for name, text in sources.items():
        for line in text.splitlines():
            if "pip install" not in line or line.lstrip().startswith("#"):
                continue
            assert "--require-hashes" in line or "--no-deps" in line, f"{name} installs around the lock: {line.strip()}"
    assert "make test" in sources[".ci/run"]
