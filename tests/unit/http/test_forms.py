"""Strict form parsing for the sign-in endpoints (gateway.http.forms)."""

import pytest

from gateway.auth.rate_window import wait_before_next
from gateway.client_text import capped
from gateway.http.forms import MAX_FIELDS, FormInvalid, parse_form


def test_what_clients_send_parses():
    assert parse_form(b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code=abc") == {
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "device_code": "abc",
    }
    assert parse_form(b"user_code=BCDF-GHJK&action=approve&csrf=x+y") == {
        "user_code": "BCDF-GHJK", "action": "approve", "csrf": "x y",
    }
    assert parse_form(b"") == {} and parse_form(b"surface=") == {"surface": ""}
    assert parse_form("name=Zoë".encode()) == {"name": "Zoë"}


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"a=\xff", "not valid UTF-8"),
        (b"a=%ff", "not valid UTF-8 once decoded"),
        (b"a=%ED%A0%80", "not valid UTF-8 once decoded"),  # a lone surrogate
        (b"a=%00", "control characters"),
        (b"a%0A=b", "control characters"),
        (b"a=%7F", "control characters"),
        (b"a=1&a=2", "appears more than once"),
        (b"&".join(b"f%d=1" % i for i in range(MAX_FIELDS + 1)), "more than"),
    ],
)
def test_refusals_say_why(body, reason):
    with pytest.raises(FormInvalid) as info:
        parse_form(body)
    assert reason in str(info.value)


def test_capped_says_how_much_was_left_out():
    assert capped("abc", 3) == "abc"
    assert capped("abcdef", 3) == "abc…[3 more characters]"


def test_rate_window_waits_for_the_oldest_admitted_attempt():
    hits = [(100.0, 1), (105.0, 1)]
    assert wait_before_next(hits, 110.0, 60, 3) is None
    assert wait_before_next(hits, 110.0, 60, 2) == 50  # 100 + 60 - 110
    assert wait_before_next(hits, 160.0, 60, 2) is None  # the first has left the window
    assert wait_before_next([(100.0, 3)], 110.0, 60, 2) == 50  # several at one instant
