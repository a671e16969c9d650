"""Open-loop load for `prfaas bench serve`: workloads turned into token-id requests, sent on schedule.

Open loop: each request is sent at its arrival time whether or not earlier ones have finished, so an
overloaded system shows growing latency (as users see it) instead of a slower sender. Workloads:

- ``lognormal``: Poisson arrivals, prompt lengths from the paper's truncated log-normal (§4.1), random tokens
  (no prefix reuse);
- ``mooncake``: replay of a Mooncake trace; ``hash_ids[i]`` becomes block ``i`` of the prompt, a token block
  that is a pure function of the chained hash, so requests that share hash ids share a real token prefix;
- ``shared-prefix``: Poisson arrivals; each request is one of ``groups`` shared prefixes plus its own suffix.

``length_scale`` shrinks every length (and the trace's block size) for engines slower than the paper's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from prfaas.client import AsyncClient, Sampling
from prfaas.client.codec import new_request_id
from prfaas.client.errors import PrfaasError
from prfaas.sched.scenario import paper_workload
from prfaas.sched.trace import load_mooncake_trace
from prfaas.sim.arrivals import poisson_arrivals, rate_segments, trace_arrivals
from prfaas.sim.experiment import DEFAULT_TRACE

WORKLOADS = ("lognormal", "mooncake", "shared-prefix")
TOKEN_RANGE = (1, 500)
BREAKDOWN = (
    "route_s",
    "queue_s",
    "prefill_s",
    "transfer_tail_s",
    "decode_admit_s",
)  # token ids valid for both the tiny model and the mock engines


@dataclass(frozen=True, slots=True)
class LoadRequest:
    at_s: float  # arrival time from the start of the run
    token_ids: tuple[int, ...]
    output_tokens: int


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    kind: str = "lognormal"
    rate_rps: float | None = 1.0  # None: the trace's own timestamps (mooncake only)
    duration_s: float = 60.0
    output_tokens: int = 16  # lognormal / shared-prefix; a trace brings its own (scaled by length_scale)
    length_scale: float = 1.0
    max_prompt_tokens: int | None = None  # clip longer prompts (the model's context)
    seed: int = 0
    trace: Path = DEFAULT_TRACE
    groups: int = 8  # shared-prefix: distinct prefixes
    prefix_tokens: int = 4096  # shared-prefix: shared part
    suffix_tokens: int = 512  # shared-prefix: own part

    def __post_init__(self) -> None:
        if self.kind not in WORKLOADS:
            raise ValueError(f"unknown workload {self.kind!r}; choose from {', '.join(WORKLOADS)}")
        if self.rate_rps is None and self.kind != "mooncake":
            raise ValueError(f"the {self.kind} workload needs a rate (--rate-rps)")
        if (self.rate_rps is not None and self.rate_rps <= 0) or self.duration_s <= 0 or self.length_scale <= 0:
            raise ValueError("rate_rps, duration_s and length_scale must be positive")
        if self.output_tokens < 1 or self.groups < 1 or self.prefix_tokens < 0 or self.suffix_tokens < 1:
            raise ValueError("output_tokens, groups, suffix_tokens must be >= 1 and prefix_tokens >= 0")


def build_requests(spec: WorkloadSpec) -> list[LoadRequest]:
    """The whole arrival stream, generated up front from `spec.seed`: every policy gets the same requests."""
    rng = np.random.default_rng(spec.seed)
    requests = _BUILDERS[spec.kind](spec, rng)
    if spec.max_prompt_tokens is not None:
        requests = [LoadRequest(r.at_s, r.token_ids[: spec.max_prompt_tokens], r.output_tokens) for r in requests]
    return requests


def retokened(requests: Sequence[LoadRequest], seed: int) -> list[LoadRequest]:
    """The same arrivals and lengths with other random tokens: a second pass over a stack that shares no
    prefix with the first (so the two are compared on equal terms)."""
    rng = np.random.default_rng(seed)
    return [LoadRequest(r.at_s, _random_tokens(rng, len(r.token_ids)), r.output_tokens) for r in requests]


def _scaled(n: float, scale: float) -> int:
    return max(1, round(n * scale))


def _random_tokens(rng: np.random.Generator, n: int) -> tuple[int, ...]:
    return tuple(int(t) for t in rng.integers(*TOKEN_RANGE, size=n))


def _lognormal(spec: WorkloadSpec, rng: np.random.Generator) -> list[LoadRequest]:
    assert spec.rate_rps is not None
    segments = rate_segments(spec.rate_rps, [], spec.duration_s)
    arrivals = poisson_arrivals(rng, paper_workload(), spec.output_tokens, segments)
    return [
        LoadRequest(a.at_s, _random_tokens(rng, _scaled(a.prompt_tokens, spec.length_scale)), spec.output_tokens)
        for a in arrivals
    ]


def _mooncake(spec: WorkloadSpec, rng: np.random.Generator) -> list[LoadRequest]:
    trace = load_mooncake_trace(spec.trace)
    block = _scaled(trace.block_tokens, spec.length_scale)
    by_time = sorted(trace.requests, key=lambda r: r.timestamp_ms)
    arrivals = trace_arrivals(trace, spec.duration_s, spec.rate_rps)
    requests = []
    for arrival, raw in zip(arrivals, by_time, strict=False):  # trace_arrivals keeps timestamp order
        n = _scaled(raw.input_tokens, spec.length_scale)
        tokens = [t for key in arrival.block_keys for t in _block_tokens(key, block)][:n]
        tokens += _random_tokens(rng, n - len(tokens))
        requests.append(LoadRequest(arrival.at_s, tuple(tokens), _scaled(raw.output_tokens, spec.length_scale)))
    return requests


def _block_tokens(key: int, n: int) -> tuple[int, ...]:
    """A block's tokens: a pure function of its chained hash key, so equal prefixes give equal tokens."""
    return _random_tokens(np.random.default_rng(key & 0xFFFF_FFFF_FFFF_FFFF), n)


