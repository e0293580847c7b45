"""Which hosts and URLs the gateway may call, decided from the text alone.

A gateway that fetches URLs from its config must never be pointed at a cloud
metadata endpoint or a link-local address, and only in development at a
loopback one (``CLAUDE_GATEWAY_ALLOW_LOOPBACK=1``). The loader checks literal
hosts here; the run-time resolver check reuses :func:`is_forbidden_address` on
the addresses DNS returns. Nothing in this module resolves names.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

ALLOW_LOOPBACK_ENV = "CLAUDE_GATEWAY_ALLOW_LOOPBACK"

# Cloud instance-metadata endpoints: reaching one from a gateway that relays
# URLs from config would hand out the host's cloud credentials.
_METADATA_IPS = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)
_METADATA_HOSTS = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"}
)


def is_forbidden_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_loopback: bool) -> bool:
    """True for addresses the gateway must never call (metadata, link-local),
    and for loopback/unspecified ones unless loopback is allowed."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _METADATA_IPS or ip.is_link_local:
        return True
    if ip.is_loopback or ip.is_unspecified:
        return not allow_loopback
    return False


def host_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP a URL host names literally, including the old inet_aton spellings
    (``127.1``, ``0x7f.0.0.1``, ``2130706433``) that resolvers still accept."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return _legacy_ipv4(host)


_LEGACY_PART = re.compile(r"0[xX][0-9A-Fa-f]+|[0-9]+")


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    nums = []
    for part in parts:
        # Digits only (int() alone would also take "-1", "+1", " 1" and "1_0").
        if not _LEGACY_PART.fullmatch(part):
            return None
        try:
            if part.lower().startswith("0x"):
                nums.append(int(part[2:], 16))
            elif len(part) > 1 and part.startswith("0"):
                nums.append(int(part, 8))
            else:
                nums.append(int(part, 10))
        except ValueError:
            return None
    *head, last = nums
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for i, n in enumerate(head):
        value += n << (24 - 8 * i)
    return ipaddress.IPv4Address(value)


def is_loopback_host(host: str) -> bool:
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    ip = host_address(host)
    return ip is not None and (
        ip.is_loopback
        or (isinstance(ip, ipaddress.IPv6Address) and bool(ip.ipv4_mapped and ip.ipv4_mapped.is_loopback))
    )


def url_problem(url: str, allow_loopback: bool) -> str | None:
    """Why the gateway must not call ``url``, or None. Never echoes the URL,
    which may carry credentials."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not host:
        return "must be an http:// or https:// URL with a host"
    host = host.rstrip(".")
    ip = host_address(host)
    if host in _METADATA_HOSTS or (ip is not None and is_forbidden_address(ip, True)):
        return "points at a cloud metadata or link-local address, which is never allowed"
    local = is_forbidden_address(ip, False) if ip is not None else is_loopback_host(host)
    if local and not allow_loopback:
        return f"points at a loopback address; allowed only with {ALLOW_LOOPBACK_ENV}=1 (development)"
    return None


def scheme_host(url: str) -> tuple[str, str]:
    try:
        parts = urlsplit(url)
        return parts.scheme, (parts.hostname or "")
    except ValueError:
        return "", ""


def strip_port(entry: str) -> str:
    """``10.0.0.1:443`` → ``10.0.0.1`` and ``[::1]:443`` → ``::1``; bare IPv6 is left alone."""
    if entry.startswith("["):
        return entry[1:].split("]", 1)[0]
    if entry.count(":") == 1:
        return entry.split(":", 1)[0]
    return entry


def is_ip_or_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return False
    return True
