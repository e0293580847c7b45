"""Who signed in: turn verified IdP claims into an :class:`Identity`, and apply
the operator's admission rules (SPEC "Sign-in", reference §3.6 and §10 ``oidc``).

Pure: claims in, an identity (plus warnings for the operator) out, or
:class:`IdentityRejected`. The caller has already verified the id_token; this
module only reads it.

Rules, in the order they are applied:

1. ``sub`` must be a non-empty string: it is the person's stable key.
2. Email comes from ``oidc.email_claim``: a claim name, an RFC 6901 JSON pointer
   (``/a/b``), or a list of either tried in order. The id_token is authoritative;
   ``userinfo`` (only passed when the caller fetched it) fills what is missing.
3. Groups come from ``oidc.groups_claim`` (name or pointer), the same way.
4. ``email_verified: false`` from any source consulted is always a rejection:
   an unverified address would let anyone claim a colleague's domain.
5. ``allowed_email_domains``: compared case-insensitively with the part after
   the last ``@``; no email at all is a rejection only when domains are set.
6. ``allowed_groups``: at least one exact, case-sensitive match; no nested
   group expansion. With ``oidc.google_groups`` the groups come from the
   Workspace Directory instead, and :func:`with_directory_groups` applies this
   rule to them.

IdP quirks handled here rather than in configuration guesses:

* Entra ID puts ``_claim_names.groups`` in place of ``groups`` when a person is
  in too many groups (the "overage"). We do not follow the Graph pointer: the
  person gets no groups, and a warning names the fix.
* Entra ID emits group object IDs (GUIDs), not names; app roles arrive as
  ``roles``. Neither is guessed at: the warnings say which setting to change.
* ``upn`` / ``preferred_username`` are only used when ``email_claim`` lists
  them, because Entra does not guarantee that they are verified addresses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from gateway.client_text import unprintable
from gateway.errors import Fault, Party

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# A groups claim larger than this is not a group list we should be trusting as-is;
# it also bounds what a session token can end up carrying.
MAX_GROUPS = 1000
MAX_CLAIM_CHARS = 1024


class Identity(NamedTuple):
    sub: str
    email: str | None
    name: str | None
    groups: tuple[str, ...]


class IdentityRejected(Fault):
    """The IdP vouched for the person, but the gateway's rules turn them away.

    ``reason`` is short audit text; ``user_message`` may be shown to the person
    and carries no internals; ``warnings`` are operator hints (log them).
    """

    fault = Party.CLIENT

    def __init__(self, reason: str, user_message: str, warnings: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.user_message = user_message
        self.warnings = list(warnings or ())


_MISSING: Any = object()


def lookup(claims: Mapping[str, Any], path: str) -> Any:
    """The value at ``path``: a plain claim name, or an RFC 6901 pointer when it
    starts with ``/``. Returns the module's ``_MISSING`` marker when absent."""
    if not path.startswith("/"):
        return claims.get(path, _MISSING)
    node: Any = claims
    for raw in path[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping):
            node = node.get(token, _MISSING)
        elif isinstance(node, list) and token.isdigit() and (token == "0" or not token.startswith("0")):
            index = int(token)
            node = node[index] if index < len(node) else _MISSING
        else:
            return _MISSING
        if node is _MISSING:
            return _MISSING
    return node


def _email_paths(oidc_cfg: Any) -> tuple[str, ...]:
    spec = oidc_cfg.email_claim
    return (spec,) if isinstance(spec, str) else tuple(spec)


def _find_email(source: Mapping[str, Any], paths: tuple[str, ...]) -> str | None:
    for path in paths:
        value = lookup(source, path)
        if isinstance(value, str) and value.strip() and len(value) <= MAX_CLAIM_CHARS:
            return value.strip()
    return None


