"""OpenTelemetry tracing for every service: one request is one trace across router, cache pools,
prefill worker and decode worker.

Exporters are chosen by the standard variables: `OTEL_TRACES_EXPORTER` = `otlp` (gRPC, to
`OTEL_EXPORTER_OTLP_ENDPOINT`), `console` or `none`; when it is unset, `otlp` is used if an OTLP
endpoint is set and nothing otherwise. `OTEL_SERVICE_NAME` names the service. W3C trace context
crosses every RPC in gRPC metadata: client interceptors inject the current context, the server
interceptor starts a SERVER span for each RPC as a child of the caller's span.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

TRACER_NAME = "prfaas"


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def _exporter() -> SpanExporter | None:
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not kind:
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        kind = "otlp" if endpoint else "none"
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter()
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER={kind!r} is not supported: use otlp, console or none")


def setup_tracing(default_service_name: str) -> TracerProvider | None:
    """Install a tracer provider for this process (None when tracing is off). Call `shutdown()` on exit."""
    exporter = _exporter()
    if exporter is None:
        return None
    name = os.environ.get("OTEL_SERVICE_NAME", default_service_name)
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


# -- propagation over gRPC metadata ---------------------------------------------------------------
def _inject(metadata: Any) -> grpc.aio.Metadata:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    md = grpc.aio.Metadata(*tuple(metadata or ()))
    for key, value in carrier.items():
        md.add(key, value)
    return md


def _with_context(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, _inject(details.metadata), details.credentials, details.wait_for_ready
    )


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_context(details), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_context(details), request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(_with_context(details), request_iterator)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(_with_context(details), request_iterator)


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    return [_UnaryUnary(), _UnaryStream(), _StreamUnary(), _StreamStream()]


class ServerTracingInterceptor(grpc.aio.ServerInterceptor):
    """Starts a SERVER span per RPC, parented by the W3C context in the call's metadata."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(("/grpc.health", "/grpc.reflection")):
            return handler
        carrier = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        name = details.method.lstrip("/")
        return _wrap(handler, name, carrier)


def _wrap(handler: grpc.RpcMethodHandler, name: str, carrier: dict[str, str]) -> grpc.RpcMethodHandler:
    def span() -> Any:
        return tracer().start_as_current_span(
            name,
            context=propagate.extract(carrier),
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.method": name},
        )

    def unary(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def run(request: Any, ctx: grpc.aio.ServicerContext) -> Any:
            with span():
                return await fn(request, ctx)

        return run

    def streaming(fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def run(request: Any, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            with span():
                async for item in fn(request, ctx):
                    yield item

        return run

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            streaming(handler.unary_stream), handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        streaming(handler.stream_stream), handler.request_deserializer, handler.response_serializer
    )
