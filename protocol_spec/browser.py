"""A scripted browser that walks sign-in pages the way a person's browser would.

The device flow has a browser leg: the verification page, the IdP's login form,
and the redirect back to the gateway's callback. Tests and the conformance
suite drive that leg with :class:`ScriptedBrowser`, an aiohttp client that
keeps cookies for IP hosts (the gateway and the IdP both sit on 127.0.0.1),
follows redirects one hop at a time so every hop is recorded, and submits
HTML forms with the headers a browser adds: ``Origin``, ``Referer``,
``Sec-Fetch-*`` and a form-encoded body. Forms are read with the standard
library's ``html.parser`` so the driver needs nothing beyond aiohttp.

:func:`approve_device` is the generic walk through a verification page: the
page's fields are not part of the protocol, so it only assumes "the first
same-origin form approves, then the IdP asks for a login".

By default the browser refuses to send anything to a host that is not
loopback, so a misconfigured test can never reach a real IdP or gateway.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import NamedTuple
from urllib.parse import urlencode

import aiohttp
from aiohttp.abc import AbstractCookieJar
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

__all__ = [
    "Button",
    "FieldValue",
    "Form",
    "NavigationRefused",
    "Page",
    "ScriptedBrowser",
    "SignInFlowError",
    "Submission",
    "TooManyRedirects",
    "approve_device",
    "build_submission",
    "fetch_site",
    "is_loopback_url",
    "login_at_idp",
    "parse_forms",
    "referrer_for",
]

# Browsers give up after about twenty hops; ten is plenty for any sign-in
# chain and turns a redirect loop into a quick, readable failure.
MAX_REDIRECTS = 10
ACCEPT_HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) gatehouse-scripted-browser/1"
FORM_URLENCODED = "application/x-www-form-urlencoded"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

# A field is one value, or several when a name repeats (multi-selects,
# same-name checkboxes); urlencode(doseq=True) writes both shapes.
FieldValue = str | list[str]


class NavigationRefused(Exception):
    """The browser was asked to contact a host its policy does not allow."""


class TooManyRedirects(Exception):
    """More than MAX_REDIRECTS hops in one navigation."""


class SignInFlowError(Exception):
    """A sign-in page did not look like the step the driver expected."""


class _Default(enum.Enum):
    """Marks "work the header out like a browser" as distinct from None ("omit it")."""

    BROWSER = enum.auto()


BROWSER = _Default.BROWSER


class Button(NamedTuple):
    """A submit button: ``name`` None means clicking it adds nothing to the form data."""

    name: str | None
    value: str
    formaction: str | None  # absolute, or None to use the form's action


@dataclass
class Form:
    action: str  # absolute URL
    method: str  # "GET" or "POST"
    fields: dict[str, FieldValue]
    buttons: list[Button] = field(default_factory=list)
    enctype: str = FORM_URLENCODED

    def names(self) -> set[str]:
        """Every name a submission of this form could carry (fields and buttons)."""
        return set(self.fields) | {b.name for b in self.buttons if b.name is not None}


@dataclass
class Page:
    url: str
    status: int
    headers: CIMultiDictProxy[str]
    text: str
    forms: list[Form]
    # (status, url) of every redirect answered on the way here, oldest first.
    history: list[tuple[int, str]] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return _origin(URL(self.url))

    @property
    def location(self) -> str | None:
        """Where a redirect points (absolute), for pages fetched with follow=False."""
        raw = self.headers.get("Location")
        return None if raw is None else str(URL(self.url).join(URL(raw)))


# --------------------------------------------------------------------------
# Reading forms


class _FormBuilder:
    def __init__(self, action: str | None, method: str, enctype: str) -> None:
        self.action = action
        self.method = method
        self.enctype = enctype
        self.fields: dict[str, FieldValue] = {}
        self.buttons: list[tuple[str | None, str, str | None]] = []

    def add(self, name: str, value: str) -> None:
        old = self.fields.get(name)
        if old is None:
            self.fields[name] = value
        elif isinstance(old, list):
            old.append(value)
        else:
            self.fields[name] = [old, value]


class _Select:
    def __init__(self, name: str | None, multiple: bool) -> None:
        self.name = name
        self.multiple = multiple
        self.options: list[tuple[str, bool]] = []  # (value, selected)


class _FormParser(HTMLParser):
    """Collects forms and their successful controls, as a browser would submit them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.base_href: str | None = None
        self.built: list[_FormBuilder] = []
        self._form: _FormBuilder | None = None
        self._select: _Select | None = None
        # An open <option>: [value attribute or None, text parts, selected, disabled].
        self._option: tuple[str | None, list[str], bool, bool] | None = None
        self._textarea: tuple[str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: ("" if v is None else v) for k, v in attrs}
        if tag == "base" and self.base_href is None and "href" in a:
            self.base_href = a["href"]
        elif tag == "form":
            # Nested forms are invalid HTML; browsers ignore the inner start tag.
            if self._form is None:
                method = a.get("method", "get").strip().upper()
                self._form = _FormBuilder(
                    a.get("action") or None,
                    "POST" if method == "POST" else "GET",
                    a.get("enctype", FORM_URLENCODED).strip().lower() or FORM_URLENCODED,
                )
        elif self._form is None:
            return
        elif tag == "input":
            self._input(a)
        elif tag == "button":
            if "disabled" not in a and a.get("type", "submit").strip().lower() == "submit":
                self._form.buttons.append((a.get("name") or None, a.get("value", ""), a.get("formaction")))
        elif tag == "select":
            self._select = None if "disabled" in a else _Select(a.get("name") or None, "multiple" in a)
        elif tag == "option":
            self._close_option()  # </option> is optional in HTML
            self._option = (a.get("value"), [], "selected" in a, "disabled" in a)
        elif tag == "textarea" and "disabled" not in a and a.get("name"):
            self._textarea = (a["name"], [])

    def _input(self, a: dict[str, str]) -> None:
        assert self._form is not None
        kind = a.get("type", "text").strip().lower()
        name = a.get("name") or None
        if "disabled" in a:
            return
        if kind == "submit":
            self._form.buttons.append((name, a.get("value", ""), a.get("formaction")))
        elif kind in ("button", "reset", "image", "file"):
            # Not sent in a urlencoded submission (image needs click coordinates,
            # file needs multipart), so they are left out on purpose.
            return
        elif name is None:
            return
        elif kind in ("checkbox", "radio"):
            if "checked" in a:
                self._form.add(name, a.get("value", "on"))
        else:
            self._form.add(name, a.get("value", ""))

    def handle_data(self, data: str) -> None:
        if self._option is not None:
            self._option[1].append(data)
        elif self._textarea is not None:
            self._textarea[1].append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "option":
            self._close_option()
        elif tag == "select":
            self._close_select()
        elif tag == "textarea" and self._textarea is not None and self._form is not None:
            name, parts = self._textarea
            text = "".join(parts)
            # HTML drops one newline right after <textarea>.
            self._form.add(name, text[1:] if text.startswith("\n") else text)
            self._textarea = None
        elif tag == "form" and self._form is not None:
            self._close_select()
            self.built.append(self._form)
            self._form = None

    def _close_option(self) -> None:
        if self._option is None:
            return
        value, parts, selected, disabled = self._option
        self._option = None
        if self._select is not None and not disabled:
            text = " ".join("".join(parts).split())
            self._select.options.append((text if value is None else value, selected))

    def _close_select(self) -> None:
        self._close_option()
        select, self._select = self._select, None
        if select is None or select.name is None or self._form is None or not select.options:
            return
        chosen = [v for v, selected in select.options if selected]
        if select.multiple:
            for value in chosen:
                self._form.add(select.name, value)
        else:
            # A single select always submits something: the last option marked
            # selected, else the first one.
            self._form.add(select.name, chosen[-1] if chosen else select.options[0][0])

    def finish(self) -> list[_FormBuilder]:
        self.close()
        if self._form is not None:  # a form left open at the end of the document
            self.handle_endtag("form")
        return self.built


