from datetime import datetime, timedelta, timezone

import pytest

from gateway.auth.devicecodes import (
    USER_CODE_ALPHABET,
    GrantState,
    code_hash,
    decide_poll,
    new_device_code,
    new_user_code,
    normalize_user_code,
    pkce_pair,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
LATER = NOW + timedelta(minutes=10)


def test_codes_have_the_promised_shape():
    assert len(USER_CODE_ALPHABET) == 20 and not set("AEIOU0123456789") & set(USER_CODE_ALPHABET)
    code = new_user_code()
    assert len(code) == 9 and code[4] == "-" and normalize_user_code(code) == code.replace("-", "")
    assert len(new_device_code()) >= 43  # 256 bits, base64url
    assert len(code_hash("x")) == 32


@pytest.mark.parametrize("text, expected", [("bcdf-ghjk", "BCDFGHJK"), ("BCDFGHJK", "BCDFGHJK"), (" bcdf ghjk ", "BCDFGHJK"), ("ABCD-EFGH", None), ("BCD", None), (None, None)])
def test_user_code_matching(text, expected):
    assert normalize_user_code(text) == expected


def test_pkce_s256():
    import base64
    import hashlib

    verifier, challenge = pkce_pair()
    assert challenge == base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "grant, now, expected",
    [
        (None, NOW, ("expired_token", None)),
        (GrantState("pending", LATER, None), NOW, ("authorization_pending", None)),
        (GrantState("pending", LATER, NOW - timedelta(seconds=2)), NOW, ("slow_down", None)),
        (GrantState("pending", LATER, NOW - timedelta(seconds=4.5)), NOW, ("authorization_pending", None)),
        (GrantState("approved", LATER, NOW - timedelta(seconds=5)), NOW, ("issue", "consumed")),
        (GrantState("denied", LATER, None), NOW, ("access_denied", "consumed")),
        (GrantState("consumed", LATER, None), NOW, ("expired_token", None)),
        (GrantState("approved", NOW, None), NOW, ("expired_token", None)),
    ],
)
def test_poll_decisions(grant, now, expected):
    assert tuple(decide_poll(grant, now)) == expected
