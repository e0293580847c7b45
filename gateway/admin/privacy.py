"""What the gateway stores about one person, exported or erased (``gatehouse privacy``).

A person is found by email (any letter case) and by every OIDC subject that
email is stored with (principals, sign-in families, device grants, usage rows).
From those, the tables that can name them: ``principals``,
``session_families`` (and their ``session_refresh_tokens``), ``device_grants``,
``usage_records``, ``usage_daily``, ``spend_counters`` (``user`` rows),
``spend_reservations``, ``spend_limits`` (caps on them, caps they created as an
OIDC admin), ``admin_audit`` (entries mentioning the email or a subject
anywhere) and ``rate_counters`` (keyed by the addresses they signed in from).

Erasure, in one transaction (so it happens entirely or not at all):

* live sign-in families are revoked on every replica (the notification goes
  out when the transaction commits), then keep only what revocation needs;
  refresh tokens, device grants, last-seen identities and rate counters go;
* what the totals need stays, under a pseudonym ``erased:<HMAC of the
  subject>``: usage rows (without the email), daily sums, spend counters,
  reservations, caps, audit entries (every mention of the email or subject
  replaced). The pseudonym is keyed with a secret derived from the first
  ``session.jwt_secret``, so nobody without it can test a subject against it,
  and it is the same for the same subject, so a second erasure merges into
  the first's rows;
* an ``admin_audit`` entry records it: actor ``cli``, action
  ``privacy.erase``, target the pseudonym, counts per table; never the email.

Caps after an erasure: group pool counters are the group's and keep every
micro-dollar the person spent, so shared budgets hold exactly; per-person
counters and caps move to the pseudonym, which no one signs in as. Erasure is
for people who have left: block them at the IdP first. A subject that does
sign in again starts with fresh per-person counters for the periods under way.
A request in flight during the erasure can still write under the subject once
it ends (its usage row, the settlement of a leased request, a last-seen
identity); the result says so (``in_flight``) and running the erasure again a
minute later catches it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from gateway.db.store import queries, unavailable_as
from gateway.errors import Fault, Party

ACTOR = "cli"
PSEUDONYM_PREFIX = "erased:"
# Rate-limit keys of the sign-in endpoints, per client address (gateway/http/signin.py).
RATE_KEY_PREFIXES = ("devauth:", "verify:")


class UnknownPerson(Fault, LookupError):
    """Nothing is stored under that email (the operator named someone we never saw)."""

    fault = Party.CLIENT


@dataclass(frozen=True)
class Erasure:
    """What an erasure did: rows changed per table, and the pseudonyms now standing in."""

    pseudonyms: tuple[str, ...]
    counts: dict[str, int]
    in_flight: int  # reservations still open: requests that may write once more after the erasure


# ---------------------------------------------------------------- pure helpers


def pseudonym_key(secret: str) -> bytes:
    """The HMAC key for pseudonyms, derived from a session secret (never used as it is)."""
    return hmac.new(secret.encode(), b"gatehouse privacy pseudonym", hashlib.sha256).digest()


def pseudonym(key: bytes, sub: str) -> str:
    """``erased:`` and 32 hex digits: the same for the same subject and key, unguessable without the key."""
    return PSEUDONYM_PREFIX + hmac.new(key, sub.encode(), hashlib.sha256).hexdigest()[:32]


def like_patterns(terms: Iterable[str]) -> list[str]:
    """ILIKE patterns matching text that contains any of ``terms`` (``%``, ``_`` and ``\\`` escaped)."""
    return ["%" + re.sub(r"([\\%_])", r"\\\1", t) + "%" for t in terms if t]


def scrub(value: Any, replacements: Mapping[str, str]) -> Any:
    """``value`` (JSON data or text) with every occurrence of each key replaced, in any letter case."""
    if not replacements:
        return value
    # Longest first, so an email is replaced before a subject it happens to contain.
    pattern = re.compile("|".join(re.escape(k) for k in sorted(replacements, key=len, reverse=True)), re.I)
    lowered = {k.lower(): v for k, v in replacements.items()}

    def text(s: str) -> str:
        return pattern.sub(lambda m: lowered[m.group(0).lower()], s)

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return text(v)
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {text(k): walk(x) for k, x in v.items()}
        return v

    return walk(value)


def rate_keys(addresses: Iterable[str | None]) -> list[str]:
    return sorted({p + a for a in addresses if a for p in RATE_KEY_PREFIXES})


def jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    """One database row as JSON values: times as ISO 8601, bytes as hex, JSON columns parsed."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, datetime | date):
            value = value.isoformat()
        elif isinstance(value, bytes | bytearray | memoryview):
            value = bytes(value).hex()
        elif isinstance(value, list | tuple):
            value = [x.isoformat() if isinstance(x, datetime) else x for x in value]
        elif key in ("groups", "before", "after") and isinstance(value, str):
            value = json.loads(value)
        out[key] = value
    return out


# Secrets stored sealed are shown only as present or absent.
_SEALED = ("idp_refresh_token",)


def _redact_sealed(row: dict[str, Any]) -> dict[str, Any]:
    for key in _SEALED:
        if key in row:
            row[key] = None if row[key] is None else "(sealed)"
    return row


# ---------------------------------------------------------------- database edge


async def find_subjects(conn: Any, email: str) -> list[str]:
    return [r["sub"] for r in await conn.fetch(queries()["privacy_subs"], email)]


async def export(pool: Any, email: str) -> dict[str, Any]:
    """Everything stored about the person with ``email``, per table, as JSON data (read in one snapshot)."""
    q = queries()
    with unavailable_as("privacy export"):
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            subs = await find_subjects(conn, email)
            tables = await _gather(conn, q, email, subs)
    return {"email": email, "subjects": subs, "tables": tables}


