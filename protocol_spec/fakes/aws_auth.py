"""How the fake AWS services (Bedrock runtime, STS) check a caller's SigV4 signature.

A signature is *recomputed* with botocore's :class:`~botocore.auth.SigV4Auth`
from what actually arrived (method, raw path, the signed headers, the body) and
the secret the :class:`AwsKeyring` holds for the access key, then compared. No
signing code of the gateway is involved, so a fake that accepts a request is
evidence that a real AWS endpoint would too.

The refusals use AWS's own error types, so a client's error mapping sees the
shapes it will meet in production (``InvalidSignatureException``,
``ExpiredTokenException``, ``UnrecognizedClientException``…).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

__all__ = ["AwsKey", "AwsKeyring", "SignatureRejected", "verify_sigv4"]

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = timedelta(minutes=5)  # what AWS allows between x-amz-date and its own clock
_STAMP = "%Y%m%dT%H%M%SZ"
_AUTH_FIELDS = re.compile(r"(Credential|SignedHeaders|Signature)=([^,\s]+)")

MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)
INVALID_TOKEN = "The security token included in the request is invalid."
EXPIRED_TOKEN = "The security token included in the request is expired"


class AwsKey(NamedTuple):
    secret: str
    session_token: str | None = None
    expires_at: datetime | None = None  # aware; None for long-term keys


class AwsKeyring(dict[str, AwsKey]):
    """Access key id → (secret, session token, expiry), shared by the fakes of one test.

    The fake STS adds the temporary credentials it issues; the fake Bedrock
    accepts whatever is here.
    """

    def add(
        self,
        access_key_id: str,
        secret: str,
        session_token: str | None = None,
        expires_at: datetime | None = None,
    ) -> None:
        self[access_key_id] = AwsKey(secret, session_token, expires_at)


class SignatureRejected(Exception):
    """The request is refused; ``error_type`` is AWS's name for why."""

    def __init__(self, error_type: str, message: str, status: int = 403) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.status = status


def verify_sigv4(
    method: str,
    raw_path: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    *,
    keyring: AwsKeyring,
    service: str,
    region: str,
    now: datetime,
    signed_now: datetime | None = None,
    max_skew: timedelta | None = MAX_SKEW,
) -> str:
    """The access key id that signed the request, or :class:`SignatureRejected`.

    ``now`` decides whether temporary credentials have expired; ``signed_now``
    (default ``now``) is the clock ``x-amz-date`` must be within ``max_skew`` of.
    """
    pairs = [(name.lower(), value) for name, value in headers]
    found = dict(pairs)
    auth = found.get("authorization")
    if not auth:
        raise SignatureRejected("MissingAuthenticationTokenException", "Missing Authentication Token")
    access_key, scope_date, signed_names, signature = _parse_authorization(auth, service, region)
    key = keyring.get(access_key)
    if key is None:
        raise SignatureRejected("UnrecognizedClientException", INVALID_TOKEN)
    _check_token(key, found.get("x-amz-security-token"), signed_names, now)
    stamp = _check_date(found.get("x-amz-date"), scope_date, signed_names, signed_now or now, max_skew)
    claimed_hash = found.get("x-amz-content-sha256")
    if claimed_hash is not None and claimed_hash != hashlib.sha256(body).hexdigest():
        # botocore signs the header's value, not the body: without this check a
        # body swapped after signing would pass.
        raise SignatureRejected(
            "InvalidSignatureException", "The provided x-amz-content-sha256 does not match the body"
        )

    request = _rebuild(method, raw_path, pairs, signed_names, body, found.get("host", ""))
    request.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(access_key, key.secret, key.session_token), service, region)
    if signer.signed_headers(signer.headers_to_sign(request)) != ";".join(signed_names):
        raise SignatureRejected("InvalidSignatureException", MISMATCH)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if not hmac.compare_digest(expected, signature):
        raise SignatureRejected("InvalidSignatureException", MISMATCH)
    return access_key


def _parse_authorization(auth: str, service: str, region: str) -> tuple[str, str, list[str], str]:
    if not auth.startswith(ALGORITHM + " "):
        raise SignatureRejected("IncompleteSignatureException", f"Authorization must use {ALGORITHM}", 400)
    fields = dict(_AUTH_FIELDS.findall(auth))
    if set(fields) != {"Credential", "SignedHeaders", "Signature"}:
        raise SignatureRejected(
            "IncompleteSignatureException", "Authorization lacks Credential, SignedHeaders or Signature", 400
        )
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise SignatureRejected("IncompleteSignatureException", "Credential is not a valid scope", 400)
    access_key, scope_date, scope_region, scope_service, _ = scope
    if scope_region != region:
        raise SignatureRejected(
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region, not '{scope_region}'.",
        )
    if scope_service != service:
        raise SignatureRejected(
            "InvalidSignatureException", f"Credential should be scoped to correct service: '{service}'."
        )
    signed_names = fields["SignedHeaders"].split(";")
    if "host" not in signed_names:
        raise SignatureRejected("InvalidSignatureException", "'Host' must be a signed header.")
    return access_key, scope_date, signed_names, fields["Signature"]


def _check_token(key: AwsKey, token: str | None, signed_names: list[str], now: datetime) -> None:
    if key.session_token is not None or token is not None:
        signed = "x-amz-security-token" in signed_names
        if token is None or not signed or not hmac.compare_digest(token, key.session_token or ""):
            raise SignatureRejected("UnrecognizedClientException", INVALID_TOKEN)
    if key.expires_at is not None and now >= key.expires_at:
        raise SignatureRejected("ExpiredTokenException", EXPIRED_TOKEN)


def _check_date(
    stamp: str | None, scope_date: str, signed_names: list[str], now: datetime, max_skew: timedelta | None
) -> str:
    if stamp is None or "x-amz-date" not in signed_names:
        raise SignatureRejected("IncompleteSignatureException", "x-amz-date must be sent and signed", 400)
    try:
        signed_at = datetime.strptime(stamp, _STAMP).replace(tzinfo=UTC)
    except ValueError:
        raise SignatureRejected(
            "IncompleteSignatureException", "x-amz-date is not a SigV4 time", 400
        ) from None
    if stamp[:8] != scope_date:
        raise SignatureRejected(
            "InvalidSignatureException", "Date in Credential scope does not match x-amz-date"
        )
    if max_skew is not None and abs(now - signed_at) > max_skew:
        raise SignatureRejected(
            "InvalidSignatureException",
            f"Signature expired: {stamp} is now earlier than "
            f"{(now - max_skew).strftime(_STAMP)} ({now.strftime(_STAMP)} - 5 min.)",
        )
    return stamp


def _rebuild(
    method: str, raw_path: str, pairs: list[tuple[str, str]], signed_names: list[str], body: bytes, host: str
) -> AWSRequest:
    """The request as botocore would have signed it: only the signed headers, the wire path."""
    # http, not https: botocore then always hashes the body (no UNSIGNED-PAYLOAD shortcut).
    request = AWSRequest(method=method, url=f"http://{host}{raw_path}", data=body)
    wanted = set(signed_names)
    missing = wanted - {name for name, _ in pairs}
    if missing:
        raise SignatureRejected("InvalidSignatureException", MISMATCH)
    for name, value in pairs:
        if name in wanted:
            # HTTPHeaders is an email Message: assignment appends, so repeated
            # headers stay repeated and canonicalise as "a,b".
            request.headers[name] = value
    return request
