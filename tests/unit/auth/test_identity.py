"""Claim extraction and admission rules (reference §3.6, §10 ``oidc``), as tables."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth.identity import Identity, IdentityRejected, identity_from_claims, lookup, needs_userinfo
from gateway.config.schema import Oidc

ENTRA_GROUP = "5a1f3c0e-8d2b-4e7a-9c61-0f2d4b8a7e13"


def cfg(**overrides: Any) -> Oidc:
    return Oidc(issuer="https://idp.example.com", client_id="gw", client_secret="s", **overrides)


BASE = {"sub": "u-1", "email": "ada@example.com", "email_verified": True, "name": "Ada", "groups": ["eng"]}


def claims(**changes: Any) -> dict[str, Any]:
    out = {**BASE, **changes}
    return {k: v for k, v in out.items() if v is not None}


# (test id, claims, config overrides, expected email, expected groups)
EXTRACTION = [
    ("default email and groups", claims(), {}, "ada@example.com", ("eng",)),
    ("email trimmed", claims(email="  ada@example.com "), {}, "ada@example.com", ("eng",)),
    ("no email, no domain rule", claims(email=None), {}, None, ("eng",)),
    ("blank email counts as missing", claims(email=""), {}, None, ("eng",)),
    ("non-string email ignored", claims(email=["a@x"]), {}, None, ("eng",)),
    (
        "email via upn (Entra)",
        claims(email=None, upn="ada@corp.example"),
        {"email_claim": "upn"},
        "ada@corp.example",
        ("eng",),
    ),
    (
        "email via preferred_username",
        claims(email=None, preferred_username="ada@corp.example"),
        {"email_claim": "preferred_username"},
        "ada@corp.example",
        ("eng",),
    ),
    (
        "fallback list takes the first present",
        claims(email=None, upn="u@corp.example", preferred_username="p@x"),
        {"email_claim": ("email", "upn", "preferred_username")},
        "u@corp.example",
        ("eng",),
    ),
    (
        "fallback list prefers email when present",
        claims(upn="u@corp.example"),
        {"email_claim": ("email", "upn")},
        "ada@example.com",
        ("eng",),
    ),
    (
        "email by JSON pointer",
        claims(email=None, profile={"mail": {"primary": "p@example.com"}}),
        {"email_claim": "/profile/mail/primary"},
        "p@example.com",
        ("eng",),
    ),
    (
        "pointer with escapes",
        claims(email=None, **{"a/b": {"c~d": "e@example.com"}}),
        {"email_claim": "/a~1b/c~0d"},
        "e@example.com",
        ("eng",),
    ),
    (
        "pointer into a list",
        claims(email=None, emails=["first@example.com", "second@example.com"]),
        {"email_claim": "/emails/1"},
        "second@example.com",
        ("eng",),
    ),
    ("pointer that misses", claims(email=None), {"email_claim": "/profile/mail"}, None, ("eng",)),
    (
        "Entra app roles",
        claims(groups=None, roles=["Gateway.User"]),
        {"groups_claim": "roles"},
        "ada@example.com",
        ("Gateway.User",),
    ),
    ("Entra GUID groups kept verbatim", claims(groups=[ENTRA_GROUP]), {}, "ada@example.com", (ENTRA_GROUP,)),
    (
        "groups by pointer (Keycloak client roles)",
        claims(groups=None, resource_access={"gw": {"roles": ["dev"]}}),
        {"groups_claim": "/resource_access/gw/roles"},
        "ada@example.com",
        ("dev",),
    ),
    ("single group as a string", claims(groups="eng"), {}, "ada@example.com", ("eng",)),
    (
        "non-string groups dropped, duplicates folded",
        claims(groups=["eng", 7, None, "eng", "ops"]),
        {},
        "ada@example.com",
        ("eng", "ops"),
    ),
    ("no groups claim", claims(groups=None), {}, "ada@example.com", ()),
    ("groups of the wrong shape", claims(groups={"eng": True}), {}, "ada@example.com", ()),
]


@pytest.mark.parametrize(
    ("claims_in", "overrides", "email", "groups"), [c[1:] for c in EXTRACTION], ids=[c[0] for c in EXTRACTION]
)
def test_extraction(claims_in, overrides, email, groups):
    identity, _ = identity_from_claims(claims_in, cfg(**overrides))
    assert identity == Identity(sub="u-1", email=email, name="Ada", groups=groups)


# (test id, claims, config overrides, expected reason or None for admitted)
RULES = [
    ("email_verified false is rejected", claims(email_verified=False), {}, "email not verified"),
    ("email_verified 'false' string is rejected", claims(email_verified="false"), {}, "email not verified"),
    (
        "email_verified false rejected even with no domain rule or email",
        claims(email=None, email_verified=False),
        {},
        "email not verified",
    ),
    ("email_verified absent is fine (Entra)", claims(email_verified=None), {}, None),
    ("domain allowed", claims(), {"allowed_email_domains": ("example.com",)}, None),
    (
        "domain compared case-insensitively",
        claims(email="Ada@EXAMPLE.Com"),
        {"allowed_email_domains": ("example.COM",)},
        None,
    ),
    (
        "domain after the last @",
        claims(email='"x@example.com"@evil.test'),
        {"allowed_email_domains": ("example.com",)},
        "email domain not allowed",
    ),
    (
        "subdomain is not the domain",
        claims(email="a@sub.example.com"),
        {"allowed_email_domains": ("example.com",)},
        "email domain not allowed",
    ),
    (
        "domain not allowed",
        claims(email="a@other.test"),
        {"allowed_email_domains": ("example.com",)},
        "email domain not allowed",
    ),
    (
        "email without @ fails a domain rule",
        claims(email="ada"),
        {"allowed_email_domains": ("example.com",)},
        "email domain not allowed",
    ),
    (
        "missing email with domain rule",
        claims(email=None),
        {"allowed_email_domains": ("example.com",)},
        "id_token missing email claim",
    ),
    ("missing email without domain rule", claims(email=None), {}, None),
    ("group allowed", claims(groups=["ops", "eng"]), {"allowed_groups": ("eng",)}, None),
    (
        "group match is case-sensitive",
        claims(groups=["Eng"]),
        {"allowed_groups": ("eng",)},
        "not in an allowed group",
    ),
    (
        "no groups with a group rule",
        claims(groups=None),
        {"allowed_groups": ("eng",)},
        "not in an allowed group",
    ),
    (
        "both rules pass",
        claims(),
        {"allowed_groups": ("eng",), "allowed_email_domains": ("example.com",)},
        None,
    ),
    ("missing sub", claims(sub=None), {}, "id_token missing sub claim"),
    ("empty sub", claims(sub=""), {}, "id_token missing sub claim"),
]


@pytest.mark.parametrize(
    ("claims_in", "overrides", "reason"), [r[1:] for r in RULES], ids=[r[0] for r in RULES]
)
def test_rules(claims_in, overrides, reason):
    if reason is None:
        identity_from_claims(claims_in, cfg(**overrides))
        return
    with pytest.raises(IdentityRejected) as info:
        identity_from_claims(claims_in, cfg(**overrides))
    assert info.value.reason == reason
    # What the person sees says nothing about claims or configuration.
    assert "claim" not in info.value.user_message and "oidc" not in info.value.user_message


def test_entra_overage_means_no_groups_and_a_warning_naming_the_fix():
    overage = claims(
        groups=None,
        _claim_names={"groups": "src1"},
        _claim_sources={"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}},
    )
    identity, warnings = identity_from_claims(overage, cfg())
    assert identity.groups == ()
    assert len(warnings) == 1 and "overage" in warnings[0] and "groups_claim: roles" in warnings[0]


def test_entra_overage_with_group_rule_is_rejected_and_carries_the_warning():
    overage = claims(groups=None, _claim_names={"groups": "src1"})
    with pytest.raises(IdentityRejected) as info:
        identity_from_claims(overage, cfg(allowed_groups=("eng",)))
    assert info.value.reason == "not in an allowed group"
    assert any("overage" in w for w in info.value.warnings)


def test_guid_groups_against_named_allow_list_explains_itself():
    with pytest.raises(IdentityRejected) as info:
        identity_from_claims(claims(groups=[ENTRA_GROUP]), cfg(allowed_groups=("Engineering",)))
    assert any("object IDs" in w for w in info.value.warnings)


def test_guid_allow_list_matches_entra_groups():
    identity, warnings = identity_from_claims(
        claims(groups=[ENTRA_GROUP]), cfg(allowed_groups=(ENTRA_GROUP,))
    )
    assert identity.groups == (ENTRA_GROUP,) and warnings == []


def test_roles_without_groups_claim_setting_hints_at_it():
    _, warnings = identity_from_claims(claims(groups=None, roles=["Gateway.User"]), cfg())
    assert any("groups_claim: roles" in w for w in warnings)


def test_upn_not_used_unless_configured_but_hinted():
    identity, warnings = identity_from_claims(claims(email=None, upn="ada@corp.example"), cfg())
    assert identity.email is None
    assert any("email_claim" in w and "upn" in w for w in warnings)


def test_userinfo_fills_only_what_is_missing():
    userinfo = {"sub": "u-1", "email": "other@example.com", "groups": ["from-userinfo"], "name": "X"}
    identity, _ = identity_from_claims(claims(groups=None), cfg(), userinfo=userinfo)
    assert identity.email == "ada@example.com"  # the id_token stays authoritative
    assert identity.groups == ("from-userinfo",)


def test_userinfo_email_and_its_verification_flag():
    unverified = {"sub": "u-1", "email": "ada@example.com", "email_verified": False}
    with pytest.raises(IdentityRejected, match="email not verified"):
        identity_from_claims(claims(email=None, email_verified=None), cfg(), userinfo=unverified)
    verified = {"sub": "u-1", "email": "ada@example.com", "email_verified": True}
    identity, _ = identity_from_claims(claims(email=None, email_verified=None), cfg(), userinfo=verified)
    assert identity.email == "ada@example.com"


def test_userinfo_about_someone_else_is_refused():
    with pytest.raises(IdentityRejected, match="userinfo subject mismatch"):
        identity_from_claims(claims(email=None), cfg(), userinfo={"sub": "u-2", "email": "x@example.com"})


@pytest.mark.parametrize(
    ("claims_in", "overrides", "wanted"),
    [
        (claims(), {}, False),
        (claims(email=None), {}, True),
        (claims(groups=None), {}, True),
        (claims(groups=None, roles=["r"]), {"groups_claim": "roles"}, False),
    ],
)
def test_needs_userinfo(claims_in, overrides, wanted):
    assert needs_userinfo(claims_in, cfg(**overrides)) is wanted


def test_lookup_rejects_leading_zero_indexes_and_walks_dicts_only():
    doc = {"a": [10, 11], "b": "text"}
    assert lookup(doc, "/a/1") == 11
    assert lookup(doc, "/a/01") is lookup(doc, "/missing")
    assert lookup(doc, "/b/0") is lookup(doc, "/missing")


@pytest.mark.parametrize(
    "changes, claim",
    [
        ({"sub": "ali\x00ce"}, "sub"),
        ({"email": "alice\x00@example.com"}, "email"),
        ({"groups": ["eng", "ad\x00mins"]}, "groups"),
        ({"groups": ["eng\ud800"]}, "groups"),
        ({"groups": ["eng\u2028x"]}, "groups"),
    ],
)
def test_a_subject_email_or_group_with_control_characters_is_refused_naming_the_claim_only(changes, claim):
    with pytest.raises(IdentityRejected) as err:
        identity_from_claims(claims(**changes), cfg())
    assert err.value.reason == f"id_token {claim} holds control characters"
    assert "\x00" not in err.value.reason and "\x00" not in err.value.user_message


def test_a_display_name_with_control_characters_is_dropped_with_a_warning():
    identity, warnings = identity_from_claims(claims(name="Al\x00ice"), cfg())
    assert identity.name is None
    assert any("display name" in w for w in warnings)
