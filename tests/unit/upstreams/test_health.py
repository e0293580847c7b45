"""The per-replica health memory: skip an upstream after transport failures, probe it back in."""

from gateway.upstreams.health import Health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def health(**kw) -> tuple[Health, Clock]:
    clock = Clock()
    return Health(("primary", "secondary"), threshold=3, base_s=5, max_s=20, clock=clock, **kw), clock


def test_an_upstream_is_skipped_only_after_failures_in_a_row():
    h, _ = health()
    assert h.failed(0) is None and h.failed(0) is None
    assert h.admit(0)
    line = h.failed(0)
    assert line is not None and "primary" in line and "5s" in line
    assert not h.admit(0)
    assert h.admit(1)  # the others are untouched


def test_a_success_in_between_resets_the_count():
    h, _ = health()
    h.failed(0)
    h.failed(0)
    h.succeeded(0)
    h.failed(0)
    h.failed(0)
    assert h.admit(0)


def test_after_the_cooldown_exactly_one_request_probes():
    h, clock = health()
    for _ in range(3):
        h.failed(0)
    clock.now += 5
    assert h.admit(0)  # the probe
    assert not h.admit(0)  # everyone else still skips while it runs
    assert h.detail()["primary"]["state"] == "probing"
    assert h.succeeded(0) == "upstream primary answered again; no longer skipped"
    assert h.admit(0) and h.admit(0)
    assert h.detail()["primary"] == {"state": "ok", "failures_in_a_row": 0}


def test_a_failed_probe_doubles_the_cooldown_up_to_the_cap():
    h, clock = health()
    for _ in range(3):
        h.failed(0)
    waits = []
    for _ in range(4):
        clock.now += 100
        assert h.admit(0)
        line = h.failed(0)
        waits.append(line.split("for ")[1].split("s ")[0])
    assert waits == ["10", "20", "20", "20"]


def test_a_probe_without_a_verdict_frees_the_probe_slot():
    h, clock = health()
    for _ in range(3):
        h.failed(0)
    clock.now += 5
    assert h.admit(0)
    h.released(0)  # the client went away mid-attempt
    assert h.admit(0)


def test_switched_off_nothing_is_ever_skipped():
    h, _ = health(enabled=False)
    for _ in range(10):
        assert h.failed(0) is None
    assert h.admit(0)
    assert h.detail()["primary"]["state"] == "ok"


def test_detail_says_how_long_until_the_next_probe():
    h, clock = health()
    for _ in range(3):
        h.failed(1)
    clock.now += 2
    assert h.detail()["secondary"] == {"state": "cooling", "failures_in_a_row": 3, "retry_in_s": 3.0}
