"""AWS Signature Version 4 over one outbound request, and AssumeRole session names.

The arithmetic (canonical request, string to sign, the HMAC key chain) is
botocore's :class:`~botocore.auth.SigV4Auth`; this module only decides *which*
bytes are signed, so that they are exactly the bytes aiohttp puts on the wire:

* the URL as yarl (aiohttp's URL type) normalises it: yarl turns ``%3A`` into
  ``:`` but keeps ``%2F``, and the canonical path must be built from what is
  sent, not from what the translator wrote;
* ``host`` as aiohttp would write it (port included unless it is the scheme's
  default), set explicitly so the header sent is the header signed;
* ``x-amz-content-sha256``, the hex SHA-256 of the body (Bedrock requires the
  payload hash; it also saves botocore from hashing the body a second time);
* ``x-amz-security-token`` when the credentials are temporary.

botocore's own ``add_auth`` reads the wall clock; the signing time here comes
from the caller, so tests and the gateway's injected clock agree with it.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Protocol

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from yarl import URL

from gateway.upstreams.outbound import Outbound

ALGORITHM = "AWS4-HMAC-SHA256"
_STAMP = "%Y%m%dT%H%M%SZ"
# Headers sign() writes itself; stale copies (another attempt's) are dropped first.
_SIGNING_HEADERS = frozenset(
    ("authorization", "host", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token")
)


class AwsCredentials(Protocol):
    """What signing needs; botocore's ``ReadOnlyCredentials`` has these fields."""

    @property
    def access_key(self) -> str: ...

    @property
    def secret_key(self) -> str: ...

    @property
    def token(self) -> str | None: ...


def sign(
    out: Outbound, *, service: str, region: str, creds: AwsCredentials, now: datetime | None = None
) -> Outbound:
    """``out`` with SigV4 headers added (a POST of ``out.body`` to ``out.url``)."""
    url = URL(out.url)
    wire_url = str(url)
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime(_STAMP)
    headers = {name: value for name, value in out.headers.items() if name.lower() not in _SIGNING_HEADERS}
    headers["host"] = url.host_port_subcomponent or ""
    headers["x-amz-date"] = stamp
    headers["x-amz-content-sha256"] = hashlib.sha256(out.body).hexdigest()
    if creds.token:
        headers["x-amz-security-token"] = creds.token

    request = AWSRequest(method="POST", url=wire_url, headers=headers, data=out.body)
    request.context["timestamp"] = stamp
    signer = SigV4Auth(creds, service, region)
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    # The canonical request's second-to-last line is the signed-header list: read it
    # there rather than have botocore build it a second time (bench/signer.py).
    signed = canonical.rsplit("\n", 2)[1]
    headers["authorization"] = (
        f"{ALGORITHM} Credential={signer.scope(request)}, SignedHeaders={signed}, Signature={signature}"
    )
    return out._replace(url=wire_url, headers=headers)


# ---------------------------------------------------------------------------
# RoleSessionName: 2 to 64 characters of [A-Za-z0-9_+=,.@-] (STS AssumeRole).

MAX_SESSION_NAME = 64
_KEPT = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+,.@-")
# "=_" never comes out of the escaping below ("=" is always followed by two
# uppercase hex digits), so a name carrying it cannot equal a short name's
# encoding: the marker keeps hashed and padded names apart from plain ones.
_MARKER = "=_"
_HASH_CHARS = 24  # 96 bits of SHA-256: no accidental collision among developers
_PREFIX_CHARS = MAX_SESSION_NAME - len(_MARKER) - _HASH_CHARS


def role_session_name(value: str) -> str:
    """``value`` (a developer's email or sub) as a valid, distinct RoleSessionName.

    Bytes outside ``[A-Za-z0-9_+,.@-]`` become ``=XX`` (their UTF-8 bytes in
    uppercase hex; ``=`` itself is escaped, so the encoding is reversible).
    An encoding over 64 characters becomes its first characters, cut at an
    escape boundary, plus ``=_`` and a hash of ``value``. One under the minimum
    of 2 is padded with ``=_``. Distinct values give distinct names.
    """
    pieces = [chr(byte) if byte in _KEPT else f"={byte:02X}" for byte in value.encode("utf-8")]
    encoded = "".join(pieces)
    if len(encoded) < 2:
        return encoded + _MARKER
    if len(encoded) <= MAX_SESSION_NAME:
        return encoded
    prefix, size = [], 0
    for piece in pieces:
        if size + len(piece) > _PREFIX_CHARS:
            break
        prefix.append(piece)
        size += len(piece)
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:_HASH_CHARS]
    return "".join(prefix) + _MARKER + digest
