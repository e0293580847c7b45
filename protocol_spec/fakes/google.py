"""Fake Google Cloud endpoints: OAuth token service, GCE metadata server, Vertex AI.

Real aiohttp servers on loopback ports, for tests and benchmarks of a Vertex
upstream:

* :class:`FakeGoogleToken` — ``POST /token`` takes a service account's
  JWT-bearer assertion, **verifies it** (RS256 signature against the registered
  public key, ``iss``, ``aud`` = Google's token URI or this one, ``scope``, ``exp``) and issues opaque access
  tokens it remembers until they expire (by an injectable clock).
  :meth:`FakeGoogleToken.new_service_account` makes a throwaway RSA key and
  writes a key file whose ``token_uri`` points here; google-auth honours it.
* :class:`FakeGceMetadata` — the endpoints google-auth's Compute Engine
  credentials call (``GCE_METADATA_HOST`` / ``GCE_METADATA_IP`` point at it),
  handing out tokens of a :class:`FakeGoogleToken`.
* :class:`FakeGoogleWorkspace` — the token endpoint above plus the Admin SDK
  Directory API's ``GET /admin/directory/v1/groups?userKey=…`` on the same
  origin: domain-wide delegation (which scopes a service account may ask for a
  Workspace user), admins, and paged group lists per user.
* :class:`FakeVertex` — ``…/projects/{p}/locations/{r}/publishers/anthropic/models/{m}:rawPredict``,
  ``:streamRawPredict`` and ``…/models/count-tokens:rawPredict`` under any path
  prefix, accepting only live bearer tokens of its :class:`FakeGoogleToken`.
  Replies are :class:`~protocol_spec.fakes.replies.Reply` values, as for the
  fake Anthropic API (Vertex's event stream is Anthropic's, its own ``ping``
  after ``content_block_start`` included); errors come in Google's shape
  (:func:`google_error`) or Anthropic's envelope (:func:`prompt_too_long`).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from protocol_spec.fakes.loopback import LoopbackServer
from protocol_spec.fakes.replies import Prepared, Reply, error_reply, prepare
from protocol_spec.fakes.upstream import FakeUpstream, Received

__all__ = [
    "CLOUD_PLATFORM",
    "DIRECTORY_GROUP_READONLY",
    "FakeGoogleWorkspace",
    "FakeGceMetadata",
    "FakeGoogleToken",
    "FakeVertex",
    "ServiceAccount",
    "VertexRoute",
    "google_error",
    "prompt_too_long",
    "vertex_route",
]

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
DIRECTORY_GROUP_READONLY = "https://www.googleapis.com/auth/admin.directory.group.readonly"
# Scopes the token endpoint grants: Vertex's, and the Directory's for delegated accounts.
_KNOWN_SCOPES = frozenset({CLOUD_PLATFORM, DIRECTORY_GROUP_READONLY})
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# The audience Google requires in an assertion: its token endpoint, wherever the
# assertion is posted (google-auth and Anthropic's gateway both write this one).
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
# Google refuses assertions that claim to live longer than an hour.
MAX_ASSERTION_SECONDS = 3600
# Leeway for iat/exp between the signer's clock and ours, as Google allows.
CLOCK_SKEW_SECONDS = 300
DEFAULT_PROJECT = "lab-proj"
_LIFETIME_REFUSAL = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe"
)


# ---------------------------------------------------------------------------
# Service accounts and the token endpoint.


@dataclass(frozen=True)
class ServiceAccount:
    """A throwaway service account: its key pair and the key file google-auth reads."""

    client_email: str
    private_key_id: str
    private_key_pem: str
    public_key: RSAKey
    project_id: str = DEFAULT_PROJECT

    @classmethod
    def generate(cls, client_email: str, project_id: str = DEFAULT_PROJECT) -> ServiceAccount:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return cls(client_email, secrets.token_hex(20), pem, RSAKey.import_key(key.public_key()), project_id)

    def key_file_info(self, token_uri: str) -> dict[str, str]:
        """The JSON of a service account key file, as the Cloud console downloads it."""
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": self.private_key_pem,
            "client_email": self.client_email,
            "client_id": str(int(self.private_key_id[:15], 16)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "universe_domain": "googleapis.com",
        }

    def write(self, path: Path, token_uri: str) -> Path:
        path.write_text(json.dumps(self.key_file_info(token_uri), indent=2))
        return path


class Grant(NamedTuple):
    """One token the fake issued: to whom and until when (by the fake's clock); for a
    delegated one, the Workspace user it acts as (``sub``) and the scopes asked."""

    subject: str
    expires_at: float
    acting_as: str | None = None
    scopes: tuple[str, ...] = ()


class FakeGoogleToken(LoopbackServer):
    """Google's OAuth 2.0 token endpoint for service accounts (``POST /token``).

    Scripting: ``expires_in`` (seconds, default 3600) of the next tokens,
    ``down`` (answer 503, which google-auth retries), ``refuse`` (answer 400
    ``invalid_grant`` to valid assertions too). Counters: ``grants`` (tokens
    issued here), ``attempts`` (POSTs received); ``refusals`` lists why each
    refused assertion was refused.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(host, port)
        self.clock = clock
        self.expires_in = 3600
        self.down = False
        self.refuse = False
        self.grants = 0
        self.attempts = 0
        self.refusals: list[str] = []
        self.scopes_granted: list[str] = []
        # The headers of each POST, e.g. to see a proxy's ``Via`` on them.
        self.headers_seen: list[dict[str, str]] = []
        self._accounts: dict[str, ServiceAccount] = {}
        self._tokens: dict[str, Grant] = {}

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/token", self._token)

    @property
    def token_uri(self) -> str:
        return self.url + "/token"

    # -- accounts and tokens -----------------------------------------------

    def register(self, account: ServiceAccount) -> ServiceAccount:
        self._accounts[account.client_email] = account
        return account

    def new_service_account(
        self, key_file: Path | None = None, *, email: str = "gatehouse@lab-proj.iam.gserviceaccount.com"
    ) -> ServiceAccount:
        """A registered account; with ``key_file``, its key file is written there."""
        account = self.register(ServiceAccount.generate(email))
        if key_file is not None:
            account.write(key_file, self.token_uri)
        return account

    def issue(
        self,
        subject: str,
        expires_in: int | None = None,
        *,
        acting_as: str | None = None,
        scopes: tuple[str, ...] = (),
    ) -> tuple[str, int]:
        """A new opaque access token for ``subject`` and its lifetime in seconds."""
        lifetime = self.expires_in if expires_in is None else expires_in
        token = "ya29.fake-" + secrets.token_urlsafe(32)
        self._tokens[token] = Grant(subject, self.clock() + lifetime, acting_as, scopes)
        self.grants += 1
        return token, lifetime

    def is_live(self, token: str) -> bool:
        grant = self._tokens.get(token)
        return grant is not None and self.clock() < grant.expires_at

    def subject_of(self, token: str) -> str | None:
        grant = self._tokens.get(token)
        return grant.subject if grant is not None else None

    def grant_of(self, token: str) -> Grant | None:
        """The live grant behind ``token``, or None."""
        grant = self._tokens.get(token)
        return grant if grant is not None and self.clock() < grant.expires_at else None

    def revoke_all(self) -> None:
        """Every token issued so far stops working (a rotated key, a revoked grant)."""
        self._tokens.clear()

    # -- the endpoint ------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        self.attempts += 1
        self.headers_seen.append(dict(request.headers))
        if self.down:
            return _oauth_error(503, "temporarily_unavailable", "The service is currently unavailable.")
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return _oauth_error(400, "unsupported_grant_type", "Invalid grant_type.")
        assertion = form.get("assertion")
        if not isinstance(assertion, str):
            return _oauth_error(400, "invalid_request", "Missing required parameter: assertion")
        problem, account, scope = self._check(assertion)
        if problem is None and self.refuse:
            problem = "refused by the test script"
        if problem is not None or account is None:
            self.refusals.append(problem or "unknown account")
            return _oauth_error(400, "invalid_grant", problem or "Invalid JWT Signature.")
        sub = _unverified_claims(assertion).get("sub")  # the signature was checked above
        token, lifetime = self.issue(
            account.client_email, acting_as=sub if isinstance(sub, str) else None, scopes=tuple(scope.split())
        )
        self.scopes_granted.append(scope)
        return web.json_response({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"})

    def _check(self, assertion: str) -> tuple[str | None, ServiceAccount | None, str]:
        """(why the assertion is refused or None, its account, its scope)."""
        account = self._accounts.get(str(_unverified_claims(assertion).get("iss")))
        if account is None:
            return "Invalid JWT: unknown issuer", None, ""
        try:
            token = jwt.decode(assertion, account.public_key, algorithms=["RS256"])
        except (JoseError, ValueError):
            return "Invalid JWT Signature.", account, ""
        claims = token.claims
        now = self.clock()
        scope = claims.get("scope")
        iat, exp = claims.get("iat"), claims.get("exp")
        if claims.get("aud") not in (GOOGLE_TOKEN_URI, self.token_uri):
            return f"Invalid JWT: audience must be {GOOGLE_TOKEN_URI}", account, ""
        if not isinstance(scope, str) or not _KNOWN_SCOPES.intersection(scope.split()):
            return "Invalid JWT: scope must include cloud-platform", account, ""
        if not isinstance(iat, int) or not isinstance(exp, int):
            return "Invalid JWT: iat and exp are required", account, scope
        # Google's words for an assertion that expired, is not yet valid, or claims over an hour.
        stale = exp <= now - CLOCK_SKEW_SECONDS or iat > now + CLOCK_SKEW_SECONDS
        if stale or exp - iat > MAX_ASSERTION_SECONDS:
            return _LIFETIME_REFUSAL, account, scope
        return None, account, scope


def _unverified_claims(assertion: str) -> dict[str, Any]:
    """The payload, read only to pick the key that must have signed it."""
    try:
        payload = assertion.split(".")[1]
        decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


# ---------------------------------------------------------------------------
# The Compute Engine metadata server.


class FakeGceMetadata(LoopbackServer):
    """What google-auth asks a GCE/GKE metadata server, answered from ``issuer``'s tokens.

    Point ``GCE_METADATA_HOST`` and ``GCE_METADATA_IP`` at :attr:`address`.
    ``present=False`` makes it a server that is not a metadata server (no
    ``Metadata-Flavor`` answer), so google-auth decides it is not on GCE at once.
    ``down`` answers 503 to token requests. Every request must carry
    ``Metadata-Flavor: Google`` (403 otherwise, as the real one answers).
    """

    def __init__(
        self,
        issuer: FakeGoogleToken,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        email: str = "1234567890-compute@developer.gserviceaccount.com",
        project_id: str = DEFAULT_PROJECT,
        present: bool = True,
    ) -> None:
        super().__init__(host, port)
        self.issuer = issuer
        self.email = email
        self.project_id = project_id
        self.present = present
        self.down = False
        self.token_requests = 0
        self.scopes_asked: list[str] = []
        self.paths: list[str] = []
        self.headers_seen: list[dict[str, str]] = []

    @property
    def address(self) -> str:
        """``host:port``, the form GCE_METADATA_HOST and GCE_METADATA_IP take."""
        return f"{self.host}:{self.port}"

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/{tail:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path_qs)
        self.headers_seen.append(dict(request.headers))
        if not self.present:
            return web.Response(status=404, text="not a metadata server")
        if request.headers.get("Metadata-Flavor") != "Google":
            return self._reply(403, "Missing Metadata-Flavor:Google header.", "text/html")
        path = request.path
        if path == "/":
            return self._reply(200, "computeMetadata/\n", "application/text")
        prefix = "/computeMetadata/v1/"
        if not path.startswith(prefix):
            return self._reply(404, "not found", "text/html")
        return self._metadata(path[len(prefix) :], request)

    def _metadata(self, item: str, request: web.Request) -> web.Response:
        if item == "project/project-id":
            return self._reply(200, self.project_id, "application/text")
        if item == "universe/universe-domain":
            return self._reply(200, "googleapis.com", "application/text")
        match = re.fullmatch(r"instance/service-accounts/([^/]+)/(token|email)?", item)
        if match is None or match.group(1) not in ("default", self.email):
            return self._reply(404, "not found", "text/html")
        if match.group(2) == "email":
            return self._reply(200, self.email, "application/text")
        if match.group(2) is None:
            info = {"aliases": ["default"], "email": self.email, "scopes": [CLOUD_PLATFORM]}
            return self._reply(200, json.dumps(info), "application/json")
        self.token_requests += 1
        self.scopes_asked.append(request.query.get("scopes", ""))
        if self.down:
            return self._reply(503, "service unavailable", "text/html")
        token, lifetime = self.issuer.issue(self.email)
        body = json.dumps({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"})
        return self._reply(200, body, "application/json")

    @staticmethod
    def _reply(status: int, text: str, content_type: str) -> web.Response:
        return web.Response(
            status=status,
            body=text.encode(),
            headers={"Metadata-Flavor": "Google", "Content-Type": content_type},
        )


# ---------------------------------------------------------------------------
# Vertex AI.

_VERTEX_PATH = re.compile(
    r"^(?P<prefix>.*)/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)"
    r"/publishers/anthropic/models/(?P<model>[^/:]+):(?P<verb>rawPredict|streamRawPredict)$"
)


class VertexRoute(NamedTuple):
    prefix: str  # what came before /projects (e.g. "/v1"), as sent
    project: str
    region: str
    model: str  # as sent (percent-encoding kept); "count-tokens" for counting
    verb: str  # "rawPredict" or "streamRawPredict"

    @property
    def counting(self) -> bool:
        return self.model == "count-tokens" and self.verb == "rawPredict"


def vertex_route(path: str) -> VertexRoute | None:
    match = _VERTEX_PATH.match(path)
    return VertexRoute(**match.groupdict()) if match is not None else None


def google_error(status: int, message: str, google_status: str) -> Reply:
    """An error in Google's own shape, e.g. ``google_error(429, "Quota exceeded for
    … projects/lab-proj …", "RESOURCE_EXHAUSTED")``."""
    body = {"error": {"code": status, "message": message, "status": google_status}}
    return Reply(status=status, json=body, request_id="", ratelimit_headers=False)


def prompt_too_long(tokens: int = 212345, maximum: int = 200000) -> Reply:
    """Vertex's 400 for an over-long prompt: Anthropic's envelope, Anthropic's words."""
    return error_reply(
        400, "invalid_request_error", f"prompt is too long: {tokens} tokens > {maximum} maximum"
    )


_UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
    "or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
# Headers every real Vertex answer carries; none of them may reach a gateway's client.
_VERTEX_HEADERS = {"x-vertex-ai-llm-request-type": "shared", "server-timing": "gfet4t7; dur=42"}
# Vertex sends no request-id and none of the Anthropic API's rate-limit headers.
_VERTEX_DEFAULT = Reply(ratelimit_headers=False, request_id="", headers=_VERTEX_HEADERS)


class FakeVertex(FakeUpstream):
    """Vertex AI's Anthropic publisher endpoints (see the module docstring).

    Everything of :class:`~protocol_spec.fakes.upstream.FakeUpstream` applies:
    ``script()`` queues replies, ``received`` records requests (refused ones
    too), ``/_fake/*`` drives it from another process. ``count_tokens`` is the
    default count-tokens answer (None: about a token per four body bytes).
    """

    def __init__(
        self,
        issuer: FakeGoogleToken,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        default: Reply | None = None,
        record: bool = True,
    ) -> None:
        super().__init__(host, port, default=default or _VERTEX_DEFAULT, record=record)
        self.issuer = issuer
        self.count_tokens: int | None = None
        self.refused = 0

    async def start(self) -> FakeVertex:
        await super().start()
        return self

    async def __aenter__(self) -> FakeVertex:
        return await self.start()

    def set_default(self, reply: Reply | None) -> None:
        super().set_default(reply or _VERTEX_DEFAULT)

    def _answer_for(self, request: web.Request, rec: Received) -> Prepared:
        scheme, _, token = (rec.header("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not self.issuer.is_live(token):
            self.refused += 1
            return prepare(google_error(401, _UNAUTHENTICATED, "UNAUTHENTICATED"))
        route = vertex_route(rec.path) if request.method == "POST" else None
        if route is None:
            return prepare(google_error(404, f"{request.method} {rec.path} is not served here", "NOT_FOUND"))
        streaming = route.verb == "streamRawPredict"
        if self._queue:
            return prepare(self._queue.popleft(), model=route.model, wants_stream=streaming)
        if route.counting:
            count = self.count_tokens if self.count_tokens is not None else max(1, len(rec.body) // 4)
            return prepare(
                Reply(
                    json={"input_tokens": count},
                    ratelimit_headers=False,
                    request_id="",
                    headers=_VERTEX_HEADERS,
                )
            )
        return prepare(self._default, model=route.model, wants_stream=streaming)


# ---------------------------------------------------------------------------
# Google Workspace: domain-wide delegation and the Directory API's group list.

_DIRECTORY_GROUPS = "/admin/directory/v1/groups"
_UNAUTHORIZED_CLIENT = (
    "unauthorized_client: Client is unauthorized to retrieve access tokens using this method, "
    "or client not authorized for any of the scopes requested."
)
_NOT_AUTHORIZED = "Not Authorized to access this resource/api"


class FakeGoogleWorkspace(FakeGoogleToken):
    """A Workspace tenant's Google: the token endpoint with domain-wide delegation,
    and the Directory API listing a user's groups (see the module docstring).

    Setup: :meth:`delegate` (which scopes a service account may ask while acting
    as a user; :meth:`new_service_account` with ``delegated_scopes``),
    ``admins`` (users whose tokens may read groups), ``members`` (user email →
    group emails), ``page_size`` (groups per page at most, below the client's
    ``maxResults``). Scripting: ``directory_status`` (answer every group list
    with that HTTP status, e.g. 500 or 503), ``directory_body`` (answer every
    authorised group list 200 with these bytes instead). Records: ``lookups`` (the
    ``userKey`` of every group list served or refused), ``directory_refusals``
    (why each refused one was refused).

    The Directory lives at this server's origin, as ``token_uri`` does: the
    gateway takes it from there when the key file's token endpoint is loopback.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(host, port, clock=clock)
        self.admins: set[str] = set()
        self.members: dict[str, list[str]] = {}
        self.page_size = 200
        self.directory_status: int | None = None
        self.directory_body: bytes | None = None
        self.lookups: list[str] = []
        self.directory_refusals: list[str] = []
        self._delegated: dict[str, frozenset[str]] = {}

    def _routes(self, app: web.Application) -> None:
        super()._routes(app)
        app.router.add_get(_DIRECTORY_GROUPS, self._groups)

    def delegate(self, account: ServiceAccount, scopes: tuple[str, ...]) -> None:
        """What the Admin console's domain-wide delegation lists for ``account``'s client ID."""
        self._delegated[account.client_email] = frozenset(scopes)

    def new_service_account(
        self,
        key_file: Path | None = None,
        *,
        email: str = "gatehouse@lab-proj.iam.gserviceaccount.com",
        delegated_scopes: tuple[str, ...] = (DIRECTORY_GROUP_READONLY,),
    ) -> ServiceAccount:
        account = super().new_service_account(key_file, email=email)
        self.delegate(account, delegated_scopes)
        return account

    def _check(self, assertion: str) -> tuple[str | None, ServiceAccount | None, str]:
        problem, account, scope = super()._check(assertion)
        sub = _unverified_claims(assertion).get("sub")
        if problem is None and account is not None and sub is not None:
            # Acting as a user needs every asked scope delegated to this client.
            allowed = self._delegated.get(account.client_email, frozenset())
            if not set(scope.split()) <= allowed:
                problem = _UNAUTHORIZED_CLIENT
        return problem, account, scope

    async def _groups(self, request: web.Request) -> web.Response:
        user = request.query.get("userKey", "")
        self.lookups.append(user)
        if self.directory_status is not None:
            return _directory_error(self.directory_status, "Backend Error", "backendError")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        grant = self.grant_of(token) if scheme.lower() == "bearer" else None
        if grant is None:
            return self._refuse(401, "Login Required.", "required", "no live bearer token")
        if grant.acting_as is None or grant.acting_as.lower() not in {a.lower() for a in self.admins}:
            return self._refuse(403, _NOT_AUTHORIZED, "forbidden", f"acting as {grant.acting_as}, not an admin")
        if DIRECTORY_GROUP_READONLY not in grant.scopes:
            return self._refuse(403, _NOT_AUTHORIZED, "forbidden", "the token lacks the groups scope")
        if self.directory_body is not None:
            return web.Response(body=self.directory_body, content_type="application/json")
        groups = self.members.get(user.lower())
        if groups is None:
            return _directory_error(404, "Resource Not Found: userKey", "notFound")
        try:
            start = int(request.query.get("pageToken", "0"))
            size = min(int(request.query.get("maxResults", "200")), self.page_size)
        except ValueError:
            return _directory_error(400, "Invalid Input", "invalid")
        page = groups[start : start + size]
        body: dict[str, Any] = {
            "kind": "admin#directory#groups",
            "etag": '"fake"',
            "groups": [_group(email) for email in page],
        }
        if start + size < len(groups):
            body["nextPageToken"] = str(start + size)
        return web.json_response(body)

    def _refuse(self, status: int, message: str, reason: str, why: str) -> web.Response:
        self.directory_refusals.append(why)
        return _directory_error(status, message, reason)


def _group(email: str) -> dict[str, Any]:
    name = email.partition("@")[0]
    return {
        "kind": "admin#directory#group",
        "id": secrets.token_hex(8),
        "etag": '"fake"',
        "email": email,
        "name": name,
        "directMembersCount": "3",
        "description": f"The {name} group",
        "adminCreated": True,
    }


def _directory_error(status: int, message: str, reason: str) -> web.Response:
    error = {"code": status, "message": message, "errors": [{"message": message, "domain": "global", "reason": reason}]}
    return web.json_response({"error": error}, status=status)
