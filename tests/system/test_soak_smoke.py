"""The soak cannot rot: its kill step runs once in a tiny form (about 20 s), and its judges are exact.

``make soak`` runs every step for minutes; here three real replicas behind a real
HAProxy (Debian's; `.ci/run` installs it) on a throwaway PostgreSQL take a few
seconds of load while one of them is killed with SIGKILL and restarted. Nothing
here checks a timing: only what the soak itself counts as a broken invariant.
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench.soak.traffic import Outcome, _error_type, _judge_stream, recovery_s, tally
from bench.targets import REPO


def test_the_kill_step_runs_and_holds_its_invariants(tmp_path):
    out = tmp_path / "soak"
    done = subprocess.run([sys.executable, "-m", "bench.soak", "--smoke", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=150)
    summary = json.loads((out / "summary.json").read_text())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert summary["passed"] and summary["violations"] == []
    (step,) = summary["steps"]
    assert step["step"] == "kill" and step["facts"]["victim"] == "r2"
    spend = step["spend"]
    # Every request a client received in full was recorded and charged once.
    assert spend["served"] == step["traffic"]["served"] > 0
    assert spend["served_and_charged"] == spend["served"] - len(spend["excused_not_charged"])
    assert summary["replica_exit_codes"] == {"r1": 0, "r2": 0, "r3": 0}
    assert summary["kills"] == {"r1": 0, "r2": 1, "r3": 0} and summary["restarts"] == summary["kills"]
    assert summary["final"]["open_reservations"] == 0 and summary["final"]["counters_not_matching_charges"] == []
    assert summary["tracebacks"] == {}
    md = (out / "summary.md").read_text()
    assert "kill -9 a replica" in md and "## Violations\n\nnone" in md


def test_a_stream_is_served_only_when_it_ends_with_message_stop():
    whole = b"event: message_start\ndata: {}\n\nevent: content_block_delta\ndata: {}\n\nevent: message_stop\ndata: {}\n\n"
    assert _judge_stream(whole) == ("ok", None)
    # Ended cleanly without message_stop: no fault excuses that.
    assert _judge_stream(whole.split(b"event: message_stop")[0]) == ("truncated", None)
    err = b'event: message_start\ndata: {}\n\nevent: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n'
    assert _judge_stream(err) == ("sse_error", "overloaded_error")


def test_an_error_answer_needs_the_envelope_unless_haproxy_made_it():
    envelope = b'{"type":"error","error":{"type":"api_error","message":"all upstreams failed (2 attempted)"}}'
    assert _error_type(envelope, from_lb=False) == "api_error"
    assert _error_type(b"<html>503 Service Unavailable</html>", from_lb=True) == "haproxy"
    assert _error_type(b"Internal Server Error", from_lb=False) is None  # judged bad_envelope


def test_tally_and_recovery():
    outs = [Outcome(0.0, 0.7, True, "ok"), Outcome(0.1, 0.11, False, "ok"),
            Outcome(0.5, 1.2, True, "cut", 200, error="ClientPayloadError"), Outcome(3.0, 3.1, False, "status", 502, error="api_error")]
    t = tally(outs)
    assert t["requests"] == 4 and t["served"] == 2
    assert t["failed"] == {"502 api_error": 1, "cut (ClientPayloadError)": 1}
    assert recovery_s(outs, fault_at=1.0) == 2.1  # to the end of the last failure after the fault
    assert recovery_s(outs[:2], fault_at=1.0) == 0.0
