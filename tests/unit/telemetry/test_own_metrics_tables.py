"""The gateway's own metric tables (gateway/telemetry/own_metrics.py): values in, series out."""

from __future__ import annotations

import threading

from gateway.telemetry import own_metrics as om
from gateway.telemetry.own_metrics import Finished, OwnMetrics, Unmetered, Usage


def points(m: OwnMetrics, spec: om.Spec) -> dict[tuple[str, ...], float]:
    return {tuple(labels[k] for k in spec.labels): value for labels, value in m.points(spec)}


def request(**kw) -> Finished:
    base = dict(route="/v1/messages", status=200, model="claude-sonnet-4-6", upstream="primary", total_s=0.2)
    return Finished(**{**base, **kw})


def test_a_request_counts_once_by_route_status_model_and_upstream():
    m = OwnMetrics()
    m.observe_request(request())
    m.observe_request(request())
    m.observe_request(request(status=529, upstream=None))
    assert points(m, om.REQUESTS) == {
        ("/v1/messages", "200", "claude-sonnet-4-6", "primary"): 2,
        ("/v1/messages", "529", "claude-sonnet-4-6", ""): 1,
    }


def test_a_request_with_no_status_recorded_counts_as_500_and_one_without_a_model_as_empty():
    m = OwnMetrics()
    m.observe_request(request(status=0, model=None, upstream=None))
    assert points(m, om.REQUESTS) == {("/v1/messages", "500", "", ""): 1}


def test_histogram_buckets_are_upper_bounds_inclusive_with_sum_min_max():
    m = OwnMetrics()
    for seconds in (0.005, 0.0051, 0.7, 5000.0):  # on a bound, just above it, middle, above every bound
        m.observe_request(request(total_s=seconds))
    (point,) = m.histogram(om.REQUEST_DURATION)
    bounds = om.REQUEST_DURATION.bounds
    assert point.labels == {"route": "/v1/messages", "model": "claude-sonnet-4-6", "upstream": "primary"}
    assert len(point.buckets) == len(bounds) + 1
    assert point.buckets[0] == 1  # 0.005 <= 0.005
    assert point.buckets[bounds.index(0.01)] == 1
    assert point.buckets[bounds.index(1.0)] == 1
    assert point.buckets[-1] == 1  # above 600 s
    assert point.total == 4 and point.sum == 0.005 + 0.0051 + 0.7 + 5000.0
    assert (point.min, point.max) == (0.005, 5000.0)


def test_latencies_count_only_when_the_request_had_them():
    m = OwnMetrics()
    m.observe_request(request(headers_s=0.05))
    m.observe_request(request(first_byte_s=0.07))
    m.observe_request(request())
    assert [p.total for p in m.histogram(om.REQUEST_DURATION)] == [3]
    assert [p.total for p in m.histogram(om.UPSTREAM_HEADERS_DURATION)] == [1]
    (first_byte,) = m.histogram(om.FIRST_BYTE_DURATION)
    assert first_byte.total == 1 and first_byte.labels == {"model": "claude-sonnet-4-6", "upstream": "primary"}


def test_tokens_and_cost_by_model_and_group_never_by_user_unless_asked():
    m = OwnMetrics()
    m.observe_request(request(usage=Usage(10, 5, 0, 3), cost_usd=0.25, group="eng", user="ana@example.com"))
    m.observe_request(request(usage=Usage(1, 1), cost_usd=None))
    assert om.TOKENS.labels == ("model", "group", "type")
    assert points(m, om.TOKENS) == {
        ("claude-sonnet-4-6", "eng", "input"): 10,
        ("claude-sonnet-4-6", "eng", "output"): 5,
        ("claude-sonnet-4-6", "eng", "cache_write"): 3,
        ("claude-sonnet-4-6", "", "input"): 1,
        ("claude-sonnet-4-6", "", "output"): 1,
    }
    assert points(m, om.COST) == {("claude-sonnet-4-6", "eng"): 0.25}
    assert "ana@example.com" not in repr(m.points(om.TOKENS)) + repr(m.points(om.COST))


def test_by_user_adds_the_person_to_tokens_and_cost_only():
    m = OwnMetrics(by_user=True)
    m.observe_request(request(usage=Usage(10, 5), cost_usd=0.5, user="ana@example.com"))
    assert m.tokens.labels == ("model", "group", "type", "user")
    assert {labels["user"] for labels, _ in m.points(m.tokens)} == {"ana@example.com"}
    assert m.points(m.cost) == [({"model": "claude-sonnet-4-6", "group": "", "user": "ana@example.com"}, 0.5)]
    assert all("user" not in spec.labels for spec in m.specs if spec not in (m.tokens, m.cost))


