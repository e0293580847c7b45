"""Properties of the Google Directory page parser and its neighbours (issue 17, fuzzing).

Whatever the Directory (or something posing as it) answers, a page is read as
groups fit for the rules and a token fit for the next page's URL, or refused as
:class:`DirectoryAnswerInvalid`; never another exception. Example counts come
from the hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth import directory_groups as dg
from gateway.auth.identity import MAX_CLAIM_CHARS
from gateway.config.addresses import is_loopback_host

PROPS = settings(deadline=None)

# What json.loads can hand over: lone surrogates included (a "\ud800" escape decodes to one).
any_text = st.text(st.characters(codec=None), max_size=30) | st.sampled_from(["", "\ud800", "a\udcffb", "x" * 3000])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=10,
)
pages = st.fixed_dictionaries(
    {},
    optional={
        "groups": st.lists(
            st.fixed_dictionaries({}, optional={"email": any_text | json_values, "name": any_text}) | json_values,
            max_size=4,
        )
        | json_values,
        "nextPageToken": any_text | json_values,
        "kind": st.just("admin#directory#groups"),
    },
)


def read(body):
    try:
        return dg.read_page(body)
    except dg.DirectoryAnswerInvalid:
        return None


@PROPS
@given(pages | json_values)
def test_any_answer_is_a_usable_page_or_invalid(body):
    page = read(body)
    if page is None:
        return
    assert all(isinstance(g, str) and 0 < len(g) <= MAX_CLAIM_CHARS for g in page.groups)
    if page.next_token is not None:
        # The token goes into the next page's URL: it must survive the trip.
        url = dg.page_url(dg.GOOGLE_DIRECTORY_BASE, "a@example.com", page.next_token)
        assert parse_qs(urlsplit(url).query, keep_blank_values=True)["pageToken"] == [page.next_token]


emails = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)


page_tokens = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=60)


@PROPS
@given(st.lists(emails, max_size=6), st.none() | page_tokens)
def test_a_well_formed_page_reads_back_exactly(groups, token):
    body = {"groups": [{"email": g} for g in groups], **({"nextPageToken": token} if token else {})}
    assert dg.read_page(body) == dg.Page(tuple(groups), token)
    query = parse_qs(urlsplit(dg.page_url("http://127.0.0.1:1", groups[0] if groups else "x", token)).query)
    assert query["userKey"] == [groups[0] if groups else "x"] and query.get("pageToken") == ([token] if token else None)


@PROPS
@given(any_text | st.sampled_from(["http://[::1", "http://127.0.0.1:99999/t", "http://u:p@localhost/t", "https://[::1]:8/t"]))
def test_the_directory_is_googles_or_a_loopback_origin(token_uri):
    base = dg.directory_base(token_uri, True)
    assert base == dg.GOOGLE_DIRECTORY_BASE or is_loopback_host(urlsplit(base).hostname or "")
    assert dg.directory_base(token_uri, False) == dg.GOOGLE_DIRECTORY_BASE


@PROPS
@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 1000)), max_size=40), st.integers(1, 4))
def test_the_cache_never_holds_more_than_its_bound(puts, bound):
    cache = dg.GroupCache(100.0, max_people=bound)
    for person, now in puts:
        cache.put(cache.key(str(person), "e"), (f"g{person}",), now)
        assert len(cache) <= bound
        assert cache.fresh(cache.key(str(person), "E"), now) == (f"g{person}",)


def test_regression_a_page_token_that_cannot_go_in_a_url_is_an_invalid_answer():
    # Found by the properties above: a token holding a lone surrogate (a "\\ud800"
    # escape in the JSON) was accepted and then broke the next page's URL.
    assert read({"groups": [], "nextPageToken": "\ud800"}) is None
    assert read({"groups": [], "nextPageToken": "a b\n"}) is None
    assert dg.directory_base("http://[::1", True) == dg.GOOGLE_DIRECTORY_BASE
