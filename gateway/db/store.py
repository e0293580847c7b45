"""PostgreSQL access: connecting at boot, migrations, readiness, usage rows.

Theory of operation:

* Every SQL statement lives in ``sql/``: migrations in ``sql/migrations/NNNN_name.sql``
  and named queries in ``sql/queries/<name>.sql``. They are read once, when a
  store is opened, never at import (importing a gateway module does no I/O).
* Boot connects with up to three attempts, 2 s apart, each bounded by
  ``store.connect_timeout_seconds``, so a database that comes up a moment after
  the gateway (compose, Kubernetes) does not fail the boot.
* Migrations run under a PostgreSQL advisory lock, so replicas booting at the
  same time apply each migration exactly once. The lock belongs to a session,
  so behind a transaction-pooling PgBouncer migrations take a connection of
  their own to ``store.gatehouse.listen_url``, as LISTEN does
  (:mod:`gateway.db.listener`); each migration is recorded in
  ``gatehouse_migrations`` together with its file's SHA-256. Each migration
  and its record commit in one transaction (so a migration cannot use
  statements that refuse transactions, like CREATE INDEX CONCURRENTLY).
* Failures to reach the database surface as :class:`StoreUnavailable`, whatever
  layer (socket, driver, server shutting down or killed) produced them: the
  work can be tried again later. Errors that mean our SQL or data is wrong are
  not translated: they are bugs or bad input, not outages, and retrying cannot
  help. :func:`is_data_error` tells the errors one row's values cause (a NUL
  byte, a string the driver cannot encode, a number out of range), so a batch
  can single out the row instead of failing as a whole.
* A connection the driver has lost track of (``InternalClientError``: seen when
  PostgreSQL is killed mid-statement) is closed rather than given back to the
  pool, where every later statement on it would fail the same way; so is one
  that found its server read-only (a demoted primary).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import msgspec

from gateway import audit
from gateway.errors import Fault, Party

Log = Callable[[str, str], None]
# Told of every statement on a pooled connection: its sql/queries name, seconds, whether it succeeded.
StatementHook = Callable[[str, float, bool], None]

BOOT_ATTEMPTS = 3
BOOT_RETRY_DELAY_S = 2.0
DEFAULT_WRITE_TIMEOUT_S = 10.0
# Advisory lock key for migrations: the ASCII bytes of "gatehous" read as one
# bigint, so it is recognisable in pg_locks (classid 0x67617465, objid 0x686f7573).
MIGRATION_LOCK_KEY = int.from_bytes(b"gatehous", "big")
SSLMODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class StoreUnavailable(Fault):
    """The database could not be reached or did not answer in time."""

    fault = Party.STORE


class SpentDatabase(Fault):
    """``load_test_mode`` on a database where someone has recorded spend: the boot stops."""

    fault = Party.GATEWAY


class StoreRefused(Fault):
    """The database refused one request's values (see :func:`is_data_error`); retrying cannot help.

    The message is ours, safe to show the client: the driver's own message may
    quote the offending value, so it goes to the log only.
    """

    fault = Party.CLIENT


class PoolerConfig(Protocol):
    """``store.gatehouse``: how PostgreSQL is reached when a pooler (PgBouncer) sits in front."""

    @property
    def listen_url(self) -> str | None: ...
    @property
    def pool_mode(self) -> str: ...


class StoreConfig(Protocol):
    """What the store reads from ``cfg.store`` (read-only, so frozen structs fit)."""

    @property
    def postgres_url(self) -> str: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def max_connections(self) -> int: ...
    @property
    def connect_timeout_seconds(self) -> float: ...
    @property
    def readiness_grace_seconds(self) -> float: ...
    @property
    def gatehouse(self) -> PoolerConfig: ...


class UsageRow(msgspec.Struct, frozen=True):
    """One relayed request, as recorded in ``usage_records``.

    Field order is the column order of ``sql/queries/insert_usage.sql``.
    """

    request_id: str
    ts: datetime  # timezone-aware, UTC
    sub: str
    email: str | None = None
    model: str | None = None
    upstream: str | None = None
    status: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_creation_5m: int = 0
    cache_creation_1h: int = 0
    cache_read_input_tokens: int = 0
    estimated_output: bool = False
    ms_to_headers: int | None = None
    ms_total: int | None = None
    path: str = ""
    upstream_request_id: str | None = None


class Readiness:
    """Whether ``/readyz`` says ready, from ping outcomes and clock readings. No I/O.

    With ``grace_s`` > 0 a store that answered before stays "ready" for
    ``grace_s`` seconds from the first failed check, so a database blip or
    failover does not pull every replica out of the load balancer at once. The
    grace is counted from the first failure seen rather than the last success so
    that sparse probes do not eat it up. A store that never answered is never
    ready.
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.ever_ok = False
        self.down_since: float | None = None

    def observe(self, ok: bool, now: float) -> bool:
        if ok:
            self.ever_ok = True
            self.down_since = None
            return True
        if self.down_since is None:
            self.down_since = now
        return self.ever_ok and now - self.down_since < self.grace_s


