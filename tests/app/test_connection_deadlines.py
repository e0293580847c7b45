"""Slow and idle client connections are closed (issue 12, finding 5).

One real gateway process whose open-file limit this test sets itself (soft 200,
hard 256): on these machines both limits are high by default, so a test relying on
them would prove nothing. Deadlines are 1 s here; the waits below are bounds on how
long a closure may take, never assertions about timing.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import tempfile
import time

import aiohttp
import pytest

from protocol_spec.fakes import Reply
from tests.system.test_process import (
    ENV,
    GATEHOUSE,
    _LogReader,
    free_port,
    token,
    wait_exit,
    wait_ready,
    write_config,
)

SOFT, HARD = 200, 256
DRIBBLERS = 300  # more than the gateway can hold open at once
DEADLINES = """
gatehouse:
  connections:
    header_read_timeout_seconds: 1
    body_read_timeout_seconds: 1
    keepalive_idle_timeout_seconds: 1
"""
BODY = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": []}).encode()


def _limit_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))


@pytest.fixture(scope="module")
async def upstream():
    from protocol_spec.fakes.upstream import FakeUpstream

    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory, pg_url, upstream):
    port = free_port()
    cfg = write_config(tmp_path_factory.mktemp("deadlines"), pg_url, upstream.url, port, DEADLINES)
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        [*GATEHOUSE, "serve", "--config", str(cfg)],
        env=ENV, stdout=log, stderr=log, text=True, preexec_fn=_limit_open_files,
    )
    proc.stderr = _LogReader(log)  # type: ignore[assignment]
    try:
        await wait_ready(port, proc)
        yield port, token(cfg), proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            await wait_exit(proc)


async def _closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the gateway sent until it closed the connection (fails if it stays open)."""
    return await asyncio.wait_for(reader.read(), within)


