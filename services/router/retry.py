"""When the router starts a request again after a worker failed, and what the new attempt carries."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from prfaas.engine.validation import DEFAULT_MAX_NEW_TOKENS
from prfaas.v1 import common_pb2

PREFILL_STAGE, DECODE_STAGE = "prefill", "decode"  # which call of an attempt failed

# A worker or the path to it failed; the request itself is fine and may be served elsewhere.
RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED}
)
TRANSFER_FAILED = "KV transfer to "  # how a prefill worker reports a transfer it could not complete


@dataclass(frozen=True, slots=True)
class Failure:
    """What broke an attempt: which call (`stage`), on which worker, with which status."""

    stage: str
    address: str
    code: grpc.StatusCode
    details: str

    @classmethod
    def of(cls, stage: str, address: str, exc: grpc.aio.AioRpcError) -> Failure:
        return cls(stage, address, exc.code(), exc.details() or "")

    def describe(self) -> str:
        return f"{self.stage} on {self.address}: {self.code.name}: {self.details}"

    @property
    def worker_down(self) -> bool:
        """Whether the worker itself is to blame (so the router stops choosing it until it answers health
        checks again). A prefill worker reporting a failed transfer is alive: the decode side or the link
        failed, and the next attempt's probes find out which. ABORTED is a worker dropping one request (a
        KV lease that expired), not a dead worker."""
        if self.code not in RETRYABLE or self.code == grpc.StatusCode.ABORTED:
            return False
        return not (self.stage == PREFILL_STAGE and self.details.startswith(TRANSFER_FAILED))


class AttemptFailed(Exception):
    """An attempt's call failed: `failure` says where, `error` is the worker's status (trailers included)."""

    def __init__(self, failure: Failure, error: grpc.aio.AioRpcError) -> None:
        super().__init__(failure.describe())
        self.failure = failure
        self.error = error

    @classmethod
    def of(cls, stage: str, address: str, exc: grpc.aio.AioRpcError) -> AttemptFailed:
        return cls(Failure.of(stage, address, exc), exc)


def should_retry(failure: Failure, attempt: int, max_attempts: int, remaining_s: float) -> bool:
    """Retry rule: a request is started again (prefill and decode, on the workers the routing policy picks
    among the healthy ones) when its attempt failed with a retryable status (UNAVAILABLE, DEADLINE_EXCEEDED
    of the attempt, ABORTED, CANCELLED, or a transfer the decode worker held no registration for because
    it restarted), fewer than `max_attempts` attempts were made and the request's own deadline leaves
    time. Anything else (bad input, overload with its retry-after hint) is the client's to see as is."""
    lost_registration = failure.code == grpc.StatusCode.NOT_FOUND and failure.details.startswith(TRANSFER_FAILED)
    retryable = failure.code in RETRYABLE or lost_registration  # a decode worker restarted under the attempt
    return retryable and attempt + 1 < max_attempts and remaining_s > 0.05


def attempt_id(request_id: str, call: str, attempt: int) -> str:
    """The id an attempt uses on the workers: `<request id>:<call>.<attempt>`, where `call` is unique to
    one Generate call. Every attempt has its own, so nothing left of an abandoned attempt (a half-imported
    state, a late chunk, a stale transfer) can touch the next one, not even when the client retries the
    request with the same id while the workers are still dropping the previous call's state."""
    return f"{request_id[: 126 - len(call) - len(str(attempt))]}:{call}.{attempt}"


def resumed(
    prompt: list[int], generated: list[int], sampling: common_pb2.SamplingParams
) -> tuple[list[int], common_pb2.SamplingParams]:
    """The prompt and sampling of an attempt that continues after `generated` tokens: the new attempt
    prefills prompt + generated and produces only what is left. Greedy or seeded, the continuation is the
    tokens the lost worker would have produced (a sampled token's draw is seeded by its position in the
    sequence, `prfaas.engine.sampling`)."""
    left = common_pb2.SamplingParams()
    left.CopyFrom(sampling)
    left.max_new_tokens = (sampling.max_new_tokens or DEFAULT_MAX_NEW_TOKENS) - len(generated)
    return [*prompt, *generated], left


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """A status raised by the router itself, shaped like a worker's."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)
