"""Google Workspace groups from the Admin SDK Directory API: the pure part.

The edge (:mod:`gateway.auth.google_groups`) asks
``GET <base>/admin/directory/v1/groups?userKey=<email>`` page by page; this
module decides everything that needs no network:

* where the Directory API is (:func:`directory_base`): always Google's, except
  in development, where a key file whose ``token_uri`` is on loopback (allowed
  only with ``CLAUDE_GATEWAY_ALLOW_LOOPBACK=1``) makes the same origin serve the
  Directory too. There is no setting for it, so a configuration cannot send a
  person's email and the admin's token anywhere else;
* the URL of each page (:func:`page_url`) and what a page says
  (:func:`read_page`): the group ``email`` values and the next page's token.
  Anything else in the answer is ignored; an answer of the wrong shape is
  :class:`DirectoryAnswerInvalid`;
* what is remembered (:class:`GroupCache`): each person's groups for the
  session's token lifetime (``session.ttl_hours``), keyed by subject and
  email, so refreshes within that time ask nobody. A bounded number of people
  is kept; the oldest entry goes first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode, urlsplit

from gateway.auth.identity import MAX_CLAIM_CHARS
from gateway.config.addresses import is_loopback_host
from gateway.errors import Fault, Party

DIRECTORY_SCOPE = "https://www.googleapis.com/auth/admin.directory.group.readonly"
GOOGLE_DIRECTORY_BASE = "https://admin.googleapis.com"
GROUPS_PATH = "/admin/directory/v1/groups"
# The Directory API's own maximum page size; fewer round trips per person.
PAGE_SIZE = 200
# Only the group emails and the paging token are asked for (a partial response),
# which keeps each page small whatever the groups' descriptions hold.
FIELDS = "groups(email),nextPageToken"
MAX_PAGE_TOKEN_CHARS = 2048
# People whose groups are remembered at once; enough for a large company, and a
# bound on what a stream of sign-ins can make this process hold.
MAX_CACHED_PEOPLE = 50_000


class DirectoryAnswerInvalid(Fault):
    """A Directory answer that is not a page of groups (→ the lookup failed)."""

    fault = Party.UPSTREAM


class Page(NamedTuple):
    groups: tuple[str, ...]
    next_token: str | None


def directory_base(token_uri: str | None, allow_loopback: bool) -> str:
    """Google's Directory API, or the token endpoint's own origin when that is a
    loopback fake and the development switch is on."""
    if allow_loopback and token_uri:
        try:
            parts = urlsplit(token_uri)
            host = parts.hostname
        except ValueError:  # e.g. an unclosed "[": not a loopback fake's address
            return GOOGLE_DIRECTORY_BASE
        if parts.scheme in ("http", "https") and host and is_loopback_host(host):
            return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    return GOOGLE_DIRECTORY_BASE


def page_url(base: str, email: str, page_token: str | None) -> str:
    params = [("userKey", email), ("maxResults", str(PAGE_SIZE)), ("fields", FIELDS)]
    if page_token is not None:
        params.append(("pageToken", page_token))
    return f"{base}{GROUPS_PATH}?{urlencode(params, quote_via=quote)}"


def read_page(body: Any) -> Page:
    """The group emails on one page and the next page's token (None on the last)."""
    if not isinstance(body, Mapping):
        raise DirectoryAnswerInvalid("the answer is not a JSON object")
    listed = body.get("groups", [])
    if not isinstance(listed, list):
        raise DirectoryAnswerInvalid("'groups' is not a list")
    groups: list[str] = []
    for entry in listed:
        email = entry.get("email") if isinstance(entry, Mapping) else None
        if not isinstance(email, str) or not email or len(email) > MAX_CLAIM_CHARS:
            raise DirectoryAnswerInvalid("a group without a usable email")
        groups.append(email)
    token = body.get("nextPageToken")
    # The token goes back in the next page's URL: printable ASCII, as Google's are
    # (a lone surrogate from a "\ud800" escape could not even be encoded there).
    if token is not None and (
        not isinstance(token, str)
        or len(token) > MAX_PAGE_TOKEN_CHARS
        or not (token.isascii() and token.isprintable())
    ):
        raise DirectoryAnswerInvalid("'nextPageToken' is not a usable string")
    return Page(tuple(groups), token or None)


class _Entry(NamedTuple):
    groups: tuple[str, ...]
    looked_up_at: float


class GroupCache:
    """Each person's groups from their last successful lookup, for ``ttl_s`` seconds."""

    def __init__(self, ttl_s: float, *, max_people: int = MAX_CACHED_PEOPLE) -> None:
        self.ttl_s = ttl_s
        self._max = max_people
        self._entries: dict[tuple[str, str], _Entry] = {}

    @staticmethod
    def key(sub: str, email: str) -> tuple[str, str]:
        # Google compares addresses without regard to case.
        return sub, email.lower()

    def fresh(self, key: tuple[str, str], now: float) -> tuple[str, ...] | None:
        """The remembered groups, or None when there are none younger than the TTL."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not 0 <= now - entry.looked_up_at < self.ttl_s:
            del self._entries[key]
            return None
        return entry.groups

    def put(self, key: tuple[str, str], groups: tuple[str, ...], now: float) -> None:
        if self.ttl_s <= 0:
            return
        self._entries.pop(key, None)
        while len(self._entries) >= self._max:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = _Entry(groups, now)

    def __len__(self) -> int:
        return len(self._entries)