def _shared_prefix(spec: WorkloadSpec, rng: np.random.Generator) -> list[LoadRequest]:
    assert spec.rate_rps is not None
    prefixes = [_random_tokens(rng, _scaled(spec.prefix_tokens, spec.length_scale)) for _ in range(spec.groups)]
    times = poisson_arrivals(rng, paper_workload(), 1, rate_segments(spec.rate_rps, [], spec.duration_s))
    suffix = _scaled(spec.suffix_tokens, spec.length_scale)
    return [
        LoadRequest(a.at_s, prefixes[int(rng.integers(spec.groups))] + _random_tokens(rng, suffix), spec.output_tokens)
        for a in times
    ]


_BUILDERS: dict[str, Callable[[WorkloadSpec, np.random.Generator], list[LoadRequest]]] = {
    "lognormal": _lognormal,
    "mooncake": _mooncake,
    "shared-prefix": _shared_prefix,
}


@dataclass(slots=True)
class RequestRecord:
    """What one request did, times in seconds from the start of the run."""

    at_s: float
    prompt_tokens: int
    first_token_s: float | None = None
    done_s: float | None = None
    num_tokens: int = 0
    route: str = ""
    cached_tokens: int = 0
    kv_bytes: int = 0
    error: str | None = None  # gRPC status name, or "unfinished" when the run ended first
    failed_s: float | None = None  # when the error came
    last_token_s: float | None = None
    decode_worker: str = ""  # as the first route info named it
    breakdown_s: dict[str, float] | None = None  # the router's TTFT split (RouteInfo route_s ... decode_admit_s)
    request_id: str = ""  # what the request was sent as (the services log it)

    @property
    def ok(self) -> bool:
        return self.error is None and self.done_s is not None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.at_s

    @property
    def tpot_s(self) -> float | None:
        if self.first_token_s is None or self.done_s is None or self.num_tokens < 2:
            return None
        return (self.done_s - self.first_token_s) / (self.num_tokens - 1)


async def run_load(
    router: str,
    requests: Sequence[LoadRequest],
    *,
    duration_s: float,
    drain_s: float = 30.0,
    progress: Callable[[int, int, float], None] | None = None,
    timeout_s: float = 600.0,
    retries: int = 0,
    backoff_s: float = 0.1,
    openai_url: str | None = None,
    model: str = "kimi-linear-tiny",
) -> list[RequestRecord]:
    """Send `requests` open loop; wait up to `drain_s` after `duration_s` for stragglers, then cancel them.

    By default rejections are not retried (the client gets RESOURCE_EXHAUSTED as a user without retries
    would), so overload shows up as errors and latency rather than as a slower arrival process; `retries`
    and `backoff_s` give the SDK's retry policy instead (UNAVAILABLE and RESOURCE_EXHAUSTED before the first
    token, jittered exponential backoff). With `openai_url` the requests go through the router's OpenAI HTTP
    API instead (the official `openai` client, streaming, greedy, no retries)."""
    records = [RequestRecord(r.at_s, len(r.token_ids), request_id=new_request_id()) for r in requests]
    async with AsyncClient(router, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s) as client:
        send = _grpc_sender(client) if openai_url is None else _openai_sender(openai_url, model, timeout_s)
        t0 = time.perf_counter()
        clock = lambda: time.perf_counter() - t0  # noqa: E731
        tasks = [asyncio.create_task(_one(send, r, rec, clock)) for r, rec in zip(requests, records, strict=True)]
        ticker = asyncio.create_task(_tick(records, clock, progress)) if progress else None
        deadline = duration_s + drain_s
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, deadline - clock()))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if ticker is not None and progress is not None:
            ticker.cancel()
            progress(sum(r.done_s is not None or r.error is not None for r in records), len(records), clock())
    for rec in records:
        if rec.error is None and rec.done_s is None:
            rec.error = "unfinished"
    return records