def test_failovers_and_upstream_errors_by_kind():
    m = OwnMetrics()
    m.observe_request(
        request(upstream="backup", attempts=3, failures=(("primary", "status_529"), ("second", "upstream_connect")))
    )
    m.observe_request(request(attempts=1))
    assert points(m, om.FAILOVERS) == {("/v1/messages",): 2}
    assert points(m, om.UPSTREAM_ERRORS) == {("primary", "status_529"): 1, ("second", "upstream_connect"): 1}


def test_client_chosen_models_stop_making_series_past_the_bound():
    m = OwnMetrics()
    for i in range(om.MAX_LABEL_VALUES + 50):
        m.observe_request(request(model=f"made-up-{i}"))
    models = {labels["model"] for labels, _ in m.points(om.REQUESTS)}
    assert len(models) == om.MAX_LABEL_VALUES + 1 and om.OTHER in models
    assert dict((k["model"], v) for k, v in m.points(om.REQUESTS))[om.OTHER] == 50
    m.observe_request(request(model="made-up-0"))  # a value already seen keeps its own series
    assert dict((k["model"], v) for k, v in m.points(om.REQUESTS))["made-up-0"] == 2


def test_statements_time_by_name_and_count_failures():
    m = OwnMetrics()
    m.statement("insert_usage", 0.002, True)
    m.statement("insert_usage", 0.004, False)
    (point,) = m.histogram(om.DB_STATEMENT_DURATION)
    assert point.labels == {"statement": "insert_usage"} and point.total == 2
    assert points(m, om.DB_STATEMENT_ERRORS) == {("insert_usage",): 1}


def test_watched_values_are_read_when_asked_not_counted():
    m = OwnMetrics()
    state = {"inflight": 3}
    m.watch(om.INFLIGHT_REQUESTS, lambda: {(): state["inflight"]})
    assert m.points(om.INFLIGHT_REQUESTS) == [({}, 3)]
    state["inflight"] = 0
    assert m.points(om.INFLIGHT_REQUESTS) == [({}, 0)]


def test_unmetered_counts_nothing():
    m = Unmetered()
    m.observe_request(request(usage=Usage(1, 1), cost_usd=1.0, attempts=2, failures=(("a", "b"),)))
    m.add(om.SPEND_ADMISSIONS, ("lease",))
    m.statement("ping", 0.1, False)
    assert not m.enabled
    assert all(m.points(s) == [] for s in m.specs if s.instrument != "histogram")
    assert all(m.histogram(s) == [] for s in m.specs if s.instrument == "histogram")


def test_the_relay_and_the_pool_read_as_tables():
    counters = {"forward_to[0] https://c": {"queued": 2, "queued_bytes": 10, "sent": 5, "retried": 1,
                                           "rejected": 0, "dropped": 3, "dropped_bytes": 30, "peak_queued_bytes": 99,
                                           "unstampable": 4}}
    tables = om.relay_tables(counters)
    d = "forward_to[0] https://c"
    assert tables[om.RELAY_QUEUE_EXPORTS.name] == {(d,): 2}
    assert tables[om.RELAY_QUEUE_BYTES.name] == {(d,): 10}
    assert tables[om.RELAY_EXPORTS.name] == {
        (d, "sent"): 5, (d, "retried"): 1, (d, "rejected"): 0, (d, "dropped"): 3, (d, "partial"): 0, (d, "unstampable"): 4
    }
    assert tables[om.RELAY_DROPPED_BYTES.name] == {(d,): 30}
    assert om.pool_table(5, 2) == {("busy",): 3, ("idle",): 2}
    assert om.pool_table(0, 1) == {("busy",): 0, ("idle",): 1}  # a connection closing between the two reads


def test_every_spec_is_named_once_and_labels_are_known():
    names = [s.name for s in om.SPECS]
    assert len(names) == len(set(names))
    assert all(s.name.startswith("gatehouse.") for s in om.SPECS)
    assert all(bool(s.bounds) == (s.instrument == "histogram") for s in om.SPECS)


def test_reading_from_another_thread_while_the_loop_counts_never_breaks():
    """The export thread copies the tables while new series appear (the loop's side)."""
    m = OwnMetrics()
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                m.points(om.REQUESTS)
                m.histogram(om.REQUEST_DURATION)
        except BaseException as exc:  # a dict changing size during iteration would land here
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(20_000):
            m.observe_request(request(model=f"m{i % 150}", upstream=f"u{i % 7}", total_s=i / 1000))
    finally:
        stop.set()
        reader.join()
    assert errors == []
    assert sum(v for _, v in m.points(om.REQUESTS)) == 20_000
