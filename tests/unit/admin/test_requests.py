"""gateway.admin.requests: valid admin requests parse to the right values; each refusal names its field.

tests/unit/test_hostile_properties.py checks that no input makes these parsers
raise anything but a 400; this file checks what they return and what they say.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import MultiDict

from gateway.admin.requests import (
    CURSOR_MISMATCH,
    MAX_AMOUNT_CENTS,
    MAX_ID_CHARS,
    MAX_REASON_CHARS,
    PAGE_MAX,
    EffectiveQuery,
    LimitRequest,
    ListQuery,
    decode_cursor,
    encode_cursor,
    filters_fingerprint,
    parse_audit_query,
    parse_delete_reason,
    parse_effective_query,
    parse_limit_id,
    parse_limit_request,
    parse_list_query,
    parse_page_size,
)
from gateway.errors import GatewayError, Kind
from gateway.spend.caps import PERIODS


def refusal(call) -> str:
    """The message of the 400 ``call()`` raises."""
    with pytest.raises(GatewayError) as caught:
        call()
    assert caught.value.kind is Kind.INVALID_REQUEST
    return caught.value.message


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


USER = {"type": "user", "user_id": "alice@example.com"}
GROUP = {"type": "rbac_group", "rbac_group_id": "eng"}
ORG = {"type": "organization"}


# ---------------------------------------------------------------- POST body: valid


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            {"scope": USER, "amount": "5000", "period": "daily"},
            LimitRequest("user", "alice@example.com", "daily", 5000, False, None, None),
        ),
        (
            {"scope": GROUP, "amount": None, "period": "weekly", "reason": "no cap this week"},
            LimitRequest("rbac_group", "eng", "weekly", None, False, None, "no cap this week"),
        ),
        (
            {"scope": ORG, "amount": "0", "period": "monthly", "currency": "USD"},
            LimitRequest("organization", "", "monthly", 0, False, None, None),
        ),
        (
            {
                "scope": GROUP,
                "amount": "2500",
                "period": "monthly",
                "pooled_limit_enabled": True,
                "pooled_monthly_credit_limit": "100000",
            },
            LimitRequest("rbac_group", "eng", "monthly", 2500, True, 100_000, None),
        ),
        (
            # Leading zeros are still whole cents; the largest amount is accepted.
            {"scope": USER, "amount": "007", "period": "daily", "pooled_limit_enabled": False},
            LimitRequest("user", "alice@example.com", "daily", 7, False, None, None),
        ),
        (
            {"scope": USER, "amount": str(MAX_AMOUNT_CENTS), "period": "daily", "reason": None},
            LimitRequest("user", "alice@example.com", "daily", MAX_AMOUNT_CENTS, False, None, None),
        ),
        (
            # An explicit null pooled limit is the same as none.
            {"scope": USER, "amount": "1", "period": "daily", "pooled_monthly_credit_limit": None},
            LimitRequest("user", "alice@example.com", "daily", 1, False, None, None),
        ),
    ],
)
def test_valid_limit_bodies_parse_to_their_values(doc, expected):
    assert parse_limit_request(json.dumps(doc).encode()) == expected


def test_ids_and_reasons_keep_non_ascii_text_and_the_other_scope_ids_are_ignored():
    scope = {"type": "user", "user_id": "zoë@例え.jp", "rbac_group_id": 5}
    req = parse_limit_request(body(scope=scope, amount="1", period="daily", reason="für das Team ✓"))
    assert (req.scope_id, req.reason) == ("zoë@例え.jp", "für das Team ✓")


def test_the_longest_id_and_reason_are_accepted():
    scope = {"type": "user", "user_id": "u" * MAX_ID_CHARS}
    req = parse_limit_request(body(scope=scope, amount="1", period="daily", reason="r" * MAX_REASON_CHARS))
    assert len(req.scope_id) == MAX_ID_CHARS and len(req.reason) == MAX_REASON_CHARS


# ---------------------------------------------------------------- POST body: refusals


def doc_with(**changes: Any) -> bytes:
    doc: dict[str, Any] = {"scope": USER, "amount": "5000", "period": "daily"}
    for name, value in changes.items():
        if value is ...:
            doc.pop(name)
        else:
            doc[name] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("raw", "starts"),
    [
        (b"", "the request body is not valid JSON"),
        (b"{", "the request body is not valid JSON"),
        (b"\xff\xfe", "the request body is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "the request body is not valid JSON: nested too deeply"),
        (b"[]", "body: expected a JSON object"),
        (b'"x"', "body: expected a JSON object, got a string"),
        (doc_with(scope=...), "scope: required"),
        (doc_with(scope=None), "scope: required"),
        (doc_with(scope="user"), "scope: expected an object, got a string"),
        (doc_with(scope={"type": "team"}), "scope.type: must be one of"),
        (doc_with(scope={}), "scope.type: must be one of"),
        (doc_with(scope={"type": "user"}), "scope.user_id: required for this scope type"),
        (
            doc_with(scope={"type": "rbac_group", "user_id": "a"}),
            "scope.rbac_group_id: required for this scope type",
        ),
        (doc_with(scope={"type": "user", "user_id": 5}), "scope.user_id: expected a string, got a number"),
        (doc_with(scope={"type": "user", "user_id": None}), "scope.user_id: expected a string"),
        (doc_with(scope={"type": "user", "user_id": "  "}), "scope.user_id: must be a non-empty string"),
        (
            doc_with(scope={"type": "user", "user_id": "u" * (MAX_ID_CHARS + 1)}),
            "scope.user_id: must be a non-empty",
        ),
        (
            doc_with(scope={"type": "user", "user_id": "a\x00b"}),
            "scope.user_id: must not contain control characters",
        ),
        (
            doc_with(scope={"type": "rbac_group", "rbac_group_id": "e\nng"}),
            "scope.rbac_group_id: must not contain",
        ),
        (doc_with(amount=...), "amount: required"),
        (doc_with(amount=5000), "amount: expected a string of whole cents or null, got a number"),
        (doc_with(amount=True), "amount: expected a string of whole cents or null, got a boolean"),
        (doc_with(amount="50.00"), "amount: must be a whole number of US cents"),
        (doc_with(amount="-5"), "amount: must be a whole number of US cents"),
        (doc_with(amount=""), "amount: must be a whole number of US cents"),
        (doc_with(amount=" 5"), "amount: must be a whole number of US cents"),
        (doc_with(amount="\u0665"), "amount: must be a whole number of US cents"),  # an Arabic-Indic 5
        (doc_with(amount=str(MAX_AMOUNT_CENTS + 1)), f"amount: must be at most {MAX_AMOUNT_CENTS} cents"),
        (doc_with(period=...), "period: required"),
        (doc_with(period=None), "period: required"),
        (doc_with(period="yearly"), "period: must be one of 'daily', 'weekly', 'monthly', not 'yearly'"),
        (doc_with(period="Daily"), "period: must be one of"),
        (doc_with(period=7), "period: must be one of 'daily', 'weekly', 'monthly', not 'number'"),
        (doc_with(currency="EUR"), 'currency: only "USD" is supported'),
        (doc_with(currency=None), 'currency: only "USD" is supported'),
        (doc_with(pooled_limit_enabled="true"), "pooled_limit_enabled: expected a boolean, got a string"),
        (doc_with(pooled_limit_enabled=1), "pooled_limit_enabled: expected a boolean, got a number"),
        (
            doc_with(pooled_limit_enabled=True, period="monthly", pooled_monthly_credit_limit="1"),
            "pooled_limit_enabled: only an rbac_group cap can carry a pooled budget",
        ),
        (
            doc_with(scope=GROUP, pooled_limit_enabled=True, pooled_monthly_credit_limit="1"),
            "pooled_limit_enabled: pooled budgets are monthly",
        ),
        (
            doc_with(scope=GROUP, period="monthly", pooled_limit_enabled=True),
            "pooled_monthly_credit_limit: required (whole cents) when pooled_limit_enabled is true",
        ),
        (
            doc_with(scope=GROUP, period="monthly", pooled_monthly_credit_limit="100"),
            "pooled_monthly_credit_limit: only allowed together with pooled_limit_enabled: true",
        ),
        (doc_with(pooled_monthly_credit_limit=100), "pooled_monthly_credit_limit: expected a string"),
        (doc_with(pooled_monthly_credit_limit="1e3"), "pooled_monthly_credit_limit: must be a whole number"),
        (doc_with(reason=5), f"reason: must be a string of at most {MAX_REASON_CHARS} characters"),
        (doc_with(reason="r" * (MAX_REASON_CHARS + 1)), "reason: must be a string of at most"),
        (doc_with(reason="tab\there"), "reason: must not contain control characters"),
    ],
)
def test_each_refusal_names_its_field(raw, starts):
    assert refusal(lambda: parse_limit_request(raw)).startswith(starts)


def test_the_first_problem_found_is_the_one_reported():
    raw = body(scope={"type": "team"}, amount="x", period="yearly", currency="EUR")
    assert refusal(lambda: parse_limit_request(raw)).startswith("scope.type:")
    raw = body(scope=USER, amount="x", period="yearly")
    assert refusal(lambda: parse_limit_request(raw)).startswith("amount:")


def test_a_refusal_quotes_a_wrong_period_briefly_and_escaped():
    message = refusal(lambda: parse_limit_request(doc_with(period="y\x1b[31m" + "z" * 200)))
    assert "\x1b" not in message and len(message) < 140


# ---------------------------------------------------------------- path ids and page sizes


@pytest.mark.parametrize("raw", ["lim_01", "ü" * MAX_ID_CHARS])
def test_a_limit_id_that_could_exist_is_returned(raw):
    assert parse_limit_id(raw) == raw


@pytest.mark.parametrize("raw", ["x" * (MAX_ID_CHARS + 1), "a\x00", "a\nb", "\ud800"])
def test_a_limit_id_no_limit_could_have_is_none(raw):
    assert parse_limit_id(raw) is None


@pytest.mark.parametrize(
    ("raw", "size"), [(None, 37), ("1", 1), ("20", 20), (str(PAGE_MAX), PAGE_MAX), ("0050", 50)]
)
def test_page_sizes(raw, size):
    assert parse_page_size({} if raw is None else {"limit": raw}, 37) == size


@pytest.mark.parametrize("raw", ["0", str(PAGE_MAX + 1), "-1", "", "ten", "1.5", " 5", "\u0661"])
def test_page_sizes_out_of_range_are_refused(raw):
    assert (
        refusal(lambda: parse_page_size({"limit": raw}, 20))
        == f"limit: must be a whole number from 1 to {PAGE_MAX}"
    )


# ---------------------------------------------------------------- list, audit and delete queries


def test_list_query_defaults_and_values():
    assert parse_list_query({}) == ListQuery(20, None, None, None)
    query = {"limit": "5", "scope_type": "rbac_group", "after_id": "lim_9"}
    assert parse_list_query(query) == ListQuery(5, "rbac_group", "lim_9", None)
    assert parse_list_query({"before_id": "lim_3"}) == ListQuery(20, None, None, "lim_3")


@pytest.mark.parametrize(
    ("query", "starts"),
    [
        ({"limit": "0"}, "limit:"),
        ({"scope_type": "team"}, "scope_type: must be one of"),
        ({"after_id": "a\x7f"}, "after_id: must not contain control characters"),
        ({"before_id": "b" * (MAX_ID_CHARS + 1)}, f"before_id: must be at most {MAX_ID_CHARS} characters"),
        ({"after_id": "a", "before_id": "b"}, "before_id: cannot be combined with after_id"),
    ],
)
def test_list_query_refusals_name_their_field(query, starts):
    assert refusal(lambda: parse_list_query(query)).startswith(starts)


def test_audit_query_defaults_and_values():
    assert parse_audit_query({}) == (100, None)
    assert parse_audit_query({"limit": "10", "after_id": "42"}) == (10, 42)
    assert parse_audit_query({"after_id": "9" * 18}) == (100, 10**18 - 1)


@pytest.mark.parametrize("after_id", ["", "abc", "-1", "1.0", "9" * 19, "\u0664\u0662"])
def test_audit_after_id_must_be_an_event_id(after_id):
    message = refusal(lambda: parse_audit_query({"after_id": after_id}))
    assert message == "after_id: must be the numeric id of an audit event"


def test_delete_reason():
    assert parse_delete_reason({}) is None
    assert parse_delete_reason({"reason": "left the team"}) == "left the team"
    assert refusal(lambda: parse_delete_reason({"reason": "a\x00"})).startswith("reason: must not contain")
    too_long = "r" * (MAX_REASON_CHARS + 1)
    assert refusal(lambda: parse_delete_reason({"reason": too_long})).startswith("reason: must be at most")


# ---------------------------------------------------------------- /effective query


def effective(*pairs: tuple[str, str]) -> EffectiveQuery:
    return parse_effective_query(MultiDict(pairs))


def test_effective_query_defaults():
    assert effective() == EffectiveQuery(None, PERIODS, False, None, 20, None)


def test_effective_query_reads_both_spellings_of_repeated_keys():
    q = effective(("user_ids[]", "a"), ("user_ids", "b"), ("user_ids[]", "c"), ("period", "monthly"))
    assert q.user_ids == ("a", "c", "b") and q.periods == ("monthly",)


def test_periods_come_back_in_canonical_order_without_duplicates():
    q = effective(("period[]", "monthly"), ("period[]", "daily"), ("period[]", "monthly"))
    assert q.periods == ("daily", "monthly")


def test_ranking_by_spend_needs_exactly_one_period():
    q = effective(("sort", "spend_desc"), ("period[]", "weekly"), ("period[]", "weekly"), ("limit", "3"))
    assert (q.by_spend, q.periods, q.size) == (True, ("weekly",), 3)


def test_an_empty_search_is_no_search():
    assert effective(("q", "")).q is None
    assert effective(("q", "ali")).q == "ali"


@pytest.mark.parametrize(
    ("pairs", "starts"),
    [
        ([("user_ids[]", "")], "user_ids[]: each must be a non-empty id"),
        ([("user_ids", "u" * (MAX_ID_CHARS + 1))], "user_ids[]: each must be a non-empty id"),
        ([("user_ids[]", "a\x00")], "user_ids[]: must not contain control characters"),
        ([("period[]", "yearly")], "period[]: must be one of 'daily', 'weekly', 'monthly', not 'yearly'"),
        ([("period", "daily"), ("period", "hourly")], "period[]: must be one of"),
        ([("sort", "name")], "sort: the only supported order is 'spend_desc'"),
        ([("sort", "spend_desc")], "sort: spend_desc needs exactly one period[] to rank by"),
        (
            [("sort", "spend_desc"), ("period[]", "daily"), ("period[]", "weekly")],
            "sort: spend_desc needs exactly one period[]",
        ),
        ([("q", "a\nb")], "q: must not contain control characters"),
        ([("q", "q" * (MAX_ID_CHARS + 1))], "q: must be at most"),
        ([("limit", "0")], "limit:"),
        ([("page", "not-a-cursor")], "page: not a cursor this API returned"),
    ],
)
def test_effective_query_refusals_name_their_field(pairs, starts):
    assert refusal(lambda: effective(*pairs)).startswith(starts)


# ---------------------------------------------------------------- cursors


def test_a_cursor_round_trips_and_is_url_safe_without_padding():
    token = encode_cursor("fp", ["zoë", "lim_1"])
    assert "=" not in token and "+" not in token and "/" not in token
    assert decode_cursor(token, "fp") == ("zoë", "lim_1")


def test_a_cursor_under_other_filters_is_refused_as_a_mismatch():
    token = encode_cursor("fp-a", ["x", "y"])
    assert refusal(lambda: decode_cursor(token, "fp-b")) == CURSOR_MISMATCH


def test_the_fingerprint_ignores_user_id_order_and_repeats_but_not_the_other_filters():
    base = filters_fingerprint(("a", "b"), PERIODS, False, None)
    assert filters_fingerprint(("b", "a", "a"), PERIODS, False, None) == base
    others = [
        filters_fingerprint(None, PERIODS, False, None),
        filters_fingerprint(("a",), PERIODS, False, None),
        filters_fingerprint(("a", "b"), ("daily",), False, None),
        filters_fingerprint(("a", "b"), ("daily",), True, None),
        filters_fingerprint(("a", "b"), PERIODS, False, "a"),
    ]
    assert base not in others and len(set(others)) == len(others)


def cursor_for(key: list[Any], *pairs: tuple[str, str]) -> EffectiveQuery:
    """``pairs`` parsed with a page cursor issued under those same filters."""
    q = effective(*pairs)
    token = encode_cursor(filters_fingerprint(q.user_ids, q.periods, q.by_spend, q.q), key)
    return effective(*pairs, ("page", token))


def test_an_effective_page_cursor_is_the_last_row_shown():
    assert cursor_for(["alice", "lim_1"], ("user_ids[]", "alice")).cursor == ("alice", "lim_1")
    ranked = (("sort", "spend_desc"), ("period[]", "daily"))
    assert cursor_for([12_345, "bob"], *ranked).cursor == (12_345, "bob")


def test_a_cursor_issued_for_the_same_users_in_another_order_still_works():
    q = effective(("user_ids[]", "a"), ("user_ids[]", "b"))
    token = encode_cursor(filters_fingerprint(q.user_ids, q.periods, q.by_spend, q.q), ["a", "x"])
    swapped = effective(("user_ids[]", "b"), ("user_ids[]", "a"), ("page", token))
    assert swapped.cursor == ("a", "x")


def test_a_cursor_from_other_filters_is_refused():
    q = effective(("period[]", "daily"))
    token = encode_cursor(filters_fingerprint(q.user_ids, q.periods, q.by_spend, q.q), ["a", "x"])
    assert refusal(lambda: effective(("period[]", "weekly"), ("page", token))) == CURSOR_MISMATCH


RANKED = (("sort", "spend_desc"), ("period[]", "daily"))


@pytest.mark.parametrize(
    ("key", "pairs"),
    [
        (["a"], ()),  # one part
        (["a", "b", "c"], ()),  # three parts
        ([1, "b"], ()),  # a number where the name is
        (["a", 2], ()),
        (["a", "b\x00"], ()),
        (["a" * (MAX_ID_CHARS + 1), "b"], ()),
        (["a", "b" * (MAX_ID_CHARS + 1)], ()),
        (["1", "b"], RANKED),  # a string where the spend is
        ([True, "b"], RANKED),  # a boolean is not an amount
        ([-1, "b"], RANKED),
        ([2**63, "b"], RANKED),
        ([1.5, "b"], RANKED),
    ],
)
def test_a_cursor_of_the_wrong_shape_is_refused(key, pairs):
    message = refusal(lambda: cursor_for(key, *pairs))
    assert message == "page: not a cursor this API returned"


def test_refusals_name_the_json_type_with_its_article():
    from gateway.admin import requests as admin_requests

    assert [admin_requests._a_type(v) for v in (None, True, 1, "x", [], {})] == [
        "null", "a boolean", "a number", "a string", "an array", "an object"
    ]
