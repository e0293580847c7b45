"""The one route table: what the built app serves is exactly what gateway.http.routes lists."""

from gateway.app.build import build
from gateway.http.routes import ROUTES
from tests.admin.test_api import admin_yaml
from tests.harness import make_config, upstream_block

PG = "postgresql://nobody@127.0.0.1:9/none"  # never opened: the app is built, not started


def served(app) -> list[tuple[str, str]]:
    return [(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None]


def listed(*sections: str) -> list[tuple[str, str]]:
    rows = []
    for route in ROUTES:
        if route.section in sections:
            if route.head:  # aiohttp registers a GET's HEAD first
                rows.append(("HEAD", route.path))
            rows.append((route.method, route.path))
    return rows


def test_without_admin_the_core_routes_are_served_in_table_order():
    app = build(make_config(PG, [upstream_block("http://127.0.0.1:9")]))
    assert served(app) == listed("core")


def test_with_admin_the_admin_routes_follow_literal_paths_first():
    app = build(make_config(PG, [upstream_block("http://127.0.0.1:9")], admin_yaml()))
    assert served(app) == listed("core", "admin")
    admin_paths = [path for method, path in served(app) if path.startswith("/v1/organizations")]
    assert admin_paths.index("/v1/organizations/spend_limits/effective") < admin_paths.index(
        "/v1/organizations/spend_limits/{id}"
    )
