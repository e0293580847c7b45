"""Canonical JSON and checksums, against values Claude Code (JavaScript) produces.

Every expected string and checksum below was produced by Node.js
(``JSON.stringify`` of the object rebuilt with ``Object.keys(o).sort()`` at every
level) and is written out here, so the tests never depend on node being
installed. When node is on PATH, one extra test compares a few thousand random
numbers and documents against it directly.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import struct
import subprocess

import pytest

from gateway.policy.canonical_json import checksum, dumps, format_number

# (document, canonical text, checksum)
VECTORS = [
    # What a client holding no settings sends in If-None-Match (samples: gateway-fake/g4, g6, g7).
    ({}, "{}", "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"),
    # The document Anthropic's gateway served in samples/gateway-real/client_wire.jsonl, and the
    # If-None-Match value the real client then sent on every poll.
    (
        {
            "availableModels": ["claude-opus-4-8", "claude-sonnet-4-6", "claude-haiku-4-5"],
            "permissions": {"deny": ["WebFetch"]},
        },
        '{"availableModels":["claude-opus-4-8","claude-sonnet-4-6","claude-haiku-4-5"],"permissions":{"deny":["WebFetch"]}}',
        "sha256:35433d4825c79cc012326b95df42b54a0623a15ec87a729be5892c36297027a5",
    ),
    # SPEC MANAGED-18, second vector: keys sorted, array order kept.
    (
        {
            "permissions": {"deny": ["WebFetch"], "allow": ["Read", "Grep"]},
            "availableModels": ["claude-sonnet-4-6", "claude-haiku-4-5"],
        },
        '{"availableModels":["claude-sonnet-4-6","claude-haiku-4-5"],"permissions":{"allow":["Read","Grep"],"deny":["WebFetch"]}}',
        "sha256:63509533a4e0b9640a8c032f06c52db8f31ddf187f6b530adebd2a8391eba0b9",
    ),
    # SPEC MANAGED-18, third vector: escapes, non-ASCII, number forms, key order by code unit.
    (
        {
            "env": {"B": "ünïcødé ✓", "A": 'line\nbreak "q" \\ \u0001'},
            "n": [1.0, 0.5, 1e21, 1e-7, 123456789012, -0.0, 0.1],
            "b": [True, False, None],
            "é": 1,
            "z": 2,
            "Z": 3,
        },
        '{"Z":3,"b":[true,false,null],"env":{"A":"line\\nbreak \\"q\\" \\\\ \\u0001","B":"ünïcødé ✓"},'
        '"n":[1,0.5,1e+21,1e-7,123456789012,0,0.1],"z":2,"é":1}',
        "sha256:81afdface1535ed398fba1e4aa8d937358b46a765446a69ba5ea176640a2e27e",
    ),
    # A non-ASCII policy: written as UTF-8, never \u escapes; U+2028/U+2029 and "/" left alone.
    (
        {
            "companyAnnouncements": ["Bienvenue à l’équipe — 欢迎 🎉", "naïve café"],
            "env": {"GREETING": "Grüß Gott", "ZED": "\u2028sep\u2029", "TAB": "a\tb/c"},
            "spinnerVerbs": {"verbs": ["Überlegen", "思考"]},
        },
        '{"companyAnnouncements":["Bienvenue à l’équipe — 欢迎 🎉","naïve café"],'
        '"env":{"GREETING":"Grüß Gott","TAB":"a\\tb/c","ZED":"\u2028sep\u2029"},'
        '"spinnerVerbs":{"verbs":["Überlegen","思考"]}}',
        "sha256:8ec4973c95dc9c36b054178c4b47d10cd1a6be87a78e5f34fecd72f7b0f0a9d5",
    ),
    # A float policy: integral floats lose ".0", exponent thresholds, shortest round trip,
    # integers beyond 2**53 read as the double a client would hold.
    (
        {
            "feedbackSurveyRate": 0.05,
            "skillListingBudgetFraction": 0.015,
            "cleanupPeriodDays": 30.0,
            "statusLine": {"type": "command", "command": "x", "padding": 2.5},
            "n": [
                1e-7,
                1.5e-7,
                0.000001,
                123456789.125,
                1e21,
                2e22,
                -1e-10,
                100,
                4.35,
                0.1 + 0.2,
                9007199254740993,
            ],
        },
        '{"cleanupPeriodDays":30,"feedbackSurveyRate":0.05,'
        '"n":[1e-7,1.5e-7,0.000001,123456789.125,1e+21,2e+22,-1e-10,100,4.35,0.30000000000000004,9007199254740992],'
        '"skillListingBudgetFraction":0.015,"statusLine":{"command":"x","padding":2.5,"type":"command"}}',
        "sha256:c5b43b4f04fe6a1e349d67c905bd62b485708661e87a9c2bc3afce97d1c24e87",
    ),
    # Key order as a JavaScript object has it: integer-like keys first, numerically;
    # the rest by UTF-16 code unit (an astral character sorts before U+FFFF).
    (
        {"10": "ten", "2": "two", "b": 1, "a\U0001f600": 1, "a\uffff": 2, "A": 0},
        '{"2":"two","10":"ten","A":0,"a\U0001f600":1,"a\uffff":2,"b":1}',
        "sha256:f49a693f0817874748007688e12e1c6e249ae8c63c8488ae914072eccdb7c41c",
    ),
]


@pytest.mark.parametrize(("doc", "text", "digest"), VECTORS)
def test_vectors_match_javascript(doc, text, digest):
    assert dumps(doc) == text.encode("utf-8")
    assert checksum(doc) == digest


# fmt: off
NUMBERS = [
    (0, "0"), (-0.0, "0"), (1.0, "1"), (-1.5, "-1.5"), (100.0, "100"), (0.1, "0.1"),
    (1e20, "100000000000000000000"), (1e21, "1e+21"), (1.5e21, "1.5e+21"), (123e-20, "1.23e-18"),
    (1e-6, "0.000001"), (1e-7, "1e-7"), (1.25e-7, "1.25e-7"), (5e-324, "5e-324"),
    (1.7976931348623157e308, "1.7976931348623157e+308"), (2**53, "9007199254740992"),
    (2**53 + 1, "9007199254740992"), (10**21, "1e+21"), (123456789012345680000.0, "123456789012345680000"),
    (9.999999999999999e20, "999999999999999900000"), (-2e-7, "-2e-7"),
]
# fmt: on


@pytest.mark.parametrize(("number", "text"), NUMBERS)
def test_number_formatting(number, text):
    assert format_number(number) == text


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ('"', '"\\""'),
        ("\\", '"\\\\"'),
        ("\b\f\n\r\t", '"\\b\\f\\n\\r\\t"'),
        ("\x00\x1f", '"\\u0000\\u001f"'),
        ("\x7f/\u2028", '"\x7f/\u2028"'),
        ("\ud800", '"\\ud800"'),  # a lone surrogate, as ES2019's well-formed JSON.stringify writes it
    ],
)
def test_string_escapes(text, escaped):
    assert dumps(text) == escaped.encode("utf-8")


@pytest.mark.parametrize("bad", [math.inf, math.nan, {1: "x"}, {"a": object()}, b"bytes"])
def test_values_without_a_json_form_are_refused(bad):
    with pytest.raises((TypeError, ValueError)):
        dumps(bad)


@pytest.mark.skipif(shutil.which("node") is None, reason="cross-check needs node; the vectors above do not")
def test_random_numbers_and_documents_agree_with_node():
    rng = random.Random(20261124)
    floats: list[float] = []
    while len(floats) < 2000:
        f = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        if math.isfinite(f):
            floats.append(f)
    floats += [rng.uniform(-1e-5, 1e-5) for _ in range(500)] + [
        float(rng.randint(-(10**25), 10**25)) for _ in range(500)
    ]
    doc = {"f": floats, "k": {chr(rng.randint(32, 0x2FFF)) + str(i): i for i in range(200)}}
    script = (
        "const d=JSON.parse(require('fs').readFileSync(0,'utf8'));"
        "const s=o=>Array.isArray(o)?o.map(s):(o&&typeof o==='object')?"
        "Object.keys(o).sort().reduce((r,k)=>(r[k]=s(o[k]),r),{}):o;"
        "process.stdout.write(JSON.stringify(s(d)))"
    )
    # Python's json writes floats with repr, which round-trips exactly into node.
    out = subprocess.run(
        ["node", "-e", script], input=json.dumps(doc).encode(), capture_output=True, check=True
    )
    assert dumps(doc) == out.stdout
