"""id_token verification that needs no network: header, signature, claims, keys.

The OIDC client (:mod:`gateway.auth.oidc`) fetches the IdP's JWKS and hands the
pieces to this module, which decides. Rules (SPEC "Sign-in"):

* Exactly one signature algorithm is accepted, the configured one, and only
  public-key algorithms exist in :data:`KEY_TYPE_FOR_ALG`. ``none`` and HMAC
  are refused before any key is looked at, which defeats the "HS256 keyed with
  the RSA public key" confusion.
* A token whose header lists ``crit`` extensions is refused: we understand none.
* Without a ``kid`` a key is chosen only when exactly one candidate fits; the
  gateway never tries keys in turn.
* Claims: issuer (with Google's documented alias), audience, ``azp`` when there
  are several audiences, ``exp``/``iat``/``nbf`` within the configured skew,
  and the sign-in nonce compared in constant time.

Every failure is :class:`IdTokenInvalid` with a short reason fit for the audit
log; token contents never appear in it.
"""

from __future__ import annotations

import base64
import hmac
from typing import Any

import msgspec
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

from gateway.errors import Fault, Party

# Large enough for tokens carrying a few hundred groups (tens of KiB).
MAX_ID_TOKEN_CHARS = 128 * 1024
# Key type each accepted signature algorithm needs. HS* and none are absent on
# purpose: an id_token must be verifiable with public keys only.
KEY_TYPE_FOR_ALG = {
    **dict.fromkeys(("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), "RSA"),
    **dict.fromkeys(("ES256", "ES384", "ES512", "ES256K"), "EC"),
    **dict.fromkeys(("EdDSA", "Ed25519", "Ed448"), "OKP"),
}
_SIGNING_KEY_TYPES: dict[str, Any] = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}
# Google documents that its id_tokens carry either spelling of its issuer.
_ISSUER_ALIASES = {"https://accounts.google.com": ("accounts.google.com",)}
# JWK members that only private keys carry; dropped so a JWKS that leaks a
# private key still yields only its public half.
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")


class IdTokenInvalid(Fault):
    """The id_token failed verification; ``reason`` is short audit text.

    The token comes from the IdP over the back channel, so a bad one is the
    IdP's (or its configuration's) doing, not the person's.
    """

    fault = Party.UPSTREAM

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def signing_kid(id_token: str, alg: str) -> str | None:
    """The ``kid`` to verify ``id_token`` with, after checking its header allows ``alg``."""
    header = _header_of(id_token)
    if header.get("alg") != alg or alg not in KEY_TYPE_FOR_ALG:
        raise IdTokenInvalid("algorithm not allowed")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise IdTokenInvalid("malformed token")
    return kid


def signed_claims(id_token: str, key: Any, alg: str) -> dict[str, Any]:
    """The payload of ``id_token`` once its signature checks out with ``key``."""
    try:
        signed = jws.deserialize_compact(id_token, key, algorithms=[alg])
    except (JoseError, ValueError):
        raise IdTokenInvalid("bad signature") from None
    try:
        claims = msgspec.json.decode(signed.payload)
    except (msgspec.DecodeError, RecursionError):
        raise IdTokenInvalid("malformed token") from None
    if not isinstance(claims, dict):
        raise IdTokenInvalid("malformed token")
    return claims


def check_claims(claims: dict[str, Any], cfg: Any, *, issuer: str, nonce: str | None, now: float) -> None:
    """Issuer, audience, azp, times and nonce; ``cfg`` is the ``oidc`` config section."""
    if claims.get("iss") != issuer and claims.get("iss") not in _ISSUER_ALIASES.get(issuer, ()):
        raise IdTokenInvalid("wrong issuer")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if cfg.client_id not in audiences:
        raise IdTokenInvalid("wrong audience")
    azp = claims.get("azp")
    authorized = {cfg.client_id, *cfg.additional_authorized_parties}
    # OIDC Core §3.1.3.7: several audiences call for an azp naming a party we trust.
    if (azp is not None or len(audiences) > 1) and (not isinstance(azp, str) or azp not in authorized):
        raise IdTokenInvalid("wrong azp")
    skew = cfg.clock_skew_seconds
    exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf", 0)
    if not all(_is_number(v) for v in (exp, iat, nbf)):
        raise IdTokenInvalid("malformed token")
    if now > exp + skew:
        raise IdTokenInvalid("expired")
    if iat > now + skew or nbf > now + skew:
        raise IdTokenInvalid("issued in the future")
    if nonce is not None:
        got = claims.get("nonce")
        if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
            raise IdTokenInvalid("nonce mismatch")


def import_signing_keys(doc: Any) -> list[Any] | None:
    """Public signature keys from a JWKS document, or None when it is not one.

    Entries this gateway cannot use are skipped, not fatal (RFC 7517 §5: ignore
    keys you do not understand), so the list may come back empty.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        return None
    keys = []
    for entry in doc["keys"][:100]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        key_class = _SIGNING_KEY_TYPES.get(str(entry.get("kty")))
        if key_class is None:
            continue
        public = {k: v for k, v in entry.items() if k not in _PRIVATE_MEMBERS}
        try:
            keys.append(key_class.import_key(public))
        except (JoseError, ValueError, TypeError):
            continue
    return keys


def pick_key(keys: list[Any], kid: str | None, alg: str) -> Any:
    """The one key that can verify a token with this ``kid`` and ``alg``, or None."""
    kty = KEY_TYPE_FOR_ALG[alg]
    fits = [
        k for k in keys if k.key_type == kty and k.get("alg") in (None, alg) and (kid is None or k.kid == kid)
    ]
    if kid is None and len(fits) != 1:
        # Without a kid we only guess when there is exactly one candidate.
        return None
    return fits[0] if fits else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _header_of(token: str) -> dict[str, Any]:
    if not isinstance(token, str) or len(token) > MAX_ID_TOKEN_CHARS or token.count(".") != 2:
        raise IdTokenInvalid("malformed token")
    segment = token.split(".", 1)[0]
    try:
        header = msgspec.json.decode(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, msgspec.DecodeError, RecursionError):
        raise IdTokenInvalid("malformed token") from None
    if not isinstance(header, dict):
        raise IdTokenInvalid("malformed token")
    if "crit" in header:
        # RFC 7515 §4.1.11: we understand no extensions, so must refuse them.
        raise IdTokenInvalid("malformed token")
    return header