async def _gather(conn: Any, q: dict[str, str], email: str, subs: list[str]) -> dict[str, list[dict[str, Any]]]:
    def rows(found: Iterable[Any]) -> list[dict[str, Any]]:
        return [_redact_sealed(jsonable(dict(r))) for r in found]

    families = rows(await conn.fetch(q["privacy_session_families"], subs, email))
    grants = rows(await conn.fetch(q["privacy_device_grants"], subs, email))
    addresses = [r["client_ip"] for r in families + grants]
    return {
        "principals": rows(await conn.fetch(q["privacy_principals"], subs, email)),
        "session_families": families,
        "session_refresh_tokens": rows(
            await conn.fetch(q["privacy_refresh_tokens"], [f["family_id"] for f in families])
        ),
        "device_grants": grants,
        "usage_records": rows(await conn.fetch(q["privacy_usage_records"], subs, email)),
        "usage_daily": rows(await conn.fetch(q["privacy_usage_daily"], subs)),
        "spend_counters": rows(await conn.fetch(q["privacy_spend_counters"], subs)),
        "spend_reservations": rows(await conn.fetch(q["privacy_spend_reservations"], subs)),
        "spend_limits": rows(await conn.fetch(q["privacy_spend_limits"], subs, [f"oidc:{s}" for s in subs])),
        "admin_audit": rows(await conn.fetch(q["privacy_admin_audit"], like_patterns([email, *subs]))),
        "rate_counters": rows(await conn.fetch(q["privacy_rate_counters"], rate_keys(addresses))),
    }


async def erase(pool: Any, email: str, key: bytes, now: datetime, *, actor: str = ACTOR) -> Erasure:
    """Delete or pseudonymise every row about the person with ``email``, in one transaction.

    Raises :class:`UnknownPerson` when nothing names them (nothing is changed then).
    """
    q = queries()
    with unavailable_as("privacy erase"):
        async with pool.acquire() as conn, conn.transaction():
            subs = await find_subjects(conn, email)
            audit_rows = await conn.fetch(q["privacy_admin_audit"], like_patterns([email, *subs]))
            if not subs and not audit_rows:
                raise UnknownPerson(email)
            aliases = [pseudonym(key, s) for s in subs]
            # An email with no subject left (only audit entries name it) gets a pseudonym of its own.
            target = aliases[0] if aliases else pseudonym(key, "email:" + email.lower())
            counts = await _erase_rows(conn, q, email, subs, aliases, now)
            replacements = {email: target, **dict(zip(subs, aliases, strict=True))}
            counts["admin_audit"] = await _scrub_audit(conn, q, audit_rows, replacements)
            in_flight = counts.pop("in_flight")
            await conn.fetchval(
                q["admin_audit_insert"], now, actor, "privacy.erase", target, None,
                json.dumps({"pseudonyms": aliases, "rows": counts}),
                "personal data erased (gatehouse privacy erase)",
            )
            await conn.fetchval(q["admin_notify_limits"], target)  # caps on the person moved
    return Erasure(tuple(aliases), counts, in_flight)


async def _erase_rows(
    conn: Any, q: dict[str, str], email: str, subs: list[str], aliases: list[str], now: datetime
) -> dict[str, int]:
    """Every table but admin_audit, in the order that keeps locks in the spend functions' order."""
    families = await conn.fetch(q["privacy_session_families"], subs, email)
    grants = await conn.fetch(q["privacy_device_grants"], subs, email)
    keys = rate_keys([r["client_ip"] for r in [*families, *grants]])
    counts: dict[str, int] = {}
    counts["sessions_revoked"] = len(await conn.fetch(q["privacy_erase_revoke"], subs, email, now))
    counts["session_families"] = len(await conn.fetch(q["privacy_erase_sessions"], subs, aliases))
    counts["device_grants"] = _count(await conn.execute(q["privacy_erase_device_grants"], subs, email))
    await conn.execute(q["privacy_lock_spend_reservations"], subs)
    changed = await conn.fetchrow(q["privacy_erase_spend_reservations"], subs, aliases)
    counts["spend_reservations"], counts["in_flight"] = changed["changed"], changed["open"]
    await conn.execute(q["privacy_lock_spend_counters"], [*subs, *aliases])
    counts["spend_counters"] = await conn.fetchval(q["privacy_erase_spend_counters"], subs, aliases, now)
    await conn.execute(q["privacy_erase_limits_superseded"], subs, aliases)
    scoped = _count(await conn.execute(q["privacy_erase_spend_limits"], subs, aliases))
    counts["spend_limits"] = scoped + _count(await conn.execute(q["privacy_erase_limit_creators"], subs, aliases))
    counts["principals"] = _count(await conn.execute(q["privacy_erase_principals"], subs, email))
    counts["usage_records"] = _count(await conn.execute(q["privacy_erase_usage_records"], subs, aliases))
    counts["usage_daily"] = await conn.fetchval(q["privacy_erase_usage_daily"], subs, aliases, now)
    counts["rate_counters"] = _count(await conn.execute(q["privacy_erase_rate_counters"], keys))
    return counts


async def _scrub_audit(conn: Any, q: dict[str, str], found: list[Any], replacements: dict[str, str]) -> int:
    for r in found:
        before = None if r["before"] is None else json.dumps(scrub(json.loads(r["before"]), replacements))
        after = None if r["after"] is None else json.dumps(scrub(json.loads(r["after"]), replacements))
        await conn.execute(
            q["privacy_erase_audit_row"], r["id"], scrub(r["actor"], replacements),
            scrub(r["target"], replacements), before, after, scrub(r["reason"], replacements),
        )
    return len(found)


def _count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 3" or "UPDATE 2".
    return int(status.rsplit(" ", 1)[-1])
