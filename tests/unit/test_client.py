"""The SDK against a real grpc.aio server on 127.0.0.1:0 serving a scripted fake router."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from prfaas.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    DeadlineExceededError,
    GenerationChunk,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PrfaasError,
    RequestCancelledError,
    RouteInfo,
    Sampling,
    UnavailableError,
)
from prfaas.v1 import common_pb2, router_pb2, router_pb2_grpc

ROUTE = router_pb2.RouteInfo(
    route=common_pb2.ROUTE_PRFAAS,
    reason="long uncached prompt",
    cached_tokens=4,
    kv_bytes=4096,
    ttft_s=0.25,
    prompt_tokens=3,
    prefill_worker="prefill-0",
    decode_worker="decode-1:50061",
)
RESPONSES = (
    router_pb2.GenerateResponse(token_ids=[11, 12], text="Hel", route=ROUTE),
    router_pb2.GenerateResponse(token_ids=[13], text="lo"),
    router_pb2.GenerateResponse(token_ids=[14], text=" !", finish_reason=common_pb2.FINISH_REASON_LENGTH),
)
EXPECTED_ROUTE = RouteInfo(
    route="prfaas",
    reason="long uncached prompt",
    cached_tokens=4,
    kv_bytes=4096,
    ttft_s=0.25,
    prompt_tokens=3,
    prefill_worker="prefill-0",
    decode_worker="decode-1:50061",
)
EXPECTED_CHUNKS = [
    GenerationChunk(token_ids=(11, 12), text="Hel", finish_reason=None, route=EXPECTED_ROUTE),
    GenerationChunk(token_ids=(13,), text="lo"),
    GenerationChunk(token_ids=(14,), text=" !", finish_reason="length"),
]


@dataclass(frozen=True)
class Step:
    """What the fake does on one call: optionally sleep, then fail with `code` after `after_messages`."""

    code: grpc.StatusCode | None = None
    message: str = ""
    trailing: tuple[tuple[str, str], ...] = ()
    after_messages: int = 0
    sleep_s: float = 0.0
    hang_after_first: bool = False


class FakeRouter(router_pb2_grpc.RouterServiceServicer):
    """Records each call; plays `steps` one per call, then answers RESPONSES."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.requests: list[router_pb2.GenerateRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.cancelled = asyncio.Event()

    async def Generate(
        self, request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        self.requests.append(request)
        self.metadata.append({key: value for key, value in context.invocation_metadata()})
        step = self.steps.pop(0) if self.steps else Step()
        await asyncio.sleep(step.sleep_s)
        skip = len(request.resume_token_ids)  # a resumed call continues after what the client has
        for index, response in enumerate(RESPONSES):
            if skip >= len(response.token_ids):
                skip -= len(response.token_ids)
                continue
            if step.code is not None and index == step.after_messages:
                await context.abort(step.code, step.message, trailing_metadata=step.trailing)
            yield response
            if step.hang_after_first:
                try:
                    await asyncio.sleep(30)
                finally:
                    self.cancelled.set()


@pytest.fixture
def router() -> FakeRouter:
    return FakeRouter()


@pytest.fixture
async def target(router: FakeRouter) -> AsyncIterator[str]:
    server = grpc.aio.server()
    router_pb2_grpc.add_RouterServiceServicer_to_server(router, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(grace=None)


async def test_generate_collects_the_stream(target: str) -> None:
    async with AsyncClient(target) as client:
        result = await client.generate([1, 2, 3], request_id="r-1")
    assert result.request_id == "r-1"
    assert result.token_ids == (11, 12, 13, 14)
    assert result.text == "Hello !"
    assert result.finish_reason == "length"
    assert result.route == EXPECTED_ROUTE
    assert result.elapsed_s > 0


async def test_stream_yields_each_message(target: str) -> None:
    async with AsyncClient(target) as client:
        chunks = [chunk async for chunk in client.stream("Hello")]
    assert chunks == EXPECTED_CHUNKS


async def test_prompt_fills_the_oneof(target: str, router: FakeRouter) -> None:
    async with AsyncClient(target) as client:
        await client.generate("Hello")
        await client.generate([5, 6, 7])
    text, ids = router.requests
    assert text.WhichOneof("prompt") == "text" and text.text == "Hello"
    assert ids.WhichOneof("prompt") == "token_ids" and list(ids.token_ids.ids) == [5, 6, 7]


async def test_request_fields_arrive(target: str, router: FakeRouter) -> None:
    sampling = Sampling(max_new_tokens=7, temperature=0.5, top_p=0.75, seed=9, stop_token_ids=[2, 3])
    async with AsyncClient(target) as client:
        await client.generate([1], Sampling(ignore_eos=True))
        await client.generate([1], sampling, tenant_id="acme", request_id="r-7")
    default, custom = router.requests
    assert default.sampling == common_pb2.SamplingParams(max_new_tokens=32, top_p=1.0, ignore_eos=True)
    assert default.tenant_id == "" and default.request_id.startswith("req-")
    assert custom.sampling == common_pb2.SamplingParams(
        max_new_tokens=7, temperature=0.5, top_p=0.75, seed=9, stop_token_ids=[2, 3]
    )
    assert (custom.tenant_id, custom.request_id) == ("acme", "r-7")


async def test_deadline_is_sent_as_timeout_ms(target: str, router: FakeRouter) -> None:
    async with AsyncClient(target, timeout_s=30) as client:
        await client.generate([1])
        await client.generate([1], timeout_s=2)
    async with AsyncClient(target, timeout_s=None) as client:
        await client.generate([1])
    assert 29_000 < router.requests[0].timeout_ms <= 30_000
    assert 1_000 < router.requests[1].timeout_ms <= 2_000
    assert router.requests[2].timeout_ms == 0


async def test_bearer_token_arrives_in_metadata(target: str, router: FakeRouter) -> None:
    async with AsyncClient(target, token="s3cret") as client:
        await client.generate([1])
    async with AsyncClient(target) as client:
        await client.generate([1])
    assert router.metadata[0]["authorization"] == "Bearer s3cret"
    assert "authorization" not in router.metadata[1]


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequestError),
        (grpc.StatusCode.OUT_OF_RANGE, InvalidRequestError),
        (grpc.StatusCode.FAILED_PRECONDITION, InvalidRequestError),
        (grpc.StatusCode.UNAUTHENTICATED, AuthenticationError),
        (grpc.StatusCode.PERMISSION_DENIED, AuthenticationError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, OverloadedError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.CANCELLED, RequestCancelledError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.UNKNOWN, InternalError),
        (grpc.StatusCode.UNIMPLEMENTED, InternalError),
    ],
)
async def test_status_codes_map_to_errors(
    target: str, router: FakeRouter, code: grpc.StatusCode, error_type: type[PrfaasError]
) -> None:
    router.steps = [Step(code, f"boom: {code.name}")]
    async with AsyncClient(target, retries=0) as client:
        with pytest.raises(error_type) as caught:
            await client.generate([1])
    assert type(caught.value) is error_type
    assert caught.value.code == code
    assert caught.value.message == f"boom: {code.name}"


