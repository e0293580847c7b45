"""Properties of the body view, the model splice and member removal (issue 17, fuzzing).

The view must read what a full JSON decode reads; the splice and the removal
must touch only the bytes of the one value or member they are about, whatever
the formatting, member order, nesting or string contents around it. Example
counts come from the hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.client_text import unprintable
from gateway.errors import GatewayError, Kind
from gateway.upstreams.bodyview import (
    MAX_MODEL_CHARS,
    decode_view,
    model_value_span,
    remove_member,
    splice_model,
)

PROPS = settings(deadline=None)

# Text that looks like JSON structure, so string contents try to fool the scanner.
tricky = st.text(alphabet=st.sampled_from(list('"\\{}[]:, model\n\t\u00e9\u2028\U0001f642')), max_size=12) | st.text(
    max_size=12
)
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False) | tricky
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky | st.just("model") | st.just("tags"), inner, max_size=3),
    max_leaves=10,
)
# Members besides the model: the names the view reads, and others.
members = st.dictionaries(
    st.sampled_from(["stream", "max_tokens", "tags", "messages", "metadata", "system", "tools"]) | tricky,
    values,
    max_size=5,
).map(lambda d: {k: v for k, v in d.items() if k != "model"})
models = st.text(min_size=1, max_size=40) | st.sampled_from(["claude-sonnet-4-6", "claude-haiku-4-5"])
formats = st.sampled_from(
    [
        {"separators": (",", ":")},
        {},
        {"indent": 2},
        {"indent": "\t", "ensure_ascii": False},
        {"separators": (" , ", " : "), "ensure_ascii": False},
    ]
)


@st.composite
def documents(draw) -> tuple[dict, bytes]:
    """A Messages-like object with a string ``model`` at any position, serialized some way."""
    others = draw(members)
    at = draw(st.integers(0, len(others)))
    items = list(others.items())
    items.insert(at, ("model", draw(models)))
    doc = dict(items)
    return doc, json.dumps(doc, **draw(formats)).encode()


def refused(call) -> object:
    """``call()``, or None when it refused with a 400; any other exception fails."""
    try:
        return call()
    except GatewayError as err:
        assert err.kind is Kind.INVALID_REQUEST and err.rule.status == 400
        return None


@PROPS
@given(documents())
def test_the_view_agrees_with_a_full_decode(doc_body):
    doc, body = doc_body
    view = refused(lambda: decode_view(body))
    full = json.loads(body)
    model = full["model"]
    if view is None:  # refused only for what may not be routed or logged
        assert len(model) > MAX_MODEL_CHARS or unprintable(model), model
        return
    assert view.model == model
    assert view.stream is (full.get("stream") is True)
    mt = full.get("max_tokens")
    assert view.max_tokens == (mt if type(mt) is int else None)
    assert view.tags == (full["tags"] if isinstance(full.get("tags"), dict) else None)


@PROPS
@given(documents(), models)
def test_splicing_changes_the_model_value_and_no_other_byte(doc_body, new_model):
    doc, body = doc_body
    start, end = model_value_span(body)
    assert json.loads(body[start:end]) == doc["model"]
    out = splice_model(body, new_model)
    assert out[:start] == body[:start] and out[len(out) - (len(body) - end) :] == body[end:]
    assert json.loads(out) == {**doc, "model": new_model}


@PROPS
@given(documents())
def test_removing_tags_takes_one_run_of_bytes_and_leaves_valid_json(doc_body):
    doc, body = doc_body
    out = remove_member(body, "tags")
    expected = {k: v for k, v in doc.items() if k != "tags"}
    assert json.loads(out) == expected
    if "tags" not in doc:
        assert out == body
        return
    cut = len(body) - len(out)
    start = next((i for i in range(len(out)) if out[i] != body[i]), len(out))
    assert out == body[:start] + body[start + cut :]


@PROPS
@given(st.binary(max_size=200) | documents().map(lambda d: d[1]), st.integers(0, 400), st.binary(max_size=3))
def test_any_bytes_splice_or_are_a_400(body, at, junk):
    body = body[:at] + junk + body[at:]
    refused(lambda: splice_model(body, "m"))
    refused(lambda: remove_member(body, "tags"))


# Bodies where a scan of the raw bytes and a JSON decoder could disagree about
# which member is the model: the key repeated, or written with escapes.
ambiguous = st.sampled_from(
    [
        b'{"model":"a","model":"b"}',
        b'{"model":"a","mod\\u0065l":"b"}',
        b'{"mod\\u0065l":"a","model":"b"}',
        b'{"mod\\u0065l":"a"}',
        b'{"model":"a","x":{"model":"c"},"model":"b"}',
        b'{"model":"b","model":"b"}',
    ]
)


# Model ids an upstream is configured with: printable text.
upstream_models = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40)


@PROPS
@given(ambiguous, upstream_models)
def test_a_spliced_body_routes_where_its_view_says_or_is_refused(body, new_model):
    """The upstream (which keeps the last of repeated keys, like the view) must read the
    spliced model; a body where it could read another one is refused, not forwarded."""
    out = refused(lambda: splice_model(body, new_model))
    if out is not None:
        assert decode_view(out).model == new_model == json.loads(out)["model"]


@PROPS
@given(
    st.sampled_from(
        [
            b'{"model":"m","tags":{"t":"a"},"tags":{"t":"b"}}',
            b'{"tags":{"t":"a"},"model":"m","t\u0061gs":{"t":"b"}}',
            b'{"t\u0061gs":{"t":"b"},"model":"m"}',
            b'{"tags":1,"tags":2,"tags":3}',
        ]
    )
)
def test_tags_removed_never_reach_the_upstream_by_repeating_or_escaping_the_key(body):
    out = refused(lambda: remove_member(body, "tags"))
    if out is not None:
        assert "tags" not in json.loads(out)


def test_regression_a_repeated_model_key_is_refused_when_splicing():
    # Found by the properties above: the splice changed the first "model" while the
    # view (and the upstream) read the last, so an alias reached the upstream unspliced.
    assert refused(lambda: splice_model(b'{"model":"a","model":"alias"}', "claude-haiku-4-5")) is None
    assert refused(lambda: splice_model(b'{"model":"a","mod\\u0065l":"alias"}', "claude-haiku-4-5")) is None
    assert refused(lambda: remove_member(b'{"tags":{"t":"a"},"tags":{"t":"b"}}', "tags")) is None
