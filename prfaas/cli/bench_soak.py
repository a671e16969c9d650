"""`prfaas bench soak`: load at a fraction of capacity with faults on a schedule (see `prfaas.bench.soak`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prfaas.bench.soak import DEFAULT_CONFIG, SoakSpec, format_soak, run_soak
from prfaas.stack import Topology


def add_parser(kinds: argparse._SubParsersAction) -> None:
    s = kinds.add_parser("soak", help="mock-engine stack under load with workers, pools and the router failing")
    s.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="topology JSON (default: %(default)s)")
    s.add_argument("--duration-s", type=float, default=600.0, help="arrivals (and faults) stop after this")
    s.add_argument("--load", type=float, default=0.8, help="fraction of the capacity")
    s.add_argument(
        "--capacity-rps",
        type=float,
        default=None,
        help="the stack's capacity in req/s (default: measured first, --calibrate-s at 1.5x the planner's)",
    )
    s.add_argument("--calibrate-s", type=float, default=240.0, help="length of the capacity measurement")
    s.add_argument("--fault-period-s", type=float, default=60.0, help="one fault per period")
    s.add_argument("--outage-s", type=float, default=5.0, help="how long a failed service stays down")
    s.add_argument("--output-tokens", type=int, default=16)
    s.add_argument("--drain-s", type=float, default=60.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--client-retries", type=int, default=8, help="SDK retries per request (0: none)")
    s.add_argument("--client-backoff-s", type=float, default=0.25, help="SDK backoff before the first retry")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        topology = Topology.from_file(args.config)
        spec = SoakSpec(
            args.duration_s,
            args.load,
            args.fault_period_s,
            args.outage_s,
            args.output_tokens,
            args.drain_s,
            args.seed,
            args.client_retries,
            args.client_backoff_s,
            args.capacity_rps,
            args.calibrate_s,
        )
    except ValueError as exc:
        print(f"prfaas bench soak: {exc}", file=sys.stderr)
        return 2
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    try:
        result = run_soak(topology, spec, log)
    except RuntimeError as exc:  # the stack did not start, or the calibration measured nothing
        print(f"prfaas bench soak: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.as_dict()) if args.json else format_soak(result))
    clean = result.lost == 0 and not any(result.blocks_outstanding.values())
    return 0 if clean else 1
