"""What a destination's sender keeps and when it tries again: a FIFO bounded in
bytes, the outcome of one delivery, and the retry delays.

Beyond Anthropic's gateway, which tries each export once and then pauses a
failing destination for 30 s (reference §9.1, "Failure handling"), Gatehouse
keeps what fits and retries it in order:

* the queue holds at most ``max_bytes`` of payload; a push that would exceed it
  drops the oldest payloads first (a collector wants recent data more than old),
  and a payload bigger than the whole bound is dropped on its own. Every drop is
  counted by the caller from what :meth:`ExportQueue.push` returns;
* a payload the sender is retrying goes back to the head of the queue while it
  waits, so it is still the oldest and the first one a full queue drops;
* 2xx is delivered; 400, 413, 415, 422 and 431 say the payload itself is wrong
  and are never retried (the reference's payload rejections); everything else —
  408, 429, 5xx, other statuses, refused or broken connections, timeouts — is a
  failure, retried with capped exponential backoff and jitter, or after the
  collector's ``Retry-After`` (bounded) when it sent one;
* over gRPC the status codes the OTLP specification calls retryable
  (CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS)
  are failures, after the collector's RetryInfo delay when it gave one;
  RESOURCE_EXHAUSTED is one only with a RetryInfo (without, it means the
  message is over the collector's size limit, which no retry cures); every
  other code is a rejection, and so is an export that cannot be made into an
  OTLP request at all (see :mod:`gateway.telemetry.otlp_body`).

Delivery is at least once: a collector that stored a payload but failed to
answer gets it again.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

# A collector restart takes seconds to a minute; 64 MiB holds several minutes of
# exports from thousands of clients (a CLI sends a few kB per minute) without
# letting one dead destination take the process's memory.
DEFAULT_MAX_QUEUE_BYTES = 64 * 1024 * 1024
REJECTED_STATUSES = frozenset({400, 413, 415, 422, 431})
# The longest wait a collector's Retry-After can impose: it may ask for hours,
# and the queue is filling meanwhile.
RETRY_AFTER_MAX_S = 60.0


@dataclass(frozen=True, slots=True)
class Export:
    """One client export, kept as received: the bytes are sent verbatim."""

    signal: str
    body: bytes
    content_type: str | None
    content_encoding: str | None

    @property
    def size(self) -> int:
        return len(self.body)


class ExportQueue:
    """FIFO of exports bounded by the sum of their body sizes."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_QUEUE_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: deque[Export] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def push(self, export: Export) -> list[Export]:
        """Append ``export``; return what was dropped to make room (oldest first),
        or ``[export]`` itself when it alone exceeds the bound."""
        if export.size > self.max_bytes:
            return [export]
        dropped = self._make_room(export.size)
        self._items.append(export)
        self.bytes += export.size
        return dropped

    def push_front(self, export: Export) -> list[Export]:
        """Put back a payload being retried. It is the oldest, so when the queue
        filled up meanwhile it is the one dropped."""
        if self.bytes + export.size > self.max_bytes:
            return [export]
        self._items.appendleft(export)
        self.bytes += export.size
        return []

    def pop(self) -> Export:
        export = self._items.popleft()
        self.bytes -= export.size
        return export

    def clear(self) -> list[Export]:
        left = list(self._items)
        self._items.clear()
        self.bytes = 0
        return left

    def _make_room(self, size: int) -> list[Export]:
        dropped = []
        while self.bytes + size > self.max_bytes:
            dropped.append(self.pop())
        return dropped


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    REJECTED = "rejected"  # the payload is wrong; retrying cannot help
    FAILED = "failed"  # the destination is; retry later


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one try at delivering an export came to."""

    outcome: Outcome
    detail: str  # for the log line: the status and the start of the collector's answer
    retry_after_s: float | None = None  # the collector's own wait (Retry-After, RetryInfo)
    partial: bool = False  # delivered, but the collector refused some items (OTLP partial_success)


# The OTLP specification's table ("OTLP/gRPC Response", "Failures"), by StatusCode name,
# plus the two credential codes: the HTTP path retries 401 and 403 (only the payload
# rejections of REJECTED_STATUSES are final), and an export kept while a collector's
# credential is rotated or a Google token is refreshed is the point of the queue.
RETRYABLE_GRPC_CODES = frozenset(
    {"CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED", "PERMISSION_DENIED"}
)


def classify_grpc(code: str, has_retry_info: bool = False) -> Outcome:
    """The outcome of one gRPC Export call ending with status ``code`` (a
    ``grpc.StatusCode`` name); ``has_retry_info`` when the status carried a RetryInfo."""
    if code == "OK":
        return Outcome.DELIVERED
    if code in RETRYABLE_GRPC_CODES or (code == "RESOURCE_EXHAUSTED" and has_retry_info):
        return Outcome.FAILED
    return Outcome.REJECTED


def classify(status: int | None) -> Outcome:
    """The outcome of one delivery; ``None`` when no HTTP answer came (refused,
    reset, timed out, refused by the address guard)."""
    if status is None:
        return Outcome.FAILED
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in REJECTED_STATUSES:
        return Outcome.REJECTED
    return Outcome.FAILED


def worth_logging(count: int) -> bool:
    """Log the first occurrence and every 100th after it, not each one."""
    return count == 1 or count % 100 == 0


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": the n-th consecutive failure waits
    between half and all of ``min(cap, initial * factor**(n-1))``, so senders that
    failed together do not retry together, yet never retry at once."""

    initial_s: float = 0.5
    cap_s: float = 30.0
    factor: float = 2.0

    def delay(self, failures: int, rand: float) -> float:
        """``failures`` ≥ 1 in a row; ``rand`` uniform in [0, 1) from the caller's RNG."""
        ceiling = min(self.cap_s, self.initial_s * self.factor ** min(failures - 1, 64))
        return ceiling / 2 + ceiling / 2 * rand

    def wait(self, failures: int, rand: float, retry_after_s: float | None) -> float:
        """The wait before the next try: the collector's ``Retry-After`` when it
        gave one (bounded by :data:`RETRY_AFTER_MAX_S`), else :meth:`delay`."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), RETRY_AFTER_MAX_S)
        return self.delay(failures, rand)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from ``now`` that a ``Retry-After`` value asks for (delta-seconds
    or an HTTP date, RFC 9110 §10.2.3), or None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None or now.tzinfo is None:
        return None
    return max((when - now).total_seconds(), 0.0)