def parse_forms(html: str, page_url: str) -> list[Form]:
    """Every form in ``html`` with actions made absolute against the page (or its <base>)."""
    parser = _FormParser()
    parser.feed(html)
    built = parser.finish()
    page = URL(page_url).with_fragment(None)
    base = page.join(URL(parser.base_href)) if parser.base_href else page

    def resolve(href: str | None) -> str:
        # No action (or an empty one) means "submit to this document", query included.
        return str(page if not href else base.join(URL(href)).with_fragment(None))

    return [
        Form(
            action=resolve(b.action),
            method=b.method,
            fields=b.fields,
            buttons=[Button(n, v, None if fa is None else resolve(fa)) for n, v, fa in b.buttons],
            enctype=b.enctype,
        )
        for b in built
    ]


# --------------------------------------------------------------------------
# Building a submission (pure)


class Submission(NamedTuple):
    method: str
    url: URL
    body: bytes | None
    content_type: str | None


def _pick_button(form: Form, button: str | None) -> Button | None:
    if button is None:
        # Implicit submission (pressing Enter) uses the form's first submit button.
        return form.buttons[0] if form.buttons else None
    for matches in (
        lambda b: b.name is not None and f"{b.name}={b.value}" == button,
        lambda b: b.value == button,
        lambda b: b.name == button,
    ):
        for candidate in form.buttons:
            if matches(candidate):
                return candidate
    known = [f"{b.name}={b.value}" for b in form.buttons]
    raise SignInFlowError(f"no button {button!r} in the form for {form.action}; buttons: {known}")


