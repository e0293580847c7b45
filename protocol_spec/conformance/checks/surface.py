"""SPEC §2 (roles and surface) and §3 (discovery)."""

from __future__ import annotations

from protocol_spec.conformance.context import CLI_HEADERS, Ctx
from protocol_spec.conformance.verdicts import check
from protocol_spec.requirements import spec_bytes

DISCOVERY = "/.well-known/oauth-authorization-server"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@check("probes and landing page", "ROLE-8", "ROLE-9", "ROLE-10", "ROLE-5")
async def probes(c: Ctx) -> None:
    health = await c.t.get("/healthz")
    c.expect("ROLE-9", health.status == 200 and health.body.strip() == b"ok", "GET /healthz", observed=health.summary(), expected="200 ok")
    ready = await c.t.get("/readyz")
    c.expect("ROLE-10", ready.status == 200 and ready.body.strip() == b"ready", "GET /readyz with the store up", observed=ready.summary(), expected="200 ready")
    landing = await c.t.get("/")
    c.expect("ROLE-8", landing.status == 200, "GET / without a credential", observed=landing.summary(), expected=200)
    c.equal("ROLE-8", landing.header("Cache-Control"), "no-store", "GET /: Cache-Control")
    for answer in (health, ready, landing):
        for name, value in SECURITY_HEADERS.items():
            c.equal("ROLE-5", answer.header(name), value, f"{answer.url}: {name}")


@check("the protocol document and its index", "ROLE-6", "ROLE-7")
async def protocol_document(c: Ctx) -> None:
    doc = await c.t.get("/protocol")
    c.status("ROLE-6", doc, 200, "GET /protocol without a credential")
    c.equal("ROLE-6", doc.header("Content-Type"), "text/markdown; charset=utf-8", "GET /protocol: Content-Type")
    c.expect("ROLE-6", doc.body == spec_bytes(), "GET /protocol is SPEC.md byte for byte", observed=f"{len(doc.body)} bytes", expected=f"the {len(spec_bytes())} bytes of SPEC.md")
    index = await c.t.get("/protocol.json")
    c.status("ROLE-7", index, 200, "GET /protocol.json without a credential")
    c.equal("ROLE-7", index.content_type, "application/json", "GET /protocol.json: Content-Type")
    body = index.json()
    ok = isinstance(body, dict) and isinstance(body.get("requirements"), list) and isinstance(body.get("sections"), list)
    c.expect("ROLE-7", ok, "the index has document, sections and requirements", observed=index.summary(), expected="{document, sections, requirements}")
    if ok:
        first = body["requirements"][0] if body["requirements"] else {}
        c.expect("ROLE-7", {"id", "level", "source", "endpoint", "summary", "section"} <= set(first), "requirement entries carry every field", observed=first)


@check("unknown paths", "ROLE-11", "ERR-1", "ERR-2", "ERR-3")
async def unknown_paths(c: Ctx) -> None:
    bare = await c.t.get("/v1/conformance-no-such-path")
    c.envelope("ROLE-11", bare, 404, "not_found_error", what="unknown path without a credential")
    token = await c.bearer()
    signed = await c.t.get("/v1/conformance-no-such-path", bearer=token)
    c.envelope("ROLE-11", signed, 404, "not_found_error", what="unknown path with a bearer")
    for answer in (bare, signed):
        c.expect("ERR-3", answer.content_type == "application/json", "errors are never plain text", observed=answer.summary(), expected="application/json")


@check("discovery document", "DISC-1", "DISC-2", "DISC-3", "DISC-4", "DISC-5", "DISC-6", "ROLE-1", "ROLE-3")
async def discovery(c: Ctx) -> None:
    answer = await c.t.get(DISCOVERY, headers=CLI_HEADERS)
    c.status("DISC-1", answer, 200, "discovery without a credential")
    c.equal("DISC-1", answer.content_type, "application/json", "discovery Content-Type")
    c.expect("ROLE-3", answer.status < 300 or answer.status >= 400, "discovery is not a redirect", observed=answer.status)
    doc = answer.json() if isinstance(answer.json(), dict) else {}
    c.suite.discovery = doc
    base = c.state.public_url
    c.equal("DISC-2", doc.get("issuer"), base, "issuer")
    c.equal("DISC-2", doc.get("device_authorization_endpoint"), base + "/oauth/device_authorization", "device_authorization_endpoint")
    c.equal("DISC-2", doc.get("token_endpoint"), base + "/oauth/token", "token_endpoint")
    c.equal("DISC-3", doc.get("revocation_endpoint"), base + "/oauth/revoke", "revocation_endpoint")
    c.equal("DISC-3", doc.get("revocation_endpoint_auth_methods_supported"), ["none"], "revocation_endpoint_auth_methods_supported")
    c.expect("DISC-4", "authorization_endpoint" not in doc, "no authorization_endpoint", observed=doc.get("authorization_endpoint"))
    grants = doc.get("grant_types_supported")
    c.expect("DISC-5", isinstance(grants, list) and set(grants) >= {"urn:ietf:params:oauth:grant-type:device_code", "refresh_token"}, "grant_types_supported", observed=grants)
    c.equal("DISC-5", doc.get("response_types_supported"), [], "response_types_supported")
    c.equal("DISC-5", doc.get("token_endpoint_auth_methods_supported"), ["none"], "token_endpoint_auth_methods_supported")
    c.expect("DISC-5", isinstance(doc.get("scopes_supported"), list), "scopes_supported is a list", observed=doc.get("scopes_supported"))
    c.equal("DISC-5", doc.get("gateway_protocol_version"), 1, "gateway_protocol_version")
    spoofed = await c.t.get(
        DISCOVERY,
        headers={
            **CLI_HEADERS,
            "Host": "evil.example",
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Proto": "https",
            "Forwarded": "host=evil.example;proto=https",
        },
    )
    same = spoofed.json() == answer.json()
    c.expect("DISC-6", same, "the document ignores Host and X-Forwarded-*", observed=spoofed.summary(), expected=answer.summary())
    c.expect("ROLE-1", same and "evil.example" not in spoofed.body.decode("utf-8", "replace"), "published URLs come from public_url", observed=spoofed.summary())
