"""Decoding only the routed fields, and splicing the model value in place."""

import json

import pytest

from gateway.errors import GatewayError
from gateway.upstreams.bodyview import decode_view, model_value_span, remove_member, splice_model


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "invalid JSON"),
        (b"{not json", "invalid JSON"),
        (b"[1,2]", "request body must be a JSON object"),
        (b'"text"', "request body must be a JSON object"),
        (b"{}", "model is required"),
        (b'{"model":""}', "model is required"),
        (b'{"model":null}', "model must be a string"),
        (b'{"model":42}', "model must be a string"),
        (b'{"model":["a"]}', "model must be a string"),
    ],
)
def test_view_errors(body, message):
    with pytest.raises(GatewayError) as info:
        decode_view(body)
    assert info.value.message == message
    assert info.value.rule.status == 400


def test_view_reads_model_and_stream_and_ignores_the_rest():
    view = decode_view(b'{"messages":[],"unknown":{"x":1},"model":"m","stream":true,"max_tokens":7}')
    assert view == ("m", True, 7, None)
    assert decode_view(b'{"model":"m","tags":{"team":"eng"}}').tags == {"team": "eng"}


NESTED = (
    b'{"messages":[{"role":"user","content":"the \\"model\\": \\"x\\" [{"}],'
    b'"tools":[{"name":"Agent","input_schema":{"properties":{"model":{"type":"string"}}}}],'
    b'"metadata":{"model":"inner"},  "model" :  "claude-haiku-4-5" ,"stream":true}'
)


def test_splice_changes_only_the_top_level_model_bytes():
    out = splice_model(NESTED, "claude-haiku-4-5-20251001")
    start, end = model_value_span(NESTED)
    assert NESTED[start:end] == b'"claude-haiku-4-5"'
    assert out == NESTED[:start] + b'"claude-haiku-4-5-20251001"' + NESTED[end:]
    assert json.loads(out)["model"] == "claude-haiku-4-5-20251001"
    assert json.loads(out)["metadata"]["model"] == "inner"


def test_splice_fast_path_model_first():
    body = b'{"model":"a","messages":[{"model":"b"}]}'
    assert splice_model(body, "zz") == b'{"model":"zz","messages":[{"model":"b"}]}'


def test_splice_escapes_the_new_value():
    assert json.loads(splice_model(b'{"model":"a"}', 'we"ird'))["model"] == 'we"ird'


@pytest.mark.parametrize(
    "body, expected",
    [
        (b'{"model":"m","tags":{"t":"a","x":[1,{"tags":2}]},"stream":true}', b'{"model":"m","stream":true}'),
        (b'{"tags":{"t":"g"}, "model":"m"}', b'{"model":"m"}'),
        (b'{"model":"m" , "tags" : {"t":"g"} }', b'{"model":"m"  }'),
        (b'{"model":"m","messages":[{"tags":1}]}', b'{"model":"m","messages":[{"tags":1}]}'),
        (b'{"tags":"s\\"x","a":1}', b'{"a":1}'),
        (b'{"tags":null}', b"{}"),
    ],
)
def test_remove_member_keeps_every_other_byte(body, expected):
    out = remove_member(body, "tags")
    assert out == expected
    json.loads(out)
