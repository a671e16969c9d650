"""``prfaas plan``: the throughput-optimal PrfaaS-PD configuration (threshold ``t`` and ``N_p``/``N_d``).

Runs the 2-D grid search of §3.4.2 on the analytical model (Eqs. 1-8) for the paper's case study
(``--preset paper``, the default) or for a JSON scenario (``--scenario FILE``), and compares it with
homogeneous PD and naive heterogeneous PD. ``--plot DIR`` draws Figure 5 (needs matplotlib).

Scenario file format (JSON; every unit is in the key name, lengths are tokens, 1 Gbps = 10**9 bit/s)::

    {
      "num_prfaas": 4,                      # PrfaaS (prefill-only) instances
      "num_pd": 8,                          # local PD instances, split by the planner into N_p + N_d
      "link_gbps": 100,                     # PrfaaS -> PD cross-datacenter bandwidth
      "output_tokens": 1024,                # mean output length L_out
      "prfaas": {                           # PrfaaS hardware profile ("decode" may be omitted)
        "name": "8xH200",
        "prefill": {"kind": "quadratic", "a_s": 0.389, "b_s_per_token": 4.206e-5, "c_s_per_token2": 9.94e-11},
        "kv": {"kind": "linear", "fixed_bytes": 180355072, "bytes_per_token": 17553.1}
      },
      "pd": {                               # PD hardware profile; "decode" is required
        "name": "8xH20",
        "prefill": {"kind": "table", "points": [[1000, 0.53], [128000, 18.5]]},
        "kv": {"kind": "table", "points": [[1000, 2.0e8], [128000, 2.43e9]]},
        "decode": {"max_batch_size": 19.968, "step_s": 0.025}
      },
      "workload": {"kind": "lognormal", "mu": 9.9, "sigma": 1.0, "lo_tokens": 128, "hi_tokens": 131072}
    }

(The ``#`` comments are for this page only; JSON has none.)

- ``prefill``: ``{"kind": "quadratic", "a_s", "b_s_per_token", "c_s_per_token2"}`` for
  ``T(l) = a + b l + c l**2`` seconds, or ``{"kind": "table", "points": [[tokens, seconds], ...]}``
  (linear interpolation, linear extrapolation past the ends).
- ``kv``: ``{"kind": "linear", "fixed_bytes", "bytes_per_token"}`` or
  ``{"kind": "table", "points": [[tokens, bytes], ...]}``.
- ``decode``: ``{"max_batch_size", "step_s"}``; Eq. 5 gives ``N_d * max_batch_size / (step_s * L_out)`` req/s.
- ``workload`` (the uncached input length):
  ``{"kind": "lognormal", "mu", "sigma", "lo_tokens", "hi_tokens"}`` (truncated log-normal of ``ln L``),
  ``{"kind": "empirical", "lengths_tokens": [...]}``, or
  ``{"kind": "mooncake", "path": "trace.jsonl", "prefix_cache": true, "block_tokens": 512}``
  (a Mooncake JSONL trace; the path is relative to the scenario file; with ``prefix_cache`` the length is
  what an unbounded prefix cache leaves uncached, replayed in arrival order).

``--link-gbps``, ``--prfaas-instances``, ``--pd-instances`` and ``--output-tokens`` override the preset or
the file. Exit status 0 on success, 2 on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from prfaas.cli.extras import require_plotting
from prfaas.sched.planner import (
    DEFAULT_T_STEP_TOKENS,
    PAPER_TABLE6,
    OperatingPoint,
    Plan,
    homogeneous_baseline,
    naive_baseline,
    search,
    split_sweep,
    threshold_sweep,
)
from prfaas.sched.scenario import Scenario, paper_scenario
from prfaas.sched.scenario_file import load_scenario

PRESETS = {"paper": paper_scenario}
EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """Bad user input; the message says what to fix."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``plan`` on a ``parser.add_subparsers()`` object."""
    parser = subparsers.add_parser("plan", help="throughput-optimal PrfaaS-PD threshold and instance split")
    configure_parser(parser)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="built-in scenario")
    source.add_argument("--scenario", type=Path, metavar="FILE", help="JSON scenario (see the module doc)")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    parser.add_argument("--link-gbps", type=float, help="override the PrfaaS->PD bandwidth (Gbps)")
    parser.add_argument("--prfaas-instances", type=int, help="override N_prfaas")
    parser.add_argument("--pd-instances", type=int, help="override N_p + N_d")
    parser.add_argument("--output-tokens", type=float, help="override the mean output length L_out")
    parser.add_argument("--t-step-tokens", type=int, default=DEFAULT_T_STEP_TOKENS, help="threshold grid step (tokens)")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write Figure 5 (a) and (b) as PNGs here")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        scenario = _scenario(args)
        if args.plot is not None:
            require_plotting("--plot")
        best = search(scenario, args.t_step_tokens)
    except (OSError, ValueError) as exc:
        print(f"prfaas plan: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    homogeneous, naive = homogeneous_baseline(scenario), naive_baseline(scenario)
    result = Plan.from_points(best, homogeneous, naive)
    if args.json:
        print(json.dumps(result.summary()))
    else:
        print(_table(result, homogeneous, _is_paper_default(args), _source_name(args)))
    if args.plot is not None:
        try:
            paths = _plot_figure5(scenario, best, args.plot)
        except OSError as exc:
            print(f"prfaas plan: error: cannot write --plot files to {args.plot}: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        for path in paths:
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _scenario(args: argparse.Namespace) -> Scenario:
    _check_overrides(args)
    base = load_scenario(args.scenario) if args.scenario is not None else PRESETS[args.preset]()
    overrides = {
        "link_gbps": args.link_gbps,
        "num_prfaas": args.prfaas_instances,
        "num_pd": args.pd_instances,
        "output_tokens": args.output_tokens,
    }
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def _check_overrides(args: argparse.Namespace) -> None:
    checks = (
        (args.link_gbps, "--link-gbps", "a bandwidth > 0 Gbps"),
        (args.prfaas_instances, "--prfaas-instances", "at least 1 instance"),
        (args.pd_instances, "--pd-instances", "at least 1 instance"),
        (args.output_tokens, "--output-tokens", "a length > 0 tokens"),
        (args.t_step_tokens, "--t-step-tokens", "a step of at least 1 token"),
    )
    for value, flag, wanted in checks:
        if value is not None and value <= 0:
            raise InputError(f"{flag} must be {wanted}, got {value}")


def _has_overrides(args: argparse.Namespace) -> bool:
    overridden = (args.link_gbps, args.prfaas_instances, args.pd_instances, args.output_tokens)
    return any(v is not None for v in overridden) or args.t_step_tokens != DEFAULT_T_STEP_TOKENS


def _is_paper_default(args: argparse.Namespace) -> bool:
    return args.scenario is None and args.preset == "paper" and not _has_overrides(args)


def _source_name(args: argparse.Namespace) -> str:
    name = f"scenario {args.scenario}" if args.scenario is not None else f"preset {args.preset}"
    return f"{name}, with overrides" if _has_overrides(args) else name


PAPER_HOMOGENEOUS_SPLIT = (9, 3)  # Table 6: homogeneous PD runs N_p/N_d = 9/3
LABELS = (
    "threshold t (tokens)",
    "N_prfaas / N_p / N_d",
    "Lambda_max (req/s)",
    "Theta prfaas / pd-p / pd-d (req/s)",
    "bottleneck",
    "offload fraction p",
    "l_long = E[L | L > t] (tokens)",
    "egress (Gbps)",
    "homogeneous PD (req/s, N_p/N_d)",
    "naive heterogeneous (req/s)",
    "gain vs homogeneous",
)


def _rps(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _cells(plan: Plan, homogeneous_split: tuple[int, int]) -> tuple[str, ...]:
    """One formatted value per ``LABELS`` entry; used for the model's plan and the paper's alike."""
    thetas = (plan.theta_prfaas_rps, plan.theta_pd_prefill_rps, plan.theta_pd_decode_rps)
    return (
        f"{plan.threshold_tokens:,}",
        f"{plan.n_prfaas} / {plan.n_prefill} / {plan.n_decode}",
        _rps(plan.throughput_rps),
        " / ".join(_rps(v) for v in thetas),
        plan.bottleneck,
        f"{plan.offload_fraction:.3f}",
        "-" if plan.long_mean_tokens is None else f"{plan.long_mean_tokens:,.0f}",
        f"{plan.egress_gbps:.1f}",
        f"{_rps(plan.homogeneous_rps)} ({homogeneous_split[0]}/{homogeneous_split[1]})",
        _rps(plan.naive_rps),
        f"{plan.throughput_rps / plan.homogeneous_rps:.2f}x" if plan.homogeneous_rps > 0 else "-",
    )


def _table(plan: Plan, homogeneous: OperatingPoint, with_paper: bool, source: str) -> str:
    model = _cells(plan, (homogeneous.n_prefill, homogeneous.n_decode))
    paper = _cells(PAPER_TABLE6, PAPER_HOMOGENEOUS_SPLIT) if with_paper else ("",) * len(LABELS)
    width, value_width = max(map(len, LABELS)) + 2, max(map(len, model)) + 3
    header = f"{'':<{width}}{'model':<{value_width}}{'paper' if with_paper else ''}".rstrip()
    lines = [f"PrfaaS-PD plan ({source})", header]
    lines += [
        f"{label:<{width}}{m:<{value_width}}{p}".rstrip() for label, m, p in zip(LABELS, model, paper, strict=True)
    ]
    return "\n".join(lines)


def _finite(values: list[float]) -> list[float]:
    return [v if math.isfinite(v) else math.nan for v in values]


def _plot_figure5(scenario: Scenario, best: OperatingPoint, out_dir: Path) -> list[Path]:
    """Figure 5: (a) ``Lambda`` vs ``N_p`` at the best ``t``; (b) the two prefill bounds vs ``t`` at the
    best split. The optimum is where the curves of each panel cross (Eqs. 8 and 7)."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "figure5a_split.png", out_dir / "figure5b_threshold.png"]
    _plot_split(split_sweep(scenario, best.split.threshold_tokens), best, paths[0])
    _plot_threshold(scenario, best, paths[1])
    return paths


def _plot_split(points: tuple[OperatingPoint, ...], best: OperatingPoint, path: Path) -> None:
    import matplotlib.pyplot as plt

    n_p = [pt.n_prefill for pt in points]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(n_p, _finite([pt.rates.prefill_bound_rps for pt in points]), "r-o", label="prefill bound")
    ax.plot(n_p, [pt.rates.pd_decode_rps for pt in points], "g-s", label="decode bound")
    ax.plot(n_p, [pt.throughput_rps for pt in points], "k--", label="Lambda_max")
    ax.annotate(
        f"{best.throughput_rps:.2f}",
        (best.n_prefill, best.throughput_rps),
        xytext=(5, 8),
        textcoords="offset points",
    )
    ax.set(
        xlabel=f"N_p (N_d = {best.n_prefill + best.n_decode} - N_p)",
        ylabel="throughput (req/s)",
        title=f"(a) split at t = {best.split.threshold_tokens / 1000:.1f}K",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_threshold(scenario: Scenario, best: OperatingPoint, path: Path) -> None:
    import matplotlib.pyplot as plt

    t_max = min(scenario.lengths.max_tokens, max(60_000.0, 3 * best.split.threshold_tokens))
    thresholds = [t_max * i / 600 for i in range(601)]
    points = threshold_sweep(scenario, best.n_prefill, thresholds)
    t_k = [t / 1000 for t in thresholds]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(t_k, _finite([pt.rates.prfaas_bound_rps for pt in points]), "r-", label="PrfaaS bound Θ_prfaas/p")
    ax.plot(
        t_k,
        _finite([pt.rates.pd_prefill_bound_rps for pt in points]),
        "b-",
        label="PD-prefill bound Θ_pd-p/(1-p)",
    )
    ax.axhline(best.rates.pd_decode_rps, color="g", linestyle=":", label="decode bound Θ_pd-d")
    ax.axvline(best.split.threshold_tokens / 1000, color="k", linestyle="--", linewidth=0.8)
    ax.set_ylim(0, 2.5 * best.throughput_rps)
    ax.set(
        xlabel="threshold t (K tokens)",
        ylabel="throughput bound (req/s)",
        title=f"(b) N_p = {best.n_prefill}, N_d = {best.n_decode}",
    )
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
