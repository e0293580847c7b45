"""``gatehouse limits``: manage spend limits through a running gateway's admin API.

It is an HTTP client of the same API anyone else would use, so what it does is
authorized, validated and audited exactly like any other admin call (the audit
actor is the key's id). Standard library only (urllib): it runs where the
operator is, not in the gateway's event loop.

Where it connects: ``--url``, else the config's ``listen.public_url``, else the
listen address. Which key: ``--key``, else ``GATEHOUSE_ADMIN_KEY``, else the
config's first write key (then read key), since whoever can read the config
already holds those. ``--config`` is optional when both URL and key are given,
so it also works from a machine that lacks the gateway's secrets.

Exit codes: 0 done, 1 the gateway refused or could not be reached, 2 bad usage
or configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, TextIO

from gateway.app.cli_output import print_json, table
from gateway.errors import Fault, Party

PATH = "/v1/organizations/spend_limits"
KEY_ENV = "GATEHOUSE_ADMIN_KEY"
TIMEOUT_S = 30.0
# Following pages stops here: enough for any real list, bounded if a gateway misbehaves.
MAX_PAGES = 1000
SCOPE_HELP = "user:<sub>, group:<name> or org"


class CliError(Fault):
    """A command the person typed cannot be carried out; ``code`` is the exit status."""

    fault = Party.CLIENT

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``limits`` actions and options to ``parser`` (the lead's ``limits`` subparser)."""
    _common(parser, None)
    actions = parser.add_subparsers(dest="limits_action", required=True, metavar="ACTION")

    ls = actions.add_parser("list", help="list spend limits")
    ls.add_argument("--scope-type", choices=("user", "group", "org"), help="only caps of this scope type")
    _common(ls, argparse.SUPPRESS)

    st = actions.add_parser("set", help="create or replace the cap of one scope and period")
    st.add_argument("--scope", required=True, help=SCOPE_HELP)
    st.add_argument("--period", required=True, choices=("daily", "weekly", "monthly"))
    st.add_argument("--amount", required=True, help='whole US cents (e.g. 50000 for $500), or "unlimited"')
    st.add_argument(
        "--pooled-cents", help="also a shared monthly budget for the whole group (group + monthly)"
    )
    st.add_argument("--reason", help="recorded in the audit trail")
    _common(st, argparse.SUPPRESS)

    rm = actions.add_parser("delete", help="delete a cap by id")
    rm.add_argument("id", help="spl_… id, as shown by list")
    rm.add_argument("--reason", help="recorded in the audit trail")
    _common(rm, argparse.SUPPRESS)

    ef = actions.add_parser("effective", help="the cap and period-to-date spend that apply to each person")
    ef.add_argument("--user", action="append", default=None, help="a person's sub (repeatable)")
    ef.add_argument("--period", action="append", choices=("daily", "weekly", "monthly"), default=None)
    ef.add_argument("--q", help="case-insensitive match on sub, email or name")
    ef.add_argument(
        "--sort", choices=("spend_desc",), help="highest spend first (needs exactly one --period)"
    )
    _common(ef, argparse.SUPPRESS)

    au = actions.add_parser("audit", help="recent changes, newest first")
    au.add_argument("--limit", type=int, default=20, help="how many events (default 20)")
    _common(au, argparse.SUPPRESS)


def _common(parser: argparse.ArgumentParser, default: Any) -> None:
    # The same options on ``limits`` and on each action, so they may go either
    # before or after the action word. SUPPRESS on the actions keeps a value
    # given before the action from being reset by the action's default.
    parser.add_argument(
        "--config", default=default, help="gateway.yaml (for the URL and, by default, the key)"
    )
    parser.add_argument("--url", default=default, help="the gateway's base URL (default: listen.public_url)")
    parser.add_argument(
        "--key", default=default, help=f"admin API key (default: ${KEY_ENV}, then the config)"
    )
    json_default = False if default is None else default
    parser.add_argument("--json", action="store_true", default=json_default, help="print the raw JSON")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gatehouse limits", description="Manage spend limits through the admin API."
    )
    add_arguments(p)
    return p


# ---------------------------------------------------------------- connection


