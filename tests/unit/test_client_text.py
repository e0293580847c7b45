"""What may be quoted of a client's text: capped, unprintable characters escaped, always UTF-8."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.client_text import capped, quoted, unprintable
from gateway.errors import error_body


def test_quoted_escapes_controls_surrogates_and_line_separators():
    assert quoted("dai\ud800ly") == "dai\\ud800ly"
    assert quoted("a\x00b\nc\x7f") == "a\\x00b\\nc\\x7f"
    assert quoted("x\u2028y") == "x\\u2028y"
    assert quoted("plain é") == "plain é"


def test_quoted_is_capped_first():
    assert quoted("\x00" * 100, 4) == "\\x00" * 4 + "…[96 more characters]"
    assert capped("abcdef", 3) == "abc…[3 more characters]"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_quoted_text_is_printable_and_encodes(value):
    out = quoted(value)
    assert not unprintable(out)
    out.encode("utf-8")


def test_an_error_message_holding_a_lone_surrogate_still_renders():
    body = json.loads(error_body("invalid_request_error", "not 'a\ud800b'", "req_1"))
    assert body["error"]["message"] == "not 'a\\ud800b'"
