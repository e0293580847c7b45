"""gateway.spend.budget: the learned output allowance, top-up steps and where a stream is cut.

tests/unit/spend/test_caps.py has the first checks (nearest-rank p95, the LRU bound,
asking once per step); these cover the edges around them.
"""

from __future__ import annotations

import pytest

from gateway.spend.budget import AllowanceTracker, StreamBudget

# ---------------------------------------------------------------- allowance


def test_without_history_the_fallback_is_reserved_capped_by_max_tokens():
    t = AllowanceTracker()
    assert t.p95("u", "m") is None
    assert t.allowance("u", "m", None, 4096) == 4096
    assert t.allowance("u", "m", 100_000, 4096) == 4096
    assert t.allowance("u", "m", 1000, 4096) == 1000
    assert t.allowance("u", "m", 0, 4096) == 0


def test_a_negative_max_tokens_is_ignored_not_used_as_a_cap():
    t = AllowanceTracker()
    t.observe("u", "m", 300)
    assert t.allowance("u", "m", -1, 4096) == 300
    assert t.allowance("new", "m", -5, 4096) == 4096


def test_history_replaces_the_fallback_even_above_it():
    t = AllowanceTracker()
    t.observe("u", "m", 9000)
    assert t.allowance("u", "m", None, 4096) == 9000
    assert t.allowance("u", "m", 8000, 4096) == 8000


def test_allowances_are_per_person_and_model():
    t = AllowanceTracker()
    t.observe("alice", "opus", 700)
    t.observe("alice", "haiku", 30)
    t.observe("bob", "opus", 5)
    assert [t.p95("alice", "opus"), t.p95("alice", "haiku"), t.p95("bob", "opus"), t.p95("bob", "haiku")] == [
        700,
        30,
        5,
        None,
    ]


def test_the_window_forgets_the_oldest_sample():
    t = AllowanceTracker(window=4)
    for tokens in (10_000, 1, 2, 3):
        t.observe("u", "m", tokens)
    assert t.p95("u", "m") == 10_000  # nearest rank of 4 samples is the largest
    t.observe("u", "m", 4)
    assert t.p95("u", "m") == 4  # the outlier slid out of the window


def test_duplicate_samples_leave_the_window_one_at_a_time():
    t = AllowanceTracker(window=3)
    for tokens in (5, 5, 5, 9):
        t.observe("u", "m", tokens)
    assert t.p95("u", "m") == 9
    for _ in range(3):
        t.observe("u", "m", 5)
    assert t.p95("u", "m") == 5


def test_a_new_sample_updates_a_p95_already_read():
    t = AllowanceTracker()
    t.observe("u", "m", 100)
    assert t.p95("u", "m") == 100
    t.observe("u", "m", 200)
    assert t.p95("u", "m") == 200


def test_observing_a_key_again_keeps_it_from_eviction():
    t = AllowanceTracker(max_keys=2)
    t.observe("a", "m", 1)
    t.observe("b", "m", 2)
    t.observe("a", "m", 3)  # a is now the most recently used
    t.observe("c", "m", 4)
    assert len(t) == 2
    assert t.p95("b", "m") is None and t.p95("a", "m") == 3 and t.p95("c", "m") == 4


def test_seed_is_observing_the_rows_in_order():
    rows = [("u", "m", n) for n in (50, 10, 4000, 20, 30)] + [("v", "m", 7)]
    seeded, observed = AllowanceTracker(window=4), AllowanceTracker(window=4)
    seeded.seed(rows)
    for sub, model, tokens in rows:
        observed.observe(sub, model, tokens)
    assert [seeded.p95("u", "m"), seeded.p95("v", "m")] == [observed.p95("u", "m"), observed.p95("v", "m")]
    assert seeded.p95("u", "m") == 4000


# ---------------------------------------------------------------- top-up steps


def test_a_step_is_at_least_one_token():
    assert StreamBudget(10, 0).step == 1
    assert StreamBudget(10, -5).step == 1