async def test_unavailable_is_retried_with_the_same_request_id(target: str, router: FakeRouter) -> None:
    router.steps = [Step(grpc.StatusCode.UNAVAILABLE, "restarting")] * 2
    async with AsyncClient(target, retries=2, backoff_s=0.001) as client:
        result = await client.generate([1])
    assert result.token_ids == (11, 12, 13, 14)
    assert [r.request_id for r in router.requests] == [result.request_id] * 3


async def test_retries_stop_after_the_limit(target: str, router: FakeRouter) -> None:
    router.steps = [Step(grpc.StatusCode.UNAVAILABLE, "down")] * 5
    async with AsyncClient(target, retries=2, backoff_s=0.001) as client:
        with pytest.raises(UnavailableError, match="down"):
            await client.generate([1])
    assert len(router.requests) == 3


async def test_stream_that_yielded_tokens_is_not_retried_without_resume(target: str, router: FakeRouter) -> None:
    router.steps = [Step(grpc.StatusCode.UNAVAILABLE, "router restarting", after_messages=1)]
    received: list[GenerationChunk] = []
    async with AsyncClient(target, retries=3, backoff_s=0.001, resume=False) as client:
        with pytest.raises(UnavailableError, match="router restarting"):
            async for chunk in client.stream([1]):
                received.append(chunk)
    assert received == EXPECTED_CHUNKS[:1]
    assert len(router.requests) == 1


