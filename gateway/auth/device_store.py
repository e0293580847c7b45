"""Device grants and sign-in rate counters in PostgreSQL (edge).

Every replica reads and writes the same rows, so a person may get their code
from one replica, approve it through another and the CLI may poll a third.
Times come from the caller's clock and go into SQL as parameters (never SQL
``now()``), so tests can move time.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import asyncpg

from gateway.auth.devicecodes import GrantState, PollAnswer, decide_poll
from gateway.auth.rate_window import wait_before_next
from gateway.db.store import Store, queries, unavailable_as


class PendingGrant(NamedTuple):
    device_code_hash: bytes
    user_code: str
    expires_at: datetime


class Approved(NamedTuple):
    sub: str
    email: str | None
    name: str | None
    groups: tuple[str, ...]
    idp_refresh_token: bytes | None  # sealed


class PollResult(NamedTuple):
    outcome: str  # authorization_pending | slow_down | access_denied | expired_token | issue
    approved: Approved | None


class DeviceStore:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._q = queries()

    async def create(
        self, *, device_code_hash: bytes, user_code: str, surface: str | None, client_ip: str | None, now: datetime, ttl_s: int
    ) -> bool:
        """False when the user code collides with a live grant (the caller draws another)."""
        with unavailable_as("device authorization"):
            try:
                await self._store.pool.execute(
                    self._q["device_insert"], device_code_hash, user_code, surface, client_ip, now, now + timedelta(seconds=ttl_s)
                )
            except asyncpg.UniqueViolationError:
                return False
        return True

    async def find_pending(self, user_code: str, now: datetime) -> PendingGrant | None:
        with unavailable_as("device lookup"):
            row = await self._store.pool.fetchrow(self._q["device_find_live"], user_code, now)
        return None if row is None else PendingGrant(row["device_code_hash"], row["user_code"], row["expires_at"])

    async def get_pending(self, device_code_hash: bytes, now: datetime) -> PendingGrant | None:
        with unavailable_as("device lookup"):
            row = await self._store.pool.fetchrow(self._q["device_get"], device_code_hash)
        if row is None or row["status"] != "pending" or row["expires_at"] <= now:
            return None
        return PendingGrant(row["device_code_hash"], row["user_code"], row["expires_at"])

    async def approve(self, device_code_hash: bytes, now: datetime, approved: Approved) -> bool:
        with unavailable_as("device approval"):
            done = await self._store.pool.fetchval(
                self._q["device_approve"],
                device_code_hash,
                now,
                approved.sub,
                approved.email,
                approved.name,
                json.dumps(list(approved.groups)),
                approved.idp_refresh_token,
            )
        return bool(done)

    async def deny(self, device_code_hash: bytes, now: datetime) -> bool:
        with unavailable_as("device denial"):
            done = await self._store.pool.fetchval(self._q["device_deny"], device_code_hash, now)
        return bool(done)

    async def poll(self, device_code_hash: bytes, now: datetime, interval_s: int) -> PollResult:
        """Decide one token poll atomically; an approved grant is consumed by exactly one poll."""
        with unavailable_as("device poll"):
            async with self._store.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(self._q["device_lock_for_poll"], device_code_hash)
                state = None if row is None else GrantState(row["status"], row["expires_at"], row["last_poll_at"])
                answer: PollAnswer = decide_poll(state, now, interval_s)
                if row is not None:
                    await conn.execute(self._q["device_after_poll"], device_code_hash, now, answer.new_status)
        approved = None
        if answer.outcome == "issue" and row is not None:
            approved = Approved(
                row["sub"], row["email"], row["name"], tuple(json.loads(row["groups"] or "[]")), row["idp_refresh_token"]
            )
        return PollResult(answer.outcome, approved)

    async def restore(self, device_code_hash: bytes, approved: Approved) -> None:
        """Undo a consumption whose tokens could not be issued, so the next poll can try again."""
        with unavailable_as("device restore"):
            await self._store.pool.execute(self._q["device_restore_approved"], device_code_hash, approved.idp_refresh_token)

    async def hit(self, key: str, now: datetime, window_s: int, limit: int) -> int | None:
        """Count one attempt in a sliding window; None when admitted, else seconds to wait.

        Refused attempts are not recorded (see :mod:`gateway.auth.rate_window`).
        """
        with unavailable_as("rate limit"):
            async with self._store.pool.acquire() as conn, conn.transaction():
                await conn.execute(self._q["ratelimit_lock"], key)
                rows = await conn.fetch(self._q["ratelimit_recent"], key, now - timedelta(seconds=window_s))
                hits = [(row["window_start"].timestamp(), row["hits"]) for row in rows]
                wait = wait_before_next(hits, now.timestamp(), window_s, limit)
                if wait is None:
                    await conn.fetchval(self._q["ratelimit_hit"], key, now)
        return wait

    async def prune(self, now: datetime, keep_s: int = 3600) -> None:
        cutoff = now - timedelta(seconds=keep_s)
        with unavailable_as("device prune"):
            await self._store.pool.execute(self._q["device_prune"], cutoff)
            await self._store.pool.execute(self._q["ratelimit_prune"], cutoff)


def groups_of(value: Any) -> tuple[str, ...]:
    return tuple(value or ())
