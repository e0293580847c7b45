"""Properties of the header rules toward an Anthropic upstream (issue 17, fuzzing).

Whatever headers a client sends, in whatever case and however repeated: only
the forwarded families go upstream, the credential is always ours alone, a
beta the gateway drops is gone from every ``anthropic-beta`` line, and the
upstream's hop-by-hop and account headers never come back. Example counts come
from the hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.upstreams.anthropic import (
    _DROP_RESPONSE,
    _FORWARD_EXACT,
    _FORWARD_PREFIXES,
    OAUTH_BETA,
    build_headers,
    prepare,
    response_headers,
)

PROPS = settings(deadline=None)
DROPPED_BETA = "request-tags-2025-01-01"
OUR_KEY = "sk-ant-ours"

names = st.sampled_from(
    ["anthropic-beta", "anthropic-version", "x-api-key", "authorization", "cookie", "content-type", "accept",
     "user-agent", "x-claude-code-session-id", "x-stainless-os", "x-forwarded-for", "connection", "x-app",
     "proxy-authorization", "x-claude-gateway-user-id", "accept-encoding", "host", "te"]
).flatmap(lambda n: st.sampled_from([n, n.upper(), n.title()]))
betas = st.lists(st.sampled_from([DROPPED_BETA, OAUTH_BETA, "prompt-caching-2024-07-31", "x", ""]), max_size=4)
values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20) | betas.map(", ".join)
client_headers = st.lists(st.tuples(names, values), max_size=10).map(CIMultiDict)


def upstream(*, oauth: bool, identity: bool) -> SimpleNamespace:
    auth = SimpleNamespace(api_key=None if oauth else OUR_KEY, oauth_token="tok" if oauth else None)
    return SimpleNamespace(base_url=None, auth=auth, headers={"x-extra": "1"}, forward_user_identity=identity)


def lines(headers: dict[str, str], name: str) -> list[str]:
    return [v for k, v in headers.items() if k.lower() == name]


def forwarded(name: str) -> bool:
    lower = name.lower()
    return lower in _FORWARD_EXACT or lower.startswith(_FORWARD_PREFIXES)


@PROPS
@given(client_headers, st.booleans(), st.booleans(), st.booleans())
def test_only_forwarded_families_go_up_and_the_credential_is_ours_alone(sent, oauth, identity, drop):
    prepared = prepare(upstream(oauth=oauth, identity=identity))
    out = build_headers(prepared, sent, "dev@example.com", "dev", drop_beta=DROPPED_BETA if drop else None)
    ours = {"accept-encoding", "x-extra", "x-api-key", "authorization"}
    if identity:
        ours |= {"x-claude-gateway-user-id", "x-claude-gateway-user-email", "x-litellm-end-user-id"}
    for name in out:
        assert forwarded(name) or name.lower() in ours, name
    if oauth:
        assert lines(out, "authorization") == ["Bearer tok"] and not lines(out, "x-api-key")
    else:
        assert lines(out, "x-api-key") == [OUR_KEY] and not lines(out, "authorization")
    # Each forwarded name the client sent arrives on one line, however its case varied.
    assert len({k.lower() for k in out}) == len(out)


beta_lines = st.lists(
    st.tuples(st.sampled_from(["anthropic-beta", "Anthropic-Beta", "ANTHROPIC-BETA"]), betas.map(",".join)), max_size=4
).map(CIMultiDict)


@PROPS
@given(client_headers | beta_lines, st.booleans())
def test_a_dropped_beta_is_gone_from_every_line_and_the_oauth_beta_is_there_once(sent, oauth):
    out = build_headers(prepare(upstream(oauth=oauth, identity=False)), sent, None, None, drop_beta=DROPPED_BETA)
    found = [b.strip() for line in lines(out, "anthropic-beta") for b in line.split(",")]
    assert DROPPED_BETA not in found
    if oauth:
        assert OAUTH_BETA in found


@PROPS
@given(st.lists(st.tuples(names | st.sampled_from(sorted(_DROP_RESPONSE)), values), max_size=10))
def test_hop_by_hop_and_account_headers_never_come_back(pairs):
    pairs += [("Anthropic-Ratelimit-Tokens-Remaining", "5")]
    out = response_headers(CIMultiDict(pairs))
    for name in out:
        assert name.lower() not in _DROP_RESPONSE and not name.lower().startswith("anthropic-ratelimit-")


def test_regression_header_lines_differing_only_in_case_are_one_header():
    # Found by the properties above: "anthropic-beta" and "Anthropic-Beta" went up as
    # two lines, and the dropped beta was removed from the first only.
    sent = CIMultiDict([("anthropic-beta", "x"), ("Anthropic-Beta", DROPPED_BETA), ("ANTHROPIC-BETA", "y")])
    out = build_headers(prepare(upstream(oauth=True, identity=False)), sent, None, None, drop_beta=DROPPED_BETA)
    assert lines(out, "anthropic-beta") == [f"x,y,{OAUTH_BETA}"]