class Client:
    """A tiny admin API client. ``send`` is the one place that does HTTP."""

    def __init__(self, base_url: str, key: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key

    def send(
        self, method: str, path: str, query: list[tuple[str, str]] | None = None, body: Any = None
    ) -> Any:
        url = self.base_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("x-api-key", self.key)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            raise CliError(_describe_refusal(err, url)) from None
        except urllib.error.URLError as err:
            raise CliError(f"cannot reach the gateway at {self.base_url}: {err.reason}") from None
        except (TimeoutError, ConnectionError) as err:
            raise CliError(f"cannot reach the gateway at {self.base_url}: {err}") from None
        except ValueError:
            raise CliError(f"{url} did not answer with JSON; is --url a Gatehouse gateway?") from None


def _describe_refusal(err: urllib.error.HTTPError, url: str) -> str:
    try:
        doc = json.loads(err.read())
        error = doc["error"]
        text = f"{error['type']}: {error['message']}"
        request_id = doc.get("request_id") or err.headers.get("request-id")
    except (ValueError, KeyError, TypeError):
        text, request_id = err.reason, err.headers.get("request-id")
    hint = ""
    if err.code == 401:
        hint = f" (check --key or ${KEY_ENV})"
    elif err.code == 403:
        hint = " (this key may only read; use a write key)"
    elif err.code == 404 and "not_found" in text and PATH + "/" not in url:
        hint = " (is the admin: section configured on this gateway?)"
    suffix = f" [request-id {request_id}]" if request_id else ""
    return f"the gateway answered {err.code} {text}{hint}{suffix}"


def _base_url(cfg: Any) -> str:
    listen = cfg.listen
    if listen.public_url:
        return listen.public_url
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "::", "") else listen.host
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if listen.tls is not None else "http"
    return f"{scheme}://{host}:{listen.port}"


def _load_config(path: str) -> Any:
    from gateway.config.load import ConfigError, load

    try:
        return load(path, os.environ)
    except ConfigError as err:
        raise CliError(f"invalid configuration in {path}:\n{err}", 2) from None
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror}", 2) from None


def client_for(args: argparse.Namespace, environ: dict[str, str] | os._Environ[str]) -> Client:
    url, key = args.url, args.key or environ.get(KEY_ENV)
    cfg = None
    if args.config and (url is None or key is None):
        cfg = _load_config(args.config)
    if url is None:
        if cfg is None:
            raise CliError("no gateway URL: pass --config FILE or --url URL", 2)
        url = _base_url(cfg)
    if key is None and cfg is not None and cfg.admin is not None:
        keys = list(cfg.admin.write_keys) + list(cfg.admin.read_keys)
        key = keys[0].key if keys else None
    if key is None:
        raise CliError(f"no admin key: pass --key, set ${KEY_ENV}, or give a --config with admin keys", 2)
    return Client(url, key)


# ---------------------------------------------------------------- actions


def parse_scope(text: str) -> dict[str, str]:
    kind, _, name = text.partition(":")
    if kind in ("org", "organization") and not name:
        return {"type": "organization"}
    if kind == "user" and name:
        return {"type": "user", "user_id": name}
    if kind in ("group", "rbac_group") and name:
        return {"type": "rbac_group", "rbac_group_id": name}
    raise CliError(f"--scope {text!r}: expected {SCOPE_HELP}", 2)


def _cents_arg(flag: str, text: str) -> str | None:
    if text.lower() in ("unlimited", "none", "null"):
        return None
    if not text.isdigit():
        raise CliError(
            f"{flag} {text!r}: expected whole US cents as digits (e.g. 50000 for $500) or 'unlimited'", 2
        )
    return str(int(text))


