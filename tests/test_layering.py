"""The layout is a contract: the pure core stays pure, wire types live in protocol_spec."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PURE = [
    "gateway/errors.py",
    "gateway/auth/tokens.py",
    "gateway/upstreams/sse.py",
    "gateway/upstreams/routing.py",
    "gateway/upstreams/bodyview.py",
    "gateway/netaccess.py",
    "gateway/upstreams/anthropic.py",
    "gateway/config/load.py",
    "gateway/config/expand.py",
    "gateway/config/comments.py",
    "gateway/config/rules.py",
    "gateway/config/upstreams.py",
    "gateway/config/addresses.py",
    "gateway/auth/devicecodes.py",
    "gateway/auth/pages.py",
    "gateway/auth/identity.py",
    "gateway/auth/sealing.py",
    "gateway/policy/canonical_json.py",
    "gateway/policy/policies.py",
    "gateway/config/settings_keys.py",
    "gateway/spend/pricing.py",
    "gateway/spend/caps.py",
    "gateway/spend/plans.py",
    "gateway/spend/rows.py",
    "gateway/spend/leases.py",
    "gateway/spend/identities.py",
    "gateway/spend/budget.py",
    "gateway/admin/requests.py",
    "gateway/admin/docs.py",
    "gateway/auth/id_tokens.py",
    "gateway/app/sessions_cli.py",
    "gateway/client_text.py",
    "gateway/http/forms.py",
    "gateway/auth/rate_window.py",
]
IO_MODULES = ("asyncio", "aiohttp", "asyncpg", "opentelemetry", "aiobotocore", "google", "socket")


def imports_of(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_pure_core_does_no_io_and_never_awaits():
    for rel in PURE:
        tree = ast.parse((ROOT / rel).read_text())
        bad = {n for n in imports_of(tree) if n.split(".")[0] in IO_MODULES}
        assert not bad, f"{rel} imports {bad}"
        awaits = [n for n in ast.walk(tree) if isinstance(n, (ast.Await, ast.AsyncFunctionDef))]
        assert not awaits, f"{rel} awaits"


def test_protocol_spec_never_imports_gateway():
    for path in (ROOT / "protocol_spec").rglob("*.py"):
        names = imports_of(ast.parse(path.read_text()))
        assert not any(n == "gateway" or n.startswith("gateway.") for n in names), path


def test_no_wire_structs_in_gateway():
    # Only the config schema and the store's row types may define Structs in gateway/.
    allowed = {"config/load.py", "config/schema.py", "db/store.py", "db/recorder.py"}
    for path in (ROOT / "gateway").rglob("*.py"):
        if path.relative_to(ROOT / "gateway").as_posix() in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b) for b in node.bases}
                assert not any("Struct" in b for b in bases), f"{path}:{node.name} defines a Struct"
