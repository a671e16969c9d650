"""``prfaas simulate``: the discrete-event simulator on the paper's deployment, one run per routing policy.

Each policy runs on its own deployment (§4.1): ``prfaas``/``prfaas-static-t``/``prfaas-no-cache`` on PrfaaS-PD
at the planner's optimum (4 H200 + 3 PD-P / 5 PD-D H20 for the paper preset), ``homogeneous`` on 12 H20
(9/3), ``naive`` on 4 H200 prefill + 8 H20 decode. Every policy sees the same requests (``--seed``).

Workloads: ``lognormal`` (Poisson at ``--rate-rps`` over the §4.1 length law), ``burst`` (the same with
``--burst T:RPS`` rate steps; without any, 2x the rate over the middle fifth of the run), ``mooncake`` (replay
of the Mooncake conversation trace with real prefix reuse; ``--rate-rps`` rescales its clock).
``--link-event T:GBPS`` changes the link capacity at time T (repeatable). Throughput counts completions in
``[--warmup-s, --duration-s)``; latencies cover requests arriving in that window. Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from prfaas.cli.extras import require_plotting
from prfaas.sched.planner import Plan, homogeneous_baseline, naive_baseline, search
from prfaas.sched.policy import POLICIES
from prfaas.sched.scenario import Scenario, paper_scenario
from prfaas.sim.arrivals import RateStep
from prfaas.sim.config import LinkEvent, SimConfig
from prfaas.sim.experiment import DEFAULT_TRACE, WORKLOADS, WorkloadSpec, build_workload, run_policy
from prfaas.sim.metrics import SimResult

PRESETS = {"paper": paper_scenario}
DEFAULT_POLICIES = "prfaas,homogeneous,naive"
DEFAULT_RATE_RPS = 2.5
DEFAULT_DURATION_S = 600.0
EXIT_BAD_INPUT = 2


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``simulate`` on a ``parser.add_subparsers()`` object."""
    parser = subparsers.add_parser("simulate", help="discrete-event simulation of PrfaaS-PD routing policies")
    configure_parser(parser)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="built-in scenario")
    parser.add_argument("--policy", default=DEFAULT_POLICIES, help=f"comma-separated, from: {', '.join(POLICIES)}")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="lognormal", help="arrival stream")
    parser.add_argument("--duration-s", type=float, help="arrivals stop here (s; default 600, mooncake: trace end)")
    parser.add_argument("--warmup-s", type=float, help="measurement window start (default: duration/6)")
    parser.add_argument(
        "--rate-rps", type=float, help=f"arrival rate (default {DEFAULT_RATE_RPS}; mooncake: as recorded)"
    )
    parser.add_argument("--link-gbps", type=float, help="initial PrfaaS<->PD bandwidth (default: the preset's)")
    parser.add_argument("--link-event", action="append", default=[], metavar="T:GBPS", help="link capacity step")
    parser.add_argument("--burst", action="append", default=[], metavar="T:RPS", help="arrival rate step")
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE, metavar="FILE", help="Mooncake JSONL trace")
    parser.add_argument("--update-period-s", type=float, default=60.0, help="policy long-timescale period (s)")
    parser.add_argument("--cache-blocks", type=int, default=200_000, help="prefix pool per cluster (512-token blocks)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (arrivals and lengths)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write ttft_cdf.png and link_threshold.png here")
    parser.set_defaults(run=run)


class InputError(ValueError):
    """Bad user input; the message says what to fix."""


