"""Properties of session tokens that test_hostile_properties.py does not cover (issue 17).

That file throws garbage and forged claims at :meth:`TokenService.verify`; here
the tokens are real: whatever claims the gateway mints verify back to the same
principal (across a key rotation too), and any one-character change to a real
token is a 401 or, at most, the same principal (base64 padding bits). Example
counts come from the hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth.tokens import TokenService
from gateway.errors import GatewayError, Kind

PROPS = settings(deadline=None)
OLD, NEW = "o" * 40, "n" * 40
ISSUER = "https://gw.example.com"
NOW = 1_800_000_000
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@PROPS
@given(
    text.filter(lambda s: s.strip()),
    st.none() | text,
    st.none() | text,
    st.lists(text, max_size=5),
    st.integers(1, 86_400),
    st.integers(0, 86_400),
)
def test_what_the_gateway_mints_verifies_to_the_same_principal(sub, email, name, groups, ttl, later):
    minted_by_old = TokenService((OLD,), ISSUER, ttl)
    token = minted_by_old.mint(sub=sub, email=email, name=name, groups=groups, now=NOW)
    rotated = TokenService((NEW, OLD), ISSUER, ttl)  # the new key signs, the old still verifies
    try:
        principal = rotated.verify(token, NOW + later)
    except GatewayError as err:
        assert err.kind is Kind.AUTH_INVALID and later > ttl  # only ever for expiry
        return
    assert (principal.sub, principal.email, principal.name, principal.groups) == (sub, email, name, tuple(groups))


SERVICE = TokenService((OLD,), ISSUER, 3600)
TOKEN = SERVICE.mint(sub="dev", email="dev@example.com", groups=["eng"], now=NOW)
REFERENCE = SERVICE.verify(TOKEN, NOW)


@PROPS
@given(st.integers(0, len(TOKEN) - 1), st.characters(codec="ascii") | st.sampled_from(["\udcff", "\u00e9"]))
def test_a_real_token_changed_anywhere_is_refused_or_unchanged_in_meaning(at, char):
    changed = TOKEN[:at] + char + TOKEN[at + 1 :]
    try:
        principal = TokenService((OLD,), ISSUER, 3600).verify(changed, NOW)
    except GatewayError as err:
        assert err.kind is Kind.AUTH_INVALID
        return
    assert principal == REFERENCE
