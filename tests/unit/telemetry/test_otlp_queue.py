"""The export queue's byte bound, the outcome table and the retry delays."""

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from gateway.telemetry.queue import (
    RETRY_AFTER_MAX_S,
    Backoff,
    Export,
    ExportQueue,
    Outcome,
    classify,
    classify_grpc,
    parse_retry_after,
    worth_logging,
)


def export(n: int, size: int = 10) -> Export:
    return Export("metrics", bytes([n % 256]) * size, "application/x-protobuf", None)


def test_fifo_within_the_bound():
    q = ExportQueue(100)
    for i in range(5):
        assert q.push(export(i)) == []
    assert (len(q), q.bytes) == (5, 50)
    assert [q.pop().body[0] for _ in range(5)] == [0, 1, 2, 3, 4]
    assert q.bytes == 0


def test_a_full_queue_drops_the_oldest_first():
    q = ExportQueue(30)
    for i in range(3):
        q.push(export(i))
    dropped = q.push(export(3, size=15))
    assert [d.body[0] for d in dropped] == [0, 1]
    assert q.bytes == 25 and [q.pop().body[0] for _ in range(len(q))] == [2, 3]


def test_a_payload_bigger_than_the_bound_is_dropped_alone():
    q = ExportQueue(30)
    q.push(export(0))
    big = export(1, size=31)
    assert q.push(big) == [big]
    assert (len(q), q.bytes) == (1, 10)


def test_an_empty_body_is_kept():
    q = ExportQueue(10)
    assert q.push(export(0, size=0)) == []
    assert len(q) == 1 and q.bytes == 0


def test_a_payload_put_back_is_first_again_or_dropped_as_the_oldest():
    q = ExportQueue(30)
    q.push(export(1))
    retried = export(0)
    assert q.push_front(retried) == []
    assert q.pop() is retried
    q.push(export(2))
    q.push(export(3))  # full now: 1, 2, 3
    assert q.push_front(retried) == [retried]
    assert [q.pop().body[0] for _ in range(3)] == [1, 2, 3]


def test_clear_returns_what_was_left():
    q = ExportQueue(100)
    q.push(export(0))
    q.push(export(1))
    assert [e.body[0] for e in q.clear()] == [0, 1]
    assert (len(q), q.bytes) == (0, 0)


def test_the_bound_must_be_positive():
    with pytest.raises(ValueError):
        ExportQueue(0)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED), (202, Outcome.DELIVERED), (204, Outcome.DELIVERED),
        (400, Outcome.REJECTED), (413, Outcome.REJECTED), (415, Outcome.REJECTED),
        (422, Outcome.REJECTED), (431, Outcome.REJECTED),
        (408, Outcome.FAILED), (429, Outcome.FAILED), (500, Outcome.FAILED), (502, Outcome.FAILED),
        (503, Outcome.FAILED), (504, Outcome.FAILED), (401, Outcome.FAILED), (404, Outcome.FAILED),
        (301, Outcome.FAILED), (None, Outcome.FAILED),
    ],
)
def test_outcomes(status, outcome):
    assert classify(status) is outcome


def test_logged_first_and_every_hundredth():
    assert [n for n in range(1, 302) if worth_logging(n)] == [1, 100, 200, 300]


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half():
    b = Backoff(initial_s=0.5, cap_s=30.0)
    assert [b.delay(n, 1.0) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert [b.delay(n, 0.0) for n in (1, 2, 7)] == [0.25, 0.5, 15.0]
    assert b.delay(10_000, 0.5) == 22.5  # no overflow after a long outage


def test_retry_after_wins_within_its_bound():
    b = Backoff()
    assert b.wait(1, 0.0, 7.0) == 7.0
    assert b.wait(1, 0.0, 3600.0) == RETRY_AFTER_MAX_S
    assert b.wait(1, 0.0, -5.0) == 0.0
    assert b.wait(3, 1.0, None) == 2.0


def test_retry_after_parses_seconds_and_http_dates():
    now = datetime(2026, 12, 7, 20, 0, 0, tzinfo=UTC)
    assert parse_retry_after("12", now) == 12.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=42), usegmt=True), now) == 42.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=42), usegmt=True), now) == 0.0
    for bad in (None, "", "soon", "-3", "1.5", "Mon, 99 Foo 2026 00:00:00 GMT"):
        assert parse_retry_after(bad, now) is None


def test_grpc_codes_follow_the_otlp_table():
    assert classify_grpc("OK") is Outcome.DELIVERED
    for code in ("CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS"):
        assert classify_grpc(code) is Outcome.FAILED
    # Credential refusals are kept and retried, as 401 and 403 are over HTTP.
    assert classify_grpc("UNAUTHENTICATED") is classify_grpc("PERMISSION_DENIED") is Outcome.FAILED
    for code in (
        "UNKNOWN", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION", "UNIMPLEMENTED", "INTERNAL",
    ):
        assert classify_grpc(code) is Outcome.REJECTED
    # RESOURCE_EXHAUSTED is a throttle only when the collector says when to come back;
    # without a RetryInfo it is a message over the collector's size limit.
    assert classify_grpc("RESOURCE_EXHAUSTED") is Outcome.REJECTED
    assert classify_grpc("RESOURCE_EXHAUSTED", has_retry_info=True) is Outcome.FAILED
