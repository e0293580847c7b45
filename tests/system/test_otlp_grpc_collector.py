"""The fake OTLP/gRPC collector does what its script says, seen from a real grpcio client.

The TEL-9 and TEL-12 checks trust this fake to record the bytes and metadata a
gateway sent and to answer each call with the scripted gRPC status, so each
feature is checked here over real sockets, scripted through its control
listener as the checks script it (the HTTP collector's client,
:class:`~protocol_spec.fakes.otlp_collector.RemoteCollector`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from protocol_spec.conformance import otlp
from protocol_spec.fakes.otlp_collector import Answer, RemoteCollector
from protocol_spec.fakes.otlp_grpc_collector import METHODS, OK, OtlpGrpcCollector, code

# A request with a field this version of opentelemetry-proto does not know: kept as sent, byte for byte.
RAW = ExportMetricsServiceRequest().SerializeToString() + b"\xfa\x07\x03odd"


@pytest.fixture
async def collector() -> AsyncIterator[OtlpGrpcCollector]:
    async with OtlpGrpcCollector(("a", "b")) as running:
        yield running


@pytest.fixture
async def remote(collector: OtlpGrpcCollector) -> AsyncIterator[RemoteCollector]:
    async with aiohttp.ClientSession() as session:
        yield RemoteCollector(collector.control_url, session)


async def call(
    collector: OtlpGrpcCollector, sink: str, body: bytes, *, signal: str = "metrics",
    metadata: tuple[tuple[str, str | bytes], ...] = (), timeout_s: float = 5.0,
) -> tuple[grpc.StatusCode, bytes | None, tuple[tuple[str, str | bytes], ...]]:
    """One Export call of raw ``body``: (code, response bytes, trailing metadata)."""
    async with grpc.aio.insecure_channel(collector.url(sink).removeprefix("http://")) as channel:
        export = channel.unary_unary(METHODS[signal], request_serializer=None, response_deserializer=None)
        try:
            answer = await export(body, metadata=metadata, timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            return err.code(), None, tuple(err.trailing_metadata() or ())
        return grpc.StatusCode.OK, answer, ()


async def test_a_sink_records_the_call_as_sent_and_answers_ok(collector: OtlpGrpcCollector, remote: RemoteCollector) -> None:
    status, answer, _ = await call(collector, "a", RAW, metadata=(("x-probe", "yes"), ("trace-bin", b"\x00\x01")))
    assert status is grpc.StatusCode.OK
    assert answer is not None and ExportMetricsServiceResponse.FromString(answer) == ExportMetricsServiceResponse()
    [record] = await remote.received()
    assert (record["sink"], record["path"], record["status"], record["body"]) == ("a", METHODS["metrics"], OK, RAW)
    assert ("x-probe", "yes") in record["headers"] and ("trace-bin", "AAE=") in record["headers"], "binary metadata as base64"
    assert otlp.signal_of(record["path"]) == "metrics"
    logs = ExportLogsServiceRequest()
    logs.resource_logs.add().resource.attributes.add(key=otlp.MARKER).value.string_value = "m-1"
    await call(collector, "b", logs.SerializeToString(), signal="logs")
    [record] = await remote.received("b")
    assert record["path"] == METHODS["logs"] and otlp.marker_of(record) == "m-1"


async def test_a_script_answers_one_call_each_with_a_grpc_code(collector: OtlpGrpcCollector, remote: RemoteCollector) -> None:
    await remote.script("a", Answer(status=code("INVALID_ARGUMENT")), Answer(status=code("RESOURCE_EXHAUSTED"), retry_after="1.5"))
    first = await call(collector, "a", b"")
    second = await call(collector, "a", b"")
    third = await call(collector, "a", b"")
    assert [first[0], second[0], third[0]] == [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OK]
    assert not any(key == "grpc-status-details-bin" for key, _ in first[2]), "no RetryInfo unless scripted"
    details = dict(second[2])["grpc-status-details-bin"]
    assert isinstance(details, bytes)
    [detail] = status_pb2.Status.FromString(details).details
    info = error_details_pb2.RetryInfo()
    assert detail.Unpack(info) and info.retry_delay.seconds == 1 and info.retry_delay.nanos == 500_000_000
    assert [r["status"] for r in await remote.received("a")] == [code("INVALID_ARGUMENT"), code("RESOURCE_EXHAUSTED"), OK]
    assert (await call(collector, "b", b""))[0] is grpc.StatusCode.OK, "a script is one sink's only"


async def test_down_fails_every_call_until_up(collector: OtlpGrpcCollector, remote: RemoteCollector) -> None:
    await remote.down("b", code("UNAVAILABLE"))
    assert [(await call(collector, "b", b""))[0] for _ in range(2)] == [grpc.StatusCode.UNAVAILABLE] * 2
    reached, records = await remote.wait("b", 2, 1.0, status=code("UNAVAILABLE"))
    assert reached and len(records) == 2
    await remote.up("b")
    assert (await call(collector, "b", b""))[0] is grpc.StatusCode.OK
    reached, _ = await remote.wait("b", 1, 1.0, status=OK)
    assert reached


async def test_a_status_that_is_no_grpc_code_fails_the_call_as_unknown(collector: OtlpGrpcCollector, remote: RemoteCollector) -> None:
    await remote.script("a", Answer(status=503))
    assert (await call(collector, "a", b""))[0] is grpc.StatusCode.UNKNOWN
    assert [r["status"] for r in await remote.received("a")] == [code("UNKNOWN")]


async def test_a_stall_holds_the_answer_until_released(collector: OtlpGrpcCollector, remote: RemoteCollector) -> None:
    await remote.script("a", Answer(stall=True))
    pending = asyncio.create_task(call(collector, "a", b"held"))
    reached, records = await remote.wait("a", 1, 5.0)
    assert reached and records[0]["status"] is None, "held: no answer yet"
    assert not pending.done()
    await remote.release("a")
    assert (await pending)[0] is grpc.StatusCode.OK
    assert [r["status"] for r in await remote.received("a")] == [OK]


async def test_a_client_whose_deadline_passes_is_marked_abandoned(collector: OtlpGrpcCollector, remote: RemoteCollector) -> None:
    await remote.script("a", Answer(stall=True))
    assert (await call(collector, "a", b"x", timeout_s=0.3))[0] is grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(100):
        [record] = await remote.received("a")
        if record["abandoned"]:
            break
        await asyncio.sleep(0.02)
    assert record["abandoned"] and record["status"] is None


async def test_reset_forgets_log_script_outage_and_releases_stalls(collector: OtlpGrpcCollector, remote: RemoteCollector) -> None:
    await remote.script("a", Answer(stall=True), Answer(status=code("INTERNAL")))
    await remote.down("b", code("UNAVAILABLE"))
    pending = asyncio.create_task(call(collector, "a", b"x"))
    await remote.wait("a", 1, 5.0)
    await remote.reset()
    assert (await pending)[0] is grpc.StatusCode.OK
    assert (await call(collector, "a", b"y"))[0] is grpc.StatusCode.OK, "the rest of the script is gone"
    assert (await call(collector, "b", b"z"))[0] is grpc.StatusCode.OK, "the outage is over"
    assert [r["body"] for r in await remote.received()] == [b"y", b"z"], "the log starts again at the reset"
