"""SPEC §16 (model list), §17 (managed settings) and the allowlist of §10.2.

The fixture configuration has a catch-all policy and a stricter one for the
``contractors`` group. A target that answers ``/managed/settings`` with 404
``not configured`` for it does not offer managed settings: those checks are
SKIP (with that reason), while a wrong shape is FAIL.
"""

from __future__ import annotations

from typing import Any

from protocol_spec.conformance.canonical import checksum
from protocol_spec.conformance.context import Ctx, arr, obj, small_request
from protocol_spec.conformance.fixtures import (
    BASE_SETTINGS,
    CONTRACTOR_MERGED,
    CUSTOM_DESCRIPTION,
    CUSTOM_LABEL,
    CUSTOM_MODEL,
    pushed_telemetry_env,
)
from protocol_spec.conformance.target import Answer
from protocol_spec.conformance.verdicts import Skip, check

SETTINGS = "/managed/settings"
PUSHED_ENV_KEYS = frozenset(pushed_telemetry_env("http://unused"))


def _not_offered(answer: Answer) -> bool:
    body = answer.json()
    message = body.get("error", {}).get("message") if isinstance(body, dict) and isinstance(body.get("error"), dict) else None
    return answer.status == 404 and (message == "not configured" or answer.body.strip() == b"not configured")


async def _settings(c: Ctx, role: str, headers: dict[str, str] | None = None) -> Answer:
    answer = await c.t.get(SETTINGS, bearer=await c.bearer(role), headers=headers or {})
    if _not_offered(answer):
        raise Skip("the target answers 404 not configured for the fixture's policies: managed settings not offered")
    return answer


def _without_pushed(got: Any, want: dict[str, Any]) -> Any:
    """``got`` less the telemetry env a gateway pushes beside the policy's own (TEL-6, judged in
    :mod:`.telemetry`); a key the policy sets itself stays, since its value must win."""
    if not isinstance(got, dict) or not isinstance(got.get("env"), dict):
        return got
    own = want.get("env", {})
    env = {k: v for k, v in got["env"].items() if k in own or k not in PUSHED_ENV_KEYS}
    return {**got, "env": env}


def _same_policy(got: Any, want: dict[str, Any]) -> bool:
    """Settings equal ``want`` plus any pushed telemetry env, deny lists compared as sets
    (their order is not specified)."""
    got = _without_pushed(got, want)
    if not isinstance(got, dict) or set(got) != set(want):
        return False
    for key, value in want.items():
        if key == "permissions" and isinstance(got.get(key), dict):
            mine = got[key]
            if set(mine) != set(value) or mine.get("allow") != value.get("allow"):
                return False
            if set(mine.get("deny", [])) != set(value.get("deny", [])) or len(mine.get("deny", [])) != len(value.get("deny", [])):
                return False
        elif got.get(key) != value:
            return False
    return True


@check(
    "managed settings document",
    "MANAGED-1", "MANAGED-2", "MANAGED-3", "MANAGED-4", "MANAGED-5", "MANAGED-10", "MANAGED-11", "MANAGED-17", "MANAGED-19", "MANAGED-20",
)
async def managed_document(c: Ctx) -> None:
    refused = await c.t.get(SETTINGS)
    c.expect("MANAGED-11", refused.status == 401 and bool(refused.header("x-cc-gateway-version")), "a 401 also carries x-cc-gateway-version", observed=(refused.status, refused.header("x-cc-gateway-version")))
    answer = await _settings(c, "normal")
    c.expect("MANAGED-11", bool(answer.header("x-cc-gateway-version")), "x-cc-gateway-version", observed=answer.header("x-cc-gateway-version"))
    c.status("MANAGED-1", answer, 200, "GET /managed/settings")
    doc = answer.json()
    shape = isinstance(doc, dict) and isinstance(doc.get("uuid"), str) and isinstance(doc.get("checksum"), str) and isinstance(doc.get("settings"), dict)
    c.expect("MANAGED-1", shape, "{uuid, checksum, settings}", observed=answer.summary())
    if not shape:
        return
    settings = doc["settings"]
    c.expect("MANAGED-2", _same_policy(settings, BASE_SETTINGS), "the catch-all policy is served", observed=settings, expected=BASE_SETTINGS)
    c.expect("MANAGED-19", _same_policy(settings, BASE_SETTINGS), "a caller in no listed group gets the match: {} policy", observed=settings)
    c.equal("MANAGED-3", doc["checksum"], checksum(settings), "checksum of the canonical serialization")
    c.equal("MANAGED-17", doc["checksum"], checksum(settings), "non-ASCII and quotes serialized as the client does")
    c.equal("MANAGED-4", doc["uuid"], doc["checksum"], "uuid equals checksum")
    c.equal("MANAGED-5", answer.header("ETag"), f'"{doc["checksum"]}"', "ETag")
    c.expect("MANAGED-10", "no-store" not in (answer.header("Cache-Control") or ""), "a 200 carries no no-store", observed=answer.header("Cache-Control"))
    contractor = await _settings(c, "contractor")
    merged = (contractor.json() or {}).get("settings")
    c.expect("MANAGED-20", _same_policy(merged, CONTRACTOR_MERGED), "the group policy merged onto the base", observed=merged, expected=CONTRACTOR_MERGED)
    c.expect("MANAGED-19", _same_policy(merged, CONTRACTOR_MERGED), "a contractors member gets the contractors policy", observed=merged)


