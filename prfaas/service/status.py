"""Errors cross the wire once, as canonical status codes with a message that says what to fix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import grpc

from prfaas.telemetry.metrics import ERRORS

SERVICE = {"name": "in-process"}  # set once by run_service; labels the error counter
RETRY_AFTER_KEY = "retry-after-ms"  # trailing metadata on RESOURCE_EXHAUSTED; the SDK waits at least this long
RETRY_AFTER_MS = 500  # the hint a worker gives when its queue is full


async def abort(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    trailing_metadata: Sequence[tuple[str, str]] = (),
) -> NoReturn:
    ERRORS.labels(SERVICE["name"], code.name).inc()
    await context.abort(code, message, tuple(trailing_metadata))
    raise AssertionError("context.abort returned")  # grpc raises; this keeps the type checker honest


async def shed(context: grpc.aio.ServicerContext, message: str, retry_after_ms: int = RETRY_AFTER_MS) -> NoReturn:
    """Refuse a request because a bounded queue is full: RESOURCE_EXHAUSTED with a `retry-after-ms` hint."""
    await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, message, [(RETRY_AFTER_KEY, str(retry_after_ms))])


async def refuse(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """End a call with `code`; a full queue (RESOURCE_EXHAUSTED) carries the retry hint."""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        await shed(context, message)
    await abort(context, code, message)
