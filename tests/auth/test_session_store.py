"""gateway.auth.session_store against a real PostgreSQL: families, rotation, reuse, concurrency, revocation.

The IdP is represented by ``FakeIdp.recheck``, a plain async function standing
where OidcClient.recheck sits in the gateway (the boundary, not our code).
Time is an injected clock the tests move; nothing here sleeps for a window.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from gateway.auth.identity import Identity, IdentityRejected
from gateway.auth.oidc import IdpRejected, IdpUnavailable
from gateway.auth.session_store import REFRESH_PREFIX, SessionService, TokenPair, hash_token
from gateway.auth.tokens import TokenService
from gateway.config.schema import Store as StoreCfg  # the config section itself
from gateway.db.store import Store
from gateway.errors import OAuthError
from tests.harness import Clock
from tests.netfaults import TcpProxy

SECRETS = ("s" * 40, "older-secret-" + "o" * 30)
ISSUER = "http://gatehouse.test"
TTL_S = 3600
ALICE = Identity("sub-alice", "alice@example.com", "Alice", ("eng",))


class Events(list):
    """Collects audit events as (evt, fields)."""

    def __call__(self, evt: str, **fields: Any) -> None:
        self.append((evt, fields))

    def named(self, evt: str) -> list[dict[str, Any]]:
        return [fields for name, fields in self if name == evt]


class FakeIdp:
    """Answers re-checks the way the configured ``answer`` says; counts calls."""

    def __init__(self, identity: Identity = ALICE) -> None:
        self.identity = identity
        self.answer = "ok"  # ok | down | reject | rules
        self.delay = 0.0
        self.rotate = False
        self.calls: list[str] = []

    async def recheck(self, idp_refresh_token: str, groups: tuple[str, ...] = ()) -> tuple[Identity, str | None]:
        self.calls.append(idp_refresh_token)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.answer == "down":
            raise IdpUnavailable("connection refused")
        if self.answer == "reject":
            raise IdpRejected("the IdP refused the refresh grant", "invalid_grant")
        if self.answer == "rules":
            raise IdentityRejected("not in an allowed group", "You are not allowed to use this gateway.")
        return self.identity, (f"idp-rt-{len(self.calls)}" if self.rotate else None)


@pytest.fixture(scope="module")
async def store(pg_url):
    opened = await Store.open(StoreCfg(pg_url, connect_timeout_seconds=2), log=lambda level, msg: None)
    await opened.migrate()
    yield opened
    await opened.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def tokens() -> TokenService:
    return TokenService(SECRETS, ISSUER, TTL_S)


@pytest.fixture
def service(store, tokens, clock, events) -> SessionService:
    return make_service(store, tokens, clock, events)


def make_service(store, tokens, clock, events, **kwargs) -> SessionService:
    return SessionService(
        store, tokens, secrets=SECRETS, clock=clock, emit=events, log=lambda level, msg: None, **kwargs
    )


async def expect_oauth(awaitable, error: str, status: int) -> OAuthError:
    with pytest.raises(OAuthError) as caught:
        await awaitable
    assert (caught.value.error, caught.value.status) == (error, status)
    return caught.value


def rt(pair: TokenPair) -> str:
    """The pair's refresh token, which these tests know was issued."""
    assert pair.refresh_token is not None
    return pair.refresh_token


def unique_email(tag: str) -> str:
    return f"{tag}-{time.monotonic_ns()}@Example.com"


# -- sign-in -------------------------------------------------------------------------


