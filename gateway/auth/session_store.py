"""Sign-in sessions in PostgreSQL: families, rotating refresh tokens, revocation (edge).

Theory of operation:

* A **family** is everything that descends from one completed sign-in. Its id
  is the ``sid`` claim of every access token minted for it, so revoking the
  family ends all of them: the row is marked revoked and, in the same
  statement, ``NOTIFY gatehouse_revocations, '<family id>'`` tells every
  replica's :class:`gateway.auth.revocations.RevocationWatcher`.
* **Maximum lifetime.** A family lives ``max_lifetime_s`` (default 30 days)
  from the sign-in that started it, however often it is refreshed; then the
  person runs ``/login`` again. No access token outlives its family: the last
  ones are minted with a shorter lifetime if needed.
* **Refresh tokens** are opaque: ``ghr_`` plus 32 random bytes (256 bits),
  URL-safe. Only their SHA-256 is stored. A family has a refresh token only if
  the IdP gave us one at sign-in; without it the token response omits
  ``refresh_token`` and the client re-runs the device flow when the access
  token expires. The IdP's refresh token is kept sealed (Fernet, key derived
  from ``session.jwt_secret`` for the purpose ``idp-refresh-token``) and
  re-sealed under the current secret on every refresh, also when the IdP
  keeps its token; :mod:`gateway.auth.resealing` re-seals the families that
  are not refreshed after a rotation of ``jwt_secret``.
* **Rotation.** Each refresh retires the presented token and issues a
  successor. The successor pair (access token, its ``exp``, refresh token) is
  kept sealed next to the retired token for ``reuse_window_s`` (60 s): whoever
  presents the retired token again within that window gets exactly the same
  pair, so two CLI processes refreshing at once both stay signed in. After the
  window, a presentation of a retired token means it was copied: the whole
  family is revoked (audit reason ``refresh_reuse``).
* **One refresh at a time, across replicas.** Before calling the IdP a refresh
  takes a short claim on the token row (an UPDATE that only matches an
  unclaimed, unrotated token of a live family). Whoever loses the race polls
  the row until the winner's successor appears and returns it; if the winner
  gave the claim back (the IdP was unreachable) the loser tries the claim
  itself. A claim older than ``claim_ttl_s`` counts as abandoned (its holder
  crashed or was cancelled) and may be taken over. The IdP call happens outside
  any database transaction.
* **Re-checking the person.** Every refresh asks the IdP, through the
  ``recheck`` callable (refresh grant, then id_token or userinfo claims, then
  the domain and group rules). A definitive no (``IdpRejected``,
  ``IdentityRejected``) revokes the family and answers 401 ``invalid_grant``.
  Anything that only means "cannot tell right now" (``IdpUnavailable``, an
  id_token that failed verification, the database unreachable) answers 503
  ``temporarily_unavailable`` and leaves the presented token valid, so the
  client keeps it and tries again.
* Times come from the injected clock and enter SQL as parameters, never as
  SQL ``now()``, so tests can move time.
* Audit: ``session.mint`` (result, sub, email, client_ip, ttl_hours, family),
  ``session.refresh`` (result success|fail, reason on failure, client_ip and
  whatever is known of sub, email, family; ``repeat: true`` when a retired
  token got its stored successor) and ``session.revoke`` (family, sub, email,
  reason). Tokens never appear in events or log lines.
* Only :meth:`SessionService.refresh` turns database trouble into an OAuth
  answer (503); the other methods raise StoreUnavailable for their caller.

Known limits: if the IdP rotated its refresh token and the database fails
before the rotation commits, the new IdP token is lost and the next refresh of
that family will most likely be refused by the IdP (the person signs in again).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets as secrets_mod
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from gateway import audit
from gateway.auth.sealing import Sealer
from gateway.auth.tokens import TokenService
from gateway.db.store import Store, StoreUnavailable, queries, unavailable_as
from gateway.errors import Fault, GatewayError, OAuthError, Party

if TYPE_CHECKING:
    from gateway.auth.identity import Identity

REFRESH_PREFIX = "ghr_"
NOTIFY_CHANNEL = "gatehouse_revocations"
DEFAULT_MAX_LIFETIME_S = 30 * 86400
DEFAULT_REUSE_WINDOW_S = 60
# How long a refresh may hold its claim before another may take it over. It
# must exceed the longest IdP round trip (refresh grant plus userinfo).
CLAIM_TTL_S = 30.0
# How long a concurrent presentation waits for the claim holder's answer
# before telling the client to try again later (503).
CLAIM_WAIT_S = 15.0
CLAIM_POLL_S = 0.05
# Bound on each database round trip, so a hung database becomes a 503
# rather than a hung token request.
STORE_TIMEOUT_S = 5.0
# Revoked and ended families are kept this long for `sessions list` and the
# watchers' reload before prune() deletes them.
DEFAULT_PRUNE_KEEP_S = 7 * 86400

# (the IdP refresh token, the groups the session has) → the identity now, the IdP's rotated token.
Recheck = Callable[[str, tuple[str, ...]], Awaitable[tuple["Identity", str | None]]]
Emit = Callable[..., None]
Log = Callable[[str, str], None]


class TokenPair(NamedTuple):
    access_token: str
    expires_in: int
    refresh_token: str | None


class FamilyInfo(NamedTuple):
    """One family as ``gatehouse sessions list`` shows it."""

    family_id: str
    sub: str
    email: str | None
    name: str | None
    groups: tuple[str, ...]
    client_ip: str | None
    created_at: datetime
    expires_at: datetime  # the maximum lifetime's end
    last_refresh_at: datetime | None
    last_access_exp: datetime  # when the newest access token expires
    refresh_count: int
    refreshable: bool  # the IdP issued a refresh token at sign-in
    revoked_at: datetime | None
    revoke_reason: str | None
    state: str  # "active" | "revoked" | "ended"


@functools.cache
def _recheck_outcomes() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(definitive refusals, cannot-tell-now failures) raised by a recheck.

    Imported on first use rather than at module import so this module does not
    drag the OIDC client (and aiohttp's client side) into processes that only
    list or revoke sessions.
    """
    from gateway.auth.identity import IdentityRejected
    from gateway.auth.oidc import IdpRejected, IdpUnavailable, IdTokenInvalid

    # An id_token that fails verification on refresh says something about the
    # IdP's keys or our clocks, not about the person, so it is not a reason to
    # end their session.
    return (IdpRejected, IdentityRejected), (IdpUnavailable, IdTokenInvalid)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_refresh_token() -> str:
    return REFRESH_PREFIX + secrets_mod.token_urlsafe(32)


