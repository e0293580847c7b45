"""``gatehouse privacy export|erase``: one person's stored data, printed or erased.

Straight against the database in ``store.postgres_url`` (the work is in
:mod:`gateway.admin.privacy`); no gateway needs to run. ``export`` prints JSON
on stdout. ``erase`` is permanent: it asks for the email again on a terminal,
and elsewhere runs only with ``--yes``; it prints what it changed as JSON,
never the email.

Exit codes: 0 done, 1 nothing is stored for that email (erase), the erasure was
not confirmed, or the database failed; 2 bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from gateway.app.cli_output import print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("export", "erase"))
    parser.add_argument("--config", required=True)
    parser.add_argument("--email", required=True, help="the person, by email (any letter case)")
    parser.add_argument("--yes", action="store_true", help="erase without asking (erase only)")


def main(
    args: argparse.Namespace,
    cfg: Any,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    ask: Callable[[str], str] | None = None,
    clock: Callable[[], float] | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    if args.action == "erase" and not args.yes and not _confirmed(args.email, err, ask):
        err.write("gatehouse: nothing erased (not confirmed; pass --yes to erase without asking)\n")
        return 1
    from gateway.admin import privacy
    from gateway.db.store import StoreUnavailable

    try:
        return asyncio.run(_run(args, cfg, out, err, clock))
    except StoreUnavailable as exc:
        err.write(f"gatehouse: {exc}\n")
        return 1
    except privacy.UnknownPerson:
        err.write(f"gatehouse: nothing is stored for {args.email}; nothing erased\n")
        return 1


def _confirmed(email: str, err: TextIO, ask: Callable[[str], str] | None) -> bool:
    if ask is None:
        if not sys.stdin.isatty():
            return False
        ask = input
    err.write(f"This permanently erases what Gatehouse stores about {email} and revokes their sessions.\n")
    return ask("Type the email again to go on: ").strip().lower() == email.strip().lower()


async def _run(
    args: argparse.Namespace, cfg: Any, out: TextIO, err: TextIO, clock: Callable[[], float] | None
) -> int:
    import asyncpg

    from gateway.admin import privacy
    from gateway.db.store import Store

    store = await Store.open(cfg.store)
    try:
        if args.action == "export":
            doc = await privacy.export(store.pool, args.email)
            if not doc["subjects"] and not any(doc["tables"].values()):
                err.write(f"gatehouse: nothing is stored for {args.email}\n")
            print_json(out, doc)
            return 0
        now = datetime.fromtimestamp(clock(), UTC) if clock is not None else datetime.now(UTC)
        key = privacy.pseudonym_key(cfg.session.secrets[0])
        done = await privacy.erase(store.pool, args.email, key, now)
    except asyncpg.UndefinedTableError as exc:
        err.write(f"gatehouse: the database is not up to date ({exc}); run gatehouse migrate first\n")
        return 1
    finally:
        await store.close()
    print_json(out, {"erased": True, "pseudonyms": list(done.pseudonyms), "rows": done.counts, "in_flight": done.in_flight})
    if done.in_flight:
        err.write(
            f"gatehouse: {done.in_flight} request(s) were still running and may write once more under the person's "
            "id when they end; run the erasure again in a minute\n"
        )
    return 0