async def test_start_family_with_idp_refresh_token(service, store, tokens, clock, events):
    pair = await service.start_family(ALICE, "idp-refresh-secret", client_ip="192.0.2.7")

    assert pair.expires_in == TTL_S
    assert pair.refresh_token is not None and pair.refresh_token.startswith(REFRESH_PREFIX)
    assert len(pair.refresh_token) >= len(REFRESH_PREFIX) + 43  # 32 random bytes, base64url
    principal = tokens.verify(pair.access_token, int(clock()))
    assert (principal.sub, principal.email, principal.groups) == ("sub-alice", "alice@example.com", ("eng",))
    assert principal.exp == int(clock()) + TTL_S

    async with store.pool.acquire() as conn:
        family = await conn.fetchrow("SELECT * FROM session_families WHERE family_id = $1", principal.sid)
        stored = await conn.fetch(
            "SELECT token_hash FROM session_refresh_tokens WHERE family_id = $1", principal.sid
        )
    # Only the hash of our refresh token is stored, and the IdP's token only sealed.
    assert [row["token_hash"] for row in stored] == [hash_token(rt(pair))]
    assert b"idp-refresh-secret" not in family["idp_refresh_token"]
    assert family["client_ip"] == "192.0.2.7"
    assert family["expires_at"].timestamp() == pytest.approx(clock() + 30 * 86400)

    [mint] = events.named("session.mint")
    assert mint == {
        "result": "success",
        "sub": "sub-alice",
        "email": "alice@example.com",
        "client_ip": "192.0.2.7",
        "ttl_hours": 1.0,
        "family": principal.sid,
        "refreshable": True,
    }


async def test_start_family_without_idp_refresh_token(service, tokens, clock):
    email = unique_email("norefresh")
    pair = await service.start_family(ALICE._replace(email=email), None, client_ip=None)

    assert pair.refresh_token is None
    assert tokens.verify(pair.access_token, int(clock())).sid
    [family] = await service.list_families(email)
    assert (family.refreshable, family.state) == (False, "active")
    # With no refresh token, the family is over once its access token expires.
    clock.advance(TTL_S + 1)
    [family] = await service.list_families(email)
    assert family.state == "ended"


# -- refresh -------------------------------------------------------------------------


async def test_refresh_rotates_and_rechecks_with_the_idp(service, tokens, clock, events):
    idp = FakeIdp()
    idp.rotate = True
    first = await service.start_family(ALICE, "idp-rt-0", client_ip="192.0.2.1")
    sid = tokens.verify(first.access_token, int(clock())).sid
    clock.advance(3000)

    second = await service.refresh(rt(first), idp.recheck, client_ip="192.0.2.2")

    assert second.refresh_token not in (None, first.refresh_token)
    assert second.access_token != first.access_token
    assert second.expires_in == TTL_S
    principal = tokens.verify(second.access_token, int(clock()))
    assert principal.sid == sid and principal.exp == int(clock()) + TTL_S
    assert idp.calls == ["idp-rt-0"]

    # The IdP rotated its token: the next refresh must present the new one.
    clock.advance(3000)
    await service.refresh(rt(second), idp.recheck, client_ip=None)
    assert idp.calls == ["idp-rt-0", "idp-rt-1"]

    refreshes = events.named("session.refresh")
    assert [e["result"] for e in refreshes] == ["success", "success"]
    assert refreshes[0] == {
        "result": "success",
        "client_ip": "192.0.2.2",
        "sub": "sub-alice",
        "email": "alice@example.com",
        "family": sid,
    }


async def test_refresh_takes_the_identity_the_idp_reports_now(service, tokens, clock):
    idp = FakeIdp(ALICE._replace(groups=("eng", "admins"), name="Alice B."))
    first = await service.start_family(ALICE, "idp-rt", client_ip=None)

    second = await service.refresh(rt(first), idp.recheck, client_ip=None)

    principal = tokens.verify(second.access_token, int(clock()))
    assert principal.groups == ("eng", "admins") and principal.name == "Alice B."


