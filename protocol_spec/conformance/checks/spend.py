"""SPEC §19 (spend limits and usage-limit headers), §20 (spend in dollars), §26 (admin API).

These need ``--admin-key`` (a write key of the target's ``admin`` section).
Caps are only ever set on the fixture's admin user and on a principal nobody
signs in as, and removed again, so the rest of the suite is unaffected. A
target whose admin API answers 404 does not offer spend limits: SKIP.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from protocol_spec.conformance.context import Ctx, arr, obj, small_request
from protocol_spec.conformance.fixtures import ADMIN_GROUP, ADMIN_WRITE_KEY_ID, BLOCKED_MESSAGE
from protocol_spec.conformance.target import Answer
from protocol_spec.conformance.verdicts import Skip, check

LIMITS = "/v1/organizations/spend_limits"
NOBODY = "conf-nobody"
UNIFIED = "anthropic-ratelimit-unified-"
# How long a new cap may take to apply.
CAP_SETTLE_S = 5.0
WHOLE_SECONDS = re.compile(r"^[0-9]+$")
TWO_DECIMALS = re.compile(r"^[0-9]+(\.[0-9]{1,2})?$")


async def admin(c: Ctx, method: str, path: str, body: Any = None, *, key: str | None = None, bearer: str | None = None) -> Answer:
    """An admin API call with an ``x-api-key`` (``key``) or a bearer, and an optional JSON body."""
    headers = {} if key is None else {"x-api-key": key}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    return await c.t.request(method, path, body=data, headers=headers, bearer=bearer)


def _admin_key(c: Ctx) -> str:
    if not c.suite.admin_key:
        raise Skip("needs --admin-key (a write key of the target's admin section)")
    return c.suite.admin_key


async def _offered(c: Ctx, key: str) -> None:
    answer = await admin(c, "GET", LIMITS, key=key)
    if answer.status == 404:
        raise Skip("the admin API answers 404: spend limits not offered by the target")


async def _capped_admin(c: Ctx) -> tuple[str, str]:
    """The admin key and the signed-in admin user's sub, with every cap cleared; Skip when unavailable."""
    key = _admin_key(c)
    await _offered(c, key)
    if c.suite.signin != "device":
        raise Skip("needs the fixture's users signed in: run with --signin device")
    sub = c.suite.user("admin")["sub"]
    await _clear_caps(c, key)
    return key, sub


async def _set_cap(c: Ctx, key: str, user_id: str, amount: str | None, period: str, *, group: str | None = None) -> dict[str, Any]:
    scope = {"type": "rbac_group", "rbac_group_id": group} if group else {"type": "user", "user_id": user_id}
    answer = await admin(c, "POST", LIMITS, {"scope": scope, "amount": amount, "period": period}, key=key)
    doc = answer.json()
    if answer.status != 200 or not isinstance(doc, dict) or "id" not in doc:
        raise RuntimeError(f"could not set a {period} cap for {group or user_id}: {answer.summary()}")
    return doc


def next_boundary(period: str, now: datetime) -> int:
    """Unix seconds of the end of the UTC period containing ``now`` (SPEC SPEND-3)."""
    day = datetime(now.year, now.month, now.day, tzinfo=UTC)
    if period == "daily":
        end = day + timedelta(days=1)
    elif period == "weekly":
        end = day + timedelta(days=7 - day.weekday())
    else:
        end = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    return int(end.timestamp())


def _judge_boundary(c: Ctx, answer: Answer, period: str) -> None:
    got = answer.header(UNIFIED + "overage-reset")
    want = next_boundary(period, datetime.now(UTC))
    c.expect("SPEND-3", got is not None and got.isdigit() and abs(int(got) - want) <= 1, f"a {period} cap resets at the next UTC boundary",
             observed=got, expected=want)


async def _until(c: Ctx, send: Any, settled: Any) -> Answer:
    """Repeat ``send()`` until ``settled(answer)`` or CAP_SETTLE_S pass; the last answer.

    The spec gives no bound on how soon a new cap applies, and a gateway may
    cache caps per replica; a few seconds is what an administrator would expect.
    """
    deadline = time.monotonic() + CAP_SETTLE_S
    while True:
        answer = await send()
        if settled(answer) or time.monotonic() >= deadline:
            return answer
        await asyncio.sleep(0.2)