def _find_groups(source: Mapping[str, Any], path: str) -> tuple[str, ...] | None:
    """Groups at ``path``; None when the claim is absent or not a usable shape."""
    value = lookup(source, path)
    if isinstance(value, str):
        # Some IdPs (ADFS, a few Keycloak mappers) send one group as a bare string.
        value = [value]
    if not isinstance(value, list):
        return None
    groups = [g for g in value if isinstance(g, str) and g and len(g) <= MAX_CLAIM_CHARS]
    return tuple(dict.fromkeys(groups[:MAX_GROUPS]))


def needs_userinfo(claims: Mapping[str, Any], oidc_cfg: Any) -> bool:
    """Whether ``userinfo_fallback`` would add anything: email or groups missing."""
    return (
        _find_email(claims, _email_paths(oidc_cfg)) is None
        or _find_groups(claims, oidc_cfg.groups_claim) is None
    )


def _unverified(source: Mapping[str, Any] | None) -> bool:
    if source is None:
        return False
    flag = source.get("email_verified")
    # Some IdPs (older Cognito pools among them) send the flag as a string.
    return flag is False or (isinstance(flag, str) and flag.strip().lower() == "false")


def _overage_warning(claims: Mapping[str, Any], path: str) -> str | None:
    names = claims.get("_claim_names")
    claim = path.lstrip("/")
    if isinstance(names, Mapping) and claim in names:
        return (
            f"the IdP left '{claim}' out of the id_token because the person is in too many groups "
            "(Entra ID groups overage), so they get no groups; fix it in the app registration by "
            "emitting only groups assigned to the application (groupMembershipClaims: ApplicationGroup) "
            "or by using app roles with oidc.groups_claim: roles"
        )
    return None


def _group_hints(claims: Mapping[str, Any], oidc_cfg: Any, groups: tuple[str, ...] | None) -> list[str]:
    hints: list[str] = []
    overage = _overage_warning(claims, oidc_cfg.groups_claim) if groups is None else None
    if overage:
        hints.append(overage)
    elif groups is None and oidc_cfg.groups_claim == "groups" and isinstance(claims.get("roles"), list):
        hints.append(
            "the id_token has no 'groups' but carries 'roles' (Entra app roles); set oidc.groups_claim: roles to use them"
        )
    allowed = oidc_cfg.allowed_groups or ()
    if (
        groups
        and allowed
        and all(_GUID.match(g) for g in groups)
        and not any(_GUID.match(a) for a in allowed)
    ):
        hints.append(
            "the groups claim holds object IDs (GUIDs, as Entra ID sends), but oidc.allowed_groups lists names; "
            "list the group object IDs, or use app roles with oidc.groups_claim: roles"
        )
    return hints


def _email_hint(claims: Mapping[str, Any], oidc_cfg: Any) -> list[str]:
    present = [c for c in ("upn", "preferred_username") if isinstance(claims.get(c), str)]
    if present and oidc_cfg.email_claim == "email":
        return [
            f"the id_token has no 'email' but has {' and '.join(repr(c) for c in present)} "
            f"(Entra ID does this); to use it set oidc.email_claim: [email, {present[0]}]"
        ]
    return []


def identity_from_claims(
    claims: Mapping[str, Any], oidc_cfg: Any, *, userinfo: Mapping[str, Any] | None = None
) -> tuple[Identity, list[str]]:
    """Build the identity from verified claims and apply the admission rules.

    Raises :class:`IdentityRejected`. The second item holds warnings for the
    operator's log (never shown to the person).
    """
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > MAX_CLAIM_CHARS:
        raise IdentityRejected("id_token missing sub claim", _GENERIC)
    if userinfo is not None and userinfo.get("sub") != sub:
        # OIDC Core §5.3.2: a userinfo answer about someone else must not be mixed in.
        raise IdentityRejected("userinfo subject mismatch", _GENERIC)

    paths = _email_paths(oidc_cfg)
    email = _find_email(claims, paths)
    email_source: Mapping[str, Any] | None = claims
    if email is None and userinfo is not None:
        email = _find_email(userinfo, paths)
        email_source = userinfo if email is not None else None
    groups = _find_groups(claims, oidc_cfg.groups_claim)
    if groups is None and userinfo is not None:
        groups = _find_groups(userinfo, oidc_cfg.groups_claim)
    name = claims.get("name")
    if not isinstance(name, str) and userinfo is not None:
        name = userinfo.get("name")

    warnings = _group_hints(claims, oidc_cfg, groups)
    if email is None:
        warnings += _email_hint(claims, oidc_cfg)
    if isinstance(name, str) and unprintable(name):
        warnings.append("the IdP sent a display name with control characters; it is left out of the session")
        name = None
    identity = Identity(
        sub=sub,
        email=email,
        name=name if isinstance(name, str) and name and len(name) <= MAX_CLAIM_CHARS else None,
        groups=groups or (),
    )
    _refuse_unstorable(identity, warnings)
    _admit(identity, oidc_cfg, verified_sources=(claims, email_source), warnings=warnings)
    return identity, warnings