async def test_rotated_token_within_the_window_gets_the_same_pair(service, clock, events):
    idp = FakeIdp()
    first = await service.start_family(ALICE, "idp-rt", client_ip=None)
    second = await service.refresh(rt(first), idp.recheck, client_ip=None)

    clock.advance(59)
    again = await service.refresh(rt(first), idp.recheck, client_ip=None)

    assert (again.access_token, again.refresh_token) == (second.access_token, second.refresh_token)
    assert again.expires_in == TTL_S - 59  # the same token, 59 s older
    assert len(idp.calls) == 1
    assert events.named("session.refresh")[-1]["repeat"] is True
    # The successor itself is still current and refreshes normally.
    third = await service.refresh(rt(second), idp.recheck, client_ip=None)
    assert third.refresh_token != second.refresh_token


async def test_rotated_token_after_the_window_revokes_the_family(service, tokens, clock, events):
    idp = FakeIdp()
    first = await service.start_family(ALICE, "idp-rt", client_ip=None)
    sid = tokens.verify(first.access_token, int(clock())).sid
    second = await service.refresh(rt(first), idp.recheck, client_ip=None)

    clock.advance(61)
    await expect_oauth(
        service.refresh(rt(first), idp.recheck, client_ip="198.51.100.9"), "invalid_grant", 401
    )

    assert events.named("session.revoke") == [
        {"family": sid, "sub": "sub-alice", "email": "alice@example.com", "reason": "refresh_reuse"}
    ]
    assert events.named("session.refresh")[-1]["reason"] == "refresh_reuse"
    # The legitimate holder of the successor is out too: the old token was copied.
    await expect_oauth(service.refresh(rt(second), idp.recheck, client_ip=None), "invalid_grant", 401)
    assert len(idp.calls) == 1


async def test_concurrent_refreshes_on_one_replica_share_one_successor(service):
    idp = FakeIdp()
    idp.delay = 0.2
    first = await service.start_family(ALICE, "idp-rt", client_ip=None)

    a, b = await asyncio.gather(
        service.refresh(rt(first), idp.recheck, client_ip=None),
        service.refresh(rt(first), idp.recheck, client_ip=None),
    )

    assert a == b
    assert len(idp.calls) == 1


async def test_concurrent_refreshes_on_two_replicas_share_one_successor(store, pg_url, tokens, clock, events):
    other_store = await Store.open(StoreCfg(pg_url, connect_timeout_seconds=2), log=lambda level, msg: None)
    try:
        replica_a = make_service(store, tokens, clock, events)
        replica_b = make_service(other_store, TokenService(SECRETS, ISSUER, TTL_S), clock, events)
        idp = FakeIdp()
        idp.delay = 0.2
        first = await replica_a.start_family(ALICE, "idp-rt", client_ip=None)

        a, b = await asyncio.gather(
            replica_a.refresh(rt(first), idp.recheck, client_ip=None),
            replica_b.refresh(rt(first), idp.recheck, client_ip=None),
        )

        assert a == b and a.refresh_token is not None
        assert len(idp.calls) == 1
    finally:
        await other_store.close()


async def test_abandoned_claim_is_taken_over_once_stale(store, tokens, clock, events):
    # A replica that crashed mid-refresh leaves its claim behind.
    service = make_service(store, tokens, clock, events, claim_wait_s=0.3)
    idp = FakeIdp()
    first = await service.start_family(ALICE, "idp-rt", client_ip=None)
    await store.pool.execute(
        "UPDATE session_refresh_tokens SET claim_id = 'crashed', claimed_at = to_timestamp($2) WHERE token_hash = $1",
        hash_token(rt(first)),
        clock(),
    )

    error = await expect_oauth(
        service.refresh(rt(first), idp.recheck, client_ip=None), "temporarily_unavailable", 503
    )
    assert "in progress" in (error.description or "")
    assert idp.calls == []

    clock.advance(31)
    pair = await service.refresh(rt(first), idp.recheck, client_ip=None)
    assert pair.refresh_token and len(idp.calls) == 1


