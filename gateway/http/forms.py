"""``application/x-www-form-urlencoded`` bodies, parsed strictly (pure).

The sign-in endpoints take forms from the CLI and from the verification page,
before anyone has signed in. What a real client sends is a handful of short
ASCII fields; anything else is refused here with one short reason, so that no
malformed byte ever reaches a decoder that raises something unexpected (invalid
UTF-8 once became a 500) or a database that refuses it (a NUL byte in a text
column fails the statement).

Rules: the body is UTF-8, percent-escapes decode to UTF-8, no name or value
holds a control character, a field appears at most once (RFC 6749 §3.1 says so
of OAuth parameters), and there are at most :data:`MAX_FIELDS` fields.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from gateway.errors import Fault, Party

MAX_FIELDS = 32
# C0 controls and DEL. Tabs and line breaks have no place in these forms either.
_CONTROL = re.compile("[\x00-\x1f\x7f]")


class FormInvalid(Fault, ValueError):
    """The body is not a form this gateway accepts; the message says why."""

    fault = Party.CLIENT


def parse_form(body: bytes) -> dict[str, str]:
    """The fields of a form body, or :class:`FormInvalid`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise FormInvalid("the form body is not valid UTF-8") from None
    try:
        pairs = parse_qsl(
            text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=MAX_FIELDS
        )
    except UnicodeDecodeError:
        raise FormInvalid("a form field is not valid UTF-8 once decoded") from None
    except ValueError:
        raise FormInvalid(f"the form has more than {MAX_FIELDS} fields") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if _CONTROL.search(name) is not None or _CONTROL.search(value) is not None:
            raise FormInvalid("form fields must not contain control characters")
        if name in fields:
            raise FormInvalid(f"the form field {_shown(name)} appears more than once")
        fields[name] = value
    return fields


def _shown(name: str) -> str:
    # Field names are echoed in the refusal; a hostile one stays short.
    return repr(name if len(name) <= 40 else name[:40] + "…")
