"""prfaas.client.retry and prfaas.client.call: when a call is retried, for how long, under which deadline."""

from __future__ import annotations

import grpc
import pytest

from prfaas.client.call import CallOptions, GenerateCall
from prfaas.client.errors import InvalidRequestError, OverloadedError, UnavailableError
from prfaas.client.retry import RetryPolicy
from prfaas.client.types import Sampling
from prfaas.v1 import common_pb2, router_pb2

UNAVAILABLE = UnavailableError(grpc.StatusCode.UNAVAILABLE, "down")


def _rpc_error(code: grpc.StatusCode, *trailing: tuple[str, str]) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), "x")


def _call(timeout_s: float | None, policy: RetryPolicy) -> GenerateCall:
    return GenerateCall(router_pb2.GenerateRequest(request_id="r"), (), timeout_s, policy)


@pytest.mark.parametrize(("retry", "low_s", "high_s"), [(1, 0.05, 0.1), (2, 0.1, 0.2), (3, 0.2, 0.4), (5, 0.25, 0.5)])
def test_backoff_doubles_with_jitter_and_a_cap(retry: int, low_s: float, high_s: float) -> None:
    policy = RetryPolicy(retries=5, backoff_s=0.1, max_backoff_s=0.5)
    delays_s = [policy.delay_s(retry, UNAVAILABLE) for _ in range(50)]
    assert all(d is not None and low_s <= d <= high_s for d in delays_s)
    assert len(set(delays_s)) > 1


def test_only_unavailable_and_overloaded_retry_within_the_limit() -> None:
    policy = RetryPolicy(retries=2)
    invalid = InvalidRequestError(grpc.StatusCode.INVALID_ARGUMENT, "bad")
    overloaded = OverloadedError(grpc.StatusCode.RESOURCE_EXHAUSTED, "full")
    assert policy.delay_s(1, invalid) is None
    assert policy.delay_s(2, overloaded) is not None
    assert policy.delay_s(3, UNAVAILABLE) is None


def test_retry_after_is_a_lower_bound() -> None:
    overloaded = OverloadedError(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", {"retry-after-ms": "700"})
    assert RetryPolicy(backoff_s=0.01).delay_s(1, overloaded) == 0.7


@pytest.mark.parametrize("kwargs", [{"retries": -1}, {"backoff_s": -0.1}, {"max_backoff_s": -1.0}])
def test_policy_rejects_negative_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_call_retries_until_the_policy_stops() -> None:
    call = _call(None, RetryPolicy(retries=2, backoff_s=0.0))
    assert call.backoff_s(_rpc_error(grpc.StatusCode.UNAVAILABLE)) == 0.0
    assert call.backoff_s(_rpc_error(grpc.StatusCode.UNAVAILABLE)) == 0.0
    with pytest.raises(UnavailableError):
        call.backoff_s(_rpc_error(grpc.StatusCode.UNAVAILABLE))


def test_call_without_resume_never_retries_after_a_response() -> None:
    call = _call(None, RetryPolicy(retries=3, backoff_s=0.0, resume=False))
    chunk = call.received(router_pb2.GenerateResponse(token_ids=[4], text="a"))
    assert (chunk.token_ids, chunk.text) == ((4,), "a")
    with pytest.raises(UnavailableError) as caught:
        call.backoff_s(_rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert isinstance(caught.value.__cause__, grpc.aio.AioRpcError)


def test_call_resumes_after_the_tokens_received_but_not_after_the_last_message() -> None:
    call = _call(None, RetryPolicy(retries=3, backoff_s=0.0))
    call.received(router_pb2.GenerateResponse(route=router_pb2.RouteInfo()))  # route first, no token yet
    with pytest.raises(UnavailableError):  # nothing to resume after: the request may have been half-served
        call.backoff_s(_rpc_error(grpc.StatusCode.UNAVAILABLE))
    call.received(router_pb2.GenerateResponse(token_ids=[4, 5]))
    assert call.backoff_s(_rpc_error(grpc.StatusCode.UNAVAILABLE)) == 0.0
    request, _ = call.attempt()
    assert list(request.resume_token_ids) == [4, 5] and list(call.request.resume_token_ids) == []
    call.received(router_pb2.GenerateResponse(token_ids=[6], finish_reason=common_pb2.FINISH_REASON_LENGTH))
    with pytest.raises(UnavailableError):  # the stream was complete
        call.backoff_s(_rpc_error(grpc.StatusCode.UNAVAILABLE))


def test_call_does_not_wait_past_its_deadline() -> None:
    call = _call(0.5, RetryPolicy(retries=3))
    with pytest.raises(OverloadedError):
        call.backoff_s(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, ("retry-after-ms", "1000")))


def test_attempt_sends_the_time_left() -> None:
    request, timeout_s = _call(2.0, RetryPolicy()).attempt()
    assert timeout_s is not None and 1.9 < timeout_s <= 2.0
    assert 1900 < request.timeout_ms <= 2000 and request.request_id == "r"
    request, timeout_s = _call(None, RetryPolicy()).attempt()
    assert (timeout_s, request.timeout_ms) == (None, 0)


def test_options_fill_defaults() -> None:
    options = CallOptions("tok", 3.0, RetryPolicy())
    call = options.new_call([1, 2], None, tenant_id=None, request_id=None, timeout_s=None)
    assert call.metadata == (("authorization", "Bearer tok"),)
    assert call.request_id.startswith("req-")
    assert call.request.sampling.max_new_tokens == Sampling().max_new_tokens
    assert CallOptions(None, None, RetryPolicy()).metadata() == ()
    with pytest.raises(ValueError, match="timeout_s"):
        CallOptions(None, 0, RetryPolicy())
