"""A fake Microsoft Entra ID token service over HTTPS on a loopback port.

What azure-identity (through MSAL) asks of ``login.microsoftonline.com`` for a
service principal or an AKS workload identity, and nothing else:

* ``GET /{tenant}/v2.0/.well-known/openid-configuration`` — where the token
  endpoint is (MSAL's tenant discovery);
* ``POST /{tenant}/oauth2/v2.0/token`` with ``grant_type=client_credentials``
  and either ``client_secret`` (a registered client's) or a
  ``client_assertion`` — a federated JWT (a Kubernetes service account token)
  **verified** here: RS256 signature against the registered issuer key,
  ``iss``, ``sub``, ``aud`` = ``api://AzureADTokenExchange``, ``exp``.

MSAL only talks to an authority over https, so the fake serves TLS with a
certificate of a throwaway CA (:class:`TestCa`); point ``REQUESTS_CA_BUNDLE``
at :attr:`TestCa.bundle` and ``AZURE_AUTHORITY_HOST`` at :attr:`FakeEntra.url`.
MSAL skips its instance discovery (a call to login.microsoftonline.com) for
Microsoft's own hosts only; a loopback authority needs
``disable_instance_discovery=True``, which leaves the same requests on the wire
as a real tenant gets.

Tokens are opaque and remembered with their expiry by an injectable clock;
``down`` answers 503 (with ``Retry-After: retry_after`` when set), ``refuse``
answers 401 ``invalid_client``.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from protocol_spec.fakes.loopback import LoopbackServer

__all__ = ["EXCHANGE_AUDIENCE", "FakeEntra", "FederatedIssuer", "TestCa"]

EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class TestCa:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost, written to ``directory``."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path) -> None:
        now = datetime.datetime.now(datetime.UTC)
        valid = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1))
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Gatehouse test CA")])
        ca = (
            _builder(ca_name, ca_name, ca_key.public_key(), valid)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        leaf = (
            _builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]),
                ca_name,
                key.public_key(),
                valid,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.bundle = directory / "test-ca.pem"
        self.bundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self._chain = directory / "server.pem"
        self._chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        self._key = directory / "server.key"
        self._key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._chain, self._key)
        return context


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: Any, valid: tuple[Any, Any]
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
    )


@dataclass(frozen=True)
class FederatedIssuer:
    """An OIDC issuer Entra trusts for workload identity (an AKS cluster), with its signing key."""

    url: str
    key: RSAKey

    @classmethod
    def generate(cls, url: str = "https://oidc.aks.example/cluster-1/") -> FederatedIssuer:
        return cls(url, RSAKey.import_key(rsa.generate_private_key(public_exponent=65537, key_size=2048)))

    def service_account_token(
        self, subject: str, lifetime: int = 3600, audience: str = EXCHANGE_AUDIENCE
    ) -> str:
        """A projected service account token, as the kubelet writes to AZURE_FEDERATED_TOKEN_FILE."""
        now = int(time.time())
        claims = {
            "iss": self.url,
            "sub": subject,
            "aud": [audience],
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
        }
        return jwt.encode({"alg": "RS256", "kid": "k1"}, claims, self.key)


@dataclass(frozen=True)
class _Grant:
    client_id: str
    scope: str
    expires_at: float


class FakeEntra(LoopbackServer):
    """Use as ``async with FakeEntra(TestCa(tmp_path)) as entra:``.

    Register clients with :meth:`add_secret_client` or :meth:`add_federated_client`.
    Counters: ``grants`` (tokens issued), ``attempts`` (token POSTs); ``refusals``
    says why each refused request was refused; ``requests`` lists ``METHOD path``.
    """

    scheme = "https"  # ``url`` is the authority host, as AZURE_AUTHORITY_HOST takes it

    def __init__(
        self, ca: TestCa, host: str = "127.0.0.1", port: int = 0, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.ca = ca
        super().__init__(host, port)
        self.clock = clock
        self.expires_in = 3599
        self.down = False
        # Retry-After on a 503; MSAL holds back the same token request that long (60 s without it).
        self.retry_after: int | None = None
        self.refuse = False
        self.grants = 0
        self.attempts = 0
        self.refusals: list[str] = []
        self.requests: list[str] = []
        self.scopes: list[str] = []
        self._secrets: dict[str, str] = {}
        self._federated: dict[str, tuple[FederatedIssuer, str]] = {}
        self._tokens: dict[str, _Grant] = {}

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._discovery)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_route("*", "/{tail:.*}", self._unknown)

    def _ssl_context(self) -> ssl.SSLContext:
        return self.ca.server_context()

    # -- clients and tokens ------------------------------------------------

    def add_secret_client(self, client_id: str, secret: str) -> None:
        self._secrets[client_id] = secret

    def add_federated_client(self, client_id: str, issuer: FederatedIssuer, subject: str) -> None:
        """A client whose federated credential trusts ``issuer``'s tokens for ``subject``."""
        self._federated[client_id] = (issuer, subject)

    def is_live(self, token: str) -> bool:
        grant = self._tokens.get(token)
        return grant is not None and self.clock() < grant.expires_at

    def client_of(self, token: str) -> str | None:
        grant = self._tokens.get(token)
        return grant.client_id if grant is not None else None

    # -- the endpoints -----------------------------------------------------

    async def _discovery(self, request: web.Request) -> web.Response:
        self.requests.append(f"GET {request.path}")
        base = f"{self.url}/{request.match_info['tenant']}"
        return web.json_response(
            {
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
            }
        )

    async def _token(self, request: web.Request) -> web.Response:
        self.requests.append(f"POST {request.path}")
        self.attempts += 1
        if self.down:
            answer = _error(503, "temporarily_unavailable", "AADSTS90033: A transient error has occurred.")
            if self.retry_after is not None:
                answer.headers["Retry-After"] = str(self.retry_after)
            return answer
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        problem = self._check(form)
        if problem is None and self.refuse:
            problem = "AADSTS7000215: refused by the test script."
        if problem is not None:
            self.refusals.append(problem)
            return _error(401, "invalid_client", problem)
        token = "fake-entra." + secrets.token_urlsafe(32)
        self._tokens[token] = _Grant(form["client_id"], form["scope"], self.clock() + self.expires_in)
        self.grants += 1
        self.scopes.append(form["scope"])
        body = {"token_type": "Bearer", "expires_in": self.expires_in, "ext_expires_in": self.expires_in}
        return web.json_response({**body, "access_token": token})

    def _check(self, form: dict[str, str]) -> str | None:
        if form.get("grant_type") != "client_credentials":
            return "AADSTS70003: unsupported grant_type."
        client_id, scope = form.get("client_id", ""), form.get("scope", "")
        if not scope.endswith("/.default"):
            return "AADSTS1002012: The provided value for scope is not valid."
        if "client_secret" in form:
            known = self._secrets.get(client_id)
            ok = known is not None and secrets.compare_digest(known, form["client_secret"])
            return None if ok else "AADSTS7000215: Invalid client secret provided."
        if form.get("client_assertion_type") == CLIENT_ASSERTION_TYPE and client_id in self._federated:
            return self._check_federated(form.get("client_assertion", ""), *self._federated[client_id])
        return f"AADSTS700016: Application with identifier '{client_id}' was not found."

    def _check_federated(self, assertion: str, issuer: FederatedIssuer, subject: str) -> str | None:
        try:
            claims = jwt.decode(assertion, issuer.key, algorithms=["RS256"]).claims
        except (JoseError, ValueError):
            return "AADSTS700211: No matching federated identity record found for presented assertion."
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if (
            claims.get("iss") != issuer.url
            or claims.get("sub") != subject
            or EXCHANGE_AUDIENCE not in audiences
        ):
            return "AADSTS70021: No matching federated identity record found for presented assertion."
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= self.clock():
            return "AADSTS700024: Client assertion is not within its valid time range."
        return None

    async def _unknown(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.method} {request.path}")
        return _error(404, "not_found", f"{request.method} {request.path} is not served here")


def _error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)
