"""Errors in the shape the OpenAI SDKs parse: `{"error": {"message", "type", "param", "code"}}`, with the HTTP
status that names the problem, and the router's gRPC status codes mapped onto it once, here."""

from __future__ import annotations

import math

import grpc

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.ABORTED: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class ApiError(Exception):
    """A request the API refuses or cannot serve: HTTP `status`, a message saying what to fix, the request
    field at fault (`param`), a machine-readable `code`, and on overload (429) how long to wait."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None, retry_after_ms: int = 0
    ) -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.retry_after_ms = status, param, code, retry_after_ms

    def body(self) -> dict[str, object]:
        kind = _TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """`Retry-After` (whole seconds, rounded up) and `retry-after-ms`, which the OpenAI SDKs read, on 429."""
        if self.status != 429:
            return {}
        seconds = math.ceil(self.retry_after_ms / 1000)
        return {"Retry-After": str(seconds), "retry-after-ms": str(self.retry_after_ms)}


def from_status(code: grpc.StatusCode, message: str, retry_after_ms: int | None = None) -> ApiError:
    """The router's status as the HTTP error the client gets; the code name travels as `code`."""
    status = HTTP_STATUS.get(code, 500)
    return ApiError(status, message, code=code.name.lower(), retry_after_ms=retry_after_ms or 0)
