"""Bedrock's event stream becomes the Messages API's SSE, however the bytes are cut."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import Fault, Party, sse_error
from gateway.upstreams.eventstream import MAX_FRAME_BYTES, PING, EventStreamSse, StreamCorrupt
from protocol_spec.fakes.eventstream import chunk_frame, corrupt, encode_frame, exception_frame


def compact(event: dict) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


EVENTS = [
    compact(
        {
            "type": "message_start",
            "message": {"id": "msg_1", "usage": {"input_tokens": 9, "output_tokens": 1}},
        }
    ),
    compact({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    compact(
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Grüß Gott — 欢迎"},
        }
    ),
    compact({"type": "content_block_stop", "index": 0}),
    compact({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}}),
    compact({"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 9}}),
]
FRAMES = [chunk_frame(e) for e in EVENTS]
STREAM = b"".join(FRAMES)
UPSTREAM_ERROR = sse_error("api_error", "upstream error")


def sse(event: bytes) -> bytes:
    return b"event: " + json.loads(event)["type"].encode() + b"\ndata: " + event + b"\n\n"


EXPECTED = b"".join(sse(e) for e in EVENTS)


def feed_all(chunks: list[bytes], decoder: EventStreamSse | None = None) -> bytes:
    decoder = decoder or EventStreamSse()
    return b"".join(decoder.feed(c) for c in chunks)


def raw_frame(headers: bytes, payload: bytes, *, total: int | None = None) -> bytes:
    """A frame with hand-made header bytes and correct checksums (``total`` may lie)."""
    length = total if total is not None else 16 + len(headers) + len(payload)
    prelude = struct.pack("!II", length, len(headers))
    head = prelude + struct.pack("!I", zlib.crc32(prelude))
    body = head + headers + payload
    return body + struct.pack("!I", zlib.crc32(body))


def string_header(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    return bytes((len(n),)) + n + b"\x07" + struct.pack("!H", len(v)) + v


def chunk_payload(event: bytes, **extra: str) -> bytes:
    return json.dumps({"bytes": base64.b64encode(event).decode(), **extra}).encode()


# ---------------------------------------------------------------- chunks


def test_each_chunk_becomes_one_sse_event_with_the_json_as_sent() -> None:
    assert feed_all(FRAMES) == EXPECTED
    assert feed_all([STREAM]) == EXPECTED


def test_one_byte_at_a_time() -> None:
    decoder = EventStreamSse()
    assert feed_all([bytes((b,)) for b in STREAM], decoder) == EXPECTED
    assert decoder.frames == len(FRAMES)
    assert not decoder.mid_frame


def test_split_at_every_byte_boundary() -> None:
    for cut in range(len(STREAM) + 1):
        assert feed_all([STREAM[:cut], STREAM[cut:]]) == EXPECTED, cut


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(st.text(max_size=40), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_any_events_any_cuts(texts: list[str], cuts: list[int]) -> None:
    events = [
        compact({"type": "content_block_delta", "delta": {"type": "text_delta", "text": t}}) for t in texts
    ]
    stream = b"".join(chunk_frame(e) for e in events)
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert feed_all(pieces) == b"".join(sse(e) for e in events)


def test_a_partial_frame_gives_nothing_yet() -> None:
    decoder = EventStreamSse()
    assert decoder.feed(FRAMES[0][:5]) == b""
    assert decoder.feed(FRAMES[0][5:-1]) == b""
    assert decoder.mid_frame
    assert decoder.feed(FRAMES[0][-1:] + FRAMES[1][:20]) == sse(EVENTS[0])
    assert decoder.feed(FRAMES[1][20:]) == sse(EVENTS[1])
    assert not decoder.mid_frame


def test_padding_and_unknown_members_of_the_payload_are_ignored() -> None:
    headers = string_header(":event-type", "chunk") + string_header(":message-type", "event")
    frame = raw_frame(headers, chunk_payload(EVENTS[3], p="abcdefghijklmnopqrstuvwxyzABCDEF"))
    assert EventStreamSse().feed(frame) == sse(EVENTS[3])


def test_headers_in_another_order_or_of_other_types_are_read() -> None:
    timestamp = b"\x05:date" + b"\x08" + struct.pack("!q", 1_700_000_000_000)
    flag = b"\x04flag\x00"
    headers = (
        string_header(":message-type", "event") + timestamp + flag + string_header(":event-type", "chunk")
    )
    assert EventStreamSse().feed(raw_frame(headers, chunk_payload(EVENTS[0]))) == sse(EVENTS[0])


def test_event_json_with_line_breaks_becomes_several_data_lines() -> None:
    event = b'{\n  "type": "ping",\r\n  "n": 1\r}'
    out = EventStreamSse().feed(chunk_frame(event))
    assert out == b'event: ping\ndata: {\ndata:   "type": "ping",\ndata:   "n": 1\ndata: }\n\n'
    data = "\n".join(line[6:] for line in out.decode().split("\n") if line.startswith("data: "))
    assert json.loads(data) == json.loads(event)


def test_unknown_event_types_pass_through() -> None:
    event = b'{"type":"some_future_event","x":[1,2]}'
    assert EventStreamSse().feed(chunk_frame(event)) == b"event: some_future_event\ndata: " + event + b"\n\n"


def test_ping_constant() -> None:
    assert PING == b'event: ping\ndata: {"type": "ping"}\n\n'


# ---------------------------------------------------------------- the stream ends


def test_exception_frame_gives_one_error_event_then_nothing() -> None:
    decoder = EventStreamSse()
    stream = FRAMES[0] + exception_frame("internalServerException", "account 123456789012 broke") + FRAMES[1]
    assert decoder.feed(stream) == sse(EVENTS[0]) + UPSTREAM_ERROR
    assert decoder.ended
    assert decoder.failure == "internalServerException: account 123456789012 broke"
    assert b"123456789012" not in UPSTREAM_ERROR
    assert decoder.feed(FRAMES[2]) == b""
    assert decoder.feed(b"any garbage at all") == b""
    assert not decoder.mid_frame


def test_exception_split_across_feeds() -> None:
    frame = exception_frame("throttlingException", "slow down")
    decoder = EventStreamSse()
    assert decoder.feed(frame[:30]) == b""
    assert decoder.feed(frame[30:]) == UPSTREAM_ERROR
    assert decoder.failure == "throttlingException: slow down"


def test_exception_whose_payload_is_not_json_keeps_its_text() -> None:
    headers = {":message-type": "exception", ":exception-type": "modelStreamErrorException"}
    decoder = EventStreamSse()
    assert decoder.feed(encode_frame(headers, b"plain words")) == UPSTREAM_ERROR
    assert decoder.failure == "modelStreamErrorException: plain words"


def test_capitalised_message_member() -> None:
    headers = {":message-type": "exception", ":exception-type": "validationException"}
    decoder = EventStreamSse()
    decoder.feed(encode_frame(headers, b'{"Message":"bad"}'))
    assert decoder.failure == "validationException: bad"


def test_error_frame() -> None:
    headers = {":message-type": "error", ":error-code": "InternalFailure", ":error-message": "oops"}
    decoder = EventStreamSse()
    assert decoder.feed(encode_frame(headers, b"")) == UPSTREAM_ERROR
    assert decoder.failure == "InternalFailure: oops"


@pytest.mark.parametrize(
    "headers",
    [
        {":message-type": "event", ":event-type": "initial-response"},
        {":message-type": "event"},
        {":message-type": "surprise", ":event-type": "chunk"},
        {},
    ],
)
def test_anything_but_a_chunk_event_ends_the_stream(headers: dict[str, str]) -> None:
    decoder = EventStreamSse()
    assert decoder.feed(encode_frame(headers, b"{}")) == UPSTREAM_ERROR
    assert decoder.ended
    assert decoder.failure and decoder.failure.startswith("unexpected")


def test_failure_text_is_capped() -> None:
    decoder = EventStreamSse()
    decoder.feed(exception_frame("internalServerException", "x" * 100_000))
    assert decoder.failure is not None and len(decoder.failure) < 2100


# ---------------------------------------------------------------- broken frames


def test_stream_corrupt_is_the_upstreams_fault() -> None:
    assert issubclass(StreamCorrupt, Fault)
    assert StreamCorrupt.fault is Party.UPSTREAM


def test_message_checksum_mismatch() -> None:
    decoder = EventStreamSse()
    assert decoder.feed(FRAMES[0]) == sse(EVENTS[0])
    with pytest.raises(StreamCorrupt, match="message checksum") as caught:
        decoder.feed(corrupt(FRAMES[1]))
    assert caught.value.before == b""


def test_good_frames_ahead_of_a_broken_one_are_kept_and_nothing_follows() -> None:
    decoder = EventStreamSse()
    with pytest.raises(StreamCorrupt) as caught:
        decoder.feed(FRAMES[0] + FRAMES[1] + corrupt(FRAMES[2]) + FRAMES[3])
    assert caught.value.before == sse(EVENTS[0]) + sse(EVENTS[1])
    assert decoder.ended and decoder.failure == "event stream message checksum mismatch"
    assert not decoder.mid_frame
    assert decoder.feed(FRAMES[4]) == b""


def test_payload_byte_flipped() -> None:
    frame = bytearray(FRAMES[2])
    frame[len(frame) // 2] ^= 0x01
    with pytest.raises(StreamCorrupt, match="message checksum"):
        EventStreamSse().feed(bytes(frame))


def test_prelude_checksum_mismatch() -> None:
    frame = bytearray(FRAMES[0])
    frame[9] ^= 0xFF
    with pytest.raises(StreamCorrupt, match="prelude checksum"):
        EventStreamSse().feed(bytes(frame))


def test_garbage_is_refused_at_the_prelude() -> None:
    with pytest.raises(StreamCorrupt):
        EventStreamSse().feed(b'{"type":"message_start"}')


def test_oversize_declared_length_is_refused_before_the_payload_arrives() -> None:
    prelude = struct.pack("!II", MAX_FRAME_BYTES + 1, 0)
    with pytest.raises(StreamCorrupt, match="exceeds"):
        EventStreamSse().feed(prelude + struct.pack("!I", zlib.crc32(prelude)))


def test_the_cap_is_configurable() -> None:
    decoder = EventStreamSse(max_frame=len(FRAMES[0]))
    assert decoder.feed(FRAMES[0]) == sse(EVENTS[0])
    with pytest.raises(StreamCorrupt, match="exceeds"):
        decoder.feed(chunk_frame(EVENTS[0] + b" " * 10))


def test_length_too_short_for_its_headers() -> None:
    prelude = struct.pack("!II", 20, 100)
    with pytest.raises(StreamCorrupt, match="cannot hold"):
        EventStreamSse().feed(prelude + struct.pack("!I", zlib.crc32(prelude)) + b"\0" * 8)


@pytest.mark.parametrize(
    "headers",
    [
        b"\x0b:event-type\x07\x00\x50chunk",  # value length runs past the headers
        b"\x0b:event-type\x0f\x00\x05chunk",  # no value type 15
        b"\x40:event-type",  # name runs past the headers
        b"\x02\xff\xfe\x07\x00\x00",  # name is not UTF-8
    ],
)
def test_malformed_headers(headers: bytes) -> None:
    with pytest.raises(StreamCorrupt, match="headers"):
        EventStreamSse().feed(raw_frame(headers, b"{}"))


CHUNK_HEADERS = string_header(":event-type", "chunk") + string_header(":message-type", "event")


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'{"p":"no bytes member"}',
        b'{"bytes":"!!not base64!!"}',
        chunk_payload(b"not json inside"),
        chunk_payload(b'{"no":"type"}'),
        chunk_payload(b'{"type":7}'),
        chunk_payload(b'{"type":"a\\nevent: forged"}'),
        chunk_payload(b'{"type":""}'),
    ],
)
def test_a_chunk_that_is_not_an_event(payload: bytes) -> None:
    with pytest.raises(StreamCorrupt, match="chunk"):
        EventStreamSse().feed(raw_frame(CHUNK_HEADERS, payload))
