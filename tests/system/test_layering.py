"""The layout is a contract, stated per package: who may import whom, which modules
are pure, and that wire types live in protocol_spec.

Every import counts: at module level, inside functions and under TYPE_CHECKING.
A new module needs no entry here unless it opens a new package or is an edge in
a package whose modules are otherwise pure.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "gateway"

# Top to bottom. A package imports only packages on a layer below its own: never
# a sibling on its layer, never one above. Top-level modules (errors, audit, …)
# are placed like packages.
LAYERS: list[tuple[str, set[str]]] = [
    ("the gatehouse command", {"__main__"}),
    ("composition: building the app, the server process, CLI commands, the dev environment",
     {"app", "devenv"}),
    ("handlers: HTTP only, one route table", {"http"}),
    ("admin: the admin API's parsing, documents, retention and privacy, over spend", {"admin"}),
    ("features: sign-in, managed policies, spend, the OTLP relay; none imports another",
     {"auth", "policy", "spend", "telemetry"}),
    ("upstreams: routing, body view, SSE tap, transport, providers", {"upstreams"}),
    ("base: configuration and PostgreSQL", {"config", "db"}),
    ("audit events", {"audit"}),
    ("core: the error table, client text, network access lists", {"errors", "client_text", "netaccess"}),
]

# Which modules are pure (values in, values out: no await, no I/O library).
# Packages of pure modules name their edges; packages of edges name their pure modules.
PURE_EXCEPT_EDGES = {
    "config": set(),
    "policy": set(),
    "admin": {"retention", "store", "privacy"},
    "spend": {"store", "settlements", "lease_keeper"},
    "auth": {"oidc", "session_store", "device_store", "revocations", "resealing", "google_groups"},
    "telemetry": {"relay", "grpc_export", "http_export", "instruments", "tracing"},
    "upstreams": {"transport", "aws_credentials", "google_credentials", "token_cache", "azure_credentials"},
    "errors": set(),
    "client_text": set(),
    "netaccess": set(),
}
EDGES_EXCEPT_PURE = {
    "__main__": set(),
    "app": {"sessions_cli", "cli_output"},
    "devenv": set(),
    "http": {"forms"},
    "db": set(),
    "audit": set(),
}
IO_MODULES = (
    "asyncio", "aiohttp", "asyncpg", "opentelemetry", "aiobotocore", "google", "socket",
    "urllib.request", "http.client", "subprocess",
)
# Inside those: message classes and their codecs, values in and values out (the
# OTLP schemas, protobuf itself, gRPC's status details). A pure module may use them.
PURE_MESSAGE_PACKAGES = ("opentelemetry.proto", "google.protobuf", "google.rpc")


def does_io(name: str) -> bool:
    def within(package: str) -> bool:
        return name == package or name.startswith(package + ".")

    return any(within(io) for io in IO_MODULES) and not any(within(m) for m in PURE_MESSAGE_PACKAGES)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in GATEWAY.rglob("*.py")}


def room(module: str) -> str:
    """The package (or top-level module) a gateway module belongs to."""
    return module.split(".")[1]


def imports_of(tree: ast.AST, *, typing_only: bool = True) -> set[str]:
    """Every module ``tree`` imports; without ``typing_only``, not those under ``if TYPE_CHECKING:``."""
    names: set[str] = set()
    for node in walk(tree, typing_only):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            # `from gateway.spend import caps` imports the module gateway.spend.caps.
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def walk(tree: ast.AST, typing_only: bool):
    for node in ast.iter_child_nodes(tree):
        if not typing_only and isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            yield from (n for child in node.orelse for n in ast.walk(child))
            continue
        yield node
        yield from walk(node, typing_only)


def gateway_imports(module: str, *, typing_only: bool = True) -> set[str]:
    found = imports_of(ast.parse(MODULES[module].read_text()), typing_only=typing_only)
    return {n for n in found if n in MODULES and n != "gateway" and n != module}


def layer_of(name: str) -> int:
    for i, (_, rooms) in enumerate(LAYERS):
        if name in rooms:
            return i
    raise AssertionError(f"gateway.{name} is on no layer: add it to LAYERS in tests/system/test_layering.py")


def is_pure(module: str) -> bool:
    name = module.split(".")[-1]
    package = room(module)
    if package in PURE_EXCEPT_EDGES:
        return name not in PURE_EXCEPT_EDGES[package]
    assert package in EDGES_EXCEPT_PURE, f"{module}: say whether {package} is pure in tests/system/test_layering.py"
    return name in EDGES_EXCEPT_PURE[package]


def test_every_package_is_placed_once():
    placed = [r for _, rooms in LAYERS for r in rooms]
    assert len(placed) == len(set(placed))
    for module in MODULES:
        if module != "gateway":
            layer_of(room(module))
            is_pure(module)


def test_imports_only_go_down_the_layers():
    # e.g. spend, policy and config import no http or app; auth imports no spend.
    wrong = []
    for module in MODULES:
        if module == "gateway":
            continue
        for target in gateway_imports(module):
            here, there = room(module), room(target)
            if here != there and layer_of(there) <= layer_of(here):
                wrong.append(f"{module} imports {target} ({LAYERS[layer_of(there)][0].split(':')[0]})")
    assert not wrong, "imports across or up the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_loop():
    graph = {m: gateway_imports(m) for m in MODULES}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            loop = path[path.index(module):] + [module]
            raise AssertionError("import loop: " + " -> ".join(loop))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_pure_modules_do_no_io_and_never_await():
    pure = [m for m in MODULES if m != "gateway" and is_pure(m)]
    assert len(pure) > 30  # the pure core is most of the gateway; an empty list checks nothing
    for module in pure:
        tree = ast.parse(MODULES[module].read_text())
        bad = {n for n in imports_of(tree) if does_io(n)}
        assert not bad, f"{module} imports {bad}"
        awaits = [n for n in ast.walk(tree) if isinstance(n, (ast.Await, ast.AsyncFunctionDef))]
        assert not awaits, f"{module} awaits"
        # Type-only imports run no code; anything else a pure module imports is pure too.
        edges = {t for t in gateway_imports(module, typing_only=False) if not is_pure(t)}
        assert not edges, f"pure {module} imports edges {edges}"


def test_package_inits_document_and_import_nothing_heavy():
    for path in GATEWAY.rglob("__init__.py"):
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path} needs a docstring explaining its subsystem"
        assert not imports_of(tree), f"{path} imports; import the modules themselves instead"


def test_protocol_spec_never_imports_gateway():
    for path in (ROOT / "protocol_spec").rglob("*.py"):
        names = imports_of(ast.parse(path.read_text()))
        assert not any(n == "gateway" or n.startswith("gateway.") for n in names), path


def test_no_wire_structs_in_gateway():
    # Only the config schema and the store's row types may define Structs in gateway/.
    allowed = {"config/load.py", "config/schema.py", "db/store.py", "db/recorder.py"}
    for path in GATEWAY.rglob("*.py"):
        if path.relative_to(GATEWAY).as_posix() in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b) for b in node.bases}
                assert not any("Struct" in b for b in bases), f"{path}:{node.name} defines a Struct"
