"""The test tree's own rules (described in tests/__init__.py)."""

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_files_share_a_name():
    seen: defaultdict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        seen[path.name].append(path.relative_to(TESTS).as_posix())
    clashes = {name: sorted(paths) for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"rename so each test file's name is unique: {clashes}"


def test_every_test_folder_is_a_package():
    # Without __init__.py pytest imports a folder's tests under their bare names,
    # and `from tests.<package>.test_x import ...` stops working.
    missing = sorted(
        d.relative_to(TESTS).as_posix()
        for d in {p.parent for p in TESTS.rglob("test_*.py")}
        if not (d / "__init__.py").exists()
    )
    assert not missing, f"add __init__.py to: {missing}"
