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
