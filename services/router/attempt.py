"""The two calls of one attempt, started together: the decode worker's registration (`Decode`, whose stream
brings the tokens) and the prefill (`Prefill`, which streams the state to that decode worker), each
watched for liveness."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from prfaas.v1 import common_pb2, decode_pb2, decode_pb2_grpc, prefill_pb2, prefill_pb2_grpc
from services.router.health import Health
from services.router.liveness import race, while_alive
from services.router.prompt import Prompt
from services.router.report import Routed
from services.router.retry import PREFILL_STAGE, AttemptFailed


@dataclass(frozen=True, slots=True)
class Watch:
    """How an attempt's calls are watched (router settings)."""

    health: Health
    liveness_timeout_s: float  # a worker answering no health check this long fails its call
    token_stall_timeout_s: float  # a generating stream with no token this long fails


@dataclass(eq=False)
class AttemptCalls:
    routed: Routed
    decode_call: grpc.aio.UnaryStreamCall
    prefill: asyncio.Future[prefill_pb2.PrefillResponse]
    watch: Watch
    sent_s: float  # perf_counter when the calls were started
    prefilled_s: float | None = None  # when the prefill's answer arrived
    first_s: float = field(default_factory=time.perf_counter)  # when the first token reached the router
    done: prefill_pb2.PrefillResponse | None = None  # the prefill's answer, once the first token is relayed

    @classmethod
    def start(
        cls,
        routed: Routed,
        prompt: Prompt,
        sampling: common_pb2.SamplingParams,
        stubs: tuple[decode_pb2_grpc.DecodeServiceStub, prefill_pb2_grpc.PrefillServiceStub],
        timeout_s: float,
        epoch: int,
        watch: Watch,
    ) -> AttemptCalls:
        """Register with the decode worker first, then start the prefill that sends it the state."""
        decode_stub, prefill_stub = stubs
        ids, rid, tenant = prompt.token_ids, prompt.request_id, prompt.tenant_id
        decode_call = decode_stub.Decode(
            decode_pb2.DecodeRequest(request_id=rid, tenant_id=tenant, token_ids=ids, sampling=sampling),
            timeout=timeout_s,
        )
        sent_s = time.perf_counter()
        request = prefill_pb2.PrefillRequest(
            request_id=rid,
            tenant_id=tenant,
            token_ids=ids,
            sampling=sampling,
            decode_address=routed.decoder,
            epoch=epoch,
        )
        if routed.pool_hit_blocks is not None:  # the worker need not look its pool up again
            request.pool_hint, request.pool_hit_blocks = True, routed.pool_hit_blocks
        liveness_s = watch.liveness_timeout_s
        gone = watch.health.unresponsive(routed.prefill, liveness_s)
        prefill = asyncio.ensure_future(while_alive(prefill_stub.Prefill(request, timeout=timeout_s), gone, liveness_s))
        calls = cls(routed, decode_call, prefill, watch, sent_s)
        prefill.add_done_callback(calls._mark_prefilled)
        return calls

    def _mark_prefilled(self, _: object) -> None:
        if self.prefilled_s is None:
            self.prefilled_s = time.perf_counter()

    def responses(self) -> AsyncIterator[decode_pb2.DecodeResponse]:
        """The decode worker's token stream (`liveness.race`: failures come out as `AttemptFailed`)."""
        watch, decoder = self.watch, self.routed.decoder
        decoder_gone = watch.health.unresponsive(decoder, watch.liveness_timeout_s)
        return race(
            self.decode_call,
            self.prefill,
            decoder,
            self.routed.prefill,
            decoder_gone,
            watch.liveness_timeout_s,
            watch.token_stall_timeout_s,
        )

    async def prefilled(self) -> prefill_pb2.PrefillResponse:
        """The prefill's answer (it comes before the first token can); marks the first token's arrival."""
        try:
            self.done = await self.prefill
        except grpc.aio.AioRpcError as exc:
            raise AttemptFailed.of(PREFILL_STAGE, self.routed.prefill, exc) from exc
        self.first_s = time.perf_counter()
        return self.done

    def cancel(self) -> None:
        """Cancel both calls: the workers drop whatever the attempt left."""
        self.decode_call.cancel()
        self.prefill.cancel()
