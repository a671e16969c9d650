"""Malformed request bytes answer INVALID_ARGUMENT, not UNKNOWN.

grpc parses a request before the servicer runs; a parse failure surfaces as UNKNOWN ("Unexpected
DecodeError"), which reads like a server bug. This interceptor makes every handler's parser lenient (a
failure becomes a `Malformed` marker) and refuses the marker with INVALID_ARGUMENT before the servicer
sees it. Raw-bytes handlers (no parser, e.g. `TransferKv`) check their own messages and are left alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from prfaas.service.status import abort

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
OPEN_PREFIXES = ("/grpc.health", "/grpc.reflection")  # grpc's own services keep their handlers


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request message that did not parse."""

    error: str


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        return _lenient(handler, details.method)


def _parser(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def lenient(raw: bytes) -> Any:
        try:
            return parse(raw)
        except DecodeError as exc:
            return Malformed(str(exc))

    return lenient


async def _refuse(context: grpc.aio.ServicerContext, method: str, bad: Malformed) -> NoReturn:
    name = method.rsplit("/", 1)[-1]
    await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed {name} request message: {bad.error}")


def _lenient(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, Malformed):
                await _refuse(context, method, request)
            yield request

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            await _refuse(context, method, request)
        return await handler.unary_unary(request, context)

    async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if isinstance(request, Malformed):
            await _refuse(context, method, request)
        async for response in handler.unary_stream(request, context):
            yield response

    async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        return await handler.stream_unary(checked(requests, context), context)

    async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for response in handler.stream_stream(checked(requests, context), context):
            yield response

    parse, serialize = _parser(handler.request_deserializer), handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary_unary, parse, serialize)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(unary_stream, parse, serialize)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(stream_unary, parse, serialize)
    return grpc.stream_stream_rpc_method_handler(stream_stream, parse, serialize)