def do_list(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    query = [("limit", "1000")]
    if args.scope_type:
        query.append(
            ("scope_type", {"group": "rbac_group", "org": "organization"}.get(args.scope_type, "user"))
        )
    rows = _all_pages(lambda q: client.send("GET", PATH, q), query, "after_id", lambda d: d["last_id"])
    if args.json:
        print_json(out, {"data": rows})
        return
    table(
        out,
        ["ID", "SCOPE", "PERIOD", "AMOUNT", "POOL", "UPDATED"],
        [
            [
                r["id"],
                _scope_text(r["scope"]),
                r["period"],
                _money(r["amount"]),
                _money(r["pooled_monthly_credit_limit"]) if r.get("pooled_limit_enabled") else "",
                r["updated_at"],
            ]
            for r in rows
        ],
        empty="no spend limits",
    )


def do_set(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    body: dict[str, Any] = {
        "scope": parse_scope(args.scope),
        "amount": _cents_arg("--amount", args.amount),
        "period": args.period,
    }
    if args.pooled_cents is not None:
        pooled = _cents_arg("--pooled-cents", args.pooled_cents)
        if pooled is None:
            raise CliError("--pooled-cents: a pooled budget needs an amount in cents", 2)
        body["pooled_limit_enabled"] = True
        body["pooled_monthly_credit_limit"] = pooled
    if args.reason:
        body["reason"] = args.reason
    doc = client.send("POST", PATH, body=body)
    if args.json:
        print_json(out, doc)
        return
    pool = f", pooled {_money(doc['pooled_monthly_credit_limit'])}" if doc.get("pooled_limit_enabled") else ""
    out.write(f"{doc['id']}: {_scope_text(doc['scope'])} {doc['period']} {_money(doc['amount'])}{pool}\n")


def do_delete(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    query = [("reason", args.reason)] if args.reason else None
    doc = client.send("DELETE", f"{PATH}/{urllib.parse.quote(args.id, safe='')}", query)
    if args.json:
        print_json(out, doc)
        return
    out.write(f"deleted {doc['id']}\n")


def do_effective(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    query = [("user_ids[]", u) for u in args.user or []] + [("period[]", p) for p in args.period or []]
    if args.q:
        query.append(("q", args.q))
    if args.sort:
        query.append(("sort", args.sort))
    query.append(("limit", "1000"))
    rows = _all_pages(
        lambda q: client.send("GET", PATH + "/effective", q), query, "page", lambda d: d["next_page"]
    )
    if args.json:
        print_json(out, {"data": rows})
        return
    table(
        out,
        ["USER", "EMAIL", "PERIOD", "CAP", "SPENT", "SOURCE"],
        [
            [
                r["actor"]["user_id"],
                r["actor"]["email_address"] or "",
                r["period"],
                _money(r["amount"]),
                _money(r["period_to_date_spend"]),
                _scope_text(r["source"]) if r["source"] else "none",
            ]
            for r in rows
        ],
        empty="nobody matched",
    )


def do_audit(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    if not 1 <= args.limit <= 1000:
        raise CliError("--limit: must be from 1 to 1000", 2)
    doc = client.send("GET", PATH + "/audit", [("limit", str(args.limit))])
    if args.json:
        print_json(out, doc)
        return
    table(
        out,
        ["ID", "WHEN", "ACTOR", "ACTION", "TARGET", "CHANGE", "REASON"],
        [
            [e["id"], e["created_at"], e["actor"], e["action"], e["target_id"], _change(e), e["reason"] or ""]
            for e in doc["data"]
        ],
        empty="no changes recorded",
    )


ACTIONS: dict[str, Callable[[Client, argparse.Namespace, TextIO], None]] = {
    "list": do_list,
    "set": do_set,
    "delete": do_delete,
    "effective": do_effective,
    "audit": do_audit,
}


def main(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the parsed ``gatehouse limits`` command; the exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        client = client_for(args, os.environ)
        ACTIONS[args.limits_action](client, args, out)
    except CliError as exc:
        err.write(f"gatehouse limits: {exc}\n")
        return exc.code
    return 0


def run(argv: list[str], *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Parse ``argv`` (the words after ``gatehouse limits``) and run it."""
    return main(parser().parse_args(argv), out=out, err=err)


# ---------------------------------------------------------------- output


def _all_pages(
    fetch: Callable[[list[tuple[str, str]]], Any],
    query: list[tuple[str, str]],
    cursor_param: str,
    next_cursor: Callable[[Any], str | None],
) -> list[Any]:
    rows: list[Any] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        doc = fetch(query + ([(cursor_param, cursor)] if cursor else []))
        rows += doc["data"]
        more = doc.get("has_more", True)
        cursor = next_cursor(doc)
        if not more or not cursor:
            return rows
    raise CliError(f"more than {MAX_PAGES} pages; narrow the query")


def _scope_text(scope: dict[str, Any]) -> str:
    kind = scope["type"]
    if kind == "user":
        return f"user:{scope['user_id']}"
    if kind == "rbac_group":
        return f"group:{scope['rbac_group_id']}"
    return "org" if kind == "organization" else kind


def _money(cents: str | None) -> str:
    """A cents string as dollars, without going through floats."""
    if cents is None:
        return "unlimited"
    whole, _, fraction = cents.partition(".")
    dollars, rest = divmod(int(whole), 100)
    text = f"${dollars:,}.{rest:02d}"
    return text + fraction.rstrip("0") if fraction.rstrip("0") else text


def _change(event: dict[str, Any]) -> str:
    before, after = event.get("before"), event.get("after")

    def terms(doc: Any) -> str:
        if not isinstance(doc, dict) or "amount" not in doc:
            return "-"
        return _money(doc["amount"])

    if before is None and after is not None:
        return f"created {terms(after)}"
    if after is None and before is not None:
        return f"deleted (was {terms(before)})"
    return f"{terms(before)} -> {terms(after)}"
