"""SPEC §26, a person's sign-in sessions over the admin API (ADMIN-13 to ADMIN-17).

A Gatehouse extension (source ``gatehouse``): the protocol profile leaves it
out, and a target whose ``/v1/organizations/sessions`` answers 404 does not
offer it (SKIP). Needs ``--admin-key`` and ``--signin device``: the check signs
people in afresh so the families it ends are its own. It runs last, because
revoking every sign-in of a person also ends the families earlier checks keep
for them.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

from protocol_spec.conformance.checks.signin import REVOCATION_WAIT_S
from protocol_spec.conformance.checks.spend import LIMITS, admin
from protocol_spec.conformance.context import Ctx, Identity, arr, obj
from protocol_spec.conformance.target import Answer
from protocol_spec.conformance.verdicts import Skip, check

SESSIONS = "/v1/organizations/sessions"
SESSION_FIELDS = {
    "type", "id", "user_id", "email_address", "groups", "created_at", "last_refreshed_at",
    "refresh_count", "expires_at", "client_ip", "state", "revoked_at", "revoke_reason",
}


async def _refused_within(c: Ctx, person: Identity) -> Answer:
    """The person's access token on /v1/models until it is refused or the revocation wait passes."""
    deadline = time.monotonic() + REVOCATION_WAIT_S
    while True:
        answer = await c.t.get("/v1/models", bearer=person.access_token)
        if answer.status == 401 or time.monotonic() >= deadline:
            return answer
        await asyncio.sleep(0.25)


@check("sign-in sessions over the admin API", "ADMIN-13", "ADMIN-14", "ADMIN-15", "ADMIN-16", "ADMIN-17", timeout_s=60)
async def sessions_api(c: Ctx) -> None:
    key = c.suite.admin_key
    if not key:
        raise Skip("needs --admin-key (a write key of the target's admin section)")
    if (await admin(c, "GET", f"{SESSIONS}?email=nobody%40example.com", key=key)).status == 404:
        raise Skip("GET /v1/organizations/sessions answers 404: the target does not offer sessions over its admin API")
    if c.suite.signin != "device":
        raise Skip("needs sign-in families of its own: run with --signin device")
    person = await c.suite.fresh_identity("normal")
    family = str(person.claims.get("sid", ""))
    email = c.suite.user("normal")["email"]

    # ADMIN-13: listed in any letter case, by a read key, newest first, in the page shape.
    listed = await admin(c, "GET", f"{SESSIONS}?email={quote(email.upper())}&limit=1000", key=c.state.admin_read_key)
    page = obj(listed.json())
    rows = [obj(r) for r in arr(page.get("data"))]
    c.status("ADMIN-13", listed, 200, "a read key lists a person's sign-ins")
    c.expect("ADMIN-13", {"data", "has_more", "first_id", "last_id"} <= set(page), "the page shape", observed=sorted(page))
    mine = next((r for r in rows if r.get("id") == family), {})
    c.expect("ADMIN-13", bool(mine), "the new sign-in is listed under its sid", observed=[r.get("id") for r in rows], expected=family)
    c.expect("ADMIN-13", set(mine) == SESSION_FIELDS and mine.get("type") == "session", "each entry's fields", observed=sorted(mine))
    c.equal("ADMIN-13", mine.get("state"), "active", "a live sign-in's state")
    created = [str(r.get("created_at")) for r in rows]
    c.expect("ADMIN-13", created == sorted(created, reverse=True), "newest first", observed=created)
    one = obj((await admin(c, "GET", f"{SESSIONS}?email={quote(email)}&limit=1", key=key)).json())
    c.expect("ADMIN-13", len(arr(one.get("data"))) <= 1, "limit is honoured", observed=one)

    # ADMIN-17: bad input is a 400 naming the field.
    c.envelope("ADMIN-17", await admin(c, "GET", SESSIONS, key=key), 400, "invalid_request_error", contains="email", what="no email")
    c.envelope("ADMIN-17", await admin(c, "POST", f"{SESSIONS}/revoke", {"email": 7}, key=key), 400, "invalid_request_error", contains="email", what="a non-string email")
    c.envelope("ADMIN-17", await admin(c, "POST", f"{SESSIONS}/revoke", ["not", "an", "object"], key=key), 400, "invalid_request_error", what="a body that is not an object")

    # ADMIN-16: a read key may not revoke.
    c.envelope("ADMIN-16", await admin(c, "DELETE", f"{SESSIONS}/{family}", key=c.state.admin_read_key), 403, "permission_error", what="a read key revoking")

    # ADMIN-14: revoke one, again, and one nobody has.
    gone = await admin(c, "DELETE", f"{SESSIONS}/{family}", key=key)
    c.equal("ADMIN-14", gone.json(), {"type": "session_revoked", "id": family, "revoked_now": True}, "revoking a live sign-in")
    again = await admin(c, "DELETE", f"{SESSIONS}/{family}", key=key)
    c.equal("ADMIN-14", obj(again.json()).get("revoked_now"), False, "revoking it again")
    c.envelope("ADMIN-14", await admin(c, "DELETE", f"{SESSIONS}/fam_conformance_unknown", key=key), 404, "not_found_error", what="an unknown id")

    # ADMIN-16: it takes effect like /oauth/revoke, and the audit trail has it.
    after = await _refused_within(c, person)
    c.envelope("ADMIN-16", after, 401, "authentication_error", what="the revoked sign-in's access token")
    trail = arr(obj((await admin(c, "GET", f"{LIMITS}/audit?limit=5", key=key)).json()).get("data"))
    entry = next((obj(e) for e in trail if obj(e).get("target_id") == family), {})
    c.expect("ADMIN-16", entry.get("action") == "session.revoke" and entry.get("before") is None and entry.get("after") is None
             and str(entry.get("actor", "")).startswith("admin-key:"), "an audit entry session.revoke with its actor", observed=entry or trail[:2])

    # ADMIN-15: every live sign-in of a person, by email.
    first = await c.suite.fresh_identity("contractor")
    second = await c.suite.fresh_identity("contractor")
    other = c.suite.user("contractor")["email"]
    everything = await admin(c, "POST", f"{SESSIONS}/revoke", {"email": other, "reason": "conformance"}, key=key)
    doc = obj(everything.json())
    ids = {str(i) for i in arr(doc.get("ids"))}
    c.status("ADMIN-15", everything, 200, "revoking every sign-in of a person")
    c.expect("ADMIN-15", doc.get("type") == "sessions_revoked" and doc.get("email_address") == other
             and doc.get("revoked") == len(ids), "{type, email_address, revoked, ids}", observed=doc)
    wanted = {str(first.claims.get("sid")), str(second.claims.get("sid"))}
    c.expect("ADMIN-15", wanted <= ids, "both new sign-ins are among them", observed=sorted(ids), expected=sorted(wanted))
    c.envelope("ADMIN-15", await _refused_within(c, second), 401, "authentication_error", what="a revoked sign-in's access token")
