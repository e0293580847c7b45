"""The JSON Schema of every wire type, generated from :mod:`protocol_spec.wire`.

``wire.py`` is the single source of the message types; ``schema.json`` beside
it is derived from those Structs and checked in, so other implementations can
read the shapes without Python. ``tests/system/test_schema_drift.py`` fails when the
two disagree; regenerate with::

    python -m protocol_spec.schema            # rewrite protocol_spec/schema.json
    python -m protocol_spec.schema --check    # exit 1 (and say why) when it is stale

Every ``msgspec.Struct`` *defined* in ``wire.py`` (not merely imported there)
becomes one entry of ``$defs``, so a new wire type shows up in the schema, and
in the drift test, without touching this module.

:func:`protocol_json` is the body of ``GET /protocol.json``: the requirements
index of SPEC §1.6 plus this schema under ``"schema"``. It reads the checked-in
file rather than regenerating it, so what is served is exactly what was
reviewed.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from protocol_spec import requirements, wire

SCHEMA_RESOURCE = "schema.json"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "protocol_spec/schema.json"


def wire_structs() -> list[type[msgspec.Struct]]:
    """The Structs defined in ``wire.py``, in the order the module defines them."""
    return [
        value
        for value in vars(wire).values()
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and value.__module__ == wire.__name__
    ]


def build() -> dict[str, Any]:
    """The schema document, as plain data."""
    _, definitions = msgspec.json.schema_components(wire_structs(), ref_template="#/$defs/{name}")
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        "title": "Claude Code gateway protocol: wire messages",
        "description": (
            "Generated from protocol_spec/wire.py by `python -m protocol_spec.schema`; do not edit. "
            "Types the gateway receives ignore unknown members (SPEC ROLE-2), so these schemas list "
            "what is read or written, not everything a peer may send."
        ),
        "$defs": _clean_descriptions(definitions),
    }


def _clean_descriptions(node: Any) -> Any:
    """Every ``description`` (a Struct's docstring) as ``inspect.cleandoc`` leaves it.

    msgspec copies docstrings into the schema, and its releases disagree on how:
    0.18 kept the source indentation, 0.23 strips it. Cleaning them here makes
    the checked-in file a function of ``wire.py`` alone, so the drift test fails
    when a wire type changes, not when msgspec does.
    """
    if isinstance(node, dict):
        return {
            key: inspect.cleandoc(value) if key == "description" and isinstance(value, str) else _clean_descriptions(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_clean_descriptions(item) for item in node]
    return node


def render() -> str:
    """``build()`` as the exact text checked in: sorted keys, two-space indent, final newline."""
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def source_path() -> Path:
    """Where ``schema.json`` lives in a source checkout (next to this module)."""
    return Path(__file__).resolve().with_name(SCHEMA_RESOURCE)


def shipped_text() -> str:
    """The checked-in schema, found as package data (works from an installed wheel too)."""
    return resources.files("protocol_spec").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")


def protocol_json() -> bytes:
    """The body of ``GET /protocol.json``: ``{"document", "sections", "requirements", "schema"}``."""
    return _protocol_json()


@functools.cache
def _protocol_json() -> bytes:
    from protocol_spec.wire import ProtocolDocument

    reqs, secs = requirements.parse(requirements._spec_text())
    document = ProtocolDocument(
        document=requirements.DOCUMENT, sections=list(secs), requirements=list(reqs), schema=json.loads(shipped_text())
    )
    return msgspec.json.encode(document)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protocol_spec.schema", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when schema.json is stale")
    args = parser.parse_args(argv)
    path = source_path()
    fresh = render()
    current = path.read_text(encoding="utf-8") if path.exists() else None
    if args.check:
        if current != fresh:
            print(f"{path} is stale: run `python -m protocol_spec.schema`", file=sys.stderr)
            return 1
        return 0
    if current != fresh:
        path.write_text(fresh, encoding="utf-8")
        print(f"wrote {path} ({len(wire_structs())} wire types)")
    else:
        print(f"{path} is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
