"""A scriptable OTLP/gRPC collector on a loopback port: the metrics, logs and trace
services of opentelemetry-proto, recording every call (metadata, the request's
raw bytes as they came off the wire) and answering as scripted.

Script entries (:attr:`GrpcCollector.answers`, one per call, then
:attr:`GrpcCollector.status` for the rest):

* ``"ok"``: an empty ``Export*ServiceResponse``;
* ``"stall"``: hold the call until :attr:`release` is set, then answer ``ok``;
* a ``grpc.StatusCode``: fail the call with it;
* :class:`Retry`: fail with a code and a RetryInfo delay, in the status details
  (as the OTLP spec's Go sample does) or in the ``google.rpc.retryinfo-bin`` trailer;
* :class:`Partial`: succeed with a ``partial_success`` naming rejected items.

Only ``ok``, ``stall`` and :class:`Partial` calls are added to :attr:`received`;
:attr:`calls` holds every call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

# signal → (service descriptor, request type, response type, partial_success's count field)
SERVICES: dict[str, tuple[Any, type[Message], type[Message], str]] = {
    "metrics": (
        metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"],
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
        "rejected_data_points",
    ),
    "logs": (
        logs_service_pb2.DESCRIPTOR.services_by_name["LogsService"],
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
        "rejected_log_records",
    ),
    "traces": (
        trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"],
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
        "rejected_spans",
    ),
}


@dataclass(frozen=True)
class Retry:
    code: grpc.StatusCode
    delay_s: float
    in_trailer: bool = False  # google.rpc.retryinfo-bin instead of the status details


@dataclass(frozen=True)
class Partial:
    rejected: int
    message: str


Answer: TypeAlias = str | grpc.StatusCode | Retry | Partial


@dataclass
class Call:
    signal: str
    method: str
    metadata: list[tuple[str, str | bytes]]
    body: bytes

    def header(self, name: str) -> str | bytes | None:
        return next((v for k, v in self.metadata if k == name), None)

    def message(self) -> Message:
        request = SERVICES[self.signal][1]()
        request.ParseFromString(self.body)
        return request


@dataclass
class GrpcCollector:
    port: int = 0
    tls: tuple[bytes, bytes] | None = None  # (certificate PEM, key PEM)
    status: Answer = "ok"
    answers: list[Answer] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    received: list[Call] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _server: grpc.aio.Server | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def attempts(self) -> int:
        return len(self.calls)

    async def start(self) -> GrpcCollector:
        # Without SO_REUSEPORT a port another test still holds fails here, not oddly later.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        for signal, (service, _, _, _) in SERVICES.items():
            handler = grpc.unary_unary_rpc_method_handler(
                self._handler(signal, f"/{service.full_name}/Export"),
                request_deserializer=None,  # the raw bytes, exactly as sent
                response_serializer=None,
            )
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service.full_name, {"Export": handler}),)
            )
        address = f"127.0.0.1:{self.port}"
        if self.tls:
            cert, key = self.tls
            self.port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        else:
            self.port = server.add_insecure_port(address)
        await server.start()
        self._server = server
        return self

    async def close(self) -> None:
        self.release.set()
        if self._server is not None:
            await self._server.stop(None)
            self._server = None

    def bodies(self, signal: str | None = None) -> list[bytes]:
        return [c.body for c in self.received if signal is None or c.signal == signal]

    def _handler(self, signal: str, method: str):
        response_type, count_field = SERVICES[signal][2], SERVICES[signal][3]

        async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            call = Call(signal, method, [(m.key, m.value) for m in context.invocation_metadata() or ()], request)
            self.calls.append(call)
            answer = self.answers.pop(0) if self.answers else self.status
            if answer == "stall":
                await self.release.wait()
                answer = "ok"
            if isinstance(answer, grpc.StatusCode):
                await context.abort(answer, f"scripted {answer.name}")
            if isinstance(answer, Retry):
                await context.abort(answer.code, "scripted retry", trailing_metadata=_retry_trailer(answer))
            self.received.append(call)
            response: Any = response_type()
            if isinstance(answer, Partial):
                setattr(response.partial_success, count_field, answer.rejected)
                response.partial_success.error_message = answer.message
            return response.SerializeToString()

        return export


def _retry_trailer(retry: Retry) -> tuple[tuple[str, bytes], ...]:
    seconds = int(retry.delay_s)
    info = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=seconds, nanos=int((retry.delay_s - seconds) * 1e9))
    )
    if retry.in_trailer:
        return (("google.rpc.retryinfo-bin", info.SerializeToString()),)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=retry.code.value[0], message="scripted retry", details=[detail])
    return (("grpc-status-details-bin", status.SerializeToString()),)