def build_submission(
    form: Form, fields: Mapping[str, FieldValue | None] | None = None, button: str | None = None
) -> Submission:
    """The request a browser sends for ``form``.

    ``fields`` overrides the form's own values (None removes a field);
    ``button`` names the submit button pressed: ``"name=value"``, its value, or
    its name, tried in that order. With no ``button`` the first submit button
    is pressed, as when someone presses Enter.
    """
    data: dict[str, FieldValue] = dict(form.fields)
    for name, value in (fields or {}).items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
    pressed = _pick_button(form, button)
    pairs: list[tuple[str, str]] = []
    for name, value in data.items():
        pairs.extend((name, v) for v in ([value] if isinstance(value, str) else value))
    if pressed is not None and pressed.name is not None:
        pairs.append((pressed.name, pressed.value))
    action = URL((pressed.formaction if pressed and pressed.formaction else None) or form.action)
    encoded = urlencode(pairs)
    if form.method == "GET":
        # A GET form replaces whatever query its action had.
        target = URL(str(action.with_query(None).with_fragment(None)) + "?" + encoded, encoded=True)
        return Submission("GET", target, None, None)
    if form.enctype != FORM_URLENCODED:
        raise NotImplementedError(f"form enctype {form.enctype!r} is not supported by the scripted browser")
    return Submission("POST", action.with_fragment(None), encoded.encode("ascii"), FORM_URLENCODED)


# --------------------------------------------------------------------------
# Request metadata browsers add (pure)


def _origin(url: URL) -> str:
    return str(url.origin())


def _site(url: URL) -> tuple[str, str]:
    """The "site" of a URL: scheme plus registrable domain.

    IP addresses and localhost are their own site. Without a public-suffix list
    the registrable domain is approximated by the last two labels, which is
    right for every host these tests use.
    """
    host = (url.host or "").lower()
    try:
        ipaddress.ip_address(host)
        return url.scheme, host
    except ValueError:
        return url.scheme, ".".join(host.split(".")[-2:])


def fetch_site(initiator: str | None, chain: list[URL]) -> str:
    """``Sec-Fetch-Site`` per the Fetch Metadata spec: the worst relation over every URL
    the navigation has visited. No initiator means the person typed the URL: "none"."""
    if initiator is None:
        return "none"
    start = URL(initiator)
    value = "same-origin"
    for url in chain:
        if _origin(url) == _origin(start):
            continue
        if _site(url) != _site(start):
            return "cross-site"
        value = "same-site"
    return value


def referrer_for(referrer: URL | None, target: URL) -> str | None:
    """``Referer`` under the default policy, strict-origin-when-cross-origin."""
    if referrer is None:
        return None
    if referrer.scheme == "https" and target.scheme != "https":
        return None
    if _origin(referrer) == _origin(target):
        return str(referrer.with_fragment(None).with_user(None))
    return _origin(referrer) + "/"


