"""Errors cross the wire once, as canonical status codes with a message that says what to fix."""

from __future__ import annotations

from typing import NoReturn

import grpc

from prfaas.telemetry.metrics import ERRORS

SERVICE = {"name": "in-process"}  # set once by run_service; labels the error counter


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    ERRORS.labels(SERVICE["name"], code.name).inc()
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # grpc raises; this keeps the type checker honest