class Migration(NamedTuple):
    version: int
    name: str
    sql: str
    sha256: str


def sql_dir() -> Path:
    """``sql/`` inside the installed package, else beside it in a source checkout."""
    here = Path(__file__).resolve().parents[1]  # the gateway package, above db/
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "migrations").is_dir():
            return candidate
    raise RuntimeError(
        f"SQL files not found in {here / 'sql'} or {here.parent / 'sql'}; the installation is incomplete"
    )


@functools.cache
def queries() -> dict[str, str]:
    folder = sql_dir() / "queries"
    return {path.stem: path.read_text() for path in sorted(folder.glob("*.sql"))}


def load_migrations(folder: Path) -> list[Migration]:
    found: dict[int, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        match = MIGRATION_FILE.match(path.name)
        if match is None:
            raise RuntimeError(f"{path}: migration files are named NNNN_lowercase_name.sql")
        version = int(match.group(1))
        if version in found:
            raise RuntimeError(f"{path}: migration {version} exists twice")
        data = path.read_bytes()
        found[version] = Migration(version, path.stem, data.decode(), hashlib.sha256(data).hexdigest())
    return [found[v] for v in sorted(found)]


def connect_params(cfg: StoreConfig, *, direct: bool = False) -> dict[str, Any]:
    """asyncpg connect arguments from the store config. ValueError when the URL is unusable.

    ``direct``: for a connection that keeps session state (LISTEN, the migration
    lock), which goes to ``store.gatehouse.listen_url`` when that is set.
    Only ``sslmode`` is read from the URL's query; ``store.username`` and
    ``store.password`` win over credentials in either URL.
    """
    key, raw = "postgres_url", cfg.postgres_url
    if direct and cfg.gatehouse.listen_url:
        key, raw = "gatehouse.listen_url", cfg.gatehouse.listen_url
    url = urlsplit(raw)
    if url.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"store.{key} must start with postgres:// or postgresql://")
    sslmode = parse_qs(url.query).get("sslmode", [None])[-1]
    if sslmode is not None and sslmode not in SSLMODES:
        raise ValueError(f"store.{key}: sslmode must be one of {', '.join(sorted(SSLMODES))}")
    params: dict[str, Any] = {
        "host": url.hostname or None,
        "port": url.port,
        "user": cfg.username or (unquote(url.username) if url.username else None),
        "password": cfg.password or (unquote(url.password) if url.password else None),
        "database": unquote(url.path.lstrip("/")) or None,
        "timeout": cfg.connect_timeout_seconds,
        "server_settings": {"application_name": "gatehouse"},
    }
    if sslmode is not None:
        params["ssl"] = sslmode
    return params


def ignored_url_options(url: str) -> list[str]:
    return sorted(key for key in parse_qs(urlsplit(url).query, keep_blank_values=True) if key != "sslmode")


# Errors that mean "the database is not there right now", as opposed to "our
# statement is wrong". Class 08 is connection exceptions, 57 operator
# intervention (shutdown, starting up, crashed, statement cancelled), 53
# insufficient resources (too many connections); InterfaceError covers a
# connection that died under us, InternalClientError one whose protocol state
# the driver lost when the server went away mid-statement ("cannot switch to
# state 12"). The driver's own DataError is an InterfaceError too, yet it
# means a value could not be encoded: see _CLIENT_DATA. A read-only
# transaction (25006) is a primary being demoted or a replica answering in its
# place during a failover: the writable database is not there right now.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)
# Raised by the driver before anything is sent: a value it cannot encode (a lone
# surrogate in a str, an int out of the column's range), or a bad client setting.
# Both are ValueErrors; neither is an outage.
_CLIENT_DATA: tuple[type[BaseException], ...] = (ValueError,)
# Errors one row's values can cause: class 22 (data exception: a NUL byte in
# text, a string too long, a number out of range), 23 (a constraint the row
# breaks), 54 (a value too large to index), and the driver's own DataError.
_DATA: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
    asyncpg.exceptions.ProgramLimitExceededError,
    asyncpg.exceptions._base.DataError,  # the driver's; asyncpg.DataError is class 22's
)
# Retrying these at boot cannot help: the database or the credentials are wrong.
_BOOT_FATAL: tuple[type[BaseException], ...] = (
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
)
# Any other server error at boot may be passing (a server still starting, a
# failover in progress), so it gets the retries.
_BOOT_RETRY: tuple[type[BaseException], ...] = (*_UNREACHABLE, asyncpg.PostgresError)


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


