"""How ``gatehouse sessions`` prints: a table for people, ``--json`` for scripts.

Pure: values in, text out. Same look as ``gatehouse limits`` (aligned columns
under an upper-case header; ``--json`` is ``{"data": [...]}``), so an operator
reads both the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from gateway.app.cli_output import print_json, table

if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import Mapping

    from gateway.auth.session_store import FamilyInfo

HEADER = ["FAMILY", "STATE", "SUB", "EMAIL", "GROUPS", "SIGNED IN", "LAST REFRESH", "REFRESHES", "ENDS", "CLIENT IP"]


def _when(at: datetime | None) -> str | None:
    """RFC 3339 in UTC to the second: the same text in the table and in JSON."""
    if at is None:
        return None
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def family_doc(fam: FamilyInfo) -> dict[str, Any]:
    """One family as JSON: every field, times as RFC 3339 strings, groups as a list."""
    doc = fam._asdict()
    for key, value in doc.items():
        if isinstance(value, datetime):
            doc[key] = _when(value)
    doc["groups"] = list(fam.groups)
    return doc


def _state(fam: FamilyInfo) -> str:
    return f"revoked ({fam.revoke_reason})" if fam.state == "revoked" and fam.revoke_reason else fam.state


def _ends(fam: FamilyInfo) -> str:
    """When an active family stops working by itself; "-" once it is over."""
    if fam.state != "active":
        return "-"
    # Without a refresh token the family lasts as long as its newest access token.
    return _when(fam.expires_at if fam.refreshable else min(fam.expires_at, fam.last_access_exp)) or ""


def print_list(out: TextIO, email: str, families: list[FamilyInfo], *, as_json: bool) -> None:
    if as_json:
        print_json(out, {"data": [family_doc(f) for f in families]})
        return
    rows = [
        [
            f.family_id,
            _state(f),
            f.sub,
            f.email or "",
            ",".join(f.groups),
            _when(f.created_at) or "",
            _when(f.last_refresh_at) or "-",
            str(f.refresh_count),
            _ends(f),
            f.client_ip or "",
        ]
        for f in families
    ]
    table(out, HEADER, rows, empty=f"no sign-in sessions for {email}")


def print_revoked(out: TextIO, email: str, count: int, *, as_json: bool) -> None:
    if as_json:
        print_json(out, {"email": email, "revoked": count})
    else:
        out.write(f"revoked {count} sign-in session(s) for {email}\n")


def _secret_label(index: int | None, keep: int) -> str:
    if index is None:
        return "none (unreadable)"
    role = "current" if index == 0 else ("kept" if index < keep else "to drop")
    return f"{index} ({role})"


def print_secret_audit(
    out: TextIO, counts: Mapping[str, Counter[int | None]], configured: int, keep: int, blocked: int, *, as_json: bool
) -> None:
    """Stored sealed tokens per table by the ``jwt_secret`` index that opens them, and the verdict."""
    tables = list(counts)
    indexes: list[int | None] = [*range(configured), None]
    dropped = list(range(keep, configured))
    if as_json:
        print_json(
            out,
            {
                "configured_secrets": configured,
                "keep": keep,
                "data": [
                    {"secret_index": i, **{t: counts[t].get(i, 0) for t in tables}} for i in indexes
                ],
                "blocking": blocked,
                "safe_to_drop": blocked == 0,
            },
        )
        return
    rows = [[_secret_label(i, keep), *(str(counts[t].get(i, 0)) for t in tables)] for i in indexes]
    table(out, ["SECRET", *(t.upper().replace("_", " ") for t in tables)], rows, empty="")
    if not dropped:
        out.write(f"all {configured} configured secret(s) are kept: nothing to drop\n")
    elif blocked:
        out.write(
            f"NOT safe to drop secret(s) {', '.join(map(str, dropped))}: {blocked} stored token(s) open only under "
            "them; keep them until the re-seal job (every replica booted with the new secret first) or "
            "refreshes have moved them, and run this again\n"
        )
    else:
        out.write(f"safe to drop secret(s) {', '.join(map(str, dropped))}: no stored token needs them\n")
    unreadable = sum(counts[t].get(None, 0) for t in tables)
    if unreadable:
        out.write(f"{unreadable} stored token(s) open under no configured secret: those people sign in again\n")
