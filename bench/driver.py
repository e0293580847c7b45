"""The asyncio load driver: closed loops, long-lived streams, sign-in.

Runs as its own process (``python -m bench.driver SPEC_JSON``) so its CPU is
measured apart from the orchestrator and it can be pinned to the load core.
Prints one JSON object on stdout. Every mode is bounded twice: by a request
count and by a wall-clock deadline, whichever comes first.

Modes:
  ``loop``     N workers, each with its own connection, send back to back.
  ``streams``  open N streams (ramped), hold them to the end, probe ``/healthz``
               meanwhile; reports first-byte times and how late events arrive.
  ``signin``   device authorizations in a closed loop, then many device codes
               each polled at its advertised interval.
  ``open``     open loop: requests start on a fixed schedule (``rate`` a second,
               Poisson or evenly spaced) whether or not earlier ones were answered;
               latency counts from the scheduled start, so time spent queued (for
               a free connection, or in the server) is never hidden.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from bench.httpclient import Connection, Exchange, build_request


def _req(spec: dict[str, Any], path: str | None = None, body: bytes | None = None, method: str = "POST") -> bytes:
    headers = dict(spec.get("headers", {}))
    if body is None:
        body = spec.get("body", "").encode()
    if body:
        headers.setdefault("Content-Type", "application/json")
    return build_request(method, path or spec["path"], f"{spec['host']}:{spec['port']}", body, headers)


async def run_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """Closed loop at fixed concurrency; samples after ``warmup_s`` only."""
    request = _req(spec)
    conc, duration, warmup = spec["concurrency"], spec["duration_s"], spec.get("warmup_s", 0.0)
    budget = spec.get("max_requests", 10**9)
    start = time.perf_counter()
    measure_from, deadline = start + warmup, start + warmup + duration
    samples: list[list[float | int | None]] = []
    errors = 0
    sent = 0

    async def worker() -> None:
        nonlocal errors, sent
        conn = Connection(spec["host"], spec["port"])
        try:
            while time.perf_counter() < deadline and len(samples) < budget:
                sent += 1
                begun = time.perf_counter()
                ex = await conn.exchange(request)
                if ex.error or ex.status != 200:
                    errors += 1
                    if ex.error:
                        await asyncio.sleep(0.01)
                    continue
                if begun >= measure_from:
                    samples.append([ex.total_s, ex.first_byte_s, ex.first_token_s])
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(conc)))
    elapsed = min(time.perf_counter(), deadline) - measure_from
    return {"samples": samples, "errors": errors, "elapsed_s": max(elapsed, 1e-9), "requests": len(samples)}


def schedule(rate: float, duration_s: float, *, arrivals: str = "poisson", seed: int = 1,
             limit: int | None = None) -> list[float]:
    """Start times (seconds from zero) of an open-loop run: ``rate`` a second over ``duration_s``.

    The same seed gives the same schedule, so two cells compared with each other
    are offered exactly the same arrivals."""
    rng = random.Random(seed)
    times: list[float] = []
    t = 0.0
    while t < duration_s and (limit is None or len(times) < limit):
        times.append(t)
        # Evenly spaced from the index, so no rounding piles up over a long run.
        t = t + rng.expovariate(rate) if arrivals == "poisson" else len(times) / rate
    return times


async def run_open(spec: dict[str, Any]) -> dict[str, Any]:
    """Open loop at a fixed arrival rate; samples are the requests scheduled after ``warmup_s``.

    Each request takes an idle kept-alive connection, or opens one while fewer than
    ``max_connections`` exist, or else waits for one: that wait counts in its latency.
    Samples hold [latency from the scheduled start, service time from the send,
    first byte from the send, how late the driver sent it]."""
    request = _req(spec)
    warmup, duration = spec.get("warmup_s", 0.0), spec["duration_s"]
    plan = schedule(spec["rate"], warmup + duration, arrivals=spec.get("arrivals", "poisson"),
                    seed=spec.get("seed", 1), limit=spec.get("max_requests"))
    drain_s = spec.get("drain_s", 10.0)
    cap = spec.get("max_connections", 256)
    idle: list[Connection] = []
    freed = asyncio.Condition()
    opened = 0
    samples: list[list[float | None]] = []
    errors: dict[str, int] = {}
    pending: set[asyncio.Task[None]] = set()
    answered = 0  # warm-up included: the gateway's CPU is measured over the whole run

    async def take() -> Connection:
        nonlocal opened
        async with freed:
            while not idle and opened >= cap:
                await freed.wait()
            if idle:
                return idle.pop()
            opened += 1
        return Connection(spec["host"], spec["port"])

    async def give(conn: Connection) -> None:
        async with freed:
            idle.append(conn)
            freed.notify()

    async def one(due: float, measured: bool) -> None:
        nonlocal answered
        conn = await take()
        sent = time.perf_counter()
        ex = await conn.exchange(request)
        await give(conn)
        if ex.error or ex.status != 200 or ex.total_s is None:
            kind = ex.error or str(ex.status)
            errors[kind] = errors.get(kind, 0) + 1
            return
        answered += 1
        if measured:
            # A timer may wake the driver a little early: latency is then the service time, never less.
            lag = sent - due
            samples.append([ex.total_s + max(lag, 0.0), ex.total_s, ex.first_byte_s, lag])

    start = time.perf_counter() + 0.01
    for offset in plan:
        due = start + offset
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        task = asyncio.create_task(one(due, offset >= warmup))
        pending.add(task)
        task.add_done_callback(pending.discard)
    scheduled_for = time.perf_counter() - start
    unfinished = 0
    if pending:
        _, late = await asyncio.wait(set(pending), timeout=drain_s)
        unfinished = len(late)
        for task in late:
            task.cancel()
    for conn in idle:
        conn.close()
    offered = sum(1 for offset in plan if offset >= warmup)
    return {"samples": samples, "errors": sum(errors.values()) + unfinished,
            "error_kinds": {**errors, **({"unfinished": unfinished} if unfinished else {})},
            "offered": offered, "requests": len(samples), "answered": answered, "elapsed_s": duration, "rate": spec["rate"],
            "connections": opened, "schedule_s": scheduled_for}


async def run_streams(spec: dict[str, Any]) -> dict[str, Any]:
    """Hold ``streams`` concurrent streams; the reply's pacing comes from the upstream."""
    request = _req(spec)
    n, ramp = spec["streams"], spec.get("ramp_s", 0.0)
    deadline = time.perf_counter() + spec["deadline_s"]
    gap = spec.get("gap_s", 1.0)
    results: list[Exchange] = []
    probe: list[float] = []
    done = asyncio.Event()
    opened = 0

    async def one(index: int) -> None:
        nonlocal opened
        await asyncio.sleep(ramp * index / max(n, 1))
        conn = Connection(spec["host"], spec["port"])
        opened += 1
        try:
            ex = await asyncio.wait_for(conn.exchange(request, keep_events=True), max(deadline - time.perf_counter(), 0.1))
        except TimeoutError:
            ex = Exchange(error="deadline")
        finally:
            conn.close()
        results.append(ex)

    async def prober() -> None:
        # A cheap request to the same process shows how long its event loop
        # keeps new work waiting while it carries the streams.
        conn = Connection(spec["host"], spec["port"])
        req = _req(spec, path=spec.get("probe_path", "/healthz"), body=b"", method="GET")
        try:
            while not done.is_set():
                ex = await conn.exchange(req)
                if ex.total_s is not None and opened >= n:
                    probe.append(ex.total_s)
                try:
                    await asyncio.wait_for(done.wait(), spec.get("probe_every_s", 0.05))
                except TimeoutError:
                    pass
        finally:
            conn.close()

    probe_task = asyncio.create_task(prober()) if spec.get("probe", True) else None
    await asyncio.gather(*(one(i) for i in range(n)))
    done.set()
    if probe_task is not None:
        await probe_task
    ok = [r for r in results if r.error is None and r.status == 200]
    lateness: list[float] = []  # how much later than the schedule each later event came
    for r in ok:
        if len(r.event_s) > 1:
            first = r.event_s[0]
            lateness.extend(t - (first + i * gap) for i, t in enumerate(r.event_s) if i)
    return {
        "streams": n,
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "error_kinds": sorted({r.error or str(r.status) for r in results if r not in ok})[:5],
        "first_byte_s": [r.first_byte_s for r in ok],
        "first_token_s": [r.first_token_s for r in ok],
        "events": sum(len(r.event_s) for r in ok),
        "lateness_s": lateness,
        "probe_s": probe,
    }