@pytest.mark.parametrize("answer", ["reject", "rules"])
async def test_idp_refusal_ends_the_family(service, tokens, clock, events, answer):
    idp = FakeIdp()
    idp.answer = answer
    email = unique_email("refused")
    first = await service.start_family(ALICE._replace(email=email), "idp-rt", client_ip=None)

    await expect_oauth(service.refresh(rt(first), idp.recheck, client_ip=None), "invalid_grant", 401)

    [family] = await service.list_families(email)
    assert (family.state, family.revoke_reason) == ("revoked", "idp_rejected")
    assert events.named("session.revoke")[-1]["reason"] == "idp_rejected"
    fail = events.named("session.refresh")[-1]
    assert fail["result"] == "fail" and fail["reason"] == "idp_rejected" and fail["detail"]
    # Even if the IdP changed its mind, this family stays ended.
    idp.answer = "ok"
    await expect_oauth(service.refresh(rt(first), idp.recheck, client_ip=None), "invalid_grant", 401)


async def test_idp_unreachable_answers_503_and_keeps_the_token(service, events):
    idp = FakeIdp()
    idp.answer = "down"
    first = await service.start_family(ALICE, "idp-rt", client_ip=None)

    await expect_oauth(
        service.refresh(rt(first), idp.recheck, client_ip=None), "temporarily_unavailable", 503
    )
    assert events.named("session.refresh")[-1]["reason"] == "idp_unavailable"

    # The claim was given back, so the retry does not wait for it to go stale.
    idp.answer = "ok"
    pair = await service.refresh(rt(first), idp.recheck, client_ip=None)
    assert pair.refresh_token and len(idp.calls) == 2


async def test_waiting_refresh_takes_over_when_the_first_hits_an_idp_outage(service):
    first = await service.start_family(ALICE, "idp-rt", client_ip=None)
    calls = 0

    async def flaky(idp_token: str, groups: tuple[str, ...] = ()) -> tuple[Identity, str | None]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.15)
        if calls == 1:
            raise IdpUnavailable("timed out")
        return ALICE, None

    results = await asyncio.gather(
        service.refresh(rt(first), flaky, client_ip=None),
        service.refresh(rt(first), flaky, client_ip=None),
        return_exceptions=True,
    )

    assert calls == 2
    assert sorted(type(r).__name__ for r in results) == ["OAuthError", "TokenPair"]


async def test_revocation_during_the_idp_call_wins(service, tokens, clock):
    first = await service.start_family(ALICE, "idp-rt", client_ip=None)
    sid = tokens.verify(first.access_token, int(clock())).sid

    async def revoke_meanwhile(idp_token: str, groups: tuple[str, ...] = ()) -> tuple[Identity, str | None]:
        await service.revoke_family(sid, "admin")
        return ALICE, None

    await expect_oauth(service.refresh(rt(first), revoke_meanwhile, client_ip=None), "invalid_grant", 401)


async def test_family_ends_at_its_maximum_lifetime(store, tokens, clock, events):
    service = make_service(store, tokens, clock, events, max_lifetime_s=2 * TTL_S + 600)
    idp = FakeIdp()
    first = await service.start_family(ALICE, "idp-rt", client_ip=None)

    clock.advance(TTL_S)
    second = await service.refresh(rt(first), idp.recheck, client_ip=None)
    assert second.expires_in == TTL_S
    clock.advance(TTL_S)
    # The last access token stops where the family does.
    third = await service.refresh(rt(second), idp.recheck, client_ip=None)
    assert third.expires_in == 600
    assert tokens.verify(third.access_token, int(clock())).exp == int(clock()) + 600

    clock.advance(600)
    await expect_oauth(service.refresh(rt(third), idp.recheck, client_ip=None), "invalid_grant", 401)
    assert events.named("session.refresh")[-1]["reason"] == "family_expired"
    assert len(idp.calls) == 2


async def test_unknown_refresh_token_is_invalid_grant(service, events):
    idp = FakeIdp()
    for token in (REFRESH_PREFIX + "x" * 43, "not-ours", ""):
        await expect_oauth(service.refresh(token, idp.recheck, client_ip="203.0.113.5"), "invalid_grant", 401)
    assert idp.calls == []
    assert {e["reason"] for e in events.named("session.refresh")} == {"unknown_token"}


