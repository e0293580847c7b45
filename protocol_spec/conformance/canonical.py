"""The canonical serialization of managed settings (SPEC §17.2), written independently for the suite.

The checksum a gateway serves must equal what the client computes, which is
JavaScript's ``JSON.stringify`` over the settings with every object's keys
sorted by UTF-16 code units. This module reproduces that from the spec text
alone, so the suite can recompute a target's checksum without trusting any
gateway's own code. Pure.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

_NAMED_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _utf16_key(text: str) -> list[int]:
    """Sort key of JavaScript's default string order: UTF-16 code units."""
    encoded = text.encode("utf-16-be")
    return [int.from_bytes(encoded[i : i + 2], "big") for i in range(0, len(encoded), 2)]


def _string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _number(value: int | float) -> str:
    """ECMAScript Number::toString for a finite value."""
    if isinstance(value, bool):
        raise TypeError("booleans are not numbers here")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("settings never hold non-finite numbers")
    if number == 0:
        return "0"
    if isinstance(value, int) and abs(value) < 10**21:
        return str(value)
    sign = "-" if number < 0 else ""
    # repr() gives the shortest round-tripping digits; re-lay them out the JS way.
    mantissa, _, exp_text = repr(abs(number)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    point = len(whole) + int(exp_text or 0)  # decimal point position relative to the digits of whole+fraction
    leading_zeros = len(whole + fraction) - len((whole + fraction).lstrip("0"))
    point -= leading_zeros
    digits = digits.rstrip("0") or "0"
    k, n = len(digits), point
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    exponent = n - 1
    mark = "+" if exponent >= 0 else "-"
    head = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{head}e{mark}{abs(exponent)}"


def serialize(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, list):
        return "[" + ",".join(serialize(item) for item in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value, key=_utf16_key)
        return "{" + ",".join(_string(k) + ":" + serialize(value[k]) for k in keys) + "}"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def checksum(settings: Any) -> str:
    return "sha256:" + hashlib.sha256(serialize(settings).encode("utf-8")).hexdigest()