Sender = Callable[[LoadRequest, RequestRecord, Callable[[], float]], Awaitable[None]]


async def _one(send: Sender, req: LoadRequest, rec: RequestRecord, clock: Callable[[], float]) -> None:
    await asyncio.sleep(max(0.0, req.at_s - clock()))
    try:
        await send(req, rec, clock)
        rec.done_s = clock()
    except PrfaasError as exc:
        rec.error, rec.failed_s = exc.code.name, clock()
    except grpc.RpcError as exc:
        rec.error, rec.failed_s = exc.code().name, clock()
    except HttpApiError as exc:
        rec.error, rec.failed_s = str(exc), clock()


def _grpc_sender(client: AsyncClient) -> Sender:
    async def send(req: LoadRequest, rec: RequestRecord, clock: Callable[[], float]) -> None:
        sampling = Sampling(max_new_tokens=req.output_tokens, ignore_eos=True)
        async for chunk in client.stream(list(req.token_ids), sampling, request_id=rec.request_id):
            if chunk.route is not None:
                rec.route, rec.cached_tokens = chunk.route.route, chunk.route.cached_tokens
                rec.kv_bytes, rec.decode_worker = chunk.route.kv_bytes, chunk.route.decode_worker
                rec.breakdown_s = {k: getattr(chunk.route, k) for k in BREAKDOWN}
            _tokens(rec, len(chunk.token_ids), clock())

    return send


class HttpApiError(Exception):
    """An OpenAI API call failed; the message is the SDK's error class (e.g. RateLimitError)."""


def _openai_sender(base_url: str, model: str, timeout_s: float) -> Sender:
    """Completions over the OpenAI HTTP API (the `openai` package: `pip install 'prfaas[test]'`): streamed,
    greedy, with the generated token ids (`return_token_ids`)."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="prfaas", max_retries=0, timeout=timeout_s)
    extra = {"ignore_eos": True, "return_token_ids": True}

    async def send(req: LoadRequest, rec: RequestRecord, clock: Callable[[], float]) -> None:
        try:
            stream = await client.completions.create(
                model=model,
                prompt=list(req.token_ids),
                max_tokens=req.output_tokens,
                temperature=0,
                stream=True,
                extra_body=extra,
            )
            async for chunk in stream:
                _openai_chunk(rec, chunk.model_extra or {}, [c.model_extra or {} for c in chunk.choices], clock())
        except openai.OpenAIError as exc:
            raise HttpApiError(type(exc).__name__) from exc

    return send


def _openai_chunk(rec: RequestRecord, extra: dict[str, Any], choices: list[dict[str, Any]], now: float) -> None:
    route = extra.get("prfaas")
    if route and not rec.route:
        rec.route, rec.cached_tokens, rec.kv_bytes = route["route"], route["cached_tokens"], route["kv_bytes"]
        rec.decode_worker = route.get("decode_worker", "")
        rec.breakdown_s = {k: route[k] for k in BREAKDOWN if k in route}
    _tokens(rec, sum(len(c.get("token_ids") or ()) for c in choices), now)


def _tokens(rec: RequestRecord, n: int, now: float) -> None:
    if n:
        rec.last_token_s = now
        if rec.first_token_s is None:
            rec.first_token_s = now
    rec.num_tokens += n


async def _tick(
    records: Sequence[RequestRecord], clock: Callable[[], float], progress: Callable[[int, int, float], None]
) -> None:
    while True:
        progress(sum(r.done_s is not None or r.error is not None for r in records), len(records), clock())
        await asyncio.sleep(0.5)