def _at(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


class _Claimed(NamedTuple):
    family_id: str
    sub: str
    email: str | None
    expires_at: datetime
    idp_refresh_token: bytes | None
    groups: tuple[str, ...] = ()  # the family's, kept when a directory cannot be asked


class _LostClaim(Fault):
    """Our claim was taken over while we talked to the IdP; see what the new holder did."""

    fault = Party.GATEWAY


class SessionService:
    def __init__(
        self,
        store: Store,
        tokens: TokenService,
        *,
        secrets: tuple[str, ...],
        clock: Callable[[], float] = time.time,
        max_lifetime_s: int = DEFAULT_MAX_LIFETIME_S,
        reuse_window_s: int = DEFAULT_REUSE_WINDOW_S,
        emit: Emit = audit.emit,
        log: Log = audit.log,
        claim_ttl_s: float = CLAIM_TTL_S,
        claim_wait_s: float = CLAIM_WAIT_S,
        store_timeout_s: float = STORE_TIMEOUT_S,
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._clock = clock
        self.max_lifetime_s = max_lifetime_s
        self.reuse_window_s = reuse_window_s
        self._emit = emit
        self._log = log
        self._claim_ttl_s = claim_ttl_s
        self._claim_wait_s = claim_wait_s
        self._store_timeout_s = store_timeout_s
        self._idp_sealer = Sealer(secrets, "idp-refresh-token")
        self._pair_sealer = Sealer(secrets, "refresh-successor")
        self._q = queries()

    # -- sign-in -----------------------------------------------------------------
    async def start_family(
        self, identity: Identity, idp_refresh_token: str | None, *, client_ip: str | None
    ) -> TokenPair:
        """A new family for a completed sign-in. StoreUnavailable when the database is down."""
        now = self._clock()
        family_id = secrets_mod.token_hex(16)
        ttl = min(self._tokens.ttl_seconds, self.max_lifetime_s)
        access = self._mint(identity, family_id, now, ttl)
        refresh = new_refresh_token() if idp_refresh_token is not None else None
        sealed_idp = None if idp_refresh_token is None else self._idp_sealer.seal(idp_refresh_token.encode())
        async with self._db("starting a session") as pool, pool.acquire() as conn, conn.transaction():
            await conn.execute(
                self._q["session_insert_family"],
                family_id,
                identity.sub,
                identity.email,
                identity.name,
                list(identity.groups),
                client_ip,
                _at(now),
                _at(now + self.max_lifetime_s),
                _at(int(now) + ttl),
                sealed_idp,
            )
            if refresh is not None:
                await conn.execute(self._q["session_insert_token"], hash_token(refresh), family_id, _at(now))
        self._emit(
            "session.mint",
            result="success",
            sub=identity.sub,
            email=identity.email,
            client_ip=client_ip,
            ttl_hours=self._tokens.ttl_seconds / 3600,
            family=family_id,
            refreshable=refresh is not None,
        )
        return TokenPair(access, ttl, refresh)

    # -- refresh -----------------------------------------------------------------
    async def refresh(self, refresh_token: str, recheck: Recheck, *, client_ip: str | None) -> TokenPair:
        """Rotate ``refresh_token``; OAuthError invalid_grant (401) or temporarily_unavailable (503)."""
        token_hash = hash_token(refresh_token.strip())
        try:
            return await self._refresh(token_hash, recheck, client_ip)
        except StoreUnavailable as exc:
            self._log("warn", f"session refresh: {exc}")
            raise self._fail("store_unavailable", client_ip) from None

    async def _refresh(self, token_hash: bytes, recheck: Recheck, client_ip: str | None) -> TokenPair:
        claim_id = secrets_mod.token_hex(8)
        deadline = time.monotonic() + self._claim_wait_s
        while True:
            now = self._clock()
            async with self._db("refreshing a session") as pool:
                row = await pool.fetchrow(
                    self._q["session_claim"], token_hash, claim_id, _at(now), _at(now - self._claim_ttl_s)
                )
            if row is not None:
                claimed = _Claimed(
                    row["family_id"],
                    row["sub"],
                    row["email"],
                    row["expires_at"],
                    row["idp_refresh_token"],
                    tuple(row["groups"] or ()),
                )
                try:
                    return await self._refresh_claimed(token_hash, claim_id, claimed, recheck, client_ip)
                except _LostClaim:
                    continue
            settled = await self._settled(token_hash, client_ip)
            if settled is not None:
                return settled
            # Someone else holds the claim: wait for their successor.
            if time.monotonic() >= deadline:
                raise self._fail("refresh_in_progress", client_ip)
            await asyncio.sleep(CLAIM_POLL_S)

    async def _settled(self, token_hash: bytes, client_ip: str | None) -> TokenPair | None:
        """The answer for a token we could not claim, or None while another refresh holds it."""
        async with self._db("refreshing a session") as pool:
            row = await pool.fetchrow(self._q["session_lookup"], token_hash)
        now = self._clock()
        if row is None:
            raise self._fail("unknown_token", client_ip)
        who = {"sub": row["sub"], "email": row["email"], "family": row["family_id"]}
        if row["revoked_at"] is not None:
            raise self._fail("revoked", client_ip, **who)
        # Compared as datetimes, as the claim's SQL did, so both agree to the microsecond.
        if _at(now) >= row["expires_at"]:
            raise self._fail("family_expired", client_ip, **who)
        if row["rotated_at"] is None:
            return None
        if now - row["rotated_at"].timestamp() > self.reuse_window_s:
            await self.revoke_family(row["family_id"], "refresh_reuse")
            raise self._fail("refresh_reuse", client_ip, **who)
        pair = self._open_pair(row["successor"], now)
        if pair is None:
            # Sealed with a secret that has since been removed from the config.
            raise self._fail("successor_unreadable", client_ip, **who)
        self._emit("session.refresh", result="success", client_ip=client_ip, repeat=True, **who)
        return pair

    async def _refresh_claimed(
        self, token_hash: bytes, claim_id: str, claimed: _Claimed, recheck: Recheck, client_ip: str | None
    ) -> TokenPair:
        who = {"sub": claimed.sub, "email": claimed.email, "family": claimed.family_id}
        sealed = claimed.idp_refresh_token
        idp_token = None if sealed is None else self._idp_sealer.open(sealed)
        if idp_token is None:
            # No IdP token to re-check with (its sealing secret was removed):
            # the person cannot be re-checked, so the session cannot continue.
            await self.revoke_family(claimed.family_id, "idp_token_unreadable")
            raise self._fail("idp_token_unreadable", client_ip, **who)
        refused, undecided = _recheck_outcomes()
        try:
            identity, new_idp_token = await recheck(idp_token.decode(), claimed.groups)
        except refused as exc:
            await self.revoke_family(claimed.family_id, "idp_rejected")
            raise self._fail("idp_rejected", client_ip, detail=_reason(exc), **who) from None
        except undecided as exc:
            await self._release(token_hash, claim_id)
            self._log("warn", f"session refresh: the IdP could not re-check {claimed.sub}: {_reason(exc)}")
            raise self._fail("idp_unavailable", client_ip, detail=_reason(exc), **who) from None
        except BaseException:
            await self._release(token_hash, claim_id)
            raise
        if identity.sub != claimed.sub:
            await self.revoke_family(claimed.family_id, "idp_subject_changed")
            raise self._fail("idp_subject_changed", client_ip, **who)
        try:
            pair = await self._rotate(token_hash, claim_id, claimed, identity, new_idp_token)
        except StoreUnavailable:
            await self._release(token_hash, claim_id)
            raise
        except _Ended as ended:
            raise self._fail(ended.reason, client_ip, **who) from None
        who.update(email=identity.email)
        self._emit("session.refresh", result="success", client_ip=client_ip, **who)
        return pair

    async def _rotate(
        self,
        token_hash: bytes,
        claim_id: str,
        claimed: _Claimed,
        identity: Identity,
        new_idp_token: str | None,
    ) -> TokenPair:
        """Commit the successor. _Ended when the family ended while we asked the IdP."""
        now = self._clock()
        # The IdP round trip may have carried the family past its end.
        ttl = min(self._tokens.ttl_seconds, int(claimed.expires_at.timestamp()) - int(now))
        if ttl <= 0:
            raise _Ended("family_expired")
        access = self._mint(identity, claimed.family_id, now, ttl)
        exp = int(now) + ttl
        refresh = new_refresh_token()
        successor = self._pair_sealer.seal(msgspec.json.encode([access, exp, refresh]))
        sealed_idp: bytes | None
        if new_idp_token is not None:
            sealed_idp = self._idp_sealer.seal(new_idp_token.encode())
        else:
            # The IdP kept its token: store it re-sealed under the current
            # secret, so dropping an older jwt_secret never strands it.
            sealed_idp = None if claimed.idp_refresh_token is None else self._idp_sealer.reseal(claimed.idp_refresh_token)
        async with self._db("rotating a refresh token") as pool, pool.acquire() as conn, conn.transaction():
            rotated = await conn.fetchval(
                self._q["session_rotate"], token_hash, claim_id, _at(now), successor
            )
            if rotated is None:
                raise _LostClaim()
            await conn.execute(
                self._q["session_insert_token"], hash_token(refresh), claimed.family_id, _at(now)
            )
            updated = await conn.fetchval(
                self._q["session_update_family"],
                claimed.family_id,
                identity.email,
                identity.name,
                list(identity.groups),
                sealed_idp,
                _at(now),
                _at(exp),
            )
            if updated is None:
                # Revoked while we asked the IdP: raising rolls the rotation
                # back, and the presented token now answers "revoked".
                raise _Ended("revoked")
            await conn.execute(
                self._q["session_forget_successors"], claimed.family_id, _at(now - self.reuse_window_s)
            )
        return TokenPair(access, ttl, refresh)

    async def _release(self, token_hash: bytes, claim_id: str) -> None:
        # Best effort: if the database is gone the claim simply goes stale.
        try:
            async with self._db("releasing a refresh claim") as pool:
                await pool.execute(self._q["session_release"], token_hash, claim_id)
        except StoreUnavailable:
            pass

    def _open_pair(self, sealed: bytes | None, now: float) -> TokenPair | None:
        opened = None if sealed is None else self._pair_sealer.open(sealed)
        if opened is None:
            return None
        access, exp, refresh = msgspec.json.decode(opened)
        return TokenPair(access, max(0, exp - int(now)), refresh)

    # -- revocation ----------------------------------------------------------------
    async def revoke_token(self, token: str, hint: str | None) -> None:
        """RFC 7009: revoke the family of an access or refresh token; unknown tokens do nothing.

        ``hint`` is accepted but not needed: the two kinds are told apart by
        shape (our refresh tokens carry a prefix, access tokens are JWTs).
        StoreUnavailable when the database is down.
        """
        token = token.strip()
        if token.startswith(REFRESH_PREFIX):
            async with self._db("revoking a session") as pool:
                row = await pool.fetchrow(self._q["session_lookup"], hash_token(token))
            if row is not None:
                await self.revoke_family(row["family_id"], "client_revoke")
            return
        if token.count(".") != 2:
            return
        try:
            # No time checks: a client may revoke an expired access token
            # (RFC 7009), and its sid still names a family whose refresh token
            # may be alive. The signature, issuer and audience are still checked.
            principal = self._tokens.verify_ignoring_time(token)
        except GatewayError:
            return
        if principal.sid:
            await self.revoke_family(principal.sid, "client_revoke")

    async def revoke_family(self, family_id: str, reason: str) -> bool:
        """True when this call revoked it (False: unknown or already revoked)."""
        async with self._db("revoking a session") as pool:
            row = await pool.fetchrow(
                self._q["revocation_revoke_family"], family_id, _at(self._clock()), reason
            )
        if row is None:
            return False
        self._emit("session.revoke", family=family_id, sub=row["sub"], email=row["email"], reason=reason)
        return True

    async def revoke_email(self, email: str, reason: str) -> int:
        """Revoke every live family of ``email`` (any letter case); returns how many."""
        async with self._db("revoking sessions") as pool:
            rows = await pool.fetch(self._q["revocation_revoke_email"], email, _at(self._clock()), reason)
        for row in rows:
            self._emit(
                "session.revoke", family=row["family_id"], sub=row["sub"], email=row["email"], reason=reason
            )
        return len(rows)

    async def list_families(self, email: str) -> list[FamilyInfo]:
        """Every stored family of ``email`` (any letter case), newest first."""
        async with self._db("listing sessions") as pool:
            rows = await pool.fetch(self._q["session_list_email"], email)
        now = _at(self._clock())
        return [_family_info(row, now) for row in rows]

    async def prune(self, keep_s: int = DEFAULT_PRUNE_KEEP_S) -> int:
        """Delete families that ended or were revoked more than ``keep_s`` ago; returns how many."""
        cutoff = _at(self._clock() - keep_s)
        async with self._db("pruning sessions") as pool:
            status = await pool.execute(self._q["session_prune"], cutoff)
        return int(status.split()[-1])

    # -- helpers -------------------------------------------------------------------
    def _mint(self, identity: Identity, family_id: str, now: float, ttl: int) -> str:
        return self._tokens.mint(
            sub=identity.sub,
            now=int(now),
            email=identity.email,
            name=identity.name,
            groups=identity.groups,
            sid=family_id,
            ttl_seconds=ttl,
        )

    def _fail(self, reason: str, client_ip: str | None, **fields: Any) -> OAuthError:
        """Audit a failed refresh and build its answer."""
        self._emit("session.refresh", result="fail", reason=reason, client_ip=client_ip, **fields)
        if reason in _RETRYABLE:
            return OAuthError("temporarily_unavailable", _RETRYABLE[reason], fault=_RETRYABLE_FAULT.get(reason))
        return OAuthError("invalid_grant")

    @asynccontextmanager
    async def _db(self, what: str) -> AsyncIterator[Any]:
        """The pool, with unreachable or slow databases turned into StoreUnavailable."""
        with unavailable_as(what):
            async with asyncio.timeout(self._store_timeout_s):
                yield self._store.pool


class _Ended(Fault):
    """The family was revoked or reached its end while a refresh was under way."""

    fault = Party.CLIENT

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Failures that say nothing about the token: the client keeps it and retries.
_RETRYABLE = {
    "store_unavailable": "the session store is unreachable; try again shortly",
    "idp_unavailable": "the identity provider could not be reached; try again shortly",
    "refresh_in_progress": "another refresh of this token is in progress; try again shortly",
}
# Whose fault a retryable failure is, where it is not the store's (OAUTH_TABLE's default).
_RETRYABLE_FAULT = {"idp_unavailable": Party.UPSTREAM, "refresh_in_progress": Party.CLIENT}


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc or type(exc).__name__)


def _family_info(row: Any, now: datetime) -> FamilyInfo:
    if row["revoked_at"] is not None:
        state = "revoked"
    elif now >= row["expires_at"] or (not row["refreshable"] and now > row["last_access_exp"]):
        state = "ended"
    else:
        state = "active"
    return FamilyInfo(
        row["family_id"],
        row["sub"],
        row["email"],
        row["name"],
        tuple(row["groups"] or ()),
        row["client_ip"],
        row["created_at"],
        row["expires_at"],
        row["last_refresh_at"],
        row["last_access_exp"],
        row["refresh_count"],
        row["refreshable"],
        row["revoked_at"],
        row["revoke_reason"],
        state,
    )
