"""The canonical serialization of managed settings, and its checksum (SPEC MANAGED-17).

Claude Code computes the checksum of the settings it holds itself (for
``If-None-Match`` and the ``x-claude-code-managed-settings-checksum`` hint), in
JavaScript: the settings with the keys of every object sorted, passed through
``JSON.stringify``. A gateway that answers 304 must arrive at the same bytes,
so this module reproduces what JavaScript does, not what Python's ``json``
module does:

* keys sorted by UTF-16 code units, and integer-like keys ("0", "17") first
  in numeric order, because a JavaScript object always enumerates those first,
  however it was built;
* strings written as UTF-8, escaping only ``"``, ``\\``, control characters
  and lone surrogates;
* numbers as ``Number.prototype.toString`` writes them: the value is a binary64
  double (integers beyond 2**53 lose digits, as they do in the client), ``1.0``
  is ``1``, ``-0`` is ``0``, exponents only from 1e21 up or 1e-7 down.

Pure: values in, bytes out. Used at boot only; per request the gateway serves
bytes computed here once.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["checksum", "dumps", "format_number"]

_ESCAPE = re.compile('[\x00-\x1f"\\\\\ud800-\udfff]')
_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# The largest array index a JavaScript object orders numerically: 2**32 - 2.
_MAX_INDEX = 4294967294


def dumps(value: Any) -> bytes:
    """``JSON.stringify`` of ``value`` with every object's keys sorted, as UTF-8."""
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts).encode("utf-8")


def checksum(settings: Any) -> str:
    """``sha256:`` and the lowercase hex SHA-256 of the canonical bytes."""
    return "sha256:" + hashlib.sha256(dumps(settings)).hexdigest()


def _write(value: Any, out: list[str]) -> None:
    # bool before int: True is an int in Python.
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, (int, float)):
        out.append(format_number(value))
    elif isinstance(value, Mapping):
        out.append("{")
        for i, key in enumerate(_ordered_keys(value)):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} has no JSON form")


def _ordered_keys(obj: Mapping[Any, Any]) -> list[str]:
    for key in obj:
        if not isinstance(key, str):
            raise TypeError(f"object keys must be strings, got {type(key).__name__}")
    indices = sorted((k for k in obj if _is_index(k)), key=int)
    others = sorted((k for k in obj if not _is_index(k)), key=_utf16)
    return indices + others


def _is_index(key: str) -> bool:
    # Canonical decimal form only: "01" or "+1" are ordinary string keys in JavaScript.
    return key.isascii() and key.isdigit() and (key == "0" or key[0] != "0") and int(key) <= _MAX_INDEX


def _utf16(key: str) -> bytes:
    # Big-endian UTF-16 bytes compare in the same order as UTF-16 code units,
    # which differs from code-point order for characters above U+FFFF.
    return key.encode("utf-16-be", "surrogatepass")


def _string(text: str) -> str:
    return '"' + _ESCAPE.sub(_escape_one, text) + '"'


def _escape_one(match: re.Match[str]) -> str:
    ch = match.group()
    return _SHORT.get(ch) or f"\\u{ord(ch):04x}"


def format_number(number: int | float) -> str:
    """ECMAScript ``Number::toString`` of ``number`` read as a binary64 double."""
    if isinstance(number, int) and abs(number) < 2**53:
        return str(number)  # exact in a double, and below 1e21: plain digits
    value = float(number)  # OverflowError for ints beyond any double, which JSON cannot carry either
    if not math.isfinite(value):
        raise ValueError("non-finite numbers have no JSON form")
    if value == 0:
        return "0"  # both zeros
    digits, point = _shortest_digits(abs(value))
    sign = "-" if value < 0 else ""
    k, n = len(digits), point
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    exponent = n - 1
    mark = "+" if exponent >= 0 else "-"
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{sign}{mantissa}e{mark}{abs(exponent)}"


def _shortest_digits(value: float) -> tuple[str, int]:
    """(digits, n) with value == 0.<digits> * 10**n and no leading or trailing zeros.

    ``repr`` gives the shortest decimal that reads back as the same double
    (and the nearest one when several are that short), which is also what
    ECMAScript asks for; only the layout differs, so it is parsed apart here.
    """
    text = repr(value)
    mantissa, _, exp = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exp) if exp else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    return stripped.rstrip("0"), point
