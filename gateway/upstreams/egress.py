"""Which outbound calls go through an HTTP proxy, decided once from the environment.

The gateway honours the proxy variables every HTTP tool knows (reference §10,
"Gateway-process environment variables"):

* ``https://`` URLs use ``HTTPS_PROXY`` (else ``https_proxy``), ``http://`` URLs
  use ``HTTP_PROXY`` (else ``http_proxy``). Neither falls back on the other, as
  in curl and Go: a proxy for one scheme says nothing about the other.
* ``NO_PROXY`` (else ``no_proxy``) lists what goes direct, comma-separated:
  ``*``; a domain, with or without a leading dot or ``*.``, matching itself and
  every name under it; an IP address or a CIDR range, matching literal IP hosts
  only (names are not resolved for it); each optionally with ``:port``.
* A proxy is an ``http://`` URL (``host:port`` alone means the same). Userinfo
  in it becomes ``Proxy-Authorization``; it never appears in what we log.

Two ways to guard the targets, chosen by ``CLAUDE_GATEWAY_PROXY_IS_EGRESS_BOUNDARY``:

* by default the gateway still resolves every proxied target itself and refuses
  one that lands on a metadata, link-local or (unless allowed) loopback address,
  exactly as for direct calls, before the proxy is asked to connect;
* in proxy-only egress (the variable is ``1``, a proxy is set, ``NO_PROXY`` is
  empty and loopback is not allowed) host names go to the proxy unresolved, the
  proxy being the boundary, and only names that are local on their face
  (``localhost``, ``*.localhost``, metadata names, literal loopback, link-local
  and metadata addresses) are refused here. Anything short of all three
  conditions leaves it off, with a boot warning naming what is missing, because
  it is a variable precisely so that configuration cannot weaken the checks.

Where we differ from Anthropic's gateway: in the default mode it resolves the
host and sends ``CONNECT`` to the IP it checked; we check the same way but send
``CONNECT host:port`` (aiohttp keeps SNI and certificate checks on the name),
so the proxy resolves the name again. A name whose DNS answer changes between
our check and the proxy's lookup, or that the proxy's resolver answers
differently, can reach an address we never saw. We narrow that window by
refusing a host if *any* of its addresses is refused (not just all of them),
and the proxy's own egress rules remain the last word.

Everything is read once at boot (:meth:`Egress.from_env`); callers decide the
proxy per upstream at boot too, so the request path reads no environment.
Pure: strings in, decisions out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

from gateway.config.addresses import ALLOW_LOOPBACK_ENV, url_problem
from gateway.errors import Fault, Party

BOUNDARY_ENV = "CLAUDE_GATEWAY_PROXY_IS_EGRESS_BOUNDARY"
DEFAULT_PORTS = {"http": 80, "https": 443}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressError(Fault):
    """A proxy variable the gateway cannot use. Boot stops: going direct instead
    would quietly bypass the egress the operator set up."""

    fault = Party.GATEWAY


class Proxy(NamedTuple):
    url: str  # as aiohttp takes it, userinfo included
    shown: str  # for logs: scheme, host and port only
    host: str  # lower-case, no brackets
    port: int


class _Rule(NamedTuple):
    """One NO_PROXY entry: a domain or a network, optionally bound to a port."""

    domain: str | None
    network: Network | None
    port: int | None


class Bypass:
    """The parsed NO_PROXY list."""

    def __init__(self, text: str) -> None:
        self.everything = False
        self.rules: list[_Rule] = []
        self.ignored: list[str] = []
        for raw in text.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                self.everything = True
                continue
            rule = _parse_rule(entry)
            if rule is None:
                self.ignored.append(entry)
            else:
                self.rules.append(rule)

    def __bool__(self) -> bool:
        return self.everything or bool(self.rules)

    def matches(self, host: str, port: int) -> bool:
        if self.everything:
            return True
        host = host.strip("[]").rstrip(".").lower()
        ip = _ip(host)
        for rule in self.rules:
            if rule.port is not None and rule.port != port:
                continue
            if ip is not None:
                if rule.network is not None and ip in rule.network:
                    return True
            elif rule.domain is not None and (host == rule.domain or host.endswith("." + rule.domain)):
                return True
        return False


def _parse_rule(entry: str) -> _Rule | None:
    host, port = _split_port(entry)
    if port == -1:
        return None
    try:
        return _Rule(None, ipaddress.ip_network(host, strict=False), port)
    except ValueError:
        pass
    domain = host.removeprefix("*").lstrip(".").rstrip(".")
    if not domain or not all(c.isalnum() or c in "-._" for c in domain):
        return None
    return _Rule(domain, None, port)


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:443`` → (host, 443); ``[::1]:443`` → (::1, 443); a bare IPv6 address
    or range keeps its colons. Port -1 marks an unreadable one."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if not rest:
            return host, None
        return host, _port(rest[1:]) if rest.startswith(":") else -1
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, _port(port)
    return entry, None


def _port(text: str) -> int:
    return int(text) if text.isdigit() and 0 < int(text) < 65536 else -1


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_proxy(name: str, value: str) -> Proxy:
    """The proxy in variable ``name``; raises :class:`EgressError` (never quoting the
    value, which may hold a password)."""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port or 80
        host = parts.hostname
    except ValueError:
        raise EgressError(f"{name} is not a valid proxy URL") from None
    if parts.scheme.lower() != "http":
        raise EgressError(f"{name} must be an http:// proxy URL (got a {parts.scheme}:// one)")
    if not host:
        raise EgressError(f"{name} names no proxy host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise EgressError(f"{name} must be a proxy origin (http://[user:password@]host:port), without a path")
    shown_host = f"[{host}]" if ":" in host else host
    shown = f"http://{shown_host}:{port}"
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    url = f"http://{userinfo}@{shown_host}:{port}" if userinfo else shown
    return Proxy(url, shown, host.lower(), port)


def _first(env: Mapping[str, str], upper: str, notices: list[str]) -> tuple[str, str] | None:
    """(variable name, value) of ``UPPER`` else ``upper``, with a notice when both
    are set and disagree."""
    lower = upper.lower()
    hi, lo = env.get(upper, "").strip(), env.get(lower, "").strip()
    if hi and lo and hi != lo:
        notices.append(f"{upper} and {lower} are both set and differ; using {upper}")
    if hi:
        return upper, hi
    if lo:
        return lower, lo
    return None


class Egress:
    """The proxy choice for every outbound URL, and how proxied targets are guarded."""

    def __init__(
        self,
        *,
        https: Proxy | None = None,
        http: Proxy | None = None,
        bypass: Bypass | None = None,
        boundary: bool = False,
        notices: list[str] | None = None,
    ) -> None:
        self.https = https
        self.http = http
        self.bypass = bypass or Bypass("")
        self.boundary = boundary
        self._notices = list(notices or [])
        self._by_scheme = {"https": https, "http": http}

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, allow_loopback: bool) -> Egress:
        notices: list[str] = []
        https = _first(env, "HTTPS_PROXY", notices)
        http = _first(env, "HTTP_PROXY", notices)
        no_proxy = _first(env, "NO_PROXY", notices)
        bypass = Bypass(no_proxy[1] if no_proxy else "")
        if bypass.ignored:
            notices.append(
                f"{no_proxy[0] if no_proxy else 'NO_PROXY'}: ignored entries that are neither a host, "
                f"a domain, an IP address nor a CIDR range: {', '.join(bypass.ignored)}"
            )
        if http and not https:
            notices.append(
                f"{http[0]} is set but HTTPS_PROXY is not: https:// calls (every cloud upstream) go direct"
            )
        for name in ("ALL_PROXY", "all_proxy"):
            if env.get(name, "").strip():
                notices.append(f"{name} is not used; set HTTPS_PROXY / HTTP_PROXY")
        boundary = _boundary(env, bool(https or http), no_proxy is not None, allow_loopback, notices)
        return cls(
            https=parse_proxy(*https) if https else None,
            http=parse_proxy(*http) if http else None,
            bypass=bypass,
            boundary=boundary,
            notices=notices,
        )

    # ------------------------------------------------------------ decisions

    @property
    def configured(self) -> bool:
        return self.https is not None or self.http is not None

    def proxy_for(self, url: str) -> str | None:
        """The proxy URL (userinfo included) ``url`` goes through, or None for direct."""
        chosen = self.chosen(url)
        return chosen.url if chosen else None

    def chosen(self, url: str) -> Proxy | None:
        try:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            proxy = self._by_scheme.get(scheme)
            if proxy is None:
                return None
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError:
            return None  # not a URL anyone can call; the call itself says so
        return None if self.bypass.matches(parts.hostname or "", port) else proxy

    def shown(self, proxy_url: str) -> str:
        """A proxy URL fit for a log line (no userinfo)."""
        for proxy in (self.https, self.http):
            if proxy is not None and proxy.url == proxy_url:
                return proxy.shown
        return "the proxy"

    @property
    def proxy_endpoints(self) -> frozenset[tuple[str, int]]:
        """(host, port) of each proxy: the operator's own choice, so a resolver that
        guards targets lets these through (a sidecar proxy on loopback is common)."""
        return frozenset((p.host, p.port) for p in (self.https, self.http) if p is not None)

    def target_refusal(self, url: str) -> str | None:
        """Proxy-only egress: why ``url`` must not be handed to the proxy, judged from
        its host name alone (nothing is resolved), or None."""
        problem = url_problem(url, allow_loopback=False)
        return f"refused in proxy-only egress: the URL {problem}" if problem else None

    # ------------------------------------------------------------ boot lines

    def notices(self) -> list[str]:
        """Boot warnings about the proxy variables."""
        return list(self._notices)

    def describe(self) -> str | None:
        """One info line for the boot log, or None when no proxy is set."""
        if not self.configured:
            return None
        https = self.https.shown if self.https else "direct"
        http = self.http.shown if self.http else "direct"
        if self.bypass.everything:
            bypass = "NO_PROXY=* (everything direct)"
        else:
            bypass = f"{len(self.bypass.rules)} NO_PROXY entr{'y' if len(self.bypass.rules) == 1 else 'ies'}"
        mode = (
            "proxy-only egress: host names reach the proxy unresolved"
            if self.boundary
            else "targets resolved and checked by the gateway first"
        )
        return f"egress: https via {https}, http via {http}, {bypass}; {mode}"

    def idp_notice(self, use_proxy: bool | None) -> str | None:
        """The boot notice for ``oidc.use_proxy`` left unset while a proxy is set."""
        if use_proxy is not None or not self.configured:
            return None
        return (
            "oidc.use_proxy is not set: IdP requests (discovery, JWKS, token, userinfo) go direct, "
            "not through HTTPS_PROXY / HTTP_PROXY; set oidc.use_proxy: true to send them through the proxy"
        )


def _boundary(
    env: Mapping[str, str], proxy_set: bool, no_proxy_set: bool, allow_loopback: bool, notices: list[str]
) -> bool:
    value = env.get(BOUNDARY_ENV, "").strip()
    if not value:
        return False
    if value != "1":
        notices.append(f"{BOUNDARY_ENV} is {value!r}; only 1 turns proxy-only egress on")
        return False
    missing = []
    if not proxy_set:
        missing.append("neither HTTPS_PROXY nor HTTP_PROXY is set")
    if no_proxy_set:
        missing.append("NO_PROXY / no_proxy is not empty (every host must go through the proxy)")
    if allow_loopback:
        missing.append(f"{ALLOW_LOOPBACK_ENV}=1 is set")
    if missing:
        notices.append(
            f"{BOUNDARY_ENV}=1 is ignored, the gateway keeps checking target addresses itself: "
            + "; ".join(missing)
        )
        return False
    return True
