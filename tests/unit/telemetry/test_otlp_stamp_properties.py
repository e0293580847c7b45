"""Properties of identity stamping over any export (issue 17, fuzzing).

The relay stamps every export a client posts before it is queued; whatever the
body, type and coding, :func:`stamp` returns an export or raises
:class:`BodyRejected` (the export is then counted and dropped), never another
exception: one would be a 500 on ``/v1/<signal>``. Example counts come from the
hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

import gzip
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth.tokens import Principal
from gateway.telemetry.otlp_body import BodyRejected, parse
from gateway.telemetry.stamp import stamp
from tests.unit.telemetry.test_otlp_body_properties import content_types, encodings, otlp_json

PROPS = settings(deadline=None)
CALLER = Principal("dev", "dev@example.com", "Dev", ("eng",), "sid", 2_000_000_000)
SIGNALS = st.sampled_from(["metrics", "logs", "traces"])


def stamped_or_rejected(*args) -> bytes | None:
    try:
        return stamp(*args, CALLER)
    except BodyRejected:
        return None


@PROPS
@given(SIGNALS, st.binary(max_size=300), content_types, encodings)
def test_any_body_is_stamped_or_rejected(signal, body, content_type, encoding):
    stamped_or_rejected(signal, body, content_type, encoding)


@PROPS
@given(otlp_json, st.booleans())
def test_readable_otlp_json_stays_readable_once_stamped(document, gzipped):
    body = json.dumps(document).encode()
    encoding = "gzip" if gzipped else None
    out = stamped_or_rejected("traces", gzip.compress(body) if gzipped else body, "application/json", encoding)
    try:
        parse("traces", body, "application/json", None)
    except BodyRejected:
        return  # the stamp does not promise to read (or refuse) everything the collector would
    # An export a collector could read stays readable once stamped. (The stamp may still
    # refuse one whose shape could hide an identity, such as a resource entry that is no
    # object: dropped and counted, never relayed unstamped.)
    if out is not None:
        parse("traces", out, "application/json", encoding)


@PROPS
@given(SIGNALS, st.integers(1, 200_000), st.sampled_from(["[", '{"a":']))
def test_nesting_of_any_depth_is_rejected_not_a_crash(signal, depth, opener):
    closer = "]" if opener == "[" else "}"
    body = ('{"resourceSpans":' + opener * depth + "1" + closer * depth + "}").encode()
    stamped_or_rejected(signal, body, "application/json", None)


def test_regression_json_nested_past_the_recursion_limit_is_rejected():
    # Found by `make fuzz` (the otlp family): msgspec's RecursionError escaped the
    # stamp and /v1/metrics answered 500.
    body = b'{"resourceMetrics":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert stamped_or_rejected("metrics", body, "application/json", None) is None
