"""The ``gatehouse`` command.

Every subcommand takes ``--config FILE``. Exit codes: 0 success, 1 runtime
failure, 2 configuration error (nothing was bound or written).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import gateway
from gateway import audit


def _load(path: str, *, expand: bool = True) -> Any:
    from gateway.config.load import ConfigError, load

    try:
        cfg = load(path, os.environ, expand=expand)
    except ConfigError as err:
        sys.stderr.write(f"gatehouse: invalid configuration in {path}:\n{err}\n")
        raise SystemExit(2) from None
    except OSError as err:
        sys.stderr.write(f"gatehouse: cannot read {path}: {err.strerror}\n")
        raise SystemExit(2) from None
    audit.use_config_format(cfg.gatehouse.log_format)
    return cfg


def cmd_check_config(args: argparse.Namespace) -> int:
    """Exits like ``serve`` would at boot: 2 on what serve refuses (config errors and
    features not supported yet), after printing the effective config."""
    import yaml

    from gateway.config.load import redacted, unsupported_features

    cfg = _load(args.config, expand=not args.no_env)
    if args.no_env:
        sys.stdout.write("# --no-env: ${...} references are shown as written and were not checked\n")
    sys.stdout.write(yaml.safe_dump(redacted(cfg), sort_keys=False))
    for warning in boot_warnings(cfg):
        sys.stdout.write(f"# warning: {warning}\n")
    _egress_or_exit()
    missing = unsupported_features(cfg) + missing_extras(cfg)
    if missing:
        sys.stdout.write("\n# switched on here but not supported by Gatehouse yet (serve refuses this file):\n")
        for feature in missing:
            sys.stdout.write(f"#   {feature}\n")
            sys.stderr.write(f"gatehouse: {feature}\n")
        return 2
    sys.stdout.write("\n# every feature switched on here is supported\n")
    return 0


def _refuse_unsupported(cfg: Any) -> None:
    from gateway.config.load import unsupported_features

    missing = unsupported_features(cfg) + missing_extras(cfg)
    if missing:
        for feature in missing:
            sys.stderr.write(f"gatehouse: {feature}\n")
        raise SystemExit(2)
    _egress_or_exit()


def missing_extras(cfg: Any) -> list[str]:
    """Features switched on whose optional packages are not installed."""
    import importlib.util

    from gateway.upstreams.azure_credentials import MISSING_EXTRA

    try:
        installed = importlib.util.find_spec("azure.identity") is not None
    except ModuleNotFoundError:  # not even the azure namespace
        installed = False
    return [
        f"upstreams[{i}].auth.use_azure_ad: {MISSING_EXTRA}"
        for i, up in enumerate(cfg.upstreams)
        if up.provider == "foundry" and up.auth.use_azure_ad and not installed
    ]


def _egress_or_exit() -> Any:
    """The proxy settings of this process's environment; exit 2 on ones it cannot use
    (going direct instead would quietly bypass the egress the operator set up)."""
    from gateway.upstreams.egress import Egress, EgressError

    try:
        return Egress.from_env(os.environ, allow_loopback=os.environ.get("CLAUDE_GATEWAY_ALLOW_LOOPBACK") == "1")
    except EgressError as err:
        sys.stderr.write(f"gatehouse: {err}\n")
        raise SystemExit(2) from None


def boot_warnings(cfg: Any, *, in_container: bool | None = None) -> list[str]:
    """Things that boot but probably aren't what the operator meant.

    ``in_container`` is what :func:`running_in_container` finds unless given.
    """
    from gateway.policy import desktop
    from gateway.policy.policies import Policies
    from gateway.upstreams.routing import Routes

    catalog = tuple(e.id for e in Routes(cfg.upstreams, cfg.models, cfg.auto_include_builtin_models).catalog)
    warnings = [
        *cfg.load_warnings, *Policies(cfg, catalog, None).warnings, *desktop.boot_warnings(cfg), *_egress_warnings(cfg)
    ]
    if not cfg.access_control.allow_cidrs and cfg.listen.host not in ("127.0.0.1", "::1", "localhost"):
        warnings.append(
            "access_control.allow_cidrs is empty: any address that reaches this port may use the gateway; "
            "consider the private ranges (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, 127.0.0.0/8, ::1/128, fc00::/7)"
        )
    if cfg.load_test_mode is not None and cfg.load_test_mode.enabled:
        warnings.append(
            "load_test_mode is on: requests are signed but never sent upstream, and every reply is canned; "
            "never point developers at this gateway"
        )
    if _loopback_only(cfg.listen.host) and (running_in_container() if in_container is None else in_container):
        warnings.append(
            f"listen.host is {cfg.listen.host} inside a container: only processes in this container can connect, "
            "and a published port (-p 8080:8080) gets no answer; set listen.host: 0.0.0.0 to serve from the container"
        )
    return warnings


def _egress_warnings(cfg: Any) -> list[str]:
    from gateway.upstreams.egress import Egress, EgressError

    try:
        egress = Egress.from_env(os.environ, allow_loopback=os.environ.get("CLAUDE_GATEWAY_ALLOW_LOOPBACK") == "1")
    except EgressError:
        return []  # serve and check-config refuse it with the reason
    out = list(egress.notices())
    if cfg.oidc is not None:
        idp = egress.idp_notice(cfg.oidc.use_proxy)
        if idp is not None:
            out.append(idp)
    return out


def _loopback_only(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: cannot tell, so no warning


def running_in_container(
    exists: Callable[[str], bool] = os.path.exists, environ: Mapping[str, str] = os.environ
) -> bool:
    """Whether this process runs in a container, by the marks the usual runtimes leave:
    Docker's /.dockerenv, Podman's /run/.containerenv, and the ``container``
    variable that Podman, systemd-nspawn and LXC set for the container's first process."""
    return exists("/.dockerenv") or exists("/run/.containerenv") or bool(environ.get("container"))


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.app import server

    cfg = _load(args.config)
    _refuse_unsupported(cfg)
    audit.capture_library_logging()
    audit.emit("config.load", path=cfg.path, sha256=cfg.sha256)
    for warning in boot_warnings(cfg):
        audit.log("warn", warning)
    # Migrate once here, before any worker starts, so workers boot against a
    # ready schema (the advisory lock would make concurrent runs safe anyway).
    _migrate(cfg, serving=True)
    return server.run(cfg, workers=args.workers)


