"""`prfaas bench cpu`: the control plane's cost per request, live: CPU seconds each kind of service spends
per request on a mock-engine stack, for several numbers of decode workers side by side.

Each stack is started, left to sync its state streams, then sent `requests` requests one after another
(prompts of `prompt_tokens` random tokens, `output_tokens` each, through the SDK). Every service's CPU time
(user + system, from /proc) is read before and after; the difference over the requests is the figure, per
kind (router, decode workers summed, cache pools summed, prefill workers summed), next to the mean TTFT.
Everything the services do meanwhile counts (state streams, health checks), as it would in production; the
same services' CPU per second while idle (measured just before) is printed below, to tell the two apart.
/proc counts CPU in 10 ms ticks per process: send enough requests for the figures to mean something.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from prfaas.client import AsyncClient, Sampling
from prfaas.stack import LocalStack, Topology

KINDS = ("router", "decode", "cachepool", "prefill")


@dataclass(frozen=True, slots=True)
class CpuPoint:
    decode_workers: int
    requests: int
    cpu_ms_per_request: dict[str, float]  # kind -> CPU ms per request, summed over the kind's processes
    mean_ttft_s: float
    idle_cpu_ms_per_s: dict[str, float]  # kind -> CPU ms per second while no request runs (streams, health)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kind_of(service: str) -> str:
    return next(k for k in KINDS if service.startswith(k))


def stack_cpu_s(stack: LocalStack) -> dict[str, float]:
    totals = dict.fromkeys(KINDS, 0.0)
    for service in stack.services:
        totals[kind_of(service.name)] += process_cpu_s(service.proc.pid)
    return totals


async def _send(router: str, prompts: Sequence[list[int]], output_tokens: int) -> list[float]:
    ttfts = []
    async with AsyncClient(router, timeout_s=300) as client:
        for ids in prompts:
            t0 = time.perf_counter()
            first = None
            async for chunk in client.stream(ids, Sampling(max_new_tokens=output_tokens, ignore_eos=True)):
                if chunk.token_ids and first is None:
                    first = time.perf_counter() - t0
            ttfts.append(first or 0.0)
    return ttfts


def measure(
    base: Topology, decode_workers: int, requests: int, prompt_tokens: int, output_tokens: int, settle_s: float
) -> CpuPoint:
    """One stack with `decode_workers` decode workers: CPU per request per kind over `requests` requests."""
    rng = np.random.default_rng(decode_workers)
    prompts = [[int(t) for t in rng.integers(1, 500, prompt_tokens)] for _ in range(requests)]
    with LocalStack(replace(base, decode=decode_workers)) as stack:
        time.sleep(settle_s)  # the router subscribes to every source; startup CPU stays out of the figure
        idle0 = stack_cpu_s(stack)
        time.sleep(settle_s)
        before = stack_cpu_s(stack)
        ttfts = asyncio.run(_send(stack.router, prompts, output_tokens))
        after = stack_cpu_s(stack)
    per_request = {k: (after[k] - before[k]) / requests * 1e3 for k in KINDS}
    idle = {k: (before[k] - idle0[k]) / settle_s * 1e3 for k in KINDS}
    return CpuPoint(decode_workers, requests, per_request, float(np.mean(ttfts)), idle)


def format_table(points: Sequence[CpuPoint]) -> str:
    head = f"{'decode workers':>14}  " + "  ".join(f"{k + ' ms/req':>16}" for k in KINDS) + f"  {'mean TTFT':>10}"
    rows = [
        f"{p.decode_workers:>14}  "
        + "  ".join(f"{p.cpu_ms_per_request[k]:>16.2f}" for k in KINDS)
        + f"  {p.mean_ttft_s * 1e3:>8.0f} ms"
        for p in points
    ]
    rows += [
        f"{'idle ' + str(p.decode_workers):>14}  " + "  ".join(f"{p.idle_cpu_ms_per_s[k]:>13.2f}/s" for k in KINDS)
        for p in points
    ]
    lines = [head, *rows]
    if len(points) > 1:
        first, last = points[0], points[-1]
        for kind in ("router", "decode"):
            ratio = last.cpu_ms_per_request[kind] / max(first.cpu_ms_per_request[kind], 1e-9)
            lines.append(
                f"{kind}: {last.decode_workers} vs {first.decode_workers} decode workers x{ratio:.2f} "
                f"(target <= 1.20: {'met' if ratio <= 1.2 else 'NOT met'})"
            )
    router = points[0].cpu_ms_per_request["router"]
    lines.append(f"router CPU per request {router:.2f} ms (target <= 1 ms: {'met' if router <= 1.0 else 'NOT met'})")
    return "\n".join(lines)