async def _clear_caps(c: Ctx, key: str) -> None:
    """Remove every cap the suite may have left on its own principals (an earlier run may have crashed)."""
    mine = {NOBODY, *(u["sub"] for u in c.state.users.values())}
    listed = (await admin(c, "GET", LIMITS + "?limit=1000", key=key)).json() or {}
    for cap in listed.get("data", []) if isinstance(listed, dict) else []:
        scope = cap.get("scope") or {}
        ours = (scope.get("type") == "user" and scope.get("user_id") in mine) or (
            scope.get("type") == "rbac_group" and scope.get("rbac_group_id") == ADMIN_GROUP
        )
        if ours:
            await admin(c, "DELETE", f"{LIMITS}/{cap['id']}", key=key)


def _request_id_header(c: Ctx, answer: Answer, what: str) -> None:
    c.expect("ADMIN-4", bool(answer.header("request-id")), f"{what}: request-id header", observed=dict(answer.headers))


@check("admin API", "ADMIN-9", "ADMIN-2", "ADMIN-3", "ADMIN-4", "ADMIN-5", "ADMIN-6", "ADMIN-7", "ADMIN-8", "ADMIN-10", "ERR-1")
async def admin_api(c: Ctx) -> None:
    key = _admin_key(c)
    await _offered(c, key)
    await _clear_caps(c, key)
    anonymous = await admin(c, "GET", LIMITS)
    c.envelope("ADMIN-3", anonymous, 401, "authentication_error", message="missing or invalid admin credentials", what="no credentials")
    wrong = await admin(c, "GET", LIMITS, key="conformance-wrong-key-0123456789abcdefghij")
    c.envelope("ADMIN-3", wrong, 401, "authentication_error", what="an unknown key")
    read_only = await admin(c, "POST", LIMITS, {"scope": {"type": "user", "user_id": NOBODY}, "amount": "1", "period": "daily"}, key=c.state.admin_read_key)
    c.envelope("ADMIN-3", read_only, 403, "permission_error", what="a read key on a write")
    for answer, what in ((anonymous, "401"), (wrong, "401"), (read_only, "403")):
        _request_id_header(c, answer, what)
    if c.suite.signin == "device":
        by_group = await admin(c, "GET", LIMITS, bearer=await c.bearer("admin"))
        c.status("ADMIN-2", by_group, 200, "a bearer whose groups include an admin group")
        by_user = await admin(c, "GET", LIMITS, bearer=await c.bearer("normal"))
        c.envelope("ADMIN-2", by_user, 401, "authentication_error", what="a bearer outside the admin groups")
    created = await admin(c, "POST", LIMITS, {"scope": {"type": "user", "user_id": NOBODY}, "amount": "12345", "period": "monthly", "currency": "USD"}, key=key)
    cap = created.json() if isinstance(created.json(), dict) else {}
    c.status("ADMIN-6", created, 200, "create a cap")
    _request_id_header(c, created, "create")
    for name, want in (("type", "spend_limit"), ("amount", "12345"), ("currency", "USD"), ("period", "monthly"), ("scope", {"type": "user", "user_id": NOBODY})):
        c.equal("ADMIN-6", cap.get(name), want, f"cap {name}")
    c.expect("ADMIN-6", str(cap.get("id", "")).startswith("spl_") and bool(cap.get("created_at")) and bool(cap.get("updated_at")), "id spl_…, created_at, updated_at", observed=cap)
    replaced = await admin(c, "POST", LIMITS, {"scope": {"type": "user", "user_id": NOBODY}, "amount": "54321", "period": "monthly"}, key=key)
    c.equal("ADMIN-6", (replaced.json() or {}).get("id"), cap.get("id"), "the same (scope, period) is replaced, not added")
    for body, field in (
        ({"scope": {"type": "user", "user_id": NOBODY}, "amount": "1", "period": "monthly", "currency": "EUR"}, "currency"),
        ({"scope": {"type": "user", "user_id": NOBODY}, "amount": "12.5", "period": "monthly"}, "amount"),
        ({"scope": {"type": "user", "user_id": NOBODY}, "amount": "1", "period": "hourly"}, "period"),
        ({"scope": {"type": "planet"}, "amount": "1", "period": "monthly"}, "scope"),
    ):
        bad = await admin(c, "POST", LIMITS, body, key=key)
        c.envelope("ADMIN-6", bad, 400, "invalid_request_error", contains=field, what=f"an invalid {field}")
    one = await admin(c, "GET", f"{LIMITS}/{cap.get('id')}", key=key)
    c.expect("ADMIN-7", one.status == 200 and (one.json() or {}).get("id") == cap.get("id"), "read one cap", observed=one.summary())
    c.envelope("ADMIN-7", await admin(c, "GET", f"{LIMITS}/spl_{'0' * 32}", key=key), 404, "not_found_error", what="an unknown id")
    page = await admin(c, "GET", f"{LIMITS}?limit=1", key=key)
    listing = page.json() if isinstance(page.json(), dict) else {}
    c.expect("ADMIN-5", isinstance(listing.get("data"), list) and len(listing["data"]) <= 1 and isinstance(listing.get("has_more"), bool) and "first_id" in listing and "last_id" in listing,
             "{data, has_more, first_id, last_id} honouring limit", observed=page.summary())
    audit = await admin(c, "GET", f"{LIMITS}/audit?limit=2", key=key)
    events = (audit.json() or {}).get("data", []) if isinstance(audit.json(), dict) else []
    c.expect("ADMIN-10", audit.status == 200 and bool(events) and events[0].get("actor") == f"admin-key:{ADMIN_WRITE_KEY_ID}",
             "newest mutation first, with its actor", observed=events[:1])
    normal = c.suite.user("normal")["sub"]
    effective = await admin(c, "GET", f"{LIMITS}/effective?user_ids[]={normal}", key=key)
    rows = arr(obj(effective.json()).get("data"))
    c.expect("ADMIN-9", effective.status == 200 and all(
        isinstance(r, dict) and r.get("period") in ("daily", "weekly", "monthly") and bool(re.match(r"^[0-9]+(\.[0-9]+)?$", str(r.get("period_to_date_spend"))))
        for r in rows
    ), "rows per principal and period, spend as a decimal string of cents", observed=effective.summary())
    gone = await admin(c, "DELETE", f"{LIMITS}/{cap.get('id')}", key=key)
    c.equal("ADMIN-8", gone.json(), {"type": "spend_limit_deleted", "id": cap.get("id")}, "delete answers spend_limit_deleted")
    c.envelope("ADMIN-8", await admin(c, "DELETE", f"{LIMITS}/{cap.get('id')}", key=key), 404, "not_found_error", what="deleting it again")