async def _dribble(port: int, head: bytes, gap: float, within: float) -> tuple[bytes, bool]:
    """Send ``head`` a byte every ``gap`` seconds; (what came back, closed by the gateway)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sender = asyncio.create_task(_send_slowly(writer, head, gap))
    try:
        return await _closed(reader, within), True
    except ConnectionError:
        # A close with our unread bytes still in its receive buffer is sent as a reset:
        # closed all the same, and nothing was answered.
        return b"", True
    except TimeoutError:
        return b"", False
    finally:
        sender.cancel()
        writer.close()


async def _send_slowly(writer: asyncio.StreamWriter, data: bytes, gap: float) -> None:
    try:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(gap)
    except ConnectionError:
        pass


async def _messages(session: aiohttp.ClientSession, port: int, tok: str) -> int:
    async with session.post(
        f"http://127.0.0.1:{port}/v1/messages", data=BODY, headers={"Authorization": f"Bearer {tok}"}
    ) as r:
        await r.read()
        return r.status


async def test_open_file_limit_is_raised_to_the_hard_limit_and_logged(gateway):
    _, _, proc = gateway
    with open(f"/proc/{proc.pid}/limits") as fh:
        row = next(line for line in fh if line.startswith("Max open files")).split()
    assert row[3:5] == [str(HARD), str(HARD)]
    assert f"open-file limit {HARD} (raised from {SOFT}), hard limit {HARD}" in proc.stderr.read()


async def test_more_dribblers_than_file_descriptors_do_not_lock_out_normal_requests(gateway):
    port, tok, proc = gateway
    head = b"POST /v1/messages HTTP/1.1\r\nHost: gatehouse\r\nX-Slow: " + b"x" * 40
    # Each sends its head a byte every 0.2 s (14 s in all): without a head deadline
    # they would hold every descriptor the gateway has for that long. Connections
    # past the limit are accepted and dropped at once by libuv. One in ten sends nothing.
    heads = [b"" if i % 10 == 0 else head for i in range(DRIBBLERS)]
    outcomes = await asyncio.gather(*(_dribble(port, h, 0.2, within=20) for h in heads))
    open_ones = sum(not closed for _, closed in outcomes)
    answered = [answer[:80] for answer, _ in outcomes if answer]
    assert (open_ones, answered) == (0, []), "every dribbler is closed unanswered"
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)) as s:
        statuses = await asyncio.gather(*(_messages(s, port, tok) for _ in range(20)))
    assert statuses == [200] * 20
    log = proc.stderr.read()
    assert "closed slow client connections" in log and "Traceback" not in log


FORM = b"grant_type=refresh_token&refresh_token=" + b"r" * 40


@pytest.mark.parametrize(
    ("path", "ctype", "body"),
    [("/v1/messages", "application/json", BODY), ("/oauth/token", "application/x-www-form-urlencoded", FORM)],
)
async def test_a_body_dribbled_slowly_gets_408_in_the_envelope_then_close(gateway, path, ctype, body):
    port, tok, proc = gateway
    head = (
        f"POST {path} HTTP/1.1\r\nHost: gatehouse\r\nAuthorization: Bearer {tok}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    sender = asyncio.create_task(_send_slowly(writer, body, 0.2))
    try:
        answer = await _closed(reader, within=10)  # the gateway answers, then closes
    finally:
        sender.cancel()
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout"
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in headers.lower()
    doc = json.loads(body)
    assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
    assert "within 1s" in doc["error"]["message"] and doc["request_id"]
    assert "Traceback" not in proc.stderr.read()


async def test_a_body_dribbled_to_an_endpoint_that_never_reads_it_is_closed(gateway):
    port, _, proc = gateway
    # No bearer: the 401 goes out before any body byte is read; then the slow rest is cut.
    head = b"POST /v1/messages HTTP/1.1\r\nHost: gatehouse\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head[: head.index(b"\r\n\r\n") + 4])
    sender = asyncio.create_task(_send_slowly(writer, b"x" * 100, 0.2))
    try:
        answer = await _closed(reader, within=5)  # aiohttp alone would read on for 10 s
    finally:
        sender.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert "Traceback" not in proc.stderr.read()


async def test_an_idle_keep_alive_connection_is_closed(gateway):
    port, _, _ = gateway
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gatehouse\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ")
        length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[1])
        await reader.readexactly(length)
        assert await _closed(reader, within=10) == b""  # idle past keepalive_idle_timeout_seconds
    finally:
        writer.close()


async def test_a_later_head_sent_slowly_on_a_kept_alive_connection_is_closed(gateway):
    port, _, _ = gateway
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sender = None
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gatehouse\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[1])
        await reader.readexactly(length)
        sender = asyncio.create_task(_send_slowly(writer, b"GET /healthz HTTP/1.1\r\nHost: gatehouse\r\n\r\n", 0.2))
        assert await _closed(reader, within=10) == b""
    finally:
        if sender is not None:
            sender.cancel()
        writer.close()


async def test_a_slow_stream_outlives_every_deadline(gateway, upstream):
    port, tok, _ = gateway
    # Silent for 1.5 s mid-stream: longer than each of the three 1 s deadlines.
    upstream.script(Reply(stream=True, deltas=4, stall_after=3, stall_seconds=1.5))
    body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "stream": True, "messages": []})
    started = time.monotonic()
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"http://127.0.0.1:{port}/v1/messages", data=body, headers={"Authorization": f"Bearer {tok}"}
        ) as r:
            assert r.status == 200
            text = (await r.read()).decode()
    assert time.monotonic() - started >= 1.5  # the stall really happened
    assert text.rstrip().endswith('{"type":"message_stop"}') and "event: error" not in text


def test_deadline_keys_are_checked_at_their_dotted_paths():
    from gateway.config.load import ConfigError
    from tests.harness import make_config, upstream_block

    bad = "gatehouse:\n  connections:\n    header_read_timeout_seconds: 0\n    body_read_timeout_seconds: x\n    idle: 5\n"
    with pytest.raises(ConfigError) as err:
        make_config("postgres://u@127.0.0.1/db", [upstream_block("http://127.0.0.1:9")], bad)
    text = str(err.value)
    for path in ("header_read_timeout_seconds", "body_read_timeout_seconds", "idle"):
        assert f"gatehouse.connections.{path}" in text
    cfg = make_config("postgres://u@127.0.0.1/db", [upstream_block("http://127.0.0.1:9")])
    c = cfg.gatehouse.connections
    assert (c.header_read_timeout_seconds, c.body_read_timeout_seconds, c.keepalive_idle_timeout_seconds) == (20, 300, 75)


async def test_closures_are_logged_in_few_lines_and_none_left_unsaid(capfd):
    from gateway.app.connections import Deadlines

    d = Deadlines(1, 1, 1)
    for _ in range(5):
        d.count("slow head")
    d.count("slow body")
    d.flush()  # as at shutdown, before the 10 s are up
    lines = [line for line in capfd.readouterr().err.splitlines() if "closed slow client connections" in line]
    assert len(lines) == 2
    assert lines[0].endswith("1 slow head") and lines[1].endswith("1 slow body, 4 slow head")
