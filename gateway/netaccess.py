"""Who is the client, and may it talk to us (SPEC "Network access").

* The client address is the TCP peer, unless the peer is a trusted proxy: then
  ``X-Forwarded-For`` is walked from the right, past every trusted hop, and the
  first untrusted address is the client (as nginx's ``set_real_ip_from`` does).
  The header is never trusted from an untrusted peer.
* ``deny_cidrs`` is checked first, then a non-empty ``allow_cidrs`` denies by
  default. ``/healthz`` and ``/readyz`` are exempt from the allow list only, so
  an orchestrator can probe from outside it while a deny still holds.
* With no ``allow_cidrs`` at all, the first client outside the private ranges
  (:data:`PRIVATE_RANGES`, the ones the boot warning recommends) is worth one
  ``access.public_client`` event per process: the gateway is reachable from
  further than its operator may think. That client is still served.

Pure: addresses and strings in, decisions out.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
# Private, shared and loopback addresses: what an allow list for a gateway inside an
# organisation's network would hold (SPEC NET-7).
PRIVATE_RANGES_TEXT = (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "::1/128", "fc00::/7",
)


def parse_networks(entries: tuple[str, ...] | list[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(_strip_port(e), strict=False) for e in entries)


def _strip_port(entry: str) -> str:
    entry = entry.strip()
    if entry.startswith("["):  # [v6]:port or [v6]
        return entry[1 : entry.index("]")]
    if entry.count(":") == 1:  # v4:port
        return entry.split(":", 1)[0]
    return entry


def _parse_addr(text: str) -> Address | None:
    try:
        addr = ipaddress.ip_address(_strip_port(text))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _in(addr: Address, nets: tuple[Network, ...]) -> bool:
    return any(addr in n for n in nets)


PRIVATE_RANGES = parse_networks(PRIVATE_RANGES_TEXT)


class Decision(NamedTuple):
    allowed: bool
    client_ip: str | None
    reason: str | None  # audit reason when refused


class AccessPolicy:
    def __init__(self, allow: tuple[str, ...], deny: tuple[str, ...], trusted_proxies: tuple[str, ...]) -> None:
        self.allow = parse_networks(allow)
        self.deny = parse_networks(deny)
        self.trusted = parse_networks(trusted_proxies)
        self.active = bool(self.allow or self.deny)
        # access.public_client is said once per process, and never under an allow list.
        self._public_told = bool(self.allow)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> Address | None | str:
        """The client address; the string ``"unparseable"`` when XFF can't be read."""
        addr = _parse_addr(peer) if peer else None
        if addr is None or not self.trusted or not forwarded_for or not _in(addr, self.trusted):
            return addr
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            parsed = _parse_addr(hop)
            if parsed is None:
                return "unparseable"
            addr = parsed
            if not _in(addr, self.trusted):
                return addr
        return addr

    def decide(self, peer: str | None, forwarded_for: str | None, path: str) -> Decision:
        addr = self.client_address(peer, forwarded_for)
        if addr == "unparseable":
            return Decision(not self.active, None, "xff_unparseable")
        ip = str(addr) if addr is not None else None
        if not self.active:
            return Decision(True, ip, None)
        if addr is None:
            return Decision(False, None, "client_ip_unknown")
        assert not isinstance(addr, str)
        if _in(addr, self.deny):
            return Decision(False, ip, "ip_denylist")
        if self.allow and path not in HEALTH_PATHS and not _in(addr, self.allow):
            return Decision(False, ip, "ip_not_allowed")
        return Decision(True, ip, None)

    def first_public_client(self, client_ip: str | None) -> bool:
        """True exactly once: for the first client address outside :data:`PRIVATE_RANGES`
        while no allow list is set. After that (or with an allow list), always False."""
        if self._public_told or client_ip is None:
            return False
        addr = _parse_addr(client_ip)
        if addr is None or _in(addr, PRIVATE_RANGES):
            return False
        self._public_told = True
        return True
