"""Bearer-token authentication as a server interceptor.

The guarded services' RPCs need `authorization: Bearer <token>` (compared in constant time); health
checks and reflection stay open so orchestrators can probe the port without the secret.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from prfaas.service.status import abort

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls to `services` (full names, e.g. "prfaas.v1.RouterService") without the right token."""

    def __init__(self, token: str, services: Sequence[str]) -> None:
        if not token:
            raise ValueError("a bearer token must be non-empty")
        self._expected = token.encode()
        self._prefixes = tuple(f"/{name}/" for name in services)

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self._prefixes):
            return handler
        problem = self.check(details.invocation_metadata or ())
        return handler if problem is None else _refusal(handler, problem)

    def check(self, metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
        """None when the metadata carries the right token, else what is wrong with it."""
        values = [v for k, v in metadata if k == "authorization" and isinstance(v, str)]
        if not values:
            return "missing bearer token: send the metadata `authorization: Bearer <token>` (SDK: token=...)"
        scheme, _, presented = values[0].partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return "malformed authorization metadata: expected `Bearer <token>`"
        if not hmac.compare_digest(presented.strip().encode(), self._expected):
            return "invalid bearer token"
        return None


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED without running it."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context, grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await abort(context, grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # never reached: an async generator, as response-streaming handlers are

    wrap = {
        "unary_unary": (grpc.unary_unary_rpc_method_handler, refuse),
        "unary_stream": (grpc.unary_stream_rpc_method_handler, refuse_stream),
        "stream_unary": (grpc.stream_unary_rpc_method_handler, refuse),
        "stream_stream": (grpc.stream_stream_rpc_method_handler, refuse_stream),
    }
    make, behavior = next(v for k, v in wrap.items() if getattr(handler, k) is not None)
    return make(behavior, handler.request_deserializer, handler.response_serializer)
