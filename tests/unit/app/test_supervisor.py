"""Restart policy and exit descriptions of the ``--workers N`` supervisor (gateway.app.supervisor)."""

import signal

from gateway.app.supervisor import Backoff, after_death, describe_exit

POLICY = Backoff(first_s=0.5, cap_s=30.0, settled_s=10.0)


def delays(lifetimes: list[float]) -> list[float]:
    streak, out = 0, []
    for lived in lifetimes:
        streak, delay = after_death(streak, lived, POLICY)
        out.append(delay)
    return out


def test_quick_deaths_double_the_wait_up_to_the_cap():
    assert delays([0.2] * 9) == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_a_worker_that_served_a_while_starts_a_fresh_streak():
    assert delays([0.2, 0.2, 0.2, 60.0, 0.2]) == [0.5, 1, 2, 0.5, 1]
    # Exactly settled_s counts as having served.
    assert after_death(5, 10.0, POLICY) == (1, 0.5)


def test_the_streak_feeds_the_warning_threshold():
    streak = 0
    for _ in range(3):
        streak, _delay = after_death(streak, 0.0, POLICY)
    assert streak == POLICY.warn_after


def test_a_very_long_streak_stays_at_the_cap_without_overflow():
    assert after_death(10_000, 0.0, POLICY) == (10_001, 30.0)


def test_exit_descriptions():
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(1 << 8) == "exit code 1"
    assert describe_exit(signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(signal.SIGSEGV) == "killed by SIGSEGV"
