"""Properties of OTLP body decoding over any input (issue 17, fuzzing).

Whatever a client posts to the relay (any bytes, content type, content coding,
any JSON in the places OTLP/JSON has structure) becomes a request message or
:class:`BodyRejected`, never another exception, and never more than the
decompression bound in memory. Example counts come from the hypothesis profile
(tests/conftest.py).
"""

from __future__ import annotations

import gzip
import json
import zlib

from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.telemetry.otlp_body import BodyRejected, decoded, export_request, parse, partial_success

PROPS = settings(deadline=None)
LIMIT = 2048

signals = st.sampled_from(["metrics", "logs", "traces"]) | st.text(max_size=8)
content_types = st.sampled_from(
    [None, "application/json", "application/x-protobuf", "application/protobuf", "Application/JSON; charset=utf-8",
     "text/plain", "", ";", "application/json;;", "\u00e9"]
)
encodings = st.sampled_from([None, "", "identity", "gzip", "deflate", " GZIP ", "br", "gzip, gzip", "\x00"])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
hexish = st.text(alphabet="0123456789abcdefABCDEFxz", max_size=34) | json_values


def span(draw_id, draw_any):
    return st.fixed_dictionaries(
        {"traceId": draw_id, "spanId": draw_id},
        optional={
            "parentSpanId": draw_id,
            "name": draw_any,
            "kind": st.integers(-1, 9) | st.sampled_from(["SPAN_KIND_SERVER", "NOPE"]) | draw_any,
            "startTimeUnixNano": st.integers(-1, 2**65) | st.text(max_size=22) | draw_any,
            "attributes": st.lists(
                st.fixed_dictionaries({"key": st.text(max_size=8) | draw_any, "value": json_values}), max_size=3
            )
            | draw_any,
            "links": st.lists(st.fixed_dictionaries({"traceId": draw_id, "spanId": draw_id}), max_size=2) | draw_any,
        },
    )


otlp_json = st.fixed_dictionaries(
    {
        "resourceSpans": st.lists(
            st.fixed_dictionaries(
                {"scopeSpans": st.lists(st.fixed_dictionaries({"spans": st.lists(span(hexish, json_values), max_size=3)}), max_size=2)},
                optional={"resource": st.fixed_dictionaries({"attributes": json_values})},
            ),
            max_size=2,
        )
        | json_values,
    }
)


def accepted_or_rejected(call) -> object:
    try:
        return call()
    except BodyRejected as rejected:
        # A short reason for one log line (the quoted part is cut to 160 characters).
        assert str(rejected) and len(str(rejected)) <= 240
        return None


def encode(body: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "deflate":
        return zlib.compress(body)
    return body


@PROPS
@given(signals, st.binary(max_size=300), content_types, encodings)
def test_any_body_is_a_request_or_rejected(signal, body, content_type, encoding):
    message = accepted_or_rejected(lambda: parse(signal, body, content_type, encoding, LIMIT))
    assert message is None or isinstance(message, Message)
    request = accepted_or_rejected(lambda: export_request(signal, body, content_type, encoding, LIMIT))
    assert request is None or isinstance(request, bytes)


@PROPS
@given(st.sampled_from(["traces", "logs", "metrics"]), otlp_json, st.sampled_from([None, "gzip", "deflate"]))
def test_any_json_in_otlp_shape_is_a_request_or_rejected(signal, document, encoding):
    body = encode(json.dumps(document).encode(), encoding)
    request = accepted_or_rejected(lambda: export_request(signal, body, "application/json", encoding, 1 << 20))
    if request is not None:
        # What the relay sends is a protobuf the collector can read back.
        parse(signal, request, "application/x-protobuf", None)


@PROPS
@given(st.binary(max_size=3 * LIMIT), st.sampled_from(["gzip", "deflate"]), st.integers(0, 8), st.binary(max_size=4))
def test_decompression_is_exact_within_the_bound_and_rejected_past_it(data, encoding, cut, junk):
    body = encode(data, encoding)
    assert accepted_or_rejected(lambda: decoded(body, encoding, LIMIT)) == (data if len(data) <= LIMIT else None)
    damaged = body[: len(body) - cut] + junk
    out = accepted_or_rejected(lambda: decoded(damaged, encoding, LIMIT))
    assert out is None or len(out) <= LIMIT


@PROPS
@given(st.sampled_from(["traces", "logs", "metrics"]), st.binary(max_size=200))
def test_any_collector_answer_is_read_or_ignored(signal, answer):
    result = partial_success(signal, answer)
    assert result is None or (isinstance(result[0], int) and isinstance(result[1], str))