def _migrate(cfg: Any, *, serving: bool = False) -> None:
    from gateway.db.store import SpentDatabase, Store, StoreUnavailable

    async def go() -> None:
        store = await Store.open(cfg.store, log=audit.log)
        try:
            await store.migrate()
            if serving and cfg.load_test_mode is not None and cfg.load_test_mode.enabled:
                await store.refuse_spent_for_load_test()
        finally:
            await store.close()

    try:
        asyncio.run(go())
    except (StoreUnavailable, SpentDatabase) as err:
        sys.stderr.write(f"gatehouse: {err}\n")
        raise SystemExit(1) from None


def cmd_migrate(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    _migrate(cfg)
    audit.log("info", "migrations are up to date")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from gateway.app.build import token_service

    cfg = _load(args.config)
    tokens = token_service(cfg)
    groups = [g for g in (args.groups or "").split(",") if g]
    sub = args.sub or "user-" + hashlib.sha256(args.email.lower().encode()).hexdigest()[:16]
    token = tokens.mint(
        sub=sub,
        email=args.email,
        name=args.name,
        groups=groups,
        sid=uuid.uuid4().hex,
        now=int(time.time()),
        ttl_seconds=args.ttl_seconds,
    )
    sys.stdout.write(token + "\n")
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    """List or revoke a person's sign-in families, by email (same mechanism as /oauth/revoke)."""
    from gateway.app import sessions_cli
    from gateway.app.build import token_service
    from gateway.auth.session_store import SessionService
    from gateway.db.store import Store, StoreUnavailable

    if args.action != "audit-secrets" and not args.email:
        sys.stderr.write(f"gatehouse: sessions {args.action} needs --email\n")
        return 2
    if args.keep < 1:
        sys.stderr.write("gatehouse: sessions audit-secrets: --keep must be at least 1 (the current secret)\n")
        return 2
    cfg = _load(args.config)
    tokens = token_service(cfg)

    async def go() -> int:
        store = await Store.open(cfg.store, log=audit.log)
        try:
            service = SessionService(store, tokens, secrets=tuple(cfg.session.secrets))
            if args.action == "audit-secrets":
                return await _audit_secrets(store, tuple(cfg.session.secrets), args)
            if args.action == "list":
                families = await service.list_families(args.email)
                sessions_cli.print_list(sys.stdout, args.email, families, as_json=args.json)
                return 0
            count = await service.revoke_email(args.email, args.reason)
            sessions_cli.print_revoked(sys.stdout, args.email, count, as_json=args.json)
            return 0
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except StoreUnavailable as err:
        sys.stderr.write(f"gatehouse: {err}\n")
        return 1


async def _audit_secrets(store: Any, secrets: tuple[str, ...], args: argparse.Namespace) -> int:
    """Count stored sealed tokens by the secret that opens them; 3 while one needs a secret past --keep."""
    from datetime import UTC, datetime

    from gateway.app import sessions_cli
    from gateway.auth import resealing

    counts = await resealing.audit(store.pool, resealing.idp_sealer(secrets), datetime.now(UTC))
    blocked = resealing.blocking(counts, args.keep)
    sessions_cli.print_secret_audit(sys.stdout, counts, len(secrets), args.keep, blocked, as_json=args.json)
    return 0 if blocked == 0 else 3


def cmd_privacy(args: argparse.Namespace) -> int:
    """Export or erase what is stored about one person (gateway/admin/privacy.py)."""
    from gateway.app import privacy_cli

    return privacy_cli.main(args, _load(args.config))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatehouse", description="A self-hosted gateway for Claude Code.")
    p.add_argument("--version", action="version", version=f"gatehouse {gateway.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", required=True)
    s.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser(
        "check-config",
        help="validate a config as serve would (exit 2 on what serve refuses) and print it with secrets masked",
    )
    c.add_argument("--config", required=True)
    c.add_argument(
        "--no-env",
        action="store_true",
        help="check a template's structure without its secrets: ${VAR} and ${file:...} are neither "
        "required nor read; everything else is validated",
    )
    c.set_defaults(func=cmd_check_config)

    t = sub.add_parser("token", help="mint a session token (operators, load tests, tests)")
    t.add_argument("--config", required=True)
    t.add_argument("--email", required=True)
    t.add_argument("--sub")
    t.add_argument("--name")
    t.add_argument("--groups", help="comma-separated IdP groups")
    t.add_argument("--ttl-seconds", type=int, default=None)
    t.set_defaults(func=cmd_token)

    ss = sub.add_parser(
        "sessions", help="list or revoke a person's sign-in sessions; audit which jwt_secret stored tokens need"
    )
    ss.add_argument("action", choices=("list", "revoke", "audit-secrets"))
    ss.add_argument("--config", required=True)
    ss.add_argument("--email", help="whose sessions (list and revoke; required there)")
    ss.add_argument("--reason", default="admin_revoke", help="recorded in the audit event (revoke only)")
    ss.add_argument(
        "--keep", type=int, default=1, metavar="N",
        help="audit-secrets: the number of leading jwt_secret entries you will keep (default 1: only the "
        "current one); exits 3 while a stored token still needs a secret past them",
    )  # fmt: skip
    ss.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ss.set_defaults(func=cmd_sessions)

    from gateway.app import privacy_cli  # stdlib only at import time

    pv = sub.add_parser("privacy", help="export or erase everything stored about one person, by email")
    privacy_cli.add_arguments(pv)
    pv.set_defaults(func=cmd_privacy)

    from gateway.app import limits_cli  # stdlib only at import time

    lm = sub.add_parser("limits", help="list, set and delete spend limits through a running gateway's admin API")
    limits_cli.add_arguments(lm)
    lm.set_defaults(func=limits_cli.main)

    m = sub.add_parser("migrate", help="apply database migrations and exit")
    m.add_argument("--config", required=True)
    m.set_defaults(func=cmd_migrate)

    from gateway.app import healthcheck_cli  # stdlib only at import time

    hc = sub.add_parser("healthcheck", help="exit 0 when this machine's gateway answers /healthz (container health checks)")
    healthcheck_cli.add_arguments(hc)
    hc.set_defaults(func=healthcheck_cli.main)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    problem = audit.format_error()
    if problem:
        sys.stderr.write(f"gatehouse: {problem}\n")
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