# -- the store going away -------------------------------------------------------------


async def test_store_unreachable_answers_503_and_keeps_the_token(pg_url, tokens, clock, events):
    from urllib.parse import urlsplit

    url = urlsplit(pg_url)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied = url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}").geturl()
    store = await Store.open(StoreCfg(proxied, connect_timeout_seconds=2), log=lambda level, msg: None)
    try:
        service = make_service(store, tokens, clock, events, store_timeout_s=2)
        idp = FakeIdp()
        first = await service.start_family(ALICE, "idp-rt", client_ip=None)

        await proxy.stop()
        await expect_oauth(
            service.refresh(rt(first), idp.recheck, client_ip=None), "temporarily_unavailable", 503
        )
        assert events.named("session.refresh")[-1]["reason"] == "store_unavailable"

        await proxy.start()
        pair = await service.refresh(rt(first), idp.recheck, client_ip=None)
        assert pair.refresh_token
    finally:
        await store.close()
        await proxy.stop()


# -- revocation ---------------------------------------------------------------------


async def test_revoke_with_an_expired_access_token(service, tokens, clock, events):
    idp = FakeIdp()
    first = await service.start_family(ALICE, "idp-rt", client_ip=None)
    sid = tokens.verify(first.access_token, int(clock())).sid
    clock.advance(2 * TTL_S)

    await service.revoke_token(first.access_token, "access_token")

    assert events.named("session.revoke")[-1] == {
        "family": sid,
        "sub": "sub-alice",
        "email": "alice@example.com",
        "reason": "client_revoke",
    }
    await expect_oauth(service.refresh(rt(first), idp.recheck, client_ip=None), "invalid_grant", 401)


async def test_revoke_with_a_refresh_token(service, tokens, clock, events):
    idp = FakeIdp()
    first = await service.start_family(ALICE, "idp-rt", client_ip=None)
    sid = tokens.verify(first.access_token, int(clock())).sid

    await service.revoke_token(first.refresh_token, None)
    await service.revoke_token(first.refresh_token, "refresh_token")  # twice: still fine

    assert [e["family"] for e in events.named("session.revoke")] == [sid]
    await expect_oauth(service.refresh(rt(first), idp.recheck, client_ip=None), "invalid_grant", 401)


async def test_revoke_ignores_tokens_that_are_not_ours(service, clock, events):
    first = await service.start_family(ALICE, "idp-rt", client_ip=None)
    foreign = TokenService(("another-gateway-secret-" + "x" * 20,), ISSUER, TTL_S)
    strangers = [
        "",
        "garbage",
        "a.b.c",
        REFRESH_PREFIX + "y" * 43,
        foreign.mint(sub="sub-alice", now=int(clock()), sid="whatever"),
        # A genuine signature over a sid no family has.
        TokenService(SECRETS, ISSUER, TTL_S).mint(sub="sub-alice", now=int(clock()), sid="no-such-family"),
    ]
    for token in strangers:
        await service.revoke_token(token, None)

    assert events.named("session.revoke") == []
    assert await service.refresh(rt(first), FakeIdp().recheck, client_ip=None)


