"""protocol_spec/schema.json is generated from protocol_spec/wire.py and must never drift from it."""

from __future__ import annotations

import json
import subprocess
import sys

import msgspec

from protocol_spec import requirements, schema, wire


def test_checked_in_schema_matches_the_wire_types():
    checked_in = schema.source_path().read_text(encoding="utf-8")
    assert checked_in == schema.render(), (
        "protocol_spec/schema.json is stale: run `python -m protocol_spec.schema` and commit the result"
    )


def test_every_wire_struct_has_a_definition():
    defs = json.loads(schema.shipped_text())["$defs"]
    names = {cls.__name__ for cls in schema.wire_structs()}
    assert names <= set(defs)
    assert {"ErrorEnvelope", "ModelList", "SessionClaims"} <= names


def test_only_structs_defined_in_wire_are_collected():
    for cls in schema.wire_structs():
        assert cls.__module__ == wire.__name__


def test_schema_describes_the_envelope_the_gateway_encodes():
    # A value the gateway really writes carries the members the schema requires.
    body = msgspec.json.decode(wire.encoder.encode(wire.ErrorEnvelope(wire.ErrorDetail("not_found_error", "x"), "req_1")))
    envelope = json.loads(schema.shipped_text())["$defs"]["ErrorEnvelope"]
    assert set(envelope["required"]) <= set(body)
    assert body["type"] == "error"


def test_protocol_json_is_the_index_plus_the_schema():
    doc = json.loads(schema.protocol_json())
    index = json.loads(requirements.index_json())
    assert {k: doc[k] for k in index} == index
    assert doc["schema"] == json.loads(schema.shipped_text())


def test_check_mode_exits_zero_when_fresh():
    out = subprocess.run([sys.executable, "-m", "protocol_spec.schema", "--check"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_the_schema_does_not_depend_on_how_msgspec_copies_docstrings():
    # msgspec 0.18 kept a docstring's source indentation and 0.23 strips it: either
    # way, the generator must produce the same text.
    built = schema.build()["$defs"]
    described = [name for name, definition in built.items() if "\n" in definition.get("description", "")]
    assert described, "no multi-line docstring left to exercise the normalisation"
    as_old_msgspec = {
        name: {**definition, "description": definition["description"].replace("\n", "\n    ")}
        if "description" in definition
        else definition
        for name, definition in built.items()
    }
    assert schema._clean_descriptions(as_old_msgspec) == built
