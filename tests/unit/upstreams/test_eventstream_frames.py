"""The fake Bedrock's event-stream frames, checked by botocore's own decoder."""

from __future__ import annotations

import base64
import json

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from protocol_spec.fakes.eventstream import chunk_frame, corrupt, encode_frame, exception_frame


def _decode(data: bytes) -> list:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return list(buffer)


def test_frame_round_trips_through_botocore() -> None:
    headers = {":event-type": "chunk", "x-empty": "", "x-unicode": "é☃"}
    (message,) = _decode(encode_frame(headers, b"payload bytes"))
    assert message.headers == headers
    assert message.payload == b"payload bytes"


def test_empty_payload_and_no_headers() -> None:
    (message,) = _decode(encode_frame({}, b""))
    assert message.headers == {}
    assert message.payload == b""


def test_chunk_frame_carries_the_event_in_base64() -> None:
    event = b'{"type":"message_stop"}'
    (message,) = _decode(chunk_frame(event))
    assert message.headers == {
        ":event-type": "chunk",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert base64.b64decode(json.loads(message.payload)["bytes"]) == event


def test_exception_frame() -> None:
    (message,) = _decode(exception_frame("internalServerException", "boom"))
    assert message.headers[":message-type"] == "exception"
    assert message.headers[":exception-type"] == "internalServerException"
    assert json.loads(message.payload) == {"message": "boom"}
    assert message.to_response_dict()["status_code"] == 400


def test_frames_concatenate() -> None:
    stream = chunk_frame(b'{"type":"a"}') + chunk_frame(b'{"type":"b"}')
    assert len(_decode(stream)) == 2


def test_corrupt_frame_is_refused() -> None:
    with pytest.raises(ChecksumMismatch):
        _decode(corrupt(chunk_frame(b'{"type":"ping"}')))