async def run_signin(spec: dict[str, Any]) -> dict[str, Any]:
    """Authorization rate (closed loop), then poll throughput across many codes."""
    auth_req = _req(spec, path="/oauth/device_authorization", body=spec["auth_body"].encode())
    conc, duration = spec["concurrency"], spec["duration_s"]
    codes: list[str] = []
    auth_lat: list[float] = []
    errors = {"auth": 0, "poll": 0}
    deadline = time.perf_counter() + duration

    async def authorizer() -> None:
        conn = Connection(spec["host"], spec["port"])
        try:
            while time.perf_counter() < deadline:
                ex, body = await _exchange_body(conn, auth_req)
                if ex.status != 200 or body is None:
                    errors["auth"] += 1
                    await asyncio.sleep(0.01)
                    continue
                auth_lat.append(ex.total_s or 0.0)
                codes.append(json.loads(body)["device_code"])
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(authorizer() for _ in range(conc)))
    auth_elapsed = time.perf_counter() - t0

    # Polls: each code polled every `interval` seconds, start times spread
    # evenly, over `poll_s` seconds; statuses other than 400/200 count as errors.
    use = codes[: spec["poll_codes"]]
    interval, poll_s = spec["interval_s"], spec["poll_s"]
    poll_lat: list[float] = []
    statuses: dict[str, int] = {}
    conns = [Connection(spec["host"], spec["port"]) for _ in range(min(spec.get("poll_connections", 64), max(len(use), 1)))]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    stop_at = time.perf_counter() + poll_s

    async def scheduler(code: str, offset: float) -> None:
        body = f"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code={code}&client_id={spec['client_id']}"
        req = _req({**spec, "headers": {**spec.get("headers", {}), "Content-Type": "application/x-www-form-urlencoded"}},
                   path="/oauth/token", body=body.encode())
        await asyncio.sleep(offset)
        while time.perf_counter() < stop_at:
            queue.put_nowait(req)
            await asyncio.sleep(interval)

    async def poller(conn: Connection) -> None:
        while True:
            req = await queue.get()
            ex = await conn.exchange(req)
            statuses[str(ex.status or ex.error)] = statuses.get(str(ex.status or ex.error), 0) + 1
            if ex.status in (200, 400) and ex.total_s is not None:
                poll_lat.append(ex.total_s)
            else:
                errors["poll"] += 1
            queue.task_done()

    pollers = [asyncio.create_task(poller(c)) for c in conns]
    t1 = time.perf_counter()
    await asyncio.gather(*(scheduler(c, interval * i / max(len(use), 1)) for i, c in enumerate(use)))
    await asyncio.wait_for(queue.join(), 30)
    poll_elapsed = time.perf_counter() - t1
    for p in pollers:
        p.cancel()
    for c in conns:
        c.close()
    return {
        "authorizations": len(codes),
        "auth_elapsed_s": auth_elapsed,
        "auth_latency_s": auth_lat,
        "polls": len(poll_lat),
        "poll_elapsed_s": poll_elapsed,
        "poll_latency_s": poll_lat,
        "poll_statuses": statuses,
        "codes_polled": len(use),
        "errors": errors,
    }


