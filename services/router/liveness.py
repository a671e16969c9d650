"""Liveness of an attempt's calls: a prefill that waits on a worker answering no health check, a decode
stream whose worker went silent or whose tokens stopped, are given up so the attempt can be retried."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import grpc

from prfaas.v1 import decode_pb2, prefill_pb2
from services.router.retry import DECODE_STAGE, PREFILL_STAGE, AttemptFailed, rpc_error


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
            raise AttemptFailed.of(PREFILL_STAGE, prefill_worker, prefill.exception())
        yield await first
        async for resp in _until_stall(it, decoder, stall_timeout_s):
            yield resp
    except grpc.aio.AioRpcError as exc:
        raise AttemptFailed.of(DECODE_STAGE, decoder, exc) from exc
    except asyncio.CancelledError:
        if not gone.done() or gone.cancelled():
            raise  # the attempt itself is being cancelled
        silent = f"decode worker answered no health check for {liveness_timeout_s:g}s"
        raise AttemptFailed.of(DECODE_STAGE, decoder, rpc_error(grpc.StatusCode.UNAVAILABLE, silent)) from None
    finally:
        gone.cancel()


async def _until_stall(
    it: AsyncIterator[decode_pb2.DecodeResponse], decoder: str, stall_timeout_s: float
) -> AsyncIterator[decode_pb2.DecodeResponse]:
    """The rest of a generating stream; a gap of `stall_timeout_s` between two tokens fails the attempt."""
    while True:
        try:
            async with asyncio.timeout(stall_timeout_s):
                resp = await it.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            stalled = f"decode stream brought no token for {stall_timeout_s:g}s"
            raise AttemptFailed.of(
                DECODE_STAGE, decoder, rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, stalled)
            ) from None
        yield resp


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
