"""When the router starts a request again after a worker failed, and what the new attempt carries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import grpc

from prfaas.v1 import common_pb2, decode_pb2, prefill_pb2

PREFILL, DECODE = "prefill", "decode"

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
        return not (self.stage == PREFILL and self.details.startswith(TRANSFER_FAILED))


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
    left.max_new_tokens = (sampling.max_new_tokens or 32) - len(generated)
    return [*prompt, *generated], left


async def race(
    decode_call: grpc.aio.UnaryStreamCall,
    prefill: asyncio.Future[prefill_pb2.PrefillResponse],
    decoder: str,
    prefill_worker: str,
    decoder_gone: Awaitable[None],
    liveness_timeout_s: float,
    stall_timeout_s: float,
) -> AsyncIterator[decode_pb2.DecodeResponse]:
    """Decode responses, failing fast if the prefill fails before the first token arrives, if the decode
    worker answers no health check for `liveness_timeout_s` (`decoder_gone` completes: dead, hung or cut
    off), or if its stream, once generating, brings no token for `stall_timeout_s` (every running sequence
    gets a token per decode step, so such a gap is a stuck request, not a busy worker); every failure comes
    out as `AttemptFailed` naming the call and worker that failed."""
    gone = asyncio.ensure_future(decoder_gone)
    gone.add_done_callback(lambda f: f.cancelled() or decode_call.cancel())
    it = decode_call.__aiter__()
    first = asyncio.ensure_future(it.__anext__())
    try:
        await asyncio.wait([first, prefill], return_when=asyncio.FIRST_COMPLETED)
        if prefill.done() and not first.done() and isinstance(prefill.exception(), grpc.aio.AioRpcError):
            first.cancel()
            raise AttemptFailed.of(PREFILL, prefill_worker, prefill.exception())
        yield await first
        while True:
            try:
                async with asyncio.timeout(stall_timeout_s):
                    resp = await it.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                stalled = f"decode stream brought no token for {stall_timeout_s:g}s"
                raise AttemptFailed.of(DECODE, decoder, rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, stalled)) from None
            yield resp
    except grpc.aio.AioRpcError as exc:
        raise AttemptFailed.of(DECODE, decoder, exc) from exc
    except asyncio.CancelledError:
        if not gone.done() or gone.cancelled():
            raise  # the attempt itself is being cancelled
        silent = f"decode worker answered no health check for {liveness_timeout_s:g}s"
        raise AttemptFailed.of(DECODE, decoder, rpc_error(grpc.StatusCode.UNAVAILABLE, silent)) from None
    finally:
        gone.cancel()


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """A status raised by the router itself, shaped like a worker's."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


async def while_alive(
    call: Awaitable[prefill_pb2.PrefillResponse], worker_gone: Awaitable[None], liveness_timeout_s: float
) -> prefill_pb2.PrefillResponse:
    """The prefill's answer, or UNAVAILABLE once its worker has answered no health check for
    `liveness_timeout_s` (`worker_gone` completes: dead, hung, or cut off by the link): a busy worker keeps
    the request."""
    answer = asyncio.ensure_future(call)
    gone = asyncio.ensure_future(worker_gone)
    try:
        await asyncio.wait([answer, gone], return_when=asyncio.FIRST_COMPLETED)
        if answer.done():
            return answer.result()
        silent = f"prefill worker answered no health check for {liveness_timeout_s:g}s"
        raise rpc_error(grpc.StatusCode.UNAVAILABLE, silent)
    finally:
        answer.cancel()
        gone.cancel()
