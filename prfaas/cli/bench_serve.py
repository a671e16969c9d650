"""`prfaas bench serve`: end-to-end serving benchmark (see `prfaas.bench.serve`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prfaas.bench.load import WORKLOADS, LoadRequest, WorkloadSpec, build_requests
from prfaas.bench.serve import APIS, LinkEvent, RunResult, policy_topology, predicted_rps, run_fronts, run_policy
from prfaas.bench.serve_report import (
    ServeSummary,
    Slo,
    format_api_compare,
    format_compare,
    format_summary,
    plot,
    summarize,
)
from prfaas.cli.extras import require_extra, require_plotting
from prfaas.cli.up import link_from
from prfaas.netem import LinkSpec
from prfaas.netem.shaper import LinkError
from prfaas.sched.policy import POLICIES
from prfaas.sim.experiment import DEFAULT_TRACE
from prfaas.stack import Topology

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "serve-mock.json"


def add_parser(kinds: argparse._SubParsersAction) -> None:
    s = kinds.add_parser(
        "serve", help="open-loop serving benchmark on a local topology (optionally over the emulated link)"
    )
    s.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="topology JSON (default: %(default)s)")
    s.add_argument("--engine", choices=["real", "mock"], help="override the config's engine")
    s.add_argument("--emulate-link", metavar="SPEC", help="PrfaaS <-> PD link, e.g. rate=1gbit,delay=5ms (root)")
    s.add_argument("--link-event", action="append", default=[], metavar="S:SPEC", help="e.g. 60:rate=200mbit")
    s.add_argument("--policy", default="prfaas", help="routing policy for a single run")
    s.add_argument("--compare", help="comma-separated policies run one after another on the same workload")
    s.add_argument(
        "--api",
        default="grpc",
        help="the front requests go through: grpc (the SDK), openai (the HTTP API), or grpc,openai to compare "
        "both on one stack (TTFT and router CPU per request side by side)",
    )
    s.add_argument("--workload", choices=WORKLOADS, default="lognormal")
    s.add_argument("--rate-rps", type=float, help="Poisson rate (default 1; mooncake: the trace's own times)")
    s.add_argument("--duration-s", type=float, default=60.0, help="arrivals stop after this")
    s.add_argument("--warmup-s", type=float, default=10.0, help="excluded from throughput and latency figures")
    s.add_argument("--drain-s", type=float, default=30.0, help="wait this long for stragglers after the last arrival")
    s.add_argument("--output-tokens", type=int, default=16)
    s.add_argument(
        "--length-scale", type=float, help="multiply prompt/output lengths (default: 1 / the config's token_scale)"
    )
    s.add_argument("--max-prompt-tokens", type=int, help="clip prompts (e.g. the real model's context)")
    s.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--slo-ttft-s", type=float, default=5.0)
    s.add_argument("--slo-tpot-s", type=float, default=1.0)
    s.add_argument("--out", type=Path, help="write summary.json, records.json and serve.png here")
    s.add_argument("--json", action="store_true", help="print the summaries as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(run=run)


@dataclass(frozen=True, slots=True)
class ServePlan:
    """What the arguments ask for, checked before anything starts."""

    policies: tuple[str, ...]
    base: Topology
    link: LinkSpec | None
    events: tuple[LinkEvent, ...]
    spec: WorkloadSpec
    apis: tuple[str, ...] = ("grpc",)


def run(args: argparse.Namespace) -> int:
    try:
        plan = read_plan(args)
    except ValueError as exc:
        print(f"prfaas bench serve: error: {exc}", file=sys.stderr)
        return 2
    try:
        runs, summaries = _run_policies(args, plan)
    except LinkError as exc:
        print(f"prfaas bench serve: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([s.as_dict() for s in summaries]))
    elif len(summaries) > 1 and plan.apis == ("grpc",):
        print(format_compare(summaries))
    if args.out is not None:
        _write(args.out, runs, summaries)
    return 0


def read_plan(args: argparse.Namespace) -> ServePlan:
    """The arguments, validated; optional dependencies too (`--out` draws serve.png), so nothing fails
    after the benchmark ran."""
    if args.out is not None:
        require_plotting("--out")
    policies = _policies(args.compare or args.policy)
    base = Topology.from_file(args.config, engine=args.engine)
    link = link_from(args.emulate_link)
    events = [LinkEvent.parse(e) for e in args.link_event]
    if events and link is None:
        raise ValueError("--link-event needs --emulate-link")
    spec = WorkloadSpec(
        args.workload,
        args.rate_rps if args.rate_rps or args.workload == "mooncake" else 1.0,
        args.duration_s,
        args.output_tokens,
        args.length_scale or 1.0 / base.token_scale,
        args.max_prompt_tokens,
        args.seed,
        args.trace,
    )
    if not 0 <= args.warmup_s < args.duration_s:
        raise ValueError("--warmup-s must be >= 0 and below --duration-s")
    return ServePlan(tuple(policies), base, link, tuple(events), spec, _apis(args.api, policies))


def _apis(text: str, policies: list[str]) -> tuple[str, ...]:
    apis = tuple(a.strip() for a in text.split(",") if a.strip())
    unknown = [a for a in apis if a not in APIS]
    if not apis or unknown:
        raise ValueError(f"--api takes {', '.join(APIS)} (comma-separated to compare), got {text!r}")
    if len(apis) > 1 and len(policies) > 1:
        raise ValueError("compare either fronts (--api grpc,openai) or policies (--compare), not both")
    if "openai" in apis:
        require_extra("openai", "test", "--api openai")
    return apis


def _run_policies(args: argparse.Namespace, plan: ServePlan) -> tuple[list[RunResult], list[ServeSummary]]:
    """One run per policy on the same requests, each summary printed as it is ready (or, with several
    fronts, one stack and one pass per front)."""
    requests = build_requests(plan.spec)
    if plan.apis != ("grpc",):
        return _run_fronts(args, plan, requests)
    slo = Slo(args.slo_ttft_s, args.slo_tpot_s)
    runs: list[RunResult] = []
    summaries: list[ServeSummary] = []
    for policy in plan.policies:
        topology = policy_topology(plan.base, policy)
        print(
            f"{policy}: {len(requests)} requests over {plan.spec.duration_s:g} s on {_describe(topology)}",
            file=sys.stderr,
        )
        progress = None if args.quiet else _progress_bar(policy)
        result = run_policy(
            topology,
            plan.link,
            requests,
            plan.spec,
            warmup_s=args.warmup_s,
            events=plan.events,
            drain_s=args.drain_s,
            progress=progress,
        )
        mock = plan.base.engine == "mock"
        predicted = predicted_rps(plan.base, policy, plan.link, args.output_tokens) if mock else None
        runs.append(result)
        summaries.append(summarize(result, slo, predicted))
        if not args.json:
            print(format_summary(summaries[-1]), flush=True)
    return runs, summaries


def _run_fronts(
    args: argparse.Namespace, plan: ServePlan, requests: list[LoadRequest]
) -> tuple[list[RunResult], list[ServeSummary]]:
    topology = policy_topology(plan.base, plan.policies[0])
    fronts = " then ".join(plan.apis)
    print(f"{fronts}: {len(requests)} requests each on one stack, {_describe(topology)}", file=sys.stderr)
    progress = None if args.quiet else _progress_bar("/".join(plan.apis))
    runs = run_fronts(
        topology,
        plan.link,
        requests,
        plan.spec,
        plan.apis,
        warmup_s=args.warmup_s,
        drain_s=args.drain_s,
        progress=progress,
    )
    summaries = [summarize(r, Slo(args.slo_ttft_s, args.slo_tpot_s)) for r in runs]
    if not args.json:
        print(format_api_compare(summaries), flush=True)
    return runs, summaries


def _policies(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in POLICIES]
    if not names or unknown:
        raise ValueError(f"unknown policies {unknown or text!r}; choose from {', '.join(POLICIES)}")
    return names


def _describe(t: Topology) -> str:
    return f"{t.engine} engines, {t.prfaas_prefill} PrfaaS prefill + {t.pd_prefill} PD prefill + {t.decode} decode"


def _progress_bar(policy: str) -> Callable[[int, int, float], None]:
    """A bar redrawn in place on a terminal; elsewhere (logs, CI) a line every 10 s."""
    tty = sys.stderr.isatty()
    last = [-math.inf]

    def show(done: int, total: int, elapsed_s: float) -> None:
        final = done >= total
        if not tty and not final and elapsed_s - last[0] < 10.0:
            return
        last[0] = elapsed_s
        filled = 30 * done // max(total, 1)
        line = f"  {policy:<16} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} finished {elapsed_s:6.1f} s"
        print(("\r" if tty else "") + line, end="\n" if final or not tty else "", file=sys.stderr, flush=True)

    return show


def _write(out: Path, runs: list[RunResult], summaries: list[ServeSummary]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps([s.as_dict() for s in summaries], indent=2))
    records = {
        r.label: {
            "records": [dataclasses.asdict(rec) for rec in r.records],
            "samples": [dataclasses.asdict(s) for s in r.samples],
        }
        for r in runs
    }
    (out / "records.json").write_text(json.dumps(records))
    plot(runs, out / "serve.png")
    print(f"wrote {out / 'summary.json'}, {out / 'records.json'}, {out / 'serve.png'}", file=sys.stderr)
