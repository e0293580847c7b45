"""The canned replies of load_test_mode, as bytes: SSE framing, sizes, the pacing schedule,
and the developer numbers of ``x-load-test-user`` (SPEC MSG-50, MSG-52)."""

from __future__ import annotations

import json

import pytest

from gateway.http.load_test import paced
from gateway.upstreams import load_test
from gateway.upstreams.load_test import CHARS_PER_TOKEN, MIN_TICK_S, canned, filler_text
from gateway.upstreams.sse import UsageTap

ORDER_HEAD = ["message_start", "content_block_start"]
ORDER_TAIL = ["content_block_stop", "message_delta", "message_stop"]


def events(stream: bytes) -> list[tuple[str, dict]]:
    """Every SSE event in ``stream``, checked for framing on the way: each ends in a blank
    line, has exactly an ``event:`` and a ``data:`` line, and names its own type."""
    assert stream.endswith(b"\n\n")
    out = []
    for block in stream[:-2].split(b"\n\n"):
        lines = block.split(b"\n")
        assert len(lines) == 2 and lines[0].startswith(b"event: ") and lines[1].startswith(b"data: "), block
        name, data = lines[0][7:].decode(), json.loads(lines[1][6:])
        assert data["type"] == name
        out.append((name, data))
    return out


def whole(c: load_test.Canned) -> bytes:
    return b"".join(part for _, part in c.stream)


@pytest.mark.parametrize("tokens", [1, 2, 7, 750, 4096])
@pytest.mark.parametrize("seconds", [0.0, 0.01, 9.5])
def test_the_stream_is_valid_sse_in_the_messages_order(tokens: int, seconds: float) -> None:
    evs = events(whole(canned(tokens, seconds)))
    names = [n for n, _ in evs]
    assert names[:2] == ORDER_HEAD and names[-3:] == ORDER_TAIL
    assert set(names[2:-3]) == {"content_block_delta"}
    start = evs[0][1]["message"]
    assert (start["id"], start["model"], start["usage"]) == ("msg_loadtest", "load-test", {"input_tokens": 0, "output_tokens": 0})
    assert evs[-2][1]["delta"]["stop_reason"] == "end_turn" and evs[-2][1]["usage"] == {"output_tokens": 0}


@pytest.mark.parametrize("tokens", [1, 3, 750, 100_000])
def test_the_text_is_about_reply_tokens_long_and_the_same_in_both_shapes(tokens: int) -> None:
    c = canned(tokens, 0)
    body = json.loads(c.json_body)
    text = body["content"][0]["text"]
    # Four characters to a token, cut back to a whole word: never more, at most a word less.
    assert tokens * CHARS_PER_TOKEN - 16 <= len(text) <= tokens * CHARS_PER_TOKEN
    streamed = "".join(d["delta"]["text"] for n, d in events(whole(c)) if n == "content_block_delta")
    assert streamed == text
    assert (body["id"], body["model"], body["type"], body["role"]) == ("msg_loadtest", "load-test", "message", "assistant")
    assert body["usage"] == {"input_tokens": 0, "output_tokens": 0} and body["stop_reason"] == "end_turn"


def test_the_filler_says_it_is_canned() -> None:
    assert "canned reply" in filler_text(750) and "load-test mode" in filler_text(750)
    assert filler_text(1)  # never empty


def test_the_default_reply_is_250_deltas_and_the_usage_tap_reads_zero() -> None:
    c = canned(750, 9.5)
    assert sum(1 for n, _ in events(whole(c)) if n == "content_block_delta") == 250
    tap = UsageTap()
    tap.feed(whole(c))
    totals = tap.totals()
    assert (totals.input_tokens, totals.output_tokens) == (0, 0)


def test_zero_seconds_is_one_write_of_everything() -> None:
    c = canned(750, 0)
    assert len(c.stream) == 1 and c.stream[0][0] == 0.0


@pytest.mark.parametrize(("tokens", "seconds"), [(750, 9.5), (3, 9.5), (100_000, 600), (750, 0.05), (750, 0.001)])
def test_the_schedule_spreads_the_deltas_over_reply_seconds(tokens: int, seconds: float) -> None:
    stream = canned(tokens, seconds).stream
    offsets = [due for due, _ in stream]
    assert offsets[0] == 0.0 and offsets == sorted(offsets)
    assert offsets[-1] == pytest.approx(seconds)
    gaps = [b - a for a, b in zip(offsets[1:], offsets[2:], strict=False)]
    # Evenly spaced, and never closer than one tick unless the whole reply is shorter than that.
    assert all(g == pytest.approx(gaps[0]) for g in gaps)
    assert all(g >= MIN_TICK_S - 1e-9 for g in gaps) or seconds < MIN_TICK_S
    assert len(stream) - 1 <= max(1, seconds / MIN_TICK_S)
    # The opening goes out at once, alone; the closing rides with the last deltas.
    assert events(stream[0][1])[-1][0] == "content_block_start"
    assert events(stream[-1][1])[-1][0] == "message_stop"


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


async def test_paced_writes_each_part_when_it_is_due_from_the_start() -> None:
    t = FakeTime()
    written: list[tuple[float, bytes]] = []

    async def write(data: bytes) -> None:
        written.append((t.now, data))
        t.now += 0.003  # every write takes a little time: it must not push the schedule back

    stream = canned(750, 9.5).stream
    await paced(write, stream, clock=t.clock, sleep=t.sleep)
    assert b"".join(d for _, d in written) == whole(canned(750, 9.5))
    assert [round(at - 100.0, 6) for at, _ in written] == [round(due, 6) for due, _ in stream]
    # The time the writes took came off the sleeps, not on top of them.
    assert sum(t.slept) + 0.003 * (len(stream) - 1) == pytest.approx(9.5)


async def test_paced_with_nothing_to_wait_for_never_sleeps() -> None:
    t = FakeTime()
    written: list[bytes] = []

    async def write(data: bytes) -> None:
        written.append(data)

    await paced(write, canned(50, 0).stream, clock=t.clock, sleep=t.sleep)
    assert t.slept == [] and len(written) == 1


@pytest.mark.parametrize(("header", "number"), [("7", 7), ("0007", 7), (" 42 ", 42), ("9999999", 9_999_999), ("0", 0)])
def test_a_load_test_user_is_a_number_of_up_to_seven_digits(header: str, number: int) -> None:
    assert load_test.user_number(header) == number
    assert load_test.user_sub(number) == f"load-test-user-{number}"
    assert load_test.user_email(number) == f"load-test-user-{number}@load-test.invalid"


@pytest.mark.parametrize("header", ["", "12345678", "-1", "+1", "1.5", "abc", "1e3", "٣", "1 2"])
def test_anything_else_is_refused(header: str) -> None:
    with pytest.raises(load_test.BadLoadTestUser, match="at most 7 digits"):
        load_test.user_number(header)
