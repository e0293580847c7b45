"""A throwaway PostgreSQL cluster for tests and ``make dev``.

Theory of operation: ``initdb`` a fresh data folder inside a temporary
directory, start it with ``pg_ctl`` on a free loopback port with its own socket
directory, and remember the postmaster's PID so ``stop()`` can always end it,
even when ``pg_ctl stop`` cannot. Nothing here is durable: fsync and friends are
switched off because the data dies with the process anyway.

``initdb`` refuses to run as root, and CI runs as root. In that case every
server-side binary runs as the ``postgres`` system user through
``runuser -u postgres --`` and the temporary directory is handed to that user.

Missing PostgreSQL is an error with an install hint, never a silent skip: a test
run that quietly skips the database tests looks green and proves nothing.

Run ``python -m gateway.devenv.postgres [--database NAME]`` to get a cluster
whose URL is printed on stdout; it stops on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import atexit
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")
# Where distributions put versioned server binaries that are not on PATH
# (Debian/Ubuntu, then RHEL/Fedora's PGDG packages, then a source build).
VERSIONED_DIRS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin")
INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH, via "
    "`pg_config --bindir`, or in " + ", ".join(VERSIONED_DIRS) + ". Install PostgreSQL 14 or newer "
    "(Debian/Ubuntu: apt-get install postgresql; Fedora/RHEL: dnf install postgresql-server; "
    "macOS: brew install postgresql@16) or put its bin folder on PATH."
)
SUPERUSER = "postgres"
# Durability is pointless for a cluster that is deleted afterwards, and turning
# it off makes startup and every commit in the test suite noticeably faster.
THROWAWAY_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "logging_collector": "off",
}
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 15
PORT_ATTEMPTS = 3


def find_bindir(path: str | None = None, versioned_dirs: tuple[str, ...] = VERSIONED_DIRS) -> str:
    """The folder holding initdb, pg_ctl and postgres, or RuntimeError with an install hint."""
    candidates: list[str] = []
    on_path = shutil.which("initdb", path=path)
    if on_path:
        # /usr/local/bin may hold symlinks to a few tools only; the folder they
        # point into also has the client tools (createdb) we need.
        candidates += [os.path.dirname(os.path.realpath(on_path)), os.path.dirname(on_path)]
    pg_config = shutil.which("pg_config", path=path)
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(out.stdout.strip())
    for pattern in versioned_dirs:
        candidates += sorted(glob.glob(pattern), key=_version_key, reverse=True)
    for folder in candidates:
        if all(os.access(os.path.join(folder, tool), os.X_OK) for tool in SERVER_TOOLS):
            return folder
    raise RuntimeError(INSTALL_HINT)


def _version_key(folder: str) -> tuple[int, ...]:
    # Newest major version first: "/usr/lib/postgresql/16/bin" beats ".../9.6/bin".
    digits = "".join(c if c.isdigit() else " " for c in folder).split()
    return tuple(int(d) for d in digits)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A container's PID 1 may never reap the daemonised postmaster; a zombie is
    # as good as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Cluster:
    """One running throwaway cluster. Use :meth:`start`; :meth:`stop` is idempotent."""

    def __init__(self, bindir: str, base: str, run_as: list[str]) -> None:
        self.bindir = bindir
        self.base = base
        self.data = os.path.join(base, "data")
        self.socket_dir = os.path.join(base, "sock")
        self.logfile = os.path.join(base, "server.log")
        self.host = "127.0.0.1"
        self.port = 0
        self.pid = 0
        self._run_as = run_as
        self._stopped = False

    @classmethod
    def start(cls, base_dir: str | None = None) -> Cluster:
        bindir = find_bindir()
        run_as, owner = _server_user()
        base = tempfile.mkdtemp(prefix="gatehouse-pg-", dir=base_dir)
        cluster = cls(bindir, base, run_as)
        # Registered before anything runs so a failure half way still cleans up.
        atexit.register(cluster.stop)
        try:
            os.mkdir(cluster.socket_dir, 0o700)
            if owner is not None:
                for folder in (base, cluster.socket_dir):
                    os.chown(folder, owner.pw_uid, owner.pw_gid)
            cluster._initdb()
            cluster._start_on_free_port()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        createdb = os.path.join(self.bindir, "createdb")
        cmd = [createdb, "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, name]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=self.base)
        if out.returncode != 0:
            raise RuntimeError(f"createdb {name} failed: {out.stderr.strip()}")
        return self.url_for(name)

    def stop(self) -> None:
        """Stop the server (politely, then by PID) and delete the temporary directory."""
        if self._stopped:
            return
        if self.pid and _alive(self.pid):
            self._stop_server()
        shutil.rmtree(self.base, ignore_errors=True)
        # Only now: if anything above was interrupted, the atexit hook still
        # gets another go at it.
        self._stopped = True
        atexit.unregister(self.stop)

    def pause(self) -> None:
        """Stop the server but keep its data and port, to simulate an outage."""
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_S), "stop")
        self.pid = 0

    def resume(self) -> None:
        """Start the server again after :meth:`pause`, on the same port."""
        self._pg_ctl_start()
        self.pid = self._read_pid()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _stop_server(self) -> None:
        self._run(
            "pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_S), "stop", check=False
        )
        if _wait_gone(self.pid, 1):
            return
        # SIGQUIT is PostgreSQL's immediate shutdown; SIGKILL if even that hangs.
        for sig, wait_s in ((signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                return
            if _wait_gone(self.pid, wait_s):
                return
        raise RuntimeError(f"PostgreSQL postmaster {self.pid} did not exit")

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            self.data,
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        # Appending keeps the file's owner (the server user) and mode.
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            conf.write("\n# gatehouse throwaway cluster\n")
            for key, value in THROWAWAY_SETTINGS.items():
                conf.write(f"{key} = {value}\n")
            conf.write(f"unix_socket_directories = '{self.socket_dir}'\n")

    def _start_on_free_port(self) -> None:
        # The port is free when we look and may be taken before the server binds
        # it; another port is the cure.
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.port = free_port()
            started = self._pg_ctl_start(check=False)
            if started.returncode == 0:
                self.pid = self._read_pid()
                return
            if attempt == PORT_ATTEMPTS or "already in use" not in self._log_tail():
                raise RuntimeError(f"PostgreSQL did not start: {started.stderr.strip()}\n{self._log_tail()}")

    def _pg_ctl_start(self, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run(
            "pg_ctl", "-D", self.data, "-l", self.logfile, "-w", "-t", str(START_TIMEOUT_S),
            "-o", f"-p {self.port}", "start", check=check,
        )  # fmt: skip

    def _read_pid(self) -> int:
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            return int(f.readline())

    def _log_tail(self) -> str:
        try:
            with open(self.logfile, errors="replace") as f:
                return "".join(f.readlines()[-20:])
        except OSError:
            return ""

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*self._run_as, os.path.join(self.bindir, tool), *args]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=self.base)
        if check and out.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}"
            )
        return out


def _server_user() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs server binaries, and the user who must own the files."""
    if os.geteuid() != 0:
        return [], None
    try:
        owner = pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise RuntimeError(
            "running as root, and initdb refuses root; there is no 'postgres' system user to run "
            "PostgreSQL as. Create one (useradd --system postgres) or run as an ordinary user."
        ) from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root needs `runuser` (util-linux) to start PostgreSQL as 'postgres'")
    return [runuser, "-u", SUPERUSER, "--"], owner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a throwaway PostgreSQL until Ctrl-C.")
    parser.add_argument("--database", help="also create this database and print its URL")
    args = parser.parse_args(argv)
    # SIGTERM (from make or a process manager) should clean up like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with Cluster.start() as cluster:
            url = cluster.create_database(args.database) if args.database else cluster.url
            print(url, flush=True)
            print(
                f"PostgreSQL {cluster.port} (pid {cluster.pid}) running; Ctrl-C stops it",
                file=sys.stderr,
                flush=True,
            )
            while _alive(cluster.pid):
                time.sleep(0.5)
            # The log lives in the temporary directory that stop() deletes.
            print(f"PostgreSQL exited on its own:\n{cluster._log_tail()}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
