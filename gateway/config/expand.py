"""Step 2 of loading ``gateway.yaml``: resolve ``${VAR}`` and ``${file:/abs}``.

``${NAME}`` may appear anywhere inside a string and is replaced from the environ
mapping the loader was handed; ``${file:/absolute/path}`` must be the whole value
and is replaced by that file's text with surrounding whitespace removed. Keys are
never expanded. A reference that cannot be resolved is reported at its dotted
path and leaves an empty string behind, so the shape check that follows sees a
value of the right type. Messages name the variable or file, never its content.

With ``environ=None`` (checking a template without its secrets) nothing is
looked up or read: a string holding well-formed references becomes an
:class:`~gateway.config.schema.Unresolved` kept as written, and its path is
recorded in ``left``; malformed references are still reported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from gateway.config.schema import Expanded, Issues, Unresolved, dotted

_REF = re.compile(r"\$\{([^}]*)\}")
_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _read_text(path: str) -> str:
    # newline="": the file's text as written (a secret may hold a "\r" of its own).
    with open(path, encoding="utf-8", newline="") as fh:
        return fh.read()


def expand_references(
    value: Any,
    path: str,
    environ: Mapping[str, str] | None,
    issues: Issues,
    left: dict[str, str] | None = None,
) -> Any:
    if isinstance(value, str):
        return _expand_str(value, path, environ, issues, {} if left is None else left)
    if isinstance(value, dict):
        return {k: expand_references(v, dotted(path, k), environ, issues, left) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_references(v, f"{path}[{i}]", environ, issues, left) for i, v in enumerate(value)]
    return value


def _expand_str(
    text: str, path: str, environ: Mapping[str, str] | None, issues: Issues, left: dict[str, str]
) -> str:
    refs = list(_REF.finditer(text))
    if not refs:
        return text
    for ref in refs:
        inner = ref.group(1)
        if inner.startswith("file:"):
            if ref.span() != (0, len(text)):
                issues.add(path, "a ${file:...} reference must be the entire value")
                return text
            if environ is None:
                return _leave(text, path, issues, left, inner[len("file:") :])
            return _expand_file(inner[len("file:") :], path, issues)
        if not _VAR.fullmatch(inner):
            issues.add(path, f"'${{{inner}}}' is not a reference; use ${{NAME}} or ${{file:/absolute/path}}")
        elif environ is not None and inner not in environ:
            issues.add(path, f"environment variable {inner} is not set")
    if environ is None:
        return _leave(text, path, issues, left)
    return Expanded(_REF.sub(lambda m: environ.get(m.group(1), ""), text))


def _leave(text: str, path: str, issues: Issues, left: dict[str, str], file_path: str | None = None) -> str:
    if file_path is not None and not os.path.isabs(file_path):
        issues.add(path, f"${{file:}} needs an absolute path, not {file_path}")
        return ""
    left[path] = text
    return Unresolved(text)


def _expand_file(file_path: str, path: str, issues: Issues) -> str:
    if not os.path.isabs(file_path):
        issues.add(path, f"${{file:}} needs an absolute path, not {file_path}")
        return ""
    try:
        return Expanded(_read_text(file_path).strip())
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        issues.add(path, f"cannot read {file_path}: {reason}")
        return ""