async def test_a_broken_stream_resumes_after_the_tokens_received(target: str, router: FakeRouter) -> None:
    router.steps = [Step(grpc.StatusCode.UNAVAILABLE, "router restarting", after_messages=1)]
    async with AsyncClient(target, retries=3, backoff_s=0.001) as client:
        chunks = [chunk async for chunk in client.stream([1], request_id="r-9")]
    assert chunks == EXPECTED_CHUNKS  # one unbroken stream, nothing twice
    first, second = router.requests
    assert list(first.resume_token_ids) == [] and list(second.resume_token_ids) == [11, 12]
    assert second.request_id == "r-9" and list(second.token_ids.ids) == [1]


async def test_leaving_a_stream_early_cancels_the_call(target: str, router: FakeRouter) -> None:
    router.steps = [Step(hang_after_first=True)]
    async with AsyncClient(target) as client:
        chunks = client.stream([1])
        assert await anext(chunks) == EXPECTED_CHUNKS[0]
        await chunks.aclose()
        await asyncio.wait_for(router.cancelled.wait(), timeout=2)


async def test_slow_call_raises_deadline_exceeded(target: str, router: FakeRouter) -> None:
    router.steps = [Step(sleep_s=5.0)]
    started_s = time.monotonic()
    async with AsyncClient(target, timeout_s=5) as client:
        with pytest.raises(DeadlineExceededError):
            await client.generate([1], timeout_s=0.2)
    assert time.monotonic() - started_s < 2.0
    assert 0 < router.requests[0].timeout_ms <= 200


async def test_overloaded_reads_retry_after(target: str, router: FakeRouter) -> None:
    router.steps = [Step(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", (("retry-after-ms", "250"),))]
    async with AsyncClient(target, retries=0) as client:
        with pytest.raises(OverloadedError) as caught:
            await client.generate([1])
    assert caught.value.retry_after_s == 0.25
    assert caught.value.details["retry-after-ms"] == "250"


async def test_overloaded_retry_waits_retry_after(target: str, router: FakeRouter) -> None:
    router.steps = [Step(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", (("retry-after-ms", "150"),))]
    started_s = time.monotonic()
    async with AsyncClient(target, retries=1, backoff_s=0.001) as client:
        result = await client.generate([1])
    assert time.monotonic() - started_s >= 0.15
    assert result.finish_reason == "length"
    assert len(router.requests) == 2


def _sync_session(target: str) -> tuple[list[GenerationChunk], tuple[int, ...], PrfaasError]:
    """Stream, generate (after one retried UNAVAILABLE) and fail once with the blocking client."""
    with Client(target, token="tok", retries=1, backoff_s=0.001) as client:
        chunks = list(client.stream("Hello"))
        result = client.generate([1], request_id="sync-1")
        try:
            client.generate([1], request_id="sync-2")
        except PrfaasError as err:
            return chunks, result.token_ids, err
    raise AssertionError("the third call should have failed")


async def test_sync_client(target: str, router: FakeRouter) -> None:
    router.steps = [
        Step(),
        Step(grpc.StatusCode.UNAVAILABLE, "restarting"),
        Step(),
        Step(grpc.StatusCode.INVALID_ARGUMENT, "prompt too long"),
    ]
    chunks, token_ids, error = await asyncio.to_thread(_sync_session, target)
    assert chunks == EXPECTED_CHUNKS
    assert token_ids == (11, 12, 13, 14)
    assert isinstance(error, InvalidRequestError) and error.message == "prompt too long"
    assert [r.request_id for r in router.requests[1:]] == ["sync-1", "sync-1", "sync-2"]
    assert {m["authorization"] for m in router.metadata} == {"Bearer tok"}
