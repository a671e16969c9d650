"""The SDK's exception tree, mapped once from canonical gRPC status codes.

Every failed call raises exactly one `PrfaasError` subclass; callers never see `grpc.RpcError`.

    PrfaasError
    ├── InvalidRequestError    INVALID_ARGUMENT, OUT_OF_RANGE, FAILED_PRECONDITION
    ├── AuthenticationError    UNAUTHENTICATED, PERMISSION_DENIED
    ├── OverloadedError        RESOURCE_EXHAUSTED (retry_after_s from trailing `retry-after-ms`)
    ├── UnavailableError       UNAVAILABLE
    ├── DeadlineExceededError  DEADLINE_EXCEEDED
    ├── RequestCancelledError  CANCELLED
    ├── NotFoundError          NOT_FOUND
    └── InternalError          everything else
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import grpc

RETRY_AFTER_KEY = "retry-after-ms"


class PrfaasError(Exception):
    """A failed call: the gRPC status `code`, the server's `message` and its trailing metadata (`details`)."""

    def __init__(self, code: grpc.StatusCode, message: str, details: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{code.name}: {message}" if message else code.name)
        self.code = code
        self.message = message
        self.details: Mapping[str, str] = dict(details or {})


class InvalidRequestError(PrfaasError):
    """The request was rejected as malformed or impossible to serve; retrying it unchanged will not help."""


class AuthenticationError(PrfaasError):
    """The bearer token is missing, invalid, or lacks permission for this call."""


class OverloadedError(PrfaasError):
    """The service shed the request; `retry_after_s` is the server's hint, when it gave one."""

    def __init__(self, code: grpc.StatusCode, message: str, details: Mapping[str, str] | None = None) -> None:
        super().__init__(code, message, details)
        self.retry_after_s: float | None = parse_retry_after_s(self.details.get(RETRY_AFTER_KEY))


class UnavailableError(PrfaasError):
    """The service could not be reached or is restarting; safe to retry."""


class DeadlineExceededError(PrfaasError):
    """The call's deadline passed before it finished."""


class RequestCancelledError(PrfaasError):
    """The call was cancelled (named so as not to shadow `asyncio.CancelledError`)."""


class NotFoundError(PrfaasError):
    """A resource the request names does not exist."""


class InternalError(PrfaasError):
    """Any other failure: a bug or an unexpected condition on the server."""


_BY_CODE: dict[grpc.StatusCode, type[PrfaasError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequestError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OverloadedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
}


def from_rpc_error(err: grpc.aio.AioRpcError | grpc.RpcError) -> PrfaasError:
    """Map a failed gRPC call (async or sync) to the matching `PrfaasError` subclass."""
    code = _call_attr(err, "code") or grpc.StatusCode.UNKNOWN
    message = str(_call_attr(err, "details") or "")
    details = _text_metadata(_call_attr(err, "trailing_metadata") or ())
    return _BY_CODE.get(code, InternalError)(code, message, details)


def parse_retry_after_s(value: str | None) -> float | None:
    """`retry-after-ms` metadata as seconds; None when absent or not a finite non-negative number."""
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        return None
    return ms / 1000 if math.isfinite(ms) and ms >= 0 else None


def _call_attr(err: grpc.RpcError, name: str) -> Any:
    """`err.<name>()` where the error is also a `grpc.Call` (it always is for real calls), else None."""
    method = getattr(err, name, None)
    return method() if callable(method) else None


def _text_metadata(pairs: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """Text-valued metadata entries; binary (`-bin`) values are dropped."""
    return {key: value for key, value in pairs if isinstance(value, str)}