async def _reset_on_release(conn: asyncpg.Connection) -> None:
    """What a connection needs before going back to the pool: only an open transaction ends.

    asyncpg's default reset sends another statement on every release (unlock all
    advisory locks, close cursors, UNLISTEN, RESET ALL), a round trip on the hot
    path. Our pooled connections never keep session state: LISTENs run on
    dedicated connections and the migration lock is released explicitly.
    """
    if conn.is_in_transaction():
        await conn.execute(queries()["rollback"])


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be reached (so trying again later may work)."""
    return isinstance(exc, StoreUnavailable) or (
        isinstance(exc, _UNREACHABLE) and not isinstance(exc, _CLIENT_DATA)
    )


def is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the database (or the driver) refusing the values sent, not the statement."""
    return isinstance(exc, _DATA)


@contextmanager
def unavailable_as(what: str) -> Iterator[None]:
    try:
        yield
    except _UNREACHABLE as exc:
        if isinstance(exc, _CLIENT_DATA):
            raise
        raise StoreUnavailable(f"{what}: {describe(exc)}") from exc


@asynccontextmanager
async def connection(pool: asyncpg.Pool, timeout: float | None = None) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection, closed instead of given back when the driver lost track of it.

    ``timeout`` also bounds giving it back: after a statement was cancelled (a
    caller's deadline), the driver waits for the server to acknowledge the
    cancellation before the connection can be reused, and a server that has
    gone silent (a dead network path) would otherwise hold the caller forever.
    Past ``timeout`` the connection is closed instead.
    """
    async with pool.acquire(timeout=timeout) as conn:
        try:
            yield conn
        except (asyncpg.exceptions.InternalClientError, asyncpg.exceptions.ReadOnlySQLTransactionError):
            # The pool opens a fresh one when it needs it: after a failover, a new
            # connection to the same address may reach the new primary.
            conn.terminate()
            raise


class Store:
    """A pool of connections to the gateway's database. Create with :meth:`open`."""

    def __init__(self, pool: asyncpg.Pool, cfg: StoreConfig, log: Log) -> None:
        self._pool = pool
        self._cfg = cfg
        self._log = log
        self.readiness = Readiness(cfg.readiness_grace_seconds)

    @property
    def pool(self) -> asyncpg.Pool:
        """The shared pool, for the other edge modules that keep their SQL in ``sql/``."""
        return self._pool

    @property
    def config(self) -> StoreConfig:
        return self._cfg

    @classmethod
    async def open(
        cls,
        cfg: StoreConfig,
        *,
        log: Log | None = None,
        retry_delay_s: float = BOOT_RETRY_DELAY_S,
        on_statement: StatementHook | None = None,
    ) -> Store:
        """Connect, retrying a few times; StoreUnavailable with an actionable message otherwise.

        ``on_statement``: told of each statement (the gateway's own metrics); None adds nothing per statement.
        """
        log = log or audit.log
        queries()  # a missing SQL file should fail the boot, not the first request
        try:
            params = connect_params(cfg)
        except ValueError as exc:
            raise StoreUnavailable(str(exc)) from None
        if ignored := ignored_url_options(cfg.postgres_url):
            log(
                "warn",
                f"store.postgres_url: ignoring {', '.join(ignored)} (only sslmode is read from the URL)",
            )
        advice = (
            f"; if the database needs longer to become reachable, raise store.connect_timeout_seconds "
            f"(now {cfg.connect_timeout_seconds:g}s)"
        )
        for attempt in range(1, BOOT_ATTEMPTS + 1):
            try:
                return cls(await _connect(params, cfg, on_statement), cfg, log)
            except _BOOT_FATAL as exc:
                reason, advice = describe(exc), ""
                break
            except _BOOT_RETRY as exc:
                reason = describe(exc)
            if attempt < BOOT_ATTEMPTS:
                log(
                    "warn",
                    f"could not connect to PostgreSQL at boot, attempt {attempt} of {BOOT_ATTEMPTS}: "
                    f"{reason}; trying again in {retry_delay_s:g}s",
                )
                await asyncio.sleep(retry_delay_s)
        log(
            "error",
            f"could not connect to PostgreSQL at boot: {reason}. Check store.postgres_url ({_where(params)}){advice}",
        )
        raise StoreUnavailable(
            f"could not connect to PostgreSQL: {reason}. Check store.postgres_url ({_where(params)})"
        )

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), self._cfg.connect_timeout_seconds)
        except _UNREACHABLE:  # includes TimeoutError
            # Shutdown must not hang on a database that stopped answering.
            self._pool.terminate()

    async def ping(self, timeout: float) -> bool:
        """True when the database answers a trivial query within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                async with connection(self._pool, timeout) as conn:
                    await conn.fetchval(queries()["ping"])
        except _UNREACHABLE:
            return False
        return True

    async def ready(self, *, timeout: float | None = None, now: float | None = None) -> bool:
        """The ``/readyz`` verdict: ping, then apply ``store.readiness_grace_seconds``.

        ``timeout`` defaults to ``store.connect_timeout_seconds``; ``now`` (a
        monotonic reading) is for tests.
        """
        ok = await self.ping(self._cfg.connect_timeout_seconds if timeout is None else timeout)
        was_down = self.readiness.down_since is not None
        verdict = self.readiness.observe(ok, time.monotonic() if now is None else now)
        if not ok and not was_down:
            grace = self._cfg.readiness_grace_seconds
            outcome = f"/readyz stays ready for up to {grace:g}s" if verdict else "/readyz reports not ready"
            self._log("warn", f"PostgreSQL is not answering; {outcome} (store.readiness_grace_seconds)")
        elif ok and was_down:
            self._log("info", "PostgreSQL answers again; /readyz reports ready")
        return verdict

    async def refuse_spent_for_load_test(self) -> None:
        """Raise :class:`SpentDatabase` when anyone has recorded spend here: a load test's
        requests must never be counted among real ones (``load_test_mode``)."""
        with unavailable_as("checking the database for recorded spend"):
            async with connection(self._pool, self._cfg.connect_timeout_seconds) as conn:
                spent = await conn.fetchval(queries()["load_test_spend_recorded"])
        if spent:
            raise SpentDatabase(
                "load_test_mode is on, but this database (store.postgres_url) already holds recorded spend; "
                "give load-test mode its own empty database so its requests never mix with real usage"
            )

    async def insert_usage(self, rows: list[UsageRow], timeout: float = DEFAULT_WRITE_TIMEOUT_S) -> None:
        """Write ``rows`` in one statement. Rows already stored are skipped, so retrying is safe."""
        if not rows:
            return
        columns = [
            list(column) for column in zip(*(msgspec.structs.astuple(row) for row in rows), strict=True)
        ]
        with unavailable_as("writing usage records"):
            async with asyncio.timeout(timeout):
                async with connection(self._pool, timeout) as conn:
                    await conn.execute(queries()["insert_usage"], *columns)

    async def migrate(self) -> list[int]:
        """Apply pending migrations in order; returns the versions applied by this call."""
        migrations = load_migrations(sql_dir() / "migrations")
        with unavailable_as("migrating the database"):
            async with self._session_connection() as conn:
                await self._lock(conn)
                try:
                    return await self._apply(conn, migrations)
                finally:
                    # A dead connection has already dropped the lock with it.
                    try:
                        await conn.fetchval(queries()["migrations_unlock"], MIGRATION_LOCK_KEY)
                    except _UNREACHABLE:
                        pass

    @asynccontextmanager
    async def _session_connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection whose session lasts until we let go of it: from the pool, or, with
        ``store.gatehouse.listen_url`` set, one of its own straight to PostgreSQL (a
        transaction-pooling PgBouncer would hand a session lock to whoever came next)."""
        if not self._cfg.gatehouse.listen_url:
            async with self._pool.acquire(timeout=self._cfg.connect_timeout_seconds) as conn:
                yield conn
            return
        params = {**connect_params(self._cfg, direct=True), "server_settings": {"application_name": "gatehouse-migrate"}}
        async with asyncio.timeout(self._cfg.connect_timeout_seconds):
            conn = await asyncpg.connect(**params)
        try:
            yield conn
        finally:
            try:
                async with asyncio.timeout(self._cfg.connect_timeout_seconds):
                    await conn.close()
            except _UNREACHABLE:
                conn.terminate()

    async def _lock(self, conn: asyncpg.Connection) -> None:
        if await conn.fetchval(queries()["migrations_lock_try"], MIGRATION_LOCK_KEY):
            return
        self._log(
            "info",
            "waiting for migration lock (another process is migrating this database; it holds the "
            f"advisory lock classid {MIGRATION_LOCK_KEY >> 32}, objid {MIGRATION_LOCK_KEY & 0xFFFFFFFF} in pg_locks)",
        )
        await conn.fetchval(queries()["migrations_lock_wait"], MIGRATION_LOCK_KEY)

    async def _apply(self, conn: asyncpg.Connection, migrations: list[Migration]) -> list[int]:
        await conn.execute(queries()["migrations_create_table"])
        applied = {row["version"]: row["sha256"] for row in await conn.fetch(queries()["migrations_applied"])}
        for version in sorted(applied.keys() - {m.version for m in migrations}):
            self._log(
                "warn",
                f"the database has migration {version}, which this Gatehouse does not know (a newer version ran here)",
            )
        done: list[int] = []
        for m in migrations:
            if m.version in applied:
                if applied[m.version] != m.sha256:
                    self._log(
                        "warn",
                        f"migration {m.version} ({m.name}) was edited after it was applied; the edit has no effect",
                    )
                continue
            # Statement and bookkeeping commit together, so a crash half way
            # leaves the migration pending rather than half recorded.
            async with conn.transaction():
                await conn.execute(queries()["migrations_no_statement_timeout"])
                await conn.execute(m.sql)
                await conn.execute(queries()["migrations_record"], m.version, m.name, m.sha256)
            self._log("info", f"migration {m.version} applied ({m.name})")
            done.append(m.version)
        return done


