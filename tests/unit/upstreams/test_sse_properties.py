"""Properties of the SSE usage tap over generated streams (issue 17, fuzzing).

test_sse.py cuts one fixed stream anywhere; here the streams themselves vary
(events, usage values, LF or CRLF line ends, comments, events without an
``event:`` line, garbage) and so does the cutting. Example counts come from the
hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.upstreams.sse import UsageTap, json_usage

PROPS = settings(deadline=None)

counts = st.none() | st.integers(0, 2**31)


def usage() -> st.SearchStrategy[dict]:
    fields = st.fixed_dictionaries(
        {},
        optional={
            "input_tokens": counts,
            "output_tokens": counts,
            "cache_creation_input_tokens": counts,
            "cache_read_input_tokens": counts,
            "cache_creation": st.fixed_dictionaries(
                {}, optional={"ephemeral_5m_input_tokens": counts, "ephemeral_1h_input_tokens": counts}
            ),
        },
    )
    return fields


def payloads() -> st.SearchStrategy[dict]:
    return st.one_of(
        usage().map(lambda u: {"type": "message_start", "message": {"id": "m", "usage": u}}),
        usage().map(lambda u: {"type": "message_delta", "delta": {"stop_reason": None}, "usage": u}),
        st.text(max_size=60).map(
            lambda t: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}
        ),
        st.just({"type": "ping"}),
        st.just({"type": "message_stop"}),
    )


@st.composite
def events(draw) -> bytes:
    payload = draw(payloads())
    named = draw(st.booleans())
    if named and draw(st.booleans()):
        # With an event: line the payload's members may come in any order.
        payload = dict(reversed(payload.items()))
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=draw(st.booleans()))
    lines = [f"data: {data}"]
    if named:  # else the type is the first field of the payload
        lines.insert(0, f"event: {payload['type']}")
    if draw(st.booleans()):
        lines.insert(0, ": a comment")
    return ("\n".join(lines) + "\n\n").encode()


@st.composite
def streams(draw) -> bytes:
    parts = draw(st.lists(events() | st.sampled_from([b": keep-alive\n\n", b"\n", b"retry: 5\n\n"]), max_size=12))
    stream = b"".join(parts)
    if draw(st.booleans()):
        stream = stream.replace(b"\n", b"\r\n")
    if draw(st.booleans()):
        stream += draw(st.binary(max_size=40))  # cut short, or trailing junk
    return stream


def chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(stream)) for c in cuts})
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]


def tap_of(chunks: list[bytes]) -> UsageTap:
    tap = UsageTap()
    for chunk in chunks:
        tap.feed(chunk)
    return tap


@PROPS
@given(streams(), st.lists(st.integers(0, 4000), max_size=16))
def test_any_stream_cut_anywhere_gives_the_same_totals(stream, cuts):
    whole, pieces = tap_of([stream]), tap_of(chunked(stream, cuts))
    assert pieces.totals() == whole.totals()
    assert (pieces.events, pieces.delta_bytes, pieces.mid_event) == (whole.events, whole.delta_bytes, whole.mid_event)


@PROPS
@given(streams(), st.lists(st.integers(0, 4000), max_size=16))
def test_the_tap_never_changes_what_it_is_fed(stream, cuts):
    # The relay writes each chunk to the client and then feeds the same object to the
    # tap; the tap must leave it as it was (bytes are immutable; a bytearray is not).
    pieces = [bytearray(p) for p in chunked(stream, cuts)]
    before = [bytes(p) for p in pieces]
    tap = UsageTap()
    for piece in pieces:
        tap.feed(piece)  # type: ignore[arg-type]
    assert [bytes(p) for p in pieces] == before


@PROPS
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_any_bytes_never_raise_and_totals_stay_counts(chunks):
    totals = tap_of(chunks).totals()
    assert all(isinstance(v, int) and v >= 0 for v in totals[:6])


@PROPS
@given(usage(), st.booleans())
def test_a_reply_body_reads_the_usage_it_carries(fields, junk):
    body = json.dumps({"id": "m", "type": "message", "usage": fields}).encode()
    totals = json_usage(body + (b"x" if junk else b""))
    if junk:
        assert totals == json_usage(b"")
        return
    split = fields.get("cache_creation") or {}
    expected = (
        fields.get("input_tokens") or 0,
        fields.get("output_tokens") or 0,
        fields.get("cache_creation_input_tokens") or 0,
        split.get("ephemeral_5m_input_tokens") or 0,
        split.get("ephemeral_1h_input_tokens") or 0,
        fields.get("cache_read_input_tokens") or 0,
    )
    assert tuple(totals[:6]) == expected


def test_regression_a_chunk_ending_between_cr_and_lf_does_not_split_the_event():
    # Found by the properties above: the LF of a CRLF cut off from its CR was read as
    # a second line end, so "event: message_delta" and its data became two events
    # and the usage was lost.
    stream = b'event: message_delta\r\ndata: {"usage":{"output_tokens":5},"type":"message_delta"}\r\n\r\n'
    cut = stream.index(b"\r\n") + 1
    tap = tap_of([stream[:cut], stream[cut:]])
    assert (tap.totals().output_tokens, tap.events) == (5, 1)


def test_regression_blank_lines_between_events_are_no_event_wherever_the_cut():
    # Found under the large profile: a run of blank lines cut in two counted as an event.
    stream = b'\n\n\ndata: {"type":"message_start","message":{"id":"m","usage":{}}}\n\n'
    assert tap_of([stream[:3], stream[3:]]).events == tap_of([stream]).events == 1