def test_asking_ahead_starts_exactly_half_a_step_before_the_grant():
    b = StreamBudget(granted_tokens=4096, step_tokens=2048)
    assert b.want(3071) == 0
    assert not b.pending
    assert b.want(3072) == 2048 and b.pending


def test_a_pending_step_blocks_another_until_answered():
    b = StreamBudget(granted_tokens=100, step_tokens=100)
    assert b.want(60) == 100
    assert b.want(150) == 0
    b.answer(100, True)
    assert not b.pending and b.granted == 200
    assert b.want(150) == 100


def test_a_refused_step_is_final_for_the_stream():
    b = StreamBudget(granted_tokens=100, step_tokens=100)
    assert b.want(60) == 100
    b.answer(100, False)
    assert b.denied and not b.pending and b.granted == 100
    assert b.want(10_000) == 0


def test_without_asking_ahead_a_stream_asks_only_once_past_its_grant():
    b = StreamBudget(granted_tokens=1000, step_tokens=400, ahead=False)
    assert b.want(999) == 0 and b.want(1000) == 0
    assert b.want(1001) == 400 + 1


def test_a_burst_past_the_grant_is_caught_up_but_never_past_the_ceiling():
    b = StreamBudget(granted_tokens=100, step_tokens=50, ceiling=120)
    assert b.want(400) == 20
    b.answer(20, True)
    assert b.final() and b.want(10_000) == 0 and not b.over(10_000)


def test_a_grant_already_at_or_above_the_ceiling_is_final():
    for granted in (500, 501):
        b = StreamBudget(granted_tokens=granted, step_tokens=100, ceiling=500)
        assert b.final() and b.want(10_000) == 0 and not b.over(10_000)
    assert not StreamBudget(granted_tokens=10**9, step_tokens=100).final()


# ---------------------------------------------------------------- where a stream is cut


def test_over_means_strictly_past_the_grant():
    b = StreamBudget(granted_tokens=1000, step_tokens=400)
    assert not b.over(1000) and b.over(1001)


def run(b: StreamBudget, chunk: int, until: int, grant: bool) -> tuple[list[int], int | None]:
    """Feed ``b`` a stream growing by ``chunk`` tokens, answering each ask at once.

    Returns the output counts at which a step was asked and the first count
    that was over the grant (the cut point with cut_streams_at_cap), or None.
    """
    asked: list[int] = []
    for output in range(chunk, until + 1, chunk):
        tokens = b.want(output)
        if tokens:
            asked.append(output)
            b.answer(tokens, grant)
        if b.over(output):
            return asked, output
    return asked, None


def test_a_stream_whose_steps_are_granted_is_never_over():
    b = StreamBudget(granted_tokens=1000, step_tokens=400)
    asked, cut = run(b, chunk=50, until=10_000, grant=True)
    assert cut is None and b.granted >= 10_000
    assert asked[0] == 800  # half a step (200) before the first grant ran out


def test_a_refused_step_is_known_before_the_grant_runs_out_and_the_cut_comes_right_after_it():
    b = StreamBudget(granted_tokens=1000, step_tokens=400)
    asked, cut = run(b, chunk=50, until=10_000, grant=False)
    assert asked == [800]
    assert cut == 1050  # the first chunk past the 1000 granted


def test_a_stream_reaching_max_tokens_is_never_cut():
    b = StreamBudget(granted_tokens=1000, step_tokens=400, ceiling=1200)
    asked, cut = run(b, chunk=50, until=5000, grant=True)
    # One step, trimmed to the ceiling; then the upstream cannot write more, whatever the estimate says.
    assert asked == [800] and b.granted == 1200 and cut is None


@pytest.mark.parametrize("grant", [True, False])
def test_without_asking_ahead_the_first_ask_comes_after_the_grant(grant):
    b = StreamBudget(granted_tokens=1000, step_tokens=400, ahead=False)
    asked, cut = run(b, chunk=50, until=3000, grant=grant)
    assert asked[0] == 1050
    # Granted: caught up by the burst, never over again. Refused: over from that chunk.
    assert cut == (None if grant else 1050)
