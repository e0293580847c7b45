"""Command line of the conformance suite: ``fixtures`` and ``run`` (see the package docstring)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from protocol_spec.conformance import fixtures, profiles


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m protocol_spec.conformance",
        description="Conformance suite for the Claude Code gateway protocol (protocol_spec/SPEC.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fx = commands.add_parser("fixtures", help="start the fake upstream and the test IdP; write gateway.yaml, .env and state")
    fx.add_argument("--config-out", default="gateway.yaml", help="where to write gateway.yaml (default: %(default)s)")
    fx.add_argument("--gateway-port", type=int, default=None, help="port the gateway will listen on (default: a free one)")
    fx.add_argument(
        "--postgres-url",
        default=os.environ.get(fixtures.ENV_NAMES["postgres_url"]),
        help=f"database for the gateway, written to the env file (default: ${fixtures.ENV_NAMES['postgres_url']})",
    )
    fx.add_argument(
        "--no-gatehouse-section",
        dest="gatehouse_section",
        action="store_false",
        help="leave out what only Gatehouse reads: its `gatehouse:` section and the gRPC telemetry destination "
        "(for gateways that refuse unknown keys; the checks of Gatehouse's telemetry extensions then SKIP)",
    )
    fx.add_argument(
        "--no-cloud-upstreams",
        dest="cloud_upstreams",
        action="store_false",
        help="no Bedrock or Vertex upstream in the config (for gateways that serve only the Anthropic API; the cloud checks then SKIP)",
    )
    fx.add_argument(
        "--no-telemetry",
        dest="telemetry",
        action="store_false",
        help="no fake OTLP collector and no telemetry section in the config (the telemetry relay checks then SKIP)",
    )
    fx.add_argument("--quiet", action="store_true", help="do not print the config and env")
    run = commands.add_parser("run", help="run the checks against a gateway started with the fixtures' config")
    run.add_argument("--base-url", default=None, help="the gateway's URL (default: the fixtures' public_url)")
    run.add_argument("--fixtures", default="gateway.fixtures.json", help="state file written by `fixtures` (default: %(default)s)")
    run.add_argument("--signin", choices=["device", "token"], default=None, help="how to get bearer tokens (default: device, or token with --token)")
    run.add_argument("--token", default=None, help="a bearer token for the fixture's normal user (skips sign-in checks)")
    run.add_argument("--admin-key", default=None, help="a write key of the gateway's admin section (enables spend and admin checks)")
    run.add_argument("--json", dest="json_out", default=None, help="write the JSON report here")
    run.add_argument("--only", action="append", default=[], help="run only checks whose name contains this, or that cover this ID or prefix (repeatable)")
    run.add_argument(
        "--profile",
        choices=list(profiles.PROFILES),
        default=profiles.DEFAULT_PROFILE,
        help="which requirements to judge: protocol = those whose source is the published protocol or the observed wire "
        "(for your own gateway); gatehouse = all, Gatehouse's own decisions included (default: %(default)s)",
    )
    run.add_argument(
        "--ping-interval",
        type=float,
        default=fixtures.PROTOCOL_PING_INTERVAL_S,
        help="seconds of Bedrock silence after which the gateway writes a ping (SSE-4); the check holds a stream silent "
        "somewhat longer (default: the protocol's %(default)g; Gatehouse with the fixtures' `gatehouse:` section: "
        f"{fixtures.GATEHOUSE_PING_INTERVAL_S:g})",
    )
    run.add_argument("--strict", action="store_true", help="also fail when a MUST was skipped")
    run.add_argument("--quiet", action="store_true", help="no per-check progress on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "fixtures":
        config_out = Path(args.config_out)
        return asyncio.run(
            fixtures.serve(
                config_out,
                gateway_port=args.gateway_port,
                postgres_url=args.postgres_url,
                quiet=args.quiet,
                gatehouse_section=args.gatehouse_section,
                cloud_upstreams=args.cloud_upstreams,
                telemetry=args.telemetry,
            )
        )
    from protocol_spec.conformance import runner

    signin = args.signin or ("token" if args.token else "device")
    if signin == "token" and not args.token:
        print("--signin token needs --token", file=sys.stderr)
        return 2
    options = runner.Options(
        base_url=args.base_url,
        fixtures=args.fixtures,
        signin=signin,
        token=args.token,
        admin_key=args.admin_key,
        json_out=args.json_out,
        only=args.only,
        strict=args.strict,
        quiet=args.quiet,
        profile=args.profile,
        ping_interval_s=args.ping_interval,
    )
    return runner.main(options)


if __name__ == "__main__":
    raise SystemExit(main())
