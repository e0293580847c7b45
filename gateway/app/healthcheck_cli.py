"""``gatehouse healthcheck``: ask this machine's gateway whether it is alive.

For container health checks (the Containerfile's ``HEALTHCHECK``) where the image
has no curl: it finds the port in the same config ``serve`` reads, so the check
follows ``listen.port`` instead of assuming 8080. Standard library only.

It asks ``/healthz`` by default (alive; never touches PostgreSQL), so a database
outage does not get healthy containers replaced; ``--path /readyz`` asks for
readiness instead. A TLS listener is asked over https without checking its
certificate: the certificate names the public host, the probe goes to loopback,
and the question is whether the process answers, not who it is.

Exit codes, as Docker reads them: 0 healthy, 1 anything else (Docker reserves 2,
so configuration problems are 1 here too).
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any

DEFAULT_CONFIG = "/etc/gatehouse/gateway.yaml"
TIMEOUT_S = 4.0
WILDCARDS = ("0.0.0.0", "::", "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"the config serve runs with (default {DEFAULT_CONFIG})")
    parser.add_argument("--url", help="ask this URL instead of the config's listen address")
    parser.add_argument("--path", default="/healthz", help="/healthz (default: alive) or /readyz (ready)")


def local_url(host: str, port: int, tls: bool, path: str) -> str:
    """The URL that reaches a listener on ``host:port`` from the same machine."""
    if host in WILDCARDS:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}{path}"


def main(args: argparse.Namespace) -> int:
    url = args.url
    if url is None:
        try:
            listen = _listen(args.config)
        except Exception as err:  # any reason the config cannot be read is "unhealthy", exit 1
            sys.stderr.write(f"gatehouse healthcheck: cannot use {args.config}: {err}\n")
            return 1
        url = local_url(listen.host, listen.port, listen.tls is not None, args.path)
    context = None
    if url.startswith("https:"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as resp:
            status = resp.status
    except urllib.error.HTTPError as err:
        status = err.code
    except (OSError, ValueError) as err:
        sys.stderr.write(f"gatehouse healthcheck: {url}: {getattr(err, 'reason', err)}\n")
        return 1
    if status != 200:
        sys.stderr.write(f"gatehouse healthcheck: {url} answered {status}\n")
        return 1
    return 0


def _listen(path: str) -> Any:
    from gateway.config.load import load

    return load(path, os.environ).listen
