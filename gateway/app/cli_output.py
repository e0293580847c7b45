"""How the CLI commands print: indented JSON for scripts, aligned columns for people (pure)."""

from __future__ import annotations

import json
from typing import Any, TextIO


def print_json(out: TextIO, doc: Any) -> None:
    out.write(json.dumps(doc, indent=2) + "\n")


def table(out: TextIO, header: list[str], rows: list[list[str]], *, empty: str) -> None:
    if not rows:
        out.write(empty + "\n")
        return
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        out.write("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() + "\n")
