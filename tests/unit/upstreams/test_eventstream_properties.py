"""Properties of the Bedrock event-stream decoder over broken input (issue 17, fuzzing).

test_eventstream_sse.py shows that any cutting of good frames gives the same
SSE. Here the bytes are also damaged (flipped, cut, spliced, or random): the
decoder answers the same however they are cut, and refuses only with
:class:`StreamCorrupt`. Example counts come from the hypothesis profile
(tests/conftest.py).
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.upstreams.eventstream import EventStreamSse, StreamCorrupt
from protocol_spec.fakes.eventstream import chunk_frame, encode_frame, exception_frame

PROPS = settings(deadline=None)

event_json = st.one_of(
    st.text(max_size=30).map(
        lambda t: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}
    ),
    st.just({"type": "message_stop"}),
    st.text(max_size=12).map(lambda t: {"type": t}),
).map(lambda e: json.dumps(e).encode())

frames = st.one_of(
    event_json.map(chunk_frame),
    st.builds(exception_frame, st.sampled_from(["throttlingException", "x"]), st.text(max_size=20)),
    st.builds(
        encode_frame,
        st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=10), max_size=3),
        st.binary(max_size=40),
    ),
)


@st.composite
def damaged_streams(draw) -> bytes:
    stream = bytearray(b"".join(draw(st.lists(frames, max_size=5))))
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(0, len(stream)))
        if what == "flip" and at < len(stream):
            stream[at] ^= draw(st.integers(1, 255))
        elif what == "cut":
            del stream[at : at + draw(st.integers(1, 20))]
        else:
            stream[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(stream)


def run(chunks: list[bytes]) -> tuple[bytes, str | None, bool, int]:
    """(every SSE byte given out, the failure, whether it ended, frames read)."""
    decoder = EventStreamSse(max_frame=4096)
    out = []
    for chunk in chunks:
        try:
            out.append(decoder.feed(chunk))
        except StreamCorrupt as corrupt:
            out.append(corrupt.before)
            assert decoder.ended
    return b"".join(out), decoder.failure, decoder.ended, decoder.frames


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    at = sorted({min(p, len(stream)) for p in points})
    return [stream[a:b] for a, b in zip([0, *at], [*at, len(stream)], strict=True)]


@PROPS
@given(damaged_streams() | st.binary(max_size=400), st.lists(st.integers(0, 600), max_size=12))
def test_damaged_bytes_cut_anywhere_give_the_same_answer_and_only_stream_corrupt(stream, points):
    assert run(cut(stream, points)) == run([stream])


@PROPS
@given(damaged_streams(), st.binary(min_size=1, max_size=50))
def test_nothing_is_given_out_after_the_stream_ended(stream, more):
    decoder = EventStreamSse(max_frame=4096)
    try:
        decoder.feed(stream)
    except StreamCorrupt:
        pass
    if decoder.ended:
        assert decoder.feed(more) == b""
        assert decoder.failure is not None and len(decoder.failure) <= 2000


@PROPS
@given(st.lists(event_json.map(chunk_frame), min_size=1, max_size=4))
def test_each_good_frame_is_one_event_with_a_safe_name(good):
    out, failure, ended, count = run([b"".join(good)])
    if failure is None:
        assert count == len(good) and out.count(b"\n\n") >= len(good)
        for event in out.split(b"\n\n")[:-1]:
            name = event.split(b"\n", 1)[0]
            assert name.startswith(b"event: ") and b"\r" not in name