@check(
    "spend cap reached",
    "SPEND-3", "SPEND-4", "SPEND-10", "SPEND-11", "SPEND-12", "SPEND-13", "SPEND-14", "COUNT-2", "RETRY-1", "RETRY-2",
)
async def spend_blocked(c: Ctx) -> None:
    key, sub = await _capped_admin(c)
    cap = await _set_cap(c, key, sub, "0", "daily")
    try:
        blocked = await _until(c, lambda: c.messages(small_request(), role="admin"), lambda a: a.status == 429)
        await c.fake.reset()
        body = c.envelope("SPEND-10", blocked, 429, "billing_error", no_retry=True, what="a request over a \"0\" cap")
        c.envelope("SPEND-4", blocked, 429, "billing_error", what='an amount of "0" blocks every request')
        message = ((body or {}).get("error") or {}).get("message")
        # Leaving out "the reset part" reads two ways (the whole parenthesis, or
        # only "; resets …"); both are accepted until SPEC §19.3 says which.
        wanted = (f"spend limit reached (daily) · {BLOCKED_MESSAGE}", f"spend limit reached · {BLOCKED_MESSAGE}")
        c.expect("SPEND-11", message in wanted, "the message of a \"0\" cap", observed=message, expected=" or ".join(wanted))
        retry_after = blocked.header("retry-after")
        c.expect("SPEND-12", blocked.header("x-should-retry") == "false", "x-should-retry: false", observed=blocked.header("x-should-retry"))
        c.expect("SPEND-12", retry_after is not None and bool(WHOLE_SECONDS.match(retry_after)), "retry-after in whole seconds", observed=retry_after)
        c.expect("RETRY-1", retry_after is None or bool(WHOLE_SECONDS.match(retry_after)), "retry-after is a whole number", observed=retry_after)
        _judge_rejected_headers(c, blocked)
        _judge_boundary(c, blocked, "daily")
        streaming = await c.messages(small_request(stream=True), role="admin")
        c.envelope("SPEND-10", streaming, 429, "billing_error", what="a streaming request over the cap")
        c.equal("SPEND-10", len(await c.received()), 0, "no upstream call")
        counted = await c.messages({"model": "claude-sonnet-4-6", "messages": []}, role="admin", path="/v1/messages/count_tokens")
        c.status("COUNT-2", counted, 200, "counting is never blocked by a cap")
    finally:
        await admin(c, "DELETE", f"{LIMITS}/{cap['id']}", key=key)