@check("managed settings caching", "MANAGED-5", "MANAGED-6", "MANAGED-7", "MANAGED-10", "MANAGED-11")
async def managed_caching(c: Ctx) -> None:
    first = await _settings(c, "normal")
    doc = first.json() or {}
    current = doc.get("checksum", "")
    quoted = f'"{current}"'
    same = await _settings(c, "normal", {"If-None-Match": quoted})
    c.expect("MANAGED-6", same.status == 304 and same.body == b"", "If-None-Match with the current checksum", observed=same.summary(), expected="304, empty")
    c.equal("MANAGED-5", same.header("ETag"), quoted, "ETag on the 304")
    c.expect("MANAGED-10", "no-store" not in (same.header("Cache-Control") or ""), "a 304 carries no no-store", observed=same.header("Cache-Control"))
    c.expect("MANAGED-11", bool(same.header("x-cc-gateway-version")), "x-cc-gateway-version on the 304", observed=same.header("x-cc-gateway-version"))
    listed = await _settings(c, "normal", {"If-None-Match": f'"sha256:{"0" * 64}", {quoted}'})
    c.equal("MANAGED-6", listed.status, 304, "the current checksum among several entries")
    for value, what in (("*", "If-None-Match: *"), (current, "an unquoted value"), (f"W/{quoted}", "a weak value"), (f'"sha256:{"1" * 64}"', "another checksum")):
        answer = await _settings(c, "normal", {"If-None-Match": value})
        c.equal("MANAGED-7", answer.status, 200, what)


@check("model list", "MODEL-1", "MODEL-2", "MODEL-3", "ROLE-3")
async def model_list(c: Ctx) -> None:
    answer = await c.t.get("/v1/models?limit=1", bearer=await c.bearer())
    c.status("MODEL-1", answer, 200, "GET /v1/models?limit=1")
    c.expect("ROLE-3", not 300 <= answer.status < 400, "no redirect", observed=answer.status)
    doc = obj(answer.json())
    data = arr(doc.get("data"))
    entries_ok = bool(data) and all(isinstance(m, dict) and m.get("type") == "model" and isinstance(m.get("id"), str) and isinstance(m.get("display_name"), str) for m in data)
    c.expect("MODEL-1", entries_ok, "entries {type: model, id, display_name}", observed=data[:3])
    c.equal("MODEL-1", doc.get("has_more"), False, "one page whatever limit asks")
    c.expect("MODEL-1", len(data) > 1, "limit=1 does not cut the list", observed=len(data))
    ids = [m.get("id") for m in data if isinstance(m, dict)]
    if ids:
        # The spec names the members without fixing their values; null or the ids at either end.
        ends = (doc.get("first_id"), doc.get("last_id"))
        c.expect("MODEL-1", "first_id" in doc and "last_id" in doc and ends in ((None, None), (ids[0], ids[-1])),
                 "first_id and last_id", observed=ends, expected=f"null or {(ids[0], ids[-1])}")
    custom = next((m for m in data if isinstance(m, dict) and m.get("id") == CUSTOM_MODEL), None)
    c.expect("MODEL-3", custom is not None, "the configured model is listed", observed=ids)
    if custom is not None:
        c.equal("MODEL-3", custom.get("display_name"), CUSTOM_LABEL, "its label as display_name")
        c.equal("MODEL-3", custom.get("description"), CUSTOM_DESCRIPTION, "its description")
    c.expect("MODEL-3", all(isinstance(i, str) and i.startswith("claude-") for i in ids), "Anthropic-style ids", observed=ids)
    await c.fake.reset()
    policy = await c.t.get(SETTINGS, bearer=await c.bearer("contractor")) if c.suite.signin == "device" else None
    if policy is None or policy.status != 200:
        c.skip("needs managed settings and a contractor sign-in to judge filtering", "MODEL-2")
    else:
        narrowed = await c.t.get("/v1/models", bearer=await c.bearer("contractor"))
        theirs = [str(m.get("id")) for m in arr(obj(narrowed.json()).get("data")) if isinstance(m, dict)]
        c.expect("MODEL-2", bool(theirs) and all(i.startswith("claude-haiku-4-5") for i in theirs), "only the policy's availableModels", observed=theirs, expected="claude-haiku-4-5 (any form)")
    c.equal("MODEL-2", len(await c.received()), 0, "the list never asks an upstream")


@check("model allowlist", "MSG-9", "MSG-21", "COUNT-1", "MANAGED-21")
async def allowlist(c: Ctx) -> None:
    policy = await _settings(c, "contractor")
    if policy.status != 200:
        raise Skip(f"the contractor's settings answered {policy.status}")
    await c.fake.reset()
    denied = await c.messages(small_request("claude-sonnet-4-6"), role="contractor")
    c.envelope("MSG-9", denied, 400, "invalid_request_error", contains="claude-sonnet-4-6", what="a model outside the contractor's availableModels")
    c.envelope("MANAGED-21", denied, 400, "invalid_request_error", what="the merged policy's availableModels is enforced")
    counted = await c.messages({"model": "claude-sonnet-4-6", "messages": []}, role="contractor", path="/v1/messages/count_tokens")
    c.envelope("COUNT-1", counted, 400, "invalid_request_error", contains="claude-sonnet-4-6", what="count_tokens applies the allowlist")
    c.equal("MSG-9", len(await c.received()), 0, "a denied model never reaches an upstream")
    allowed = await c.messages(small_request("claude-haiku-4-5-20251001"), role="contractor")
    c.status("MSG-9", allowed, 200, "the dated form of an allowed alias")
    allowed_alias = await c.messages(small_request("claude-haiku-4-5"), role="contractor")
    c.status("MANAGED-21", allowed_alias, 200, "an allowed model")
    claims = (await c.identity("contractor")).claims
    c.expect("MSG-21", "billing_group_tag" not in claims, "no billing_group_tag claim", observed=claims.get("billing_group_tag"))
