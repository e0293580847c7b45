"""oidc-provider-mock run as a real process on a free loopback port.

Sign-in tests need an IdP that behaves like one over HTTP: discovery, JWKS,
an authorize page, a token endpoint with refresh tokens. oidc-provider-mock
(pinned at 0.3.4, the last release for Python 3.11) is that IdP. It also has
two test hooks the gateway's tests lean on:

* ``PUT /users/{sub}`` with a JSON object replaces that user's claims
  (the next login or refresh sees them), answering 204;
* ``POST /users/{sub}/revoke-tokens`` drops the user's access and refresh
  tokens, so the next refresh grant is ``invalid_grant`` — deprovisioning.

Its issuer is built from the Host header of each request, so everyone must
reach it as ``http://127.0.0.1:<port>`` (what :attr:`IdpProcess.issuer` says).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import aiohttp

__all__ = ["IdpProcess"]

HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0
STOP_GRACE_S = 5.0
# A free port found by binding port 0 can be taken before the child binds it;
# a couple of retries make that race harmless.
START_ATTEMPTS = 3


def _command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).parent / "oidc-provider-mock"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "oidc_provider_mock"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _user_args(users: Sequence[Mapping[str, object]]) -> list[str]:
    args: list[str] = []
    for user in users:
        sub = user.get("sub")
        if not isinstance(sub, str) or not sub:
            raise ValueError(f"every IdP user needs a string 'sub': {dict(user)!r}")
        args += ["--user-claims", json.dumps(dict(user))]
    return args


class IdpProcess:
    """oidc-provider-mock with ``users`` (claim dicts, each with "sub") as its predefined users.

    ``IdpProcess(users)`` only records the settings; :meth:`start` (or entering
    it as a context manager) launches the process and blocks until discovery
    answers. ``extra_args`` go to its command line as they are, e.g.
    ``["--no-refresh-token", "true"]`` or ``["--token-max-age", "60"]``.
    """

    def __init__(
        self,
        users: Sequence[Mapping[str, object]] = (),
        *,
        extra_args: Sequence[str] = (),
        timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.users = [dict(u) for u in users]
        self.extra_args = list(extra_args)
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._workdir: str | None = None
        self._log_path: Path | None = None

    def start(self, users: Sequence[Mapping[str, object]] | None = None) -> IdpProcess:
        """Launch the IdP (with ``users`` instead of the constructor's, if given)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"oidc-provider-mock is already running at {self.issuer}")
        if users is not None:
            self.users = [dict(u) for u in users]
        user_args = _user_args(self.users)
        self._workdir = tempfile.mkdtemp(prefix="gatehouse-idp-")
        env = dict(os.environ)
        # authlib warns about its own deprecated jose module at import; that is
        # the package's business, not something a test run should print.
        env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
        env["NO_COLOR"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        for attempt in range(START_ATTEMPTS):
            self.port = _free_port()
            self._log_path = Path(self._workdir) / f"idp-{attempt}.log"
            with open(self._log_path, "wb") as log:
                # Same process group as the test run: a Ctrl-C that skips our
                # teardown still takes the IdP down with it.
                self.proc = subprocess.Popen(
                    [*_command(), "-H", HOST, "-p", str(self.port), *user_args, *self.extra_args],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            try:
                self._wait_ready()
                return self
            except _ExitedEarly:
                printed = self.log_text()
                if "address already in use" not in printed.lower() or attempt + 1 == START_ATTEMPTS:
                    self.stop()
                    raise RuntimeError(f"oidc-provider-mock did not start:\n{printed[-2000:]}") from None
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable: the last attempt either returns or raises")

    @property
    def issuer(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return self.issuer

    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    def log_text(self) -> str:
        """What the IdP printed so far (its request log), for failure messages."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self.proc.poll() is not None:
                raise _ExitedEarly()
            try:
                with urllib.request.urlopen(self.discovery_url, timeout=1.0) as resp:
                    if json.load(resp).get("issuer") == self.issuer:
                        return
            except (OSError, urllib.error.URLError, ValueError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"oidc-provider-mock not ready after {self.timeout_s} s:\n{self.log_text()[-2000:]}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the process (kill it if it lingers) and remove its log. Idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = self._log_path = None

    def __enter__(self) -> IdpProcess:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def put_user(self, sub: str, claims: Mapping[str, object]) -> None:
        """Replace ``sub``'s claims (all of them: claims not given are gone)."""
        body = {k: v for k, v in claims.items() if k != "sub"}
        await self._call("PUT", f"/users/{quote(sub, safe='')}", json_body=body)

    async def revoke_tokens(self, sub: str) -> None:
        """Drop every access and refresh token issued to ``sub``."""
        await self._call("POST", f"/users/{quote(sub, safe='')}/revoke-tokens")

    async def _call(self, method: str, path: str, json_body: object = None) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.request(method, self.issuer + path, json=json_body) as resp:
                if resp.status != 204:
                    text = await resp.text()
                    raise RuntimeError(
                        f"oidc-provider-mock {method} {path} answered {resp.status}: {text[:500]}"
                    )


class _ExitedEarly(Exception):
    pass