def _judge_rejected_headers(c: Ctx, blocked: Answer) -> None:
    h = blocked.header
    c.equal("SPEND-13", h(UNIFIED + "status"), "rejected", "unified-status")
    for name in ("reset", "overage-reset"):
        c.expect("SPEND-13", bool(WHOLE_SECONDS.match(h(UNIFIED + name) or "")), f"unified-{name} in Unix seconds", observed=h(UNIFIED + name))
    utilization = h(UNIFIED + "overage-utilization") or ""
    c.expect("SPEND-13", bool(TWO_DECIMALS.match(utilization)) and float(utilization) >= 1, "overage-utilization at least 1", observed=utilization)
    c.equal("SPEND-13", h(UNIFIED + "overage-surpassed-threshold"), "1", "overage-surpassed-threshold")
    c.equal("SPEND-13", h(UNIFIED + "overage-period"), "daily", "overage-period")
    c.equal("SPEND-13", h(UNIFIED + "overage-disabled-reason"), "org_spend_cap_reached", "overage-disabled-reason")
    for name in ("representative-claim", "overage-status"):
        c.expect("SPEND-14", h(UNIFIED + name) is None, f"no unified-{name} on the 429", observed=h(UNIFIED + name))


@check(
    "usage-limit headers and spend in dollars",
    "SPEND-3", "SPEND-15", "SPEND-16", "SPEND-17", "SPEND-18", "USAGE-1", "USAGE-2", "USAGE-3", "USAGE-4", "MSG-23",
)
async def usage_headers(c: Ctx) -> None:
    key, sub = await _capped_admin(c)
    uncapped = await c.messages(small_request(), role="normal")
    present = [n for n in uncapped.headers if n.lower().startswith("anthropic-ratelimit-")]
    c.expect("SPEND-17", not present, "a caller with no cap gets no usage-limit headers", observed=present)
    c.expect("MSG-23", not present, "no upstream anthropic-ratelimit-* headers", observed=present)
    cap = await _set_cap(c, key, sub, "1000000", "monthly")
    try:
        answer = await _until(c, lambda: c.messages(small_request(), role="admin"), lambda a: a.header(UNIFIED + "status") is not None)
        h = answer.header
        c.status("SPEND-15", answer, 200, "a capped caller under the cap")
        c.equal("SPEND-15", h(UNIFIED + "status"), "allowed", "unified-status")
        c.equal("SPEND-15", h(UNIFIED + "overage-status"), "allowed", "unified-overage-status")
        c.equal("SPEND-18", h(UNIFIED + "representative-claim"), "overage", "representative-claim")
        utilization = h(UNIFIED + "overage-utilization") or ""
        c.expect("SPEND-15", bool(TWO_DECIMALS.match(utilization)) and float(utilization) < 1, "overage-utilization below 1", observed=utilization)
        for name in ("reset", "overage-reset"):
            c.expect("SPEND-15", bool(WHOLE_SECONDS.match(h(UNIFIED + name) or "")), f"unified-{name} in Unix seconds", observed=h(UNIFIED + name))
        _judge_boundary(c, answer, "monthly")
        c.expect("SPEND-16", h(UNIFIED + "overage-surpassed-threshold") is None, "no surpassed-threshold below 75 %", observed=h(UNIFIED + "overage-surpassed-threshold"))
        await _judge_usage(c, h(UNIFIED + "overage-reset"))
    finally:
        await admin(c, "DELETE", f"{LIMITS}/{cap['id']}", key=key)