_GENERIC = "Your identity provider did not send the details this gateway needs. Ask your administrator."


def _refuse_unstorable(identity: Identity, warnings: list[str]) -> None:
    """Refuse a subject, email or group holding control characters or lone surrogates.

    PostgreSQL refuses a NUL byte in text, so such a value would fail the
    session's insert as an internal error; and a group silently dropped would
    hand the person a session without a policy or cap they are meant to have.
    The claim is named for the operator, never its value.
    """
    fields = (("sub", (identity.sub,)), ("email", (identity.email or "",)), ("groups", identity.groups))
    for claim, values in fields:
        if any(unprintable(v) for v in values):
            raise IdentityRejected(f"id_token {claim} holds control characters", _GENERIC, warnings)


def _admit(
    identity: Identity,
    oidc_cfg: Any,
    *,
    verified_sources: tuple[Mapping[str, Any] | None, ...],
    warnings: list[str],
) -> None:
    if any(_unverified(s) for s in verified_sources):
        raise IdentityRejected(
            "email not verified", "Your email address is not verified with your identity provider.", warnings
        )
    domains = {d.strip().lstrip("@").rstrip(".").lower() for d in oidc_cfg.allowed_email_domains or ()}
    if domains:
        if identity.email is None:
            raise IdentityRejected("id_token missing email claim", _GENERIC, warnings)
        domain = identity.email.rpartition("@")[2].rstrip(".").lower() if "@" in identity.email else ""
        if domain not in domains:
            raise IdentityRejected(
                "email domain not allowed", "Your email domain is not allowed to use this gateway.", warnings
            )
    if oidc_cfg.google_groups is None:
        # With google_groups the groups come from the Directory afterwards
        # (with_directory_groups), and the rule is applied to those.
        _admit_groups(identity, oidc_cfg, warnings)


def _admit_groups(identity: Identity, oidc_cfg: Any, warnings: list[str]) -> None:
    allowed = set(oidc_cfg.allowed_groups or ())
    if allowed and not allowed.intersection(identity.groups):
        raise IdentityRejected(
            "not in an allowed group", "Your account is not in a group allowed to use this gateway.", warnings
        )


def with_directory_groups(
    identity: Identity, groups: tuple[str, ...], oidc_cfg: Any
) -> tuple[Identity, list[str]]:
    """``identity`` with the groups a directory listed in place of any from the
    id_token, and the ``allowed_groups`` rule applied to them.

    Raises :class:`IdentityRejected`. More than :data:`MAX_GROUPS` are cut, as a
    groups claim would be, with a warning for the operator.
    """
    warnings: list[str] = []
    unique = tuple(dict.fromkeys(groups))
    if len(unique) > MAX_GROUPS:
        warnings.append(f"the person is in {len(unique)} groups; only the first {MAX_GROUPS} are used")
        unique = unique[:MAX_GROUPS]
    identity = identity._replace(groups=unique)
    _refuse_unstorable(identity, warnings)
    _admit_groups(identity, oidc_cfg, warnings)
    return identity, warnings
