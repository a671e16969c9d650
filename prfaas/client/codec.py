"""Conversion between the SDK's value objects and `prfaas.v1` messages, shared by both clients."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from prfaas.client.types import (
    FinishReason,
    GenerationChunk,
    GenerationResult,
    RouteInfo,
    RouteName,
    Sampling,
)
from prfaas.v1 import common_pb2, router_pb2

Prompt = str | Sequence[int]

_ROUTES: dict[int, RouteName] = {
    common_pb2.ROUTE_UNSPECIFIED: "unspecified",
    common_pb2.ROUTE_PRFAAS: "prfaas",
    common_pb2.ROUTE_LOCAL: "local",
}
_FINISH_REASONS: dict[int, FinishReason] = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
}


def new_request_id() -> str:
    """A fresh request id; the same id is sent on every retry so the server can dedupe."""
    return f"req-{uuid.uuid4().hex}"


def encode_request(
    prompt: Prompt, sampling: Sampling, *, request_id: str, tenant_id: str | None
) -> router_pb2.GenerateRequest:
    """A `GenerateRequest` (without `timeout_ms`, which each attempt sets); text or ids go into the oneof."""
    request = router_pb2.GenerateRequest(
        request_id=request_id, tenant_id=tenant_id or "", sampling=encode_sampling(sampling)
    )
    if isinstance(prompt, str):
        request.text = prompt
    else:
        request.token_ids.ids.extend(prompt)
    return request


def encode_sampling(sampling: Sampling) -> common_pb2.SamplingParams:
    """`Sampling` as its wire message."""
    return common_pb2.SamplingParams(
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=sampling.seed,
        stop_token_ids=sampling.stop_token_ids,
        ignore_eos=sampling.ignore_eos,
    )


def decode_chunk(message: router_pb2.GenerateResponse) -> GenerationChunk:
    """One `GenerateResponse` as a `GenerationChunk`; unset route / finish reason become None."""
    return GenerationChunk(
        token_ids=tuple(message.token_ids),
        text=message.text,
        finish_reason=_FINISH_REASONS.get(message.finish_reason),
        route=decode_route(message.route) if message.HasField("route") else None,
    )


def decode_route(info: router_pb2.RouteInfo) -> RouteInfo:
    """`RouteInfo` from its wire message; an unknown enum value reads as "unspecified"."""
    return RouteInfo(
        route=_ROUTES.get(info.route, "unspecified"),
        reason=info.reason,
        cached_tokens=info.cached_tokens,
        kv_bytes=info.kv_bytes,
        ttft_s=info.ttft_s,
        prompt_tokens=info.prompt_tokens,
        prefill_worker=info.prefill_worker,
        decode_worker=info.decode_worker,
        route_s=info.route_s,
        queue_s=info.queue_s,
        prefill_s=info.prefill_s,
        transfer_tail_s=info.transfer_tail_s,
        decode_admit_s=info.decode_admit_s,
    )


class ResultCollector:
    """Folds a stream of chunks into one `GenerationResult`; the clock starts at construction."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._started_s = time.perf_counter()
        self._token_ids: list[int] = []
        self._texts: list[str] = []
        self._finish_reason: FinishReason | None = None
        self._route: RouteInfo | None = None

    def add(self, chunk: GenerationChunk) -> None:
        """Append a chunk's tokens and text; keep the first route and the last finish reason."""
        self._token_ids.extend(chunk.token_ids)
        self._texts.append(chunk.text)
        self._route = self._route or chunk.route
        self._finish_reason = chunk.finish_reason or self._finish_reason

    def result(self) -> GenerationResult:
        """The collected generation."""
        return GenerationResult(
            request_id=self.request_id,
            token_ids=tuple(self._token_ids),
            text="".join(self._texts),
            finish_reason=self._finish_reason,
            route=self._route,
            elapsed_s=time.perf_counter() - self._started_s,
        )
