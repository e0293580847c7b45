"""The fake OTLP collector does what its script says, seen from a plain aiohttp client.

The telemetry conformance checks trust this fake to tell a delivered export
from a failed or held one, so each scripting feature is checked here against
real sockets, driven through its control listener as the checks drive it.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import aiohttp
import pytest

from protocol_spec.fakes.otlp_collector import Answer, OtlpCollector, RemoteCollector


@pytest.fixture
async def collector() -> AsyncIterator[OtlpCollector]:
    async with OtlpCollector(("a", "b")) as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def export(session: aiohttp.ClientSession, url: str, body: bytes, **headers: str) -> tuple[int, dict[str, str]]:
    async with session.post(url, data=body, headers=headers) as resp:
        await resp.read()
        return resp.status, dict(resp.headers)


async def test_a_sink_records_the_raw_request_and_answers_200(collector: OtlpCollector, session: aiohttp.ClientSession) -> None:
    remote = RemoteCollector(collector.control_url, session)
    body = gzip.compress(b"\x0a\x00" * 50)
    status, _ = await export(
        session, collector.url("a") + "/otlp/v1/metrics?x=1", body,
        **{"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip", "X-Probe": "yes"},
    )
    assert status == 200
    [record] = await remote.received()
    assert (record["sink"], record["path"], record["query_string"], record["status"]) == ("a", "/otlp/v1/metrics", "x=1", 200)
    assert record["body"] == body, "gzip bodies are kept as sent"
    assert ("X-Probe", "yes") in record["headers"] and ("Content-Encoding", "gzip") in record["headers"]
    assert await remote.received("b") == []


async def test_a_script_answers_one_request_each_then_the_default(collector: OtlpCollector, session: aiohttp.ClientSession) -> None:
    remote = RemoteCollector(collector.control_url, session)
    await remote.script("a", Answer(status=400), Answer(status=503, retry_after="2"))
    answers = [await export(session, collector.url("a") + "/v1/logs", bytes([i])) for i in range(3)]
    assert [status for status, _ in answers] == [400, 503, 200]
    assert answers[1][1]["Retry-After"] == "2"
    assert [r["status"] for r in await remote.received("a")] == [400, 503, 200]
    assert (await export(session, collector.url("b") + "/v1/metrics", b"x"))[0] == 200, "a script is one sink's only"


async def test_down_fails_every_request_until_up(collector: OtlpCollector, session: aiohttp.ClientSession) -> None:
    remote = RemoteCollector(collector.control_url, session)
    await remote.down("b", 503)
    assert [(await export(session, collector.url("b") + "/v1/metrics", b"x"))[0] for _ in range(3)] == [503, 503, 503]
    reached, records = await remote.wait("b", 3, 1.0, status=503)
    assert reached and len(records) == 3
    await remote.up("b")
    assert (await export(session, collector.url("b") + "/v1/metrics", b"y"))[0] == 200


async def test_a_stall_holds_the_answer_until_released(collector: OtlpCollector, session: aiohttp.ClientSession) -> None:
    remote = RemoteCollector(collector.control_url, session)
    await remote.script("a", Answer(stall=True))
    pending = asyncio.create_task(export(session, collector.url("a") + "/v1/metrics", b"held"))
    reached, records = await remote.wait("a", 1, 5.0)
    assert reached and records[0]["status"] is None, "held: no answer yet"
    assert not pending.done()
    await remote.release("a")
    assert (await pending)[0] == 200
    assert [r["status"] for r in await remote.received("a")] == [200]


async def test_a_client_that_gives_up_on_a_stall_is_marked_abandoned(collector: OtlpCollector, session: aiohttp.ClientSession) -> None:
    remote = RemoteCollector(collector.control_url, session)
    await remote.script("a", Answer(stall=True))
    with pytest.raises(TimeoutError):
        async with session.post(collector.url("a") + "/v1/metrics", data=b"x", timeout=aiohttp.ClientTimeout(total=0.3)) as resp:
            await resp.read()
    for _ in range(100):
        [record] = await remote.received("a")
        if record["abandoned"]:
            break
        await asyncio.sleep(0.02)
    assert record["abandoned"] and record["status"] is None


async def test_wait_returns_at_the_timeout_when_too_few_arrived(collector: OtlpCollector, session: aiohttp.ClientSession) -> None:
    remote = RemoteCollector(collector.control_url, session)
    await export(session, collector.url("a") + "/v1/metrics", b"one")
    reached, records = await remote.wait("a", 2, 0.2)
    assert not reached and len(records) == 1
    reached, _ = await remote.wait("a", 1, 0.2, status=503)
    assert not reached, "the status filter counts only records answered so"


async def test_reset_forgets_log_script_outage_and_releases_stalls(collector: OtlpCollector, session: aiohttp.ClientSession) -> None:
    remote = RemoteCollector(collector.control_url, session)
    await remote.script("a", Answer(stall=True), Answer(status=400))
    await remote.down("b")
    pending = asyncio.create_task(export(session, collector.url("a") + "/v1/metrics", b"x"))
    await remote.wait("a", 1, 5.0)
    await remote.reset()
    assert (await pending)[0] == 200
    assert (await export(session, collector.url("a") + "/v1/metrics", b"y"))[0] == 200, "the rest of the script is gone"
    assert (await export(session, collector.url("b") + "/v1/metrics", b"z"))[0] == 200, "the outage is over"
    assert [r["body"] for r in await remote.received()] == [b"y", b"z"], "the log starts again at the reset"


async def test_the_control_listener_refuses_unknown_sinks_and_fields(collector: OtlpCollector, session: aiohttp.ClientSession) -> None:
    for path, doc in (("/_fake/down", {"sink": "nope"}), ("/_fake/script", {"sink": "a", "answers": [{"stauts": 400}]})):
        async with session.post(collector.control_url + path, json=doc) as resp:
            assert resp.status == 400, path
    async with session.get(collector.control_url + "/_fake/wait", params={"sink": "a"}) as resp:
        assert resp.status == 400