async def _judge_usage(c: Ctx, overage_reset: str | None) -> None:
    answer = await c.t.get("/api/oauth/usage", bearer=await c.bearer("admin"))
    if answer.status == 404:
        c.skip("GET /api/oauth/usage answers 404 although the admin API is offered", "USAGE-1", "USAGE-2", "USAGE-3", "USAGE-4")
        return
    c.status("USAGE-1", answer, 200, "GET /api/oauth/usage")
    c.equal("USAGE-1", answer.header("Cache-Control"), "no-store", "Cache-Control")
    doc = obj(answer.json())
    extra = obj(doc.get("extra_usage"))
    c.equal("USAGE-2", (extra.get("is_enabled"), extra.get("monthly_limit"), extra.get("currency")), (True, 1000000, "USD"), "is_enabled, monthly_limit, currency")
    c.expect("USAGE-2", isinstance(extra.get("used_credits"), (int, float)) and isinstance(extra.get("utilization"), (int, float)), "used_credits and utilization are numbers", observed=extra)
    rows = arr(doc.get("limits"))
    c.equal("USAGE-3", len(rows), 1, "one row per applicable cap")
    if rows:
        row = obj(rows[0])
        c.equal("USAGE-3", (row.get("kind"), row.get("group"), row.get("severity"), row.get("is_active")), ("spend", "monthly", "normal", True), "kind, group, severity, is_active")
        c.expect("USAGE-3", isinstance(row.get("percent"), int), "percent is a whole number", observed=row.get("percent"))
        if overage_reset and WHOLE_SECONDS.match(overage_reset):
            want = datetime.fromtimestamp(int(overage_reset), UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            c.equal("USAGE-3", row.get("resets_at"), want, "resets_at is the overage-reset instant, with milliseconds")
    other = await c.t.get("/api/oauth/usage", bearer=await c.bearer("contractor"))
    plain = obj(other.json())
    free = obj(plain.get("extra_usage"))
    c.equal("USAGE-4", plain.get("limits"), [], "an uncapped caller has no limit rows")
    c.equal("USAGE-4", (free.get("monthly_limit"), free.get("utilization")), (None, None), "monthly_limit and utilization are null")
    for period in ("daily", "weekly"):
        part = obj(free.get(period))
        c.expect("USAGE-4", part.get("limit") is None and part.get("utilization") is None and isinstance(part.get("used_credits"), (int, float)),
                 f"{period}: limit null, used_credits a number", observed=part)


@check("which cap applies", "SPEND-2")
async def cap_precedence(c: Ctx) -> None:
    key, sub = await _capped_admin(c)
    await _set_cap(c, key, sub, "0", "daily", group=ADMIN_GROUP)
    try:
        blocked = await _until(c, lambda: c.messages(small_request(), role="admin"), lambda a: a.status == 429)
        c.equal("SPEND-2", blocked.status, 429, "a group's \"0\" cap applies to its member")
        own = await _set_cap(c, key, sub, None, "daily")
        allowed = await _until(c, lambda: c.messages(small_request(), role="admin"), lambda a: a.status == 200)
        c.equal("SPEND-2", allowed.status, 200, "the member's own (unlimited) cap wins over the group's")
        await admin(c, "DELETE", f"{LIMITS}/{own['id']}", key=key)
    finally:
        await _clear_caps(c, key)
