"""The pure half of the Google Workspace group lookup: where the Directory is, what a
page says, what is remembered and for how long, and how Directory groups meet the rules."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.auth import directory_groups as dg
from gateway.auth.identity import (
    MAX_GROUPS,
    Identity,
    IdentityRejected,
    identity_from_claims,
    with_directory_groups,
)
from gateway.config.schema import GoogleGroups, Oidc

ALICE = Identity("alice-sub", "alice@example.com", "Alice", ("from-the-id-token",))


# ---------------------------------------------------------------- where the Directory is


def test_the_directory_is_googles_unless_a_loopback_fake_in_development():
    fake = "http://127.0.0.1:4321/token"
    assert dg.directory_base("https://oauth2.googleapis.com/token", True) == dg.GOOGLE_DIRECTORY_BASE
    assert dg.directory_base(fake, True) == "http://127.0.0.1:4321"
    # Without the development switch a loopback token_uri moves nothing.
    assert dg.directory_base(fake, False) == dg.GOOGLE_DIRECTORY_BASE
    assert dg.directory_base(None, True) == dg.GOOGLE_DIRECTORY_BASE
    # Any other host, even one the operator controls, is never asked for groups.
    assert dg.directory_base("https://tokens.corp.example/token", True) == dg.GOOGLE_DIRECTORY_BASE
    assert dg.directory_base("http://user:pw@localhost:99/token", True) == "http://localhost:99"
    assert dg.directory_base("ftp://127.0.0.1/token", True) == dg.GOOGLE_DIRECTORY_BASE


def test_page_urls_ask_for_group_emails_of_the_person_and_carry_the_page_token():
    first = urlsplit(dg.page_url(dg.GOOGLE_DIRECTORY_BASE, "a+b@example.com", None))
    assert (first.scheme, first.netloc, first.path) == ("https", "admin.googleapis.com", dg.GROUPS_PATH)
    query = parse_qs(first.query)
    assert query == {"userKey": ["a+b@example.com"], "maxResults": ["200"], "fields": [dg.FIELDS]}
    later = parse_qs(urlsplit(dg.page_url("http://127.0.0.1:1", "a@example.com", "tok&x=1")).query)
    assert later["pageToken"] == ["tok&x=1"] and later["userKey"] == ["a@example.com"]


# ---------------------------------------------------------------- reading a page


def test_a_page_gives_the_group_emails_and_the_next_token():
    body = {
        "kind": "admin#directory#groups",
        "groups": [{"email": "eng@example.com", "name": "Eng"}, {"email": "all@example.com"}],
        "nextPageToken": "abc",
    }
    assert dg.read_page(body) == dg.Page(("eng@example.com", "all@example.com"), "abc")
    assert dg.read_page({"groups": []}) == dg.Page((), None)
    # A person in no group gets an answer without "groups" at all.
    assert dg.read_page({"kind": "admin#directory#groups"}) == dg.Page((), None)
    assert dg.read_page({"groups": [], "nextPageToken": ""}) == dg.Page((), None)


@pytest.mark.parametrize(
    "body",
    [
        [],
        "groups",
        None,
        {"groups": {"email": "x@example.com"}},
        {"groups": [{"name": "no email"}]},
        {"groups": [{"email": ""}]},
        {"groups": [{"email": 7}]},
        {"groups": ["eng@example.com"]},
        {"groups": [{"email": "x" * 2000}]},
        {"groups": [], "nextPageToken": 5},
        {"groups": [], "nextPageToken": "t" * 5000},
    ],
)
def test_an_answer_of_another_shape_is_invalid_never_fewer_groups(body):
    with pytest.raises(dg.DirectoryAnswerInvalid):
        dg.read_page(body)


# ---------------------------------------------------------------- the cache


def test_groups_are_remembered_for_the_ttl_then_forgotten():
    cache = dg.GroupCache(3600)
    key = dg.GroupCache.key("alice-sub", "Alice@Example.com")
    assert key == dg.GroupCache.key("alice-sub", "alice@example.com")
    assert cache.fresh(key, 1000.0) is None
    cache.put(key, ("eng@example.com",), 1000.0)
    assert cache.fresh(key, 1000.0 + 3599) == ("eng@example.com",)
    assert cache.fresh(key, 1000.0 + 3600) is None
    assert len(cache) == 0  # an expired entry is dropped when found
    # A clock that went backwards does not make an entry live forever.
    cache.put(key, ("eng@example.com",), 1000.0)
    assert cache.fresh(key, 900.0) is None


def test_people_are_kept_apart_and_the_oldest_goes_first_when_full():
    cache = dg.GroupCache(3600, max_people=2)
    a, b, c = (dg.GroupCache.key(s, f"{s}@example.com") for s in "abc")
    cache.put(a, ("ga",), 0.0)
    cache.put(b, ("gb",), 1.0)
    assert cache.fresh(dg.GroupCache.key("a", "b@example.com"), 2.0) is None
    cache.put(a, ("ga2",), 2.0)  # refreshed: now the newest
    cache.put(c, ("gc",), 3.0)
    assert (cache.fresh(a, 4.0), cache.fresh(b, 4.0), cache.fresh(c, 4.0)) == (("ga2",), None, ("gc",))


def test_a_zero_ttl_remembers_nothing():
    cache = dg.GroupCache(0)
    key = dg.GroupCache.key("a", "a@example.com")
    cache.put(key, ("g",), 0.0)
    assert cache.fresh(key, 0.0) is None and len(cache) == 0


# ---------------------------------------------------------------- Directory groups meet the rules


def cfg(allowed=None) -> Oidc:
    google = GoogleGroups(service_account_json_path="/sa.json", admin_email="admin@example.com")
    return Oidc(issuer="https://accounts.google.com", client_id="gw", client_secret="s",
                allowed_groups=allowed, google_groups=google)


def test_with_google_groups_the_id_tokens_groups_are_not_judged():
    # Google's id_tokens carry no groups: allowed_groups waits for the Directory's.
    claims = {"sub": "alice-sub", "email": "alice@example.com", "email_verified": True}
    identity, _ = identity_from_claims(claims, cfg(("claude@example.com",)))
    assert identity.groups == ()


def test_directory_groups_replace_the_id_tokens_and_duplicates_go():
    identity, warnings = with_directory_groups(ALICE, ("eng@example.com", "all@example.com", "eng@example.com"), cfg())
    assert identity == ALICE._replace(groups=("eng@example.com", "all@example.com"))
    assert warnings == []


def test_allowed_groups_apply_to_the_directory_groups():
    allowed = cfg(("claude@example.com",))
    identity, _ = with_directory_groups(ALICE, ("eng@example.com", "claude@example.com"), allowed)
    assert identity.groups == ("eng@example.com", "claude@example.com")
    with pytest.raises(IdentityRejected) as refused:
        with_directory_groups(ALICE._replace(groups=("claude@example.com",)), ("eng@example.com",), allowed)
    assert refused.value.reason == "not in an allowed group"


def test_too_many_groups_are_cut_with_a_warning_and_control_characters_refused():
    many = tuple(f"g{i}@example.com" for i in range(MAX_GROUPS + 5))
    identity, warnings = with_directory_groups(ALICE, many, cfg())
    assert identity.groups == many[:MAX_GROUPS] and "groups" in warnings[0]
    with pytest.raises(IdentityRejected):
        with_directory_groups(ALICE, ("bad\x00@example.com",), cfg())
