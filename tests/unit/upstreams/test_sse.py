"""The usage tap reads usage off relayed bytes however they are chunked."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.upstreams.sse import DELTA_ENVELOPE_BYTES, UsageTap, json_usage


def event(name: str, payload: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


START = event(
    "message_start",
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "usage": {
                "input_tokens": 12,
                "output_tokens": 1,
                "cache_creation_input_tokens": 30,
                "cache_read_input_tokens": 40,
                "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20},
            },
        },
    },
)
PING = event("ping", {"type": "ping"})
DELTA = event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x" * 37}})
MD1 = event("message_delta", {"type": "message_delta", "usage": {"output_tokens": 5}})
MD2 = event("message_delta", {"type": "message_delta", "usage": {"output_tokens": 9, "input_tokens": 13}})
STOP = event("message_stop", {"type": "message_stop"})
STREAM = START + PING + b": keep-alive\n\n" + DELTA + DELTA + MD1 + MD2 + STOP


def run(chunks):
    tap = UsageTap()
    for c in chunks:
        tap.feed(c)
    return tap.totals()


def test_later_deltas_override_not_add():
    t = run([STREAM])
    assert (t.input_tokens, t.output_tokens) == (13, 9)
    assert (t.cache_creation_input_tokens, t.cache_creation_5m, t.cache_creation_1h, t.cache_read_input_tokens) == (30, 10, 20, 40)
    assert not t.estimated


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=20))
def test_any_chunking_gives_the_same_usage(cuts):
    cuts = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)])]
    assert run(chunks) == run([STREAM])


def test_crlf_framing():
    assert run([STREAM.replace(b"\n", b"\r\n")]) == run([STREAM])


def test_cut_off_stream_estimates_output_from_delta_bytes():
    t = run([START + DELTA + DELTA])
    data_len = len(DELTA.split(b"data: ", 1)[1].rstrip(b"\n"))
    assert t.output_tokens == (2 * (data_len - DELTA_ENVELOPE_BYTES)) // 4  # the text only, not the JSON around it
    assert t.estimated
    assert t.input_tokens == 12


def test_mid_event_flag():
    tap = UsageTap()
    tap.feed(START + DELTA[:10])
    assert tap.mid_event
    tap.feed(DELTA[10:])
    assert not tap.mid_event


def test_json_usage():
    body = json.dumps({"id": "m", "usage": {"input_tokens": 3, "output_tokens": 4}}).encode()
    assert json_usage(body)[:2] == (3, 4)
    assert json_usage(b"not json").output_tokens == 0
