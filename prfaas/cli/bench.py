"""`prfaas bench ...`: benchmarks that print their figures next to a baseline measured in the same run."""

from __future__ import annotations

import argparse
import json

import torch

from prfaas.bench.engine import format_table, run_engine_bench
from prfaas.cli import bench_overlap, bench_route, bench_serve, bench_soak
from prfaas.model.tiny import TINY_NAME, resolve_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks")
    kinds = p.add_subparsers(dest="bench", required=True)
    e = kinds.add_parser("engine", help="prefill/decode tokens/s vs transformers' KimiLinearForCausalLM")
    e.add_argument("--model", default=TINY_NAME)
    e.add_argument("--repeats", type=int, default=3)
    e.add_argument("--decode-steps", type=int, default=64)
    e.add_argument("--threads", type=int, default=2, help="torch threads for both engines")
    e.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    e.add_argument("--json", action="store_true")
    e.set_defaults(run=run_engine)
    t = kinds.add_parser(
        "transfer", help="KV transfer via send_state (TCP data plane, in-band gRPC) vs raw TCP, same bytes, loopback"
    )
    t.add_argument("--total-mib", type=int, default=256)
    t.add_argument("--chunk-mib", type=int, default=4)
    t.add_argument("--streams", type=int, default=1)
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument(
        "--json",
        action="store_true",
        help="print grpc_gbps (as deployed: data plane), inband_gbps, tcp_gbps, ratio, inband_ratio (and the rest)",
    )
    t.set_defaults(run=run_transfer)
    c = kinds.add_parser("cpu", help="CPU per request of each service kind, live, vs the number of decode workers")
    c.add_argument("--decode-workers", default="1,12", help="stacks to measure (comma-separated)")
    c.add_argument("--requests", type=int, default=30, help="requests sent one after another per stack")
    c.add_argument("--prompt-tokens", type=int, default=4000)
    c.add_argument("--output-tokens", type=int, default=16)
    c.add_argument("--settle-s", type=float, default=10.0, help="wait after startup before measuring")
    c.add_argument("--json", action="store_true")
    c.set_defaults(run=run_cpu)
    bench_overlap.add_parser(kinds)
    bench_route.add_parser(kinds)
    bench_serve.add_parser(kinds)
    bench_soak.add_parser(kinds)


def run_transfer(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses

    from prfaas.bench.transfer import format_transfer_table, run_transfer_bench

    result = asyncio.run(
        run_transfer_bench(args.total_mib << 20, args.chunk_mib << 20, repeats=args.repeats, num_streams=args.streams)
    )
    print(json.dumps(dataclasses.asdict(result)) if args.json else format_transfer_table(result))
    return 0


def run_engine(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    result = run_engine_bench(
        resolve_model(args.model),
        args.repeats,
        args.decode_steps,
        not args.no_hf,
        log=(lambda _m: None) if args.json else print,
    )
    print(json.dumps(result.as_dict()) if args.json else format_table(result))
    return 0


def run_cpu(args: argparse.Namespace) -> int:
    from prfaas.bench.cpu import format_table, measure
    from prfaas.stack import Topology

    base = Topology(engine="mock", prfaas_prefill=1, pd_prefill=1, replan_period_s=0, http_port=None)
    counts = [int(x) for x in args.decode_workers.split(",") if x.strip()]
    points = [measure(base, n, args.requests, args.prompt_tokens, args.output_tokens, args.settle_s) for n in counts]
    print(json.dumps([p.as_dict() for p in points]) if args.json else format_table(points))
    return 0