async def _connect(params: dict[str, Any], cfg: StoreConfig, on_statement: StatementHook | None) -> asyncpg.Pool:
    # min_size=0: the pool itself never reconnects in the background; the
    # explicit first connection below is what proves the database is there.
    if on_statement is not None:
        params = {**params, "init": _timing_statements(on_statement)}
    if cfg.gatehouse.pool_mode == "transaction":
        # Each statement may run on another server connection, where a statement
        # prepared on the last one does not exist: PgBouncer before 1.21 cannot
        # follow named prepared statements, so asyncpg keeps none.
        params = {**params, "statement_cache_size": 0}
    pool = asyncpg.create_pool(min_size=0, max_size=cfg.max_connections, reset=_reset_on_release, **params)
    try:
        async with asyncio.timeout(cfg.connect_timeout_seconds):
            await pool
            async with pool.acquire() as conn:
                await conn.fetchval(queries()["ping"])
    except BaseException:
        pool.terminate()
        raise
    return pool


# Statements sent by asyncpg itself for conn.transaction(), named as one kind.
_TRANSACTION_VERBS = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


def _timing_statements(hook: StatementHook) -> Callable[[asyncpg.Connection], Any]:
    """The pool's connection setup: asyncpg's query logger on each new connection, telling
    ``hook`` each statement by the name of its file in sql/queries (it runs after the
    statement, from the event loop; about 3 µs a statement)."""
    names = {sql: name for name, sql in queries().items()}

    def logged(record: Any) -> None:
        name = names.get(record.query)
        if name is None:
            name = "transaction" if record.query.lstrip().upper().startswith(_TRANSACTION_VERBS) else "other"
        hook(name, record.elapsed, record.exception is None)

    async def init(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(logged)

    return init


def _where(params: dict[str, Any]) -> str:
    # Never the password: this text ends up in logs.
    host = params["host"] or "default host"
    port = params["port"] or 5432
    return f"host {host}, port {port}, database {params['database'] or '(default)'}, user {params['user'] or '(default)'}"


async def migrate(cfg: StoreConfig, *, log: Log | None = None) -> list[int]:
    """``gatehouse migrate``: connect, apply pending migrations, disconnect."""
    store = await Store.open(cfg, log=log)
    try:
        return await store.migrate()
    finally:
        await store.close()
