"""prfaas.client.errors: status code to exception mapping, without a server."""

from __future__ import annotations

import grpc
import pytest

from prfaas.client.errors import (
    InternalError,
    InvalidRequestError,
    OverloadedError,
    UnavailableError,
    from_rpc_error,
    parse_retry_after_s,
)


def _aio_error(code: grpc.StatusCode, message: str, *trailing: tuple[str, str | bytes]) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), message)


def test_maps_code_message_and_text_metadata() -> None:
    err = from_rpc_error(_aio_error(grpc.StatusCode.OUT_OF_RANGE, "prompt too long", ("k", "v"), ("blob-bin", b"\x00")))
    assert isinstance(err, InvalidRequestError)
    assert (err.code, err.message, dict(err.details)) == (grpc.StatusCode.OUT_OF_RANGE, "prompt too long", {"k": "v"})
    assert str(err) == "OUT_OF_RANGE: prompt too long"


def test_overloaded_parses_retry_after() -> None:
    err = from_rpc_error(_aio_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", ("retry-after-ms", "1500")))
    assert isinstance(err, OverloadedError)
    assert err.retry_after_s == 1.5
    bare = from_rpc_error(_aio_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "full"))
    assert isinstance(bare, OverloadedError) and bare.retry_after_s is None


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("250", 0.25), ("12.5", 0.0125), (None, None)])
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after_s(value) == expected


@pytest.mark.parametrize("value", ["", "soon", "-5", "nan", "inf"])
def test_parse_retry_after_rejects_garbage(value: str) -> None:
    assert parse_retry_after_s(value) is None


def test_bare_rpc_error_is_internal_unknown() -> None:
    err = from_rpc_error(grpc.RpcError())
    assert isinstance(err, InternalError)
    assert (err.code, err.message, dict(err.details)) == (grpc.StatusCode.UNKNOWN, "", {})
    assert str(err) == "UNKNOWN"


def test_empty_message_keeps_the_code_readable() -> None:
    err = from_rpc_error(_aio_error(grpc.StatusCode.UNAVAILABLE, ""))
    assert isinstance(err, UnavailableError) and str(err) == "UNAVAILABLE"
