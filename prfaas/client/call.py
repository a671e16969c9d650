"""One logical Generate call across its attempts; the transport-independent half of both clients."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import grpc

from prfaas.client.codec import Prompt, decode_chunk, encode_request, new_request_id
from prfaas.client.errors import from_rpc_error
from prfaas.client.retry import RetryPolicy
from prfaas.client.types import GenerationChunk, Sampling
from prfaas.v1 import router_pb2

Metadata = tuple[tuple[str, str], ...]
_MAX_TIMEOUT_MS = 2**32 - 1  # timeout_ms is a uint32


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Client-wide call settings: bearer token, default timeout (None = no deadline), retry policy."""

    token: str | None
    timeout_s: float | None
    policy: RetryPolicy

    def __post_init__(self) -> None:
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {self.timeout_s}")

    def metadata(self) -> Metadata:
        """Metadata sent with every call: `authorization: Bearer <token>` when a token is set."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def new_call(
        self,
        prompt: Prompt,
        sampling: Sampling | None,
        *,
        tenant_id: str | None,
        request_id: str | None,
        timeout_s: float | None,
    ) -> GenerateCall:
        """Start a call: fill in defaults, build the request once, start the deadline clock."""
        request = encode_request(
            prompt, sampling or Sampling(), request_id=request_id or new_request_id(), tenant_id=tenant_id
        )
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        return GenerateCall(request, self.metadata(), timeout_s, self.policy)


class GenerateCall:
    """The state one `stream()` keeps across attempts.

    Every attempt sends the same request (same request id) under one overall deadline: each attempt's gRPC
    timeout, also sent as `timeout_ms`, is the time left. A failure before any response is retried as is.
    A stream that breaks after tokens arrived (the router restarted) is resumed when the policy allows it:
    the next attempt sends the tokens received so far as `resume_token_ids` and the router continues after
    them, so the caller sees one unbroken stream with the tokens an unbroken call gives (greedy or seeded
    sampling). Nothing already yielded is ever sent twice.
    """

    def __init__(
        self,
        request: router_pb2.GenerateRequest,
        metadata: Metadata,
        timeout_s: float | None,
        policy: RetryPolicy,
    ) -> None:
        self.request = request
        self.metadata = metadata
        self._policy = policy
        self._deadline_s = None if timeout_s is None else time.monotonic() + timeout_s
        self._retries = 0
        self._received = False
        self._tokens: list[int] = []  # output tokens yielded so far
        self._finished = False

    @property
    def request_id(self) -> str:
        """The id shared by every attempt."""
        return self.request.request_id

    def attempt(self) -> tuple[router_pb2.GenerateRequest, float | None]:
        """The request for the next attempt and its gRPC timeout in seconds (None: no deadline)."""
        remaining_s = self._remaining_s()
        if remaining_s is None and not self._tokens:
            return self.request, None
        request = router_pb2.GenerateRequest()
        request.CopyFrom(self.request)
        request.resume_token_ids[:] = self._tokens
        if remaining_s is not None:
            request.timeout_ms = min(_MAX_TIMEOUT_MS, max(1, math.ceil(remaining_s * 1000)))
        return request, remaining_s

    def received(self, message: router_pb2.GenerateResponse) -> GenerationChunk:
        """Record a response (which ends the retry window) and decode it."""
        self._received = True
        chunk = decode_chunk(message)
        self._tokens.extend(chunk.token_ids)
        self._finished = self._finished or chunk.finish_reason is not None
        return chunk

    def backoff_s(self, err: grpc.RpcError) -> float:
        """Seconds to wait before retrying after `err`, or raise it as a `PrfaasError`.

        It is raised when the policy says stop, waiting would pass the deadline, or a response already
        arrived and the stream cannot be resumed (resuming is off, no token came yet to resume after, or
        the last message came).
        """
        error = from_rpc_error(err)
        resumable = self._policy.resume and bool(self._tokens) and not self._finished
        delay_s = None if self._received and not resumable else self._policy.delay_s(self._retries + 1, error)
        remaining_s = self._remaining_s()
        if delay_s is None or (remaining_s is not None and delay_s >= remaining_s):
            raise error from err
        self._retries += 1
        return delay_s

    def _remaining_s(self) -> float | None:
        if self._deadline_s is None:
            return None
        return max(0.0, self._deadline_s - time.monotonic())