async def _exchange_body(conn: Connection, request: bytes) -> tuple[Exchange, bytes | None]:
    """An exchange whose small body we need (sign-in answers)."""
    # The timing client discards bodies; sign-in needs the device code, so
    # read this one with the plain stream API on the same connection.
    await conn._ensure()
    reader, writer = conn._reader, conn._writer
    assert reader is not None and writer is not None
    ex = Exchange()
    t0 = time.perf_counter()
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        ex.status = int(lines[0].split(" ", 2)[1])
        length = next((int(v) for k, _, v in (line.partition(":") for line in lines[1:]) if k.strip().lower() == "content-length"), None)
        if length is None:
            conn.close()
            return ex, None
        body = await reader.readexactly(length)
        ex.total_s = time.perf_counter() - t0
        if any(line.lower().startswith("connection: close") for line in lines):
            conn.close()
        return ex, body
    except (OSError, asyncio.IncompleteReadError) as exc:
        ex.error = type(exc).__name__
        conn.close()
        return ex, None


MODES = {"loop": run_loop, "open": run_open, "streams": run_streams, "signin": run_signin}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one spec on a fresh event loop (uvloop when installed)."""
    runner: Callable[[Coroutine[Any, Any, dict[str, Any]]], dict[str, Any]]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency of the gateway
        runner = asyncio.run
    return runner(asyncio.wait_for(MODES[spec["mode"]](spec), spec.get("hard_limit_s", 900)))


def main() -> None:
    spec = json.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read())
    json.dump(run(spec), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
