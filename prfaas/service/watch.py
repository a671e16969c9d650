"""The `Watch` RPC of every worker and cache pool: a subscriber's state stream (`prfaas.state`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from prfaas.engine.async_engine import EngineStopped
from prfaas.service.status import abort
from prfaas.state.publisher import StatePublisher
from prfaas.v1 import state_pb2


async def serve_watch(
    publisher: StatePublisher, context: grpc.aio.ServicerContext
) -> AsyncIterator[state_pb2.StateEvent]:
    """The publisher's messages until the server stops (the stream ends) or the subscriber goes away;
    UNAVAILABLE once the engine behind it has stopped."""
    try:
        async with contextlib.aclosing(publisher.watch()) as events:
            async for event in events:
                yield event
    except EngineStopped as exc:
        await abort(context, grpc.StatusCode.UNAVAILABLE, f"state stream: {exc}")