def run(args: argparse.Namespace) -> int:
    try:
        if args.plot is not None:
            require_plotting("--plot")
        names, scenario, spec = _policies(args.policy), _scenario(args), _workload_spec(args)
        workload = build_workload(spec, scenario, args.seed, _requested_duration(args, spec))
        config = _config(args, _duration(args, spec, workload.span_s))
    except (OSError, ValueError) as exc:
        print(f"prfaas simulate: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    best = search(workload.scenario)
    planned = Plan.from_points(best, homogeneous_baseline(workload.scenario), naive_baseline(workload.scenario))
    results = {name: run_policy(name, workload, config, best=best) for name in names}
    if args.json:
        print(json.dumps(_finite(_report(args, config, planned, results))))
    else:
        print(_table(args, config, planned, results))
    return _write_plots(args.plot, results)


def _policies(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in POLICIES]
    if not names or unknown:
        raise InputError(f"--policy: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(POLICIES)}")
    return list(dict.fromkeys(names))


def _scenario(args: argparse.Namespace) -> Scenario:
    base = PRESETS[args.preset]()
    if args.link_gbps is None:
        return base
    if args.link_gbps <= 0:
        raise InputError(f"--link-gbps must be > 0 Gbps, got {args.link_gbps}")
    return dataclasses.replace(base, link_gbps=args.link_gbps)


def _pairs(values: list[str], flag: str, unit: str) -> list[tuple[float, float]]:
    """Parse ``T:VALUE`` items; T >= 0 seconds, VALUE > 0."""
    pairs = []
    for item in values:
        head, sep, tail = item.partition(":")
        try:
            at_s, value = float(head), float(tail)
        except ValueError:
            at_s = value = math.nan
        if not sep or not (at_s >= 0 and value > 0 and math.isfinite(at_s + value)):
            raise InputError(f"{flag} {item!r}: expected T:{unit} with T >= 0 seconds and {unit} > 0, e.g. 300:10")
        pairs.append((at_s, value))
    return pairs


def _requested_duration(args: argparse.Namespace, spec: WorkloadSpec) -> float:
    if args.duration_s is None:
        return math.inf if spec.kind == "mooncake" else DEFAULT_DURATION_S
    if not args.duration_s > 0:
        raise InputError(f"--duration-s must be > 0 seconds, got {args.duration_s}")
    return float(args.duration_s)


def _duration(args: argparse.Namespace, spec: WorkloadSpec, span_s: float) -> float:
    """A replayed trace ends at its last arrival: the measurement window stops there too."""
    requested = _requested_duration(args, spec)
    if spec.kind != "mooncake" or span_s >= requested:
        return requested
    if args.duration_s is not None:
        print(f"prfaas simulate: the trace ends at {span_s:.0f} s; --duration-s is cut to that", file=sys.stderr)
    return span_s


def _config(args: argparse.Namespace, duration_s: float) -> SimConfig:
    warmup = duration_s / 6 if args.warmup_s is None else args.warmup_s
    if not 0 <= warmup < duration_s:
        raise InputError(f"--warmup-s must be in [0, {duration_s:g}) seconds, got {warmup}")
    if args.cache_blocks < 0:
        raise InputError(f"--cache-blocks must be >= 0, got {args.cache_blocks}")
    if not args.update_period_s > 0:
        raise InputError(f"--update-period-s must be > 0 seconds, got {args.update_period_s}")
    events = tuple(LinkEvent(t, g) for t, g in _pairs(args.link_event, "--link-event", "GBPS"))
    return SimConfig(
        duration_s=duration_s,
        warmup_s=warmup,
        seed=args.seed,
        cache_capacity_blocks=args.cache_blocks,
        update_period_s=args.update_period_s,
        link_events=events,
    )


def _workload_spec(args: argparse.Namespace) -> WorkloadSpec:
    steps = tuple(RateStep(t, r) for t, r in _pairs(args.burst, "--burst", "RPS"))
    rate = args.rate_rps
    if rate is not None and rate <= 0:
        raise InputError(f"--rate-rps must be > 0 req/s, got {rate}")
    if rate is None and args.workload != "mooncake":
        rate = DEFAULT_RATE_RPS
    if steps and args.workload == "mooncake":
        raise InputError("--burst applies to the lognormal and burst workloads, not to a trace replay")
    kind = "burst" if steps else args.workload
    return WorkloadSpec(kind, rate, steps, args.trace)


def _report(
    args: argparse.Namespace, config: SimConfig, planned: Plan, results: dict[str, SimResult]
) -> dict[str, object]:
    return {
        "preset": args.preset,
        "workload": args.workload,
        "duration_s": config.duration_s,
        "warmup_s": config.warmup_s,
        "seed": args.seed,
        "plan": planned.summary(),
        "policies": {name: result.summary() for name, result in results.items()},
    }


def _finite(value: object) -> object:
    """NaN and infinities become null, so the output is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


COLUMNS = ("policy", "N_pf/N_p/N_d", "req/s", "TTFT mean", "p90", "p99", "TPOT ms", "offload", "hit", "Gbps", "t end")


def _row(result: SimResult) -> tuple[str, ...]:
    t = result.final_threshold_tokens
    return (
        result.policy,
        result.deployment + _final_split(result),
        f"{result.throughput_rps:.3f}",
        f"{result.ttft.mean_s:.2f}",
        f"{result.ttft.p90_s:.2f}",
        f"{result.ttft.p99_s:.2f}",
        f"{result.tpot_mean_ms:.1f}",
        f"{result.offload_fraction:.3f}",
        f"{result.prefix_hit_fraction:.3f}",
        f"{result.mean_egress_gbps:.1f}",
        f"{t:,.0f}" if math.isfinite(t) else "-",
    )


def _final_split(result: SimResult) -> str:
    """`` -> N_p/N_d`` when the long timescale changed the PD split."""
    final = f"{result.final_split.n_prefill}/{result.final_split.n_decode}"
    return "" if result.deployment.endswith("/" + final) else f" -> {final}"


def _table(args: argparse.Namespace, config: SimConfig, planned: Plan, results: dict[str, SimResult]) -> str:
    rows = [COLUMNS, *(_row(r) for r in results.values())]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        f"prfaas simulate: preset {args.preset}, workload {args.workload}, {config.duration_s:g} s "
        f"(measured from {config.warmup_s:g} s), seed {args.seed}",
        f"planner: t={planned.threshold_tokens:,} N_p/N_d={planned.n_prefill}/{planned.n_decode} "
        f"Lambda_max={planned.throughput_rps:.3f} (homogeneous {planned.homogeneous_rps:.3f}, "
        f"naive {planned.naive_rps:.3f}) req/s",
    ]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines + _ratios(results))


def _ratios(results: dict[str, SimResult]) -> list[str]:
    """Throughput of every policy relative to each baseline that ran."""
    lines = []
    for base in ("homogeneous", "naive"):
        if base in results and results[base].throughput_rps > 0:
            ref = results[base].throughput_rps
            cells = [f"{n} {r.throughput_rps / ref:.2f}x" for n, r in results.items() if n != base]
            lines.append(f"throughput vs {base}: " + ", ".join(cells))
    return lines


def _write_plots(out_dir: Path | None, results: dict[str, SimResult]) -> int:
    if out_dir is None:
        return 0
    from prfaas.sim.plots import plot_results

    try:
        paths = plot_results(results, out_dir)
    except OSError as exc:
        print(f"prfaas simulate: error: cannot write --plot files to {out_dir}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for path in paths:
        print(f"wrote {path}", file=sys.stderr)
    return 0
