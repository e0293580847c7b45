"""Text a client sent: what may go further, and how much of it is ever written out (pure).

Strings from requests end up in three places that treat them badly when they are
hostile: PostgreSQL (a NUL byte or a lone surrogate fails the whole statement,
and with it every request batched into it), log lines (a line break forges a
line; a megabyte-long value writes megabytes per request) and answers. Fields
the gateway routes or stores are checked with :func:`unprintable` where they
are parsed and refused with a 400; anything written to a log or a usage row
goes through :func:`capped` on the way, whatever checks came before.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, surrogates (never valid alone in UTF-8), and the two
# Unicode line breaks.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")
# What a log line or usage row keeps of one client-supplied string.
LOG_CHARS = 512


def unprintable(value: str) -> bool:
    """True when ``value`` holds a character no identifier, reason or name needs."""
    return _UNPRINTABLE.search(value) is not None


def capped(value: str, limit: int = LOG_CHARS) -> str:
    """``value`` cut to ``limit`` characters, saying how much was left out."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}…[{len(value) - limit} more characters]"


def quoted(value: str, limit: int = LOG_CHARS) -> str:
    """``value`` as an answer or log line may quote it: capped, each unprintable character escaped.

    A lone surrogate cannot be encoded as UTF-8 at all (the JSON encoder raises),
    and a control character in an echo forges or breaks the text around it; so
    they are written as their Python escapes (``\\x00``, ``\\ud800``).
    """
    return _UNPRINTABLE.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), capped(value, limit))

