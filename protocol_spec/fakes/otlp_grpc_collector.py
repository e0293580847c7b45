"""A scriptable OTLP/gRPC collector on loopback: the far side of a gateway's gRPC destinations.

The gRPC twin of :mod:`protocol_spec.fakes.otlp_collector`, driven through the
same control listener and read with the same
:class:`~protocol_spec.fakes.otlp_collector.RemoteCollector`, so a check
scripts both kinds of destination alike. Each *sink* is a grpcio server of
its own on its own port, serving the ``Export`` method of the metrics, logs
and trace collector services that ``opentelemetry-proto`` defines. Requests
are taken as raw bytes (no request deserializer): a check judges the bytes a
gateway sent, and a servicer that decoded them would hide a re-encoding.

What differs from the HTTP collector:

* a record's ``path`` is the gRPC method (``/opentelemetry.proto.collector.
  metrics.v1.MetricsService/Export``), its ``headers`` the call's metadata
  (a binary ``-bin`` value as base64 text), its ``body`` the request message's
  bytes as they came off the wire;
* an answer's ``status`` is a gRPC status code's number (:func:`code`:
  ``OK`` is 0, ``UNAVAILABLE`` 14), and a record's ``status`` the code it got.
  200, the default of :class:`~protocol_spec.fakes.otlp_collector.Answer`,
  stands for ``OK``, so an unscripted sink and a bare stall answer ``OK``;
* ``retry_after`` (seconds) becomes a ``google.rpc.RetryInfo`` in the status
  details of a failed call, where OTLP exporters look for it.

A record's ``abandoned`` is true when the gateway gave up on the call (its
deadline) before the answer.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Iterable

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from protocol_spec.fakes.otlp_collector import (
    MAX_BODY_BYTES,
    STALL_MAX_S,
    Answer,
    OtlpCollector,
    Record,
    Sink,
)

__all__ = ["METHODS", "OK", "GrpcSink", "OtlpGrpcCollector", "code"]

# signal -> (the collector service's full name, its Export response)
_SERVICES: dict[str, tuple[str, type[Message]]] = {
    "metrics": (metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,
                metrics_service_pb2.ExportMetricsServiceResponse),
    "logs": (logs_service_pb2.DESCRIPTOR.services_by_name["LogsService"].full_name, logs_service_pb2.ExportLogsServiceResponse),
    "traces": (trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name,
               trace_service_pb2.ExportTraceServiceResponse),
}
# signal -> the method a gateway must call for it
METHODS = {signal: f"/{service}/Export" for signal, (service, _) in _SERVICES.items()}
OK = 0
_HTTP_OK = 200
_CODES = {c.value[0]: c for c in grpc.StatusCode}

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def code(name: str) -> int:
    """The number of the gRPC status code ``name`` (``"UNAVAILABLE"`` -> 14)."""
    number: int = grpc.StatusCode[name].value[0]
    return number


class GrpcSink(Sink):
    """One gRPC destination: a grpcio server, and the script, outage and release of a :class:`Sink`."""

    def __init__(self, name: str, collector: OtlpGrpcCollector, host: str) -> None:
        super().__init__(name, collector, host)
        self._grpc_collector = collector
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        # Without SO_REUSEPORT a port that is still held fails here, not oddly later.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", MAX_BODY_BYTES)])
        for signal, (service, _) in _SERVICES.items():
            method = grpc.unary_unary_rpc_method_handler(self._export(signal), request_deserializer=None, response_serializer=None)
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Export": method}),))
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        await server.start()
        self._server = server

    async def close(self) -> None:
        self.released.set()
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(None)

    def _export(self, signal: str) -> Handler:
        method, response = METHODS[signal], _SERVICES[signal][1]

        async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            record = self._grpc_collector.record_call(self.name, method, context.invocation_metadata() or (), request)
            answer = self._next_answer()
            try:
                if answer.stall:
                    try:
                        await asyncio.wait_for(self.released.wait(), STALL_MAX_S)
                    except TimeoutError:
                        pass
            except asyncio.CancelledError:
                record.abandoned = True
                self._grpc_collector.changed()
                raise
            # A number that is no gRPC code (an HTTP status scripted by mistake) fails the call as UNKNOWN.
            status = _CODES.get(OK if answer.status == _HTTP_OK else answer.status, grpc.StatusCode.UNKNOWN)
            record.status = status.value[0]
            self._grpc_collector.changed()
            if status is not grpc.StatusCode.OK:
                await context.abort(status, f"scripted {status.name}", trailing_metadata=_retry_info(answer, status.value[0]))
            return bytes(response().SerializeToString())

        return export


class OtlpGrpcCollector(OtlpCollector):
    """gRPC sinks named by ``names``, each on its own port, and the HTTP control listener
    of :class:`~protocol_spec.fakes.otlp_collector.OtlpCollector`."""

    def __init__(self, names: tuple[str, ...] | list[str], host: str = "127.0.0.1") -> None:
        super().__init__(names, host)
        self.sinks = {name: GrpcSink(name, self, host) for name in names}

    async def start(self) -> OtlpGrpcCollector:
        await super().start()
        return self

    async def __aenter__(self) -> OtlpGrpcCollector:
        return await self.start()

    def record_call(self, sink: str, method: str, metadata: Iterable[tuple[str, str | bytes]], body: bytes) -> Record:
        self._seq += 1
        record = Record(self._seq, sink, method, "", _metadata(metadata), body)
        self.records.append(record)
        self.changed()
        return record


def _metadata(metadata: Iterable[tuple[str, str | bytes]]) -> list[tuple[str, str]]:
    return [(key, base64.b64encode(value).decode() if isinstance(value, bytes) else value) for key, value in metadata]


def _retry_info(answer: Answer, number: int) -> tuple[tuple[str, bytes], ...]:
    """A RetryInfo with the ``retry_after`` delay, in the status details (as the OTLP specification's example sends it)."""
    if answer.retry_after is None:
        return ()
    delay = float(answer.retry_after)
    seconds = int(delay)
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds, nanos=int((delay - seconds) * 1e9)))
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=number, message="scripted", details=[detail])
    return (("grpc-status-details-bin", status.SerializeToString()),)
