"""`prfaas demo`: start the default topology, run a small mixed workload through the SDK, print what
happened to each request, stop the stack."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from prfaas.cli.up import add_topology_args, topology_from
from prfaas.client import AsyncClient, GenerationResult, PrfaasError, Sampling
from prfaas.stack import LocalStack

SYSTEM = (
    "You are a careful assistant for a cross-datacenter LLM serving team. Answer with short, "
    "precise sentences and cite the relevant equation of the PrfaaS paper when it applies. "
)
DOCUMENT = "Prefill-as-a-Service ships the KV cache of long prompts over commodity Ethernet. " * 8
THRESHOLD_TOKENS = 256  # the t this workload is written for: its short prompts stay local, its long ones cross


def workload() -> list[tuple[str, str]]:
    """(label, prompt): short prompts, long prompts, and prompts sharing a long prefix."""
    return [
        ("short", "What is KDA?"),
        ("short", "Define the threshold t."),
        ("long", DOCUMENT + "Summarise the idea in one sentence."),
        ("shared-prefix", SYSTEM + DOCUMENT + "Question one: why hybrid models?"),
        ("shared-prefix", SYSTEM + DOCUMENT + "Question two: what limits egress?"),
        ("short", "Name one hybrid model."),
        ("long", SYSTEM * 3 + "List the four services of prfaas."),
        ("shared-prefix", SYSTEM + DOCUMENT + "Question three: what is Lambda_max?"),
    ]


async def run_workload(router: str, max_new_tokens: int) -> list[tuple[str, GenerationResult]]:
    results = []
    async with AsyncClient(router, timeout_s=300) as client:
        for label, text in workload():  # sequential, so later requests can hit earlier prefixes
            results.append((label, await client.generate(text, Sampling(max_new_tokens=max_new_tokens))))
    return results


def format_report(results: list[tuple[str, GenerationResult]], wall_s: float) -> str:
    head = f"{'#':>2} {'kind':14} {'route':7} {'prompt':>6} {'cached':>6} {'KV bytes':>10} {'TTFT s':>7} {'tok/s':>7}"
    lines = [head, "-" * len(head)]
    for i, (label, r) in enumerate(results):
        route = r.route
        assert route is not None
        decode_s = max(r.elapsed_s - route.ttft_s, 1e-9)
        rate = (len(r.token_ids) - 1) / decode_s if len(r.token_ids) > 1 else 0.0
        lines.append(
            f"{i:>2} {label:14} {route.route:7} {route.prompt_tokens:>6} {route.cached_tokens:>6} "
            f"{route.kv_bytes:>10,} {route.ttft_s:>7.3f} {rate:>7.1f}"
        )
    routes = [r.route for _, r in results if r.route is not None]
    offloaded = sum(1 for r in routes if r.route == "prfaas")
    lines.append("-" * len(head))
    lines.append(
        f"{len(results)} requests, {offloaded} offloaded to PrfaaS, {sum(r.kv_bytes for r in routes):,} KV bytes "
        f"shipped, {sum(r.cached_tokens for r in routes)} prompt tokens reused, mean TTFT "
        f"{sum(r.ttft_s for r in routes) / max(1, len(routes)):.3f} s, wall {wall_s:.1f} s"
    )
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="start the default stack, run a mixed workload, print a report, stop")
    add_topology_args(p, threshold=str(THRESHOLD_TOKENS))
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        topology = topology_from(args, threshold_tokens=THRESHOLD_TOKENS)
    except ValueError as exc:
        print(f"prfaas demo: error: {exc}", file=sys.stderr)
        return 2
    print(f"starting the stack ({topology.engine} engines, t={topology.threshold_tokens} tokens) ...", file=sys.stderr)
    with LocalStack(topology) as stack:
        print(f"router listening on {stack.router}", file=sys.stderr)
        t0 = time.perf_counter()
        try:
            results = asyncio.run(run_workload(stack.router, args.max_new_tokens))
        except PrfaasError as exc:
            print(f"prfaas demo: request failed: {exc} (logs: {stack.log_dir})", file=sys.stderr)
            return 1
        print(format_report(results, time.perf_counter() - t0))
    return 0