async def test_list_and_revoke_by_email(service, tokens, clock, events):
    email = unique_email("alice")
    other = unique_email("bob")
    alice = ALICE._replace(email=email)
    one = await service.start_family(alice, "idp-rt", client_ip="192.0.2.1")
    clock.advance(1)
    two = await service.start_family(alice, None, client_ip="192.0.2.2")
    bob_identity = Identity("sub-bob", other, "Bob", ())
    bob = await service.start_family(bob_identity, "idp-rt", client_ip=None)

    listed = await service.list_families(email.lower())
    assert [f.family_id for f in listed] == [
        tokens.verify(two.access_token, int(clock())).sid,
        tokens.verify(one.access_token, int(clock())).sid,
    ]
    assert [(f.state, f.refreshable, f.client_ip) for f in listed] == [
        ("active", False, "192.0.2.2"),
        ("active", True, "192.0.2.1"),
    ]
    assert listed[0].groups == ("eng",) and listed[0].email == email

    assert await service.revoke_email(email.upper(), "admin") == 2
    assert {(f.state, f.revoke_reason) for f in await service.list_families(email)} == {("revoked", "admin")}
    assert await service.revoke_email(email, "admin") == 0
    assert len(events.named("session.revoke")) == 2
    [bobs] = await service.list_families(other)
    assert bobs.state == "active"
    assert await service.refresh(rt(bob), FakeIdp(bob_identity).recheck, client_ip=None)


async def test_prune_forgets_only_finished_families(service, clock):
    email = unique_email("prune")
    await service.start_family(ALICE._replace(email=email), "idp-rt", client_ip=None)
    await service.prune(keep_s=86400)
    assert len(await service.list_families(email)) == 1

    clock.advance(30 * 86400 + 86400 + 1)
    assert await service.prune(keep_s=86400) >= 1
    assert await service.list_families(email) == []


async def test_audit_events_never_carry_tokens(service, events):
    idp = FakeIdp()
    idp.rotate = True
    first = await service.start_family(ALICE, "idp-secret-token", client_ip=None)
    second = await service.refresh(rt(first), idp.recheck, client_ip=None)
    await service.revoke_token(second.access_token, None)

    text = json.dumps(list(events))
    for secret in (
        first.access_token,
        first.refresh_token,
        second.access_token,
        second.refresh_token,
        "idp-",
    ):
        assert secret and secret not in text


async def test_successor_pairs_are_forgotten_after_the_window(service, store, clock):
    idp = FakeIdp()
    first = await service.start_family(ALICE, "idp-rt", client_ip=None)
    second = await service.refresh(rt(first), idp.recheck, client_ip=None)
    clock.advance(61)
    await service.refresh(rt(second), idp.recheck, client_ip=None)

    kept = await store.pool.fetchval(
        "SELECT successor FROM session_refresh_tokens WHERE token_hash = $1", hash_token(rt(first))
    )
    assert kept is None


def test_token_pair_shape():
    assert TokenPair._fields == ("access_token", "expires_in", "refresh_token")


async def test_refresh_survives_a_jwt_secret_rotation_until_the_old_secret_is_dropped(
    store, tokens, clock, events
):
    idp = FakeIdp()
    first = await make_service(store, tokens, clock, events).start_family(ALICE, "idp-rt", client_ip=None)
    second = await make_service(store, tokens, clock, events).start_family(ALICE, "idp-rt", client_ip=None)
    rotated = ("n" * 40, *SECRETS)

    # While the old secret is still listed, the sealed IdP token still opens.
    listed = SessionService(
        store, tokens, secrets=rotated, clock=clock, emit=events, log=lambda lvl, msg: None
    )
    assert (await listed.refresh(rt(first), idp.recheck, client_ip=None)).refresh_token

    # Once it is dropped, the family cannot be re-checked any more: sign in again.
    dropped = SessionService(
        store, tokens, secrets=rotated[:1], clock=clock, emit=events, log=lambda lvl, msg: None
    )
    await expect_oauth(dropped.refresh(rt(second), idp.recheck, client_ip=None), "invalid_grant", 401)
    assert events.named("session.refresh")[-1]["reason"] == "idp_token_unreadable"


async def test_a_different_subject_from_the_idp_ends_the_family(service, events):
    first = await service.start_family(ALICE, "idp-rt", client_ip=None)
    impostor = FakeIdp(Identity("sub-mallory", "alice@example.com", "Alice", ()))

    await expect_oauth(service.refresh(rt(first), impostor.recheck, client_ip=None), "invalid_grant", 401)
    assert events.named("session.revoke")[-1]["reason"] == "idp_subject_changed"