def is_loopback_url(url: URL) -> bool:
    host = (url.host or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------
# The browser


class ScriptedBrowser:
    """A cookie-keeping aiohttp client that navigates and submits forms like a browser.

    ``allow_url`` decides which URLs may be contacted at all (every hop of a
    redirect chain is checked before it is sent); the default keeps the
    browser on loopback.
    """

    def __init__(
        self,
        *,
        allow_url: Callable[[URL], bool] = is_loopback_url,
        user_agent: str = USER_AGENT,
        timeout_s: float = 30.0,
    ) -> None:
        self.allow_url = allow_url
        self.user_agent = user_agent
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        # Created on first use so the browser can be built outside a running loop.
        if self._session is None:
            # unsafe=True: without it aiohttp drops cookies set by IP-address hosts.
            jar = aiohttp.CookieJar(unsafe=True)
            self._session = aiohttp.ClientSession(cookie_jar=jar, timeout=self._timeout)
        return self._session

    @property
    def cookie_jar(self) -> AbstractCookieJar:
        return self.session.cookie_jar

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> ScriptedBrowser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get(self, url: str, *, follow: bool = True) -> Page:
        """Navigate as if the URL were typed or opened by another app (the CLI does this)."""
        return await self._navigate(
            "GET",
            URL(url),
            None,
            None,
            initiator=None,
            origin=None,
            referrer=None,
            sec_fetch_site=BROWSER,
            follow=follow,
        )

    async def submit(
        self,
        page: Page,
        form_index: int = 0,
        fields: Mapping[str, FieldValue | None] | None = None,
        button: str | None = None,
        origin: str | None | _Default = BROWSER,
        follow: bool = True,
        *,
        sec_fetch_site: str | None | _Default = BROWSER,
    ) -> Page:
        """Submit ``page.forms[form_index]`` and (by default) follow the redirects.

        ``origin`` is the page's origin unless given: a foreign value plays a
        cross-site attacker (Sec-Fetch-Site and Referer follow it); None plays a
        client that sends no provenance (an old browser, a script), so both
        Origin and Sec-Fetch-Site are left out. ``sec_fetch_site`` None omits
        that header and a string forces it, whatever ``origin`` says.
        """
        if not 0 <= form_index < len(page.forms):
            raise SignInFlowError(f"{page.url} has {len(page.forms)} form(s); no form #{form_index}")
        sub = build_submission(page.forms[form_index], fields, button)
        page_url = URL(page.url)
        initiator = page.origin if origin is BROWSER or origin is None else _origin(URL(origin))
        if origin is None and sec_fetch_site is BROWSER:
            sec_fetch_site = None
        # A forged request comes from the attacker's page, so its Referer is
        # that page's too (origin only, as the default policy trims it).
        referrer = page_url if initiator == page.origin else URL(initiator + "/")
        return await self._navigate(
            sub.method,
            sub.url,
            sub.body,
            sub.content_type,
            initiator=initiator,
            origin=None if origin is None else initiator,
            referrer=referrer,
            sec_fetch_site=sec_fetch_site,
            follow=follow,
        )

    async def _navigate(
        self,
        method: str,
        url: URL,
        body: bytes | None,
        content_type: str | None,
        *,
        initiator: str | None,
        origin: str | None,
        referrer: URL | None,
        sec_fetch_site: str | None | _Default,
        follow: bool,
    ) -> Page:
        history: list[tuple[int, str]] = []
        chain: list[URL] = []
        tainted = False
        for _ in range(MAX_REDIRECTS + 1):
            if not self.allow_url(url):
                raise NavigationRefused(f"the scripted browser may not contact {url} (not loopback)")
            chain.append(url)
            headers = self._headers(url, initiator, chain, referrer, sec_fetch_site)
            if method == "POST":
                if origin is not None:
                    headers["Origin"] = "null" if tainted else origin
                if content_type is not None:
                    headers["Content-Type"] = content_type
            async with self.session.request(
                method, url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                text = await resp.text(errors="replace")
                page = Page(str(url), resp.status, resp.headers, text, [], history)
            location = page.headers.get("Location")
            if not follow or page.status not in REDIRECT_STATUSES or location is None:
                page.forms = parse_forms(text, page.url)
                return page
            history.append((page.status, page.url))
            target = url.join(URL(location))
            if page.status == 303 or (page.status in (301, 302) and method == "POST"):
                method, body, content_type = "GET", None, None
            # Fetch's "tainted origin": a preserved POST that hopped cross-origin
            # away from its initiator says Origin: null from then on.
            if initiator is not None and _origin(target) != _origin(url) and _origin(url) != initiator:
                tainted = True
            url = target
        raise TooManyRedirects(f"more than {MAX_REDIRECTS} redirects; last hops: {history[-3:]}")

    def _headers(
        self,
        url: URL,
        initiator: str | None,
        chain: list[URL],
        referrer: URL | None,
        sec_fetch_site: str | None | _Default,
    ) -> CIMultiDict[str]:
        headers = CIMultiDict(
            {
                "Accept": ACCEPT_HTML,
                "User-Agent": self.user_agent,
                "Upgrade-Insecure-Requests": "1",
                "Sec-Fetch-Mode": "navigate",
                "Sec-Fetch-Dest": "document",
                "Sec-Fetch-User": "?1",
            }
        )
        site = fetch_site(initiator, chain) if sec_fetch_site is BROWSER else sec_fetch_site
        if isinstance(site, str):
            headers["Sec-Fetch-Site"] = site
        ref = referrer_for(referrer, url)
        if ref is not None:
            headers["Referer"] = ref
        return headers


# --------------------------------------------------------------------------
# The generic device-approval walk


def _excerpt(page: Page) -> str:
    return " ".join(page.text.split())[:300]


def _first_button_value(page: Page, name: str) -> str | None:
    for form in page.forms:
        for b in form.buttons:
            if b.name == name:
                return b.value
    return None


async def login_at_idp(
    browser: ScriptedBrowser, page: Page, idp_fields: Mapping[str, FieldValue] | None = None
) -> Page:
    """Fill and submit the IdP's login form on ``page`` and follow where it leads.

    The form chosen is the first one that carries every name in ``idp_fields``
    (as an input or a button). The default suits oidc-provider-mock: log in as
    the first predefined user, read from its "sub" buttons.
    """
    if page.status != 200 or not page.forms:
        raise SignInFlowError(
            f"expected the IdP's login form at {page.url}, got {page.status}: {_excerpt(page)}"
        )
    if idp_fields is None:
        first = _first_button_value(page, "sub")
        if first is None:
            raise SignInFlowError(f"no user to pick on {page.url}; pass idp_fields")
        idp_fields = {"sub": first}
    wanted = set(idp_fields)
    for index, form in enumerate(page.forms):
        if not wanted <= form.names():
            continue
        fields = {k: v for k, v in idp_fields.items() if k in form.fields}
        # A name only a button carries (e.g. a per-user button) is chosen by pressing it.
        pressed = [f"{k}={v}" for k, v in idp_fields.items() if k not in form.fields and isinstance(v, str)]
        return await browser.submit(page, index, fields=fields, button=pressed[0] if pressed else None)
    raise SignInFlowError(f"no form on {page.url} carries {sorted(wanted)}")


async def approve_device(
    browser: ScriptedBrowser,
    verification_uri_complete: str,
    *,
    idp_fields: Mapping[str, FieldValue] | None = None,
) -> Page:
    """Approve a device sign-in the way a person would, returning the final page.

    GET the verification page, submit its first same-origin form with that
    form's first button (Approve), follow to the IdP, log in there, and follow
    back to the gateway's callback. If the answer to the approval is already
    on the gateway's origin (a refusal, or an IdP that signed in silently),
    that page is returned as is: the caller judges the outcome.
    """
    page = await browser.get(verification_uri_complete)
    if page.status != 200:
        raise SignInFlowError(f"verification page {page.url} answered {page.status}: {_excerpt(page)}")
    mine = [i for i, f in enumerate(page.forms) if _origin(URL(f.action)) == page.origin]
    if not mine:
        raise SignInFlowError(f"no same-origin form on {page.url}: {_excerpt(page)}")
    at_idp = await browser.submit(page, mine[0])
    if at_idp.origin == page.origin:
        return at_idp
    return await login_at_idp(browser, at_idp, idp_fields)
