"""TLS to PostgreSQL: what ``sslmode`` in ``store.postgres_url`` does, and where the CA comes from.

A throwaway cluster of this module's own serves TLS with a certificate for 127.0.0.1
issued by a throwaway CA. asyncpg reads the CA bundle for ``verify-ca``/``verify-full``
from ``PGSSLROOTCERT`` (else ``~/.postgresql/root.crt``), never from the system trust
store; an ``sslrootcert`` option in the URL is ignored, with a warning, like every URL
option but ``sslmode``.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from gateway.config.schema import Store as StoreCfg
from gateway.db.store import Store, StoreUnavailable
from gateway.devenv.postgres import Cluster
from tests.harness import self_signed_cert


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, level: str, message: str) -> None:
        self.lines.append((level, message))

    def text(self) -> str:
        return "\n".join(m for _, m in self.lines)


@pytest.fixture(scope="module")
def tls_db(tmp_path_factory) -> Iterator[tuple[str, Path, Path]]:
    """(the database URL without sslmode, the right CA file, a CA that signed nothing here)."""
    cluster = Cluster.start()
    try:
        cert, key = self_signed_cert("127.0.0.1")
        data = Path(cluster.data)
        (data / "server.crt").write_bytes(cert)
        (data / "server.key").write_bytes(key)
        os.chmod(data / "server.key", 0o600)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for name in ("server.crt", "server.key"):
                os.chown(data / name, owner.pw_uid, owner.pw_gid)
        with open(data / "postgresql.conf", "a") as conf:
            conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        cluster.pause()
        cluster.resume()
        url = cluster.create_database("tls")
        folder = tmp_path_factory.mktemp("ca")
        right, wrong = folder / "right.crt", folder / "wrong.crt"
        right.write_bytes(cert)
        wrong.write_bytes(self_signed_cert("127.0.0.1")[0])
        yield url, right, wrong
    finally:
        cluster.stop()


@pytest.fixture
def no_home_ca(monkeypatch, tmp_path):
    """No PGSSLROOTCERT and an empty HOME: no CA bundle unless a test provides one."""
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


async def encrypted(store: Store) -> bool:
    async with store.pool.acquire() as conn:
        return await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")


async def open_store(url: str, log: Log) -> Store:
    return await Store.open(StoreCfg(url, connect_timeout_seconds=5), log=log, retry_delay_s=0)


async def test_verify_full_checks_the_server_against_pgsslrootcert(tls_db, no_home_ca, monkeypatch):
    url, right, wrong = tls_db
    monkeypatch.setenv("PGSSLROOTCERT", str(right))
    store = await open_store(url + "?sslmode=verify-full", Log())
    try:
        assert await encrypted(store)
        assert await store.migrate()
    finally:
        await store.close()
    monkeypatch.setenv("PGSSLROOTCERT", str(wrong))
    with pytest.raises(StoreUnavailable) as err:
        await open_store(url + "?sslmode=verify-full", Log())
    assert "certificate verify failed" in str(err.value)


async def test_verify_full_without_a_ca_bundle_fails_the_boot_and_sslrootcert_in_the_url_is_ignored(
    tls_db, no_home_ca
):
    url, right, _ = tls_db
    log = Log()
    with pytest.raises(StoreUnavailable) as err:
        await open_store(f"{url}?sslmode=verify-full&sslrootcert={right}", log)
    assert "root certificate file" in str(err.value)
    assert "store.postgres_url: ignoring sslrootcert (only sslmode is read from the URL)" in log.text()


async def test_require_encrypts_without_checking_the_certificate(tls_db, no_home_ca):
    url, _, _ = tls_db
    store = await open_store(url + "?sslmode=require", Log())
    try:
        assert await encrypted(store)
    finally:
        await store.close()
    plain = await open_store(url + "?sslmode=disable", Log())
    try:
        assert not await encrypted(plain)
    finally:
        await plain.close()


async def test_a_server_without_tls_fails_verify_full(pg_url, tls_db, no_home_ca, monkeypatch):
    monkeypatch.setenv("PGSSLROOTCERT", str(tls_db[1]))  # a CA bundle is there: the server is what fails
    with pytest.raises(StoreUnavailable) as err:
        await open_store(pg_url + "?sslmode=verify-full", Log())
    assert "root certificate" not in str(err.value)
    # The throwaway cluster has no TLS: prefer (the default) falls back to plain text.
    conn = await asyncpg.connect(pg_url)
    await conn.close()
