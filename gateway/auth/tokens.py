"""Gateway session tokens: mint and verify, as pure functions of keys, claims and time.

Tokens are HS256 JWTs shaped like Anthropic's gateway's, so one ``jwt_secret``
yields tokens both gateways accept (SPEC "Bearer tokens"):

* header ``kid`` = first 16 hex digits of SHA-256(secret), so a verifier holding
  several secrets during a rotation picks the right one without trying each;
* claims ``iss`` = ``listen.public_url``, ``aud`` = ``claude-gateway``, ``sub``,
  ``email``, ``name``, ``groups``, ``iat``, ``exp``, plus ``sid`` (the sign-in
  family, used for revocation).

A token is refused (401, never anything else, whatever is malformed in it) unless
its signature, issuer and audience check out, ``sub`` is non-empty, ``exp`` has
not passed and neither ``iat`` nor ``nbf`` (when present) lies in the future,
each time with the same leeway for clock drift between replicas.

The first secret signs; every listed secret verifies. Verification results are
cached (bounded LRU keyed by the token string) because a client sends the same
token on every request for up to ``ttl_hours``; ``exp`` is still checked on
every use, and entries are dropped once they expire.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from typing import NamedTuple

import msgspec
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from gateway.errors import GatewayError, Kind
from protocol_spec.wire import SessionClaims, claims_decoder, encoder

AUDIENCE = "claude-gateway"
# Clocks on replicas drift; a token that expired a few seconds ago on this
# replica's clock may still be valid on the one that minted it.
EXP_LEEWAY_S = 30
CACHE_ENTRIES = 10_000
# Far above any token we mint (a few hundred groups fit in tens of KiB); longer
# is refused before any parsing.
MAX_TOKEN_CHARS = 256 * 1024


class Principal(NamedTuple):
    sub: str
    email: str | None
    name: str | None
    groups: tuple[str, ...]
    sid: str | None
    exp: int


def key_id(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def _invalid(message: str = "invalid token") -> GatewayError:
    return GatewayError(Kind.AUTH_INVALID, message)


class TokenService:
    """Signs with the first secret, verifies with any; caches verified tokens."""

    def __init__(
        self, secrets: tuple[str, ...], issuer: str, ttl_seconds: int, *, billing_group_tag: str | None = None
    ) -> None:
        if not secrets:
            raise ValueError("at least one jwt secret is required")
        self._keys = {key_id(s): OctKey.import_key(s.encode()) for s in secrets}
        self._signing_kid = key_id(secrets[0])
        self.issuer = issuer
        self.ttl_seconds = ttl_seconds
        self.billing_group_tag = billing_group_tag
        self._cache: OrderedDict[str, Principal] = OrderedDict()

    # -- minting ---------------------------------------------------------
    def mint(
        self,
        *,
        sub: str,
        now: int,
        email: str | None = None,
        name: str | None = None,
        groups: tuple[str, ...] | list[str] = (),
        sid: str | None = None,
        ttl_seconds: int | None = None,
    ) -> str:
        ttl = self.ttl_seconds if ttl_seconds is None else ttl_seconds
        claims = SessionClaims(
            sub=sub,
            iss=self.issuer,
            aud=AUDIENCE,
            iat=now,
            exp=now + ttl,
            email=email,
            name=name,
            groups=list(groups),
            sid=sid or uuid.uuid4().hex,
            billing_group_tag=self.billing_group_tag,
        )
        header = {"alg": "HS256", "typ": "JWT", "kid": self._signing_kid}
        payload = msgspec_to_dict(claims)
        return jwt.encode(header, payload, self._keys[self._signing_kid], algorithms=["HS256"])

    # -- verification ------------------------------------------------------
    def verify(self, token: str, now: int) -> Principal:
        cached = self._cache.get(token)
        if cached is not None:
            if now > cached.exp + EXP_LEEWAY_S:
                del self._cache[token]
                raise _invalid("token expired")
            self._cache.move_to_end(token)
            return cached
        principal = self._verify_uncached(token, now)
        self._cache[token] = principal
        if len(self._cache) > CACHE_ENTRIES:
            self._evict(now)
        return principal

    def _evict(self, now: int) -> None:
        # Expired entries go first; then the least recently used.
        for tok in [t for t, p in self._cache.items() if now > p.exp + EXP_LEEWAY_S]:
            del self._cache[tok]
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)

    def verify_ignoring_time(self, token: str) -> Principal:
        """Signature, issuer, audience and subject only; never cached.

        For revocation (RFC 7009 lets a client revoke an expired token, whose
        ``sid`` may still name a live family).
        """
        return self._verify_uncached(token, None)

    def _verify_uncached(self, token: str, now: int | None) -> Principal:
        # Anything a client sends lands here before a signature has been checked,
        # so every failure to parse, whatever raises it, is the same 401.
        try:
            claims, extra = self._signed_claims(token)
        except GatewayError:
            raise
        except Exception:
            raise _invalid() from None
        if claims.iss != self.issuer:
            raise _invalid()
        aud = claims.aud if isinstance(claims.aud, list) else [claims.aud]
        if AUDIENCE not in aud:
            raise _invalid()
        if not claims.sub.strip():
            raise _invalid()
        if now is not None:
            if now > claims.exp + EXP_LEEWAY_S:
                raise _invalid("token expired")
            nbf = extra.get("nbf", claims.iat)
            if not _is_number(nbf) or max(claims.iat, nbf) > now + EXP_LEEWAY_S:
                raise _invalid("token not valid yet")
        return Principal(claims.sub, claims.email, claims.name, tuple(claims.groups), claims.sid, claims.exp)

    def _signed_claims(self, token: str) -> tuple[SessionClaims, dict]:
        """The claims of a token our keys signed (typed, and as the raw mapping)."""
        if token.count(".") != 2 or len(token) > MAX_TOKEN_CHARS:
            raise _invalid()
        try:
            header = jws.extract_compact(token.encode()).headers()
        except (JoseError, ValueError, TypeError):
            raise _invalid() from None
        if not isinstance(header, dict) or header.get("alg") != "HS256":
            raise _invalid()
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _invalid()
        # A token without kid is accepted (Anthropic's gateway does too): try every key.
        keys = [self._keys[kid]] if kid in self._keys else ([] if kid is not None else list(self._keys.values()))
        for key in keys:
            try:
                decoded = jwt.decode(token, key, algorithms=["HS256"])
                break
            except (JoseError, ValueError, TypeError):
                continue
        else:
            raise _invalid()
        raw = decoded.claims
        if not isinstance(raw, dict):
            raise _invalid()
        try:
            return claims_decoder.decode(encoder.encode(raw)), raw
        except (msgspec.DecodeError, msgspec.EncodeError, RecursionError):
            raise _invalid() from None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def msgspec_to_dict(claims: SessionClaims) -> dict:
    return msgspec.to_builtins(claims)


def bearer_token(authorization: str | None) -> str:
    """The token from an ``Authorization: Bearer`` header, or an auth error."""
    if not authorization:
        raise _invalid("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _invalid("malformed authorization header")
    return token.strip()
