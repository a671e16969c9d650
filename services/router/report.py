"""What a routed request reports: the route info the client gets with its first token, the TTFT split,
and the router's per-route metrics."""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.sched.policy import Decision
from prfaas.sched.routing import PRFAAS
from prfaas.telemetry import metrics
from prfaas.v1 import common_pb2, prefill_pb2, router_pb2


@dataclass(frozen=True, slots=True)
class Routed:
    """Where one request goes: the policy's decision, the decode worker and the prefill worker."""

    decision: Decision
    decoder: str
    prefill: str
    prompt_tokens: int
    pool_hit_blocks: int | None = None  # the route's pool holds this much of the prompt (None: unknown)


def route_info(r: Routed, done: prefill_pb2.PrefillResponse, ttft_s: float) -> router_pb2.RouteInfo:
    d = r.decision
    return router_pb2.RouteInfo(
        route=common_pb2.ROUTE_PRFAAS if d.route == PRFAAS else common_pb2.ROUTE_LOCAL,
        reason=d.reason,
        cached_tokens=max(done.cached_tokens, done.receiver_cached_tokens),
        kv_bytes=done.kv_bytes,
        ttft_s=ttft_s,
        prompt_tokens=r.prompt_tokens,
        prefill_worker=r.prefill,
        decode_worker=r.decoder,
    )


def breakdown(
    info: router_pb2.RouteInfo,
    done: prefill_pb2.PrefillResponse,
    arrival: float,
    sent: float,
    prefilled: float,
    first: float,
) -> None:
    """Split TTFT into routing, prefill queueing, compute, the transfer tail and decode admission."""
    info.route_s = sent - arrival
    info.queue_s, info.prefill_s = done.queue_s, done.prefill_s
    info.transfer_tail_s = max(0.0, prefilled - sent - done.queue_s - done.prefill_s)
    info.decode_admit_s = max(0.0, first - prefilled)


def observe_prefill(route: str, reason: str, info: router_pb2.RouteInfo, done: prefill_pb2.PrefillResponse) -> None:
    metrics.count_request(route, reason)
    metrics.TTFT_SECONDS.labels(route).observe(info.ttft_s)
    metrics.KV_TRANSFER_BYTES.labels(route).observe(done.kv_bytes)
    metrics.KV_TRANSFER_SECONDS.labels(route).observe(done.transfer_s)
    metrics.CACHE_HIT_TOKENS.labels(route).inc(info.cached_tokens)
