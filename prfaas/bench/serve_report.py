"""What `prfaas bench serve` reports: per-run summary (throughput, goodput, latency percentiles, offload,
link bytes and utilisation), the side-by-side comparison of policies, and the PNG plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prfaas.bench.load import BREAKDOWN, RequestRecord
from prfaas.bench.serve import RunResult, Sample

PERCENTILES = (50, 90, 99)
BUSY_FRACTION = 0.05  # a sample counts towards the mean utilisation when the link carried at least this share


@dataclass(frozen=True, slots=True)
class Slo:
    ttft_s: float
    tpot_s: float


@dataclass(frozen=True, slots=True)
class ServeSummary:
    policy: str
    sent: int
    completed: int
    errors: dict[str, int]
    throughput_rps: float  # completions inside [warmup, duration] per second
    goodput_rps: float  # of those, the ones within both SLOs
    ttft_s: dict[str, float]  # p50 / p90 / p99 over completed requests that arrived after warm-up
    tpot_s: dict[str, float]
    offload_fraction: float  # completed requests that took the PrfaaS route
    kv_bytes_prfaas: int  # KV bytes the PrfaaS route shipped (from each request's route info)
    link_bytes: int | None  # bytes the emulated link carried PrfaaS -> PD (interface counters)
    link_utilization_mean: float | None  # mean of link bit/s over the shaped rate, over busy samples
    link_utilization_p90: float | None
    predicted_rps: float | None = None  # the planner's throughput for this deployment, scaled
    ttft_breakdown_s: dict[str, dict[str, float]] = field(default_factory=dict)  # route -> mean of each part
    api: str = "grpc"  # the front the requests came through
    router_cpu_ms_per_request: float | None = None  # the router process's CPU time over the run / requests sent

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pcts(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {f"p{p}": math.nan for p in PERCENTILES}
    return {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}


def _utilization(samples: Sequence[Sample]) -> list[float]:
    return [s.link_bps / s.link_rate_bps for s in samples if s.link_bps is not None and s.link_rate_bps]


def summarize(run: RunResult, slo: Slo, predicted_rps: float | None = None) -> ServeSummary:
    lo, hi = run.warmup_s, run.duration_s
    done = [r for r in run.records if r.ok]
    in_window = [r for r in done if r.done_s is not None and lo <= r.done_s <= hi]
    steady = [r for r in done if r.at_s >= lo]
    good = [r for r in in_window if _meets(r, slo)]
    errors: dict[str, int] = {}
    for r in run.records:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
    util = [u for u in _utilization(run.samples) if u >= BUSY_FRACTION]
    counters = [s.link_tx_bytes for s in run.samples if s.link_tx_bytes is not None]
    link_bytes = counters[-1] - counters[0] if counters else None
    return ServeSummary(
        run.policy,
        len(run.records),
        len(done),
        errors,
        len(in_window) / (hi - lo),
        len(good) / (hi - lo),
        _pcts([r.ttft_s for r in steady if r.ttft_s is not None]),
        _pcts([r.tpot_s for r in steady if r.tpot_s is not None]),
        sum(r.route == "prfaas" for r in done) / max(len(done), 1),
        sum(r.kv_bytes for r in done if r.route == "prfaas"),
        link_bytes,
        float(np.mean(util)) if util else None,
        float(np.percentile(util, 90)) if util else None,
        predicted_rps,
        _breakdowns(steady),
        run.api,
        None if run.router_cpu_s is None else run.router_cpu_s / max(len(run.records), 1) * 1e3,
    )


def _breakdowns(records: Sequence[RequestRecord]) -> dict[str, dict[str, float]]:
    """Per route, the mean of each TTFT part as the router measured it, next to the client's mean TTFT."""
    out = {}
    for route in sorted({r.route for r in records if r.breakdown_s}):
        mine = [r for r in records if r.route == route and r.breakdown_s and r.ttft_s is not None]
        parts = {k: float(np.mean([r.breakdown_s.get(k, math.nan) for r in mine if r.breakdown_s])) for k in BREAKDOWN}
        out[route] = {**parts, "ttft_s": float(np.mean([r.ttft_s for r in mine if r.ttft_s is not None]))}
    return out


def _meets(r: RequestRecord, slo: Slo) -> bool:
    tpot = r.tpot_s
    return r.ttft_s is not None and r.ttft_s <= slo.ttft_s and (tpot is None or tpot <= slo.tpot_s)


def format_summary(s: ServeSummary) -> str:
    ms = lambda d: " / ".join(f"{v * 1e3:.0f}" for v in d.values())  # noqa: E731
    lines = [
        f"policy {s.policy}: {s.completed}/{s.sent} completed, errors {s.errors or 'none'}",
        f"  throughput {s.throughput_rps:.2f} req/s, goodput {s.goodput_rps:.2f} req/s"
        + (f" (planner predicts {s.predicted_rps:.2f})" if s.predicted_rps is not None else ""),
        f"  TTFT p50/p90/p99 {ms(s.ttft_s)} ms, TPOT p50/p90/p99 {ms(s.tpot_s)} ms",
        f"  offloaded {s.offload_fraction:.1%}, KV shipped by PrfaaS {s.kv_bytes_prfaas / 1e6:.1f} MB",
    ]
    for route, parts in s.ttft_breakdown_s.items():
        split = ", ".join(f"{k.removesuffix('_s')} {v * 1e3:.0f}" for k, v in parts.items())
        lines.append(f"  TTFT split ({route}, mean ms): {split}")
    if s.link_bytes is not None:
        mean = "n/a" if s.link_utilization_mean is None else f"{s.link_utilization_mean:.1%}"
        p90 = "n/a" if s.link_utilization_p90 is None else f"{s.link_utilization_p90:.1%}"
        lines.append(f"  link carried {s.link_bytes / 1e6:.1f} MB, utilisation mean {mean} (busy samples), p90 {p90}")
    return "\n".join(lines)


def format_compare(summaries: Sequence[ServeSummary]) -> str:
    """Policies side by side; ratios are the first policy's over each other's."""
    head = summaries[0]
    lines = [
        f"{'policy':<16} {'req/s':>7} {'goodput':>8} {'TTFT p90 s':>11} {'predicted':>10} {'ratio':>7} {'pred.':>7}"
    ]
    for s in summaries:
        ratio = head.throughput_rps / s.throughput_rps if s.throughput_rps else math.inf
        pred = s.predicted_rps or math.nan
        pred_ratio = (head.predicted_rps or math.nan) / pred
        lines.append(
            f"{s.policy:<16} {s.throughput_rps:>7.2f} {s.goodput_rps:>8.2f} {s.ttft_s['p90']:>11.2f} "
            f"{pred:>10.2f} {ratio:>7.2f} {pred_ratio:>7.2f}"
        )
    lines.append(f"ratio = {head.policy} throughput / the row's, measured and as the planner predicts")
    return "\n".join(lines)


API_TTFT_P50_TARGET = 1.10  # the OpenAI front's TTFT p50 within 10% of gRPC's
API_CPU_TARGET_MS = 1.0  # and at most 1 ms more router CPU per request


def format_api_compare(summaries: Sequence[ServeSummary]) -> str:
    """The fronts side by side (the first is the baseline), and each one's figures against the targets."""
    base = summaries[0]
    lines = [f"{'front':<8} {'done':>9} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'router CPU ms/req':>18}"]
    for s in summaries:
        cpu = math.nan if s.router_cpu_ms_per_request is None else s.router_cpu_ms_per_request
        done = f"{s.completed}/{s.sent}"
        lines.append(f"{s.api:<8} {done:>9} {s.ttft_s['p50'] * 1e3:>12.1f} {s.ttft_s['p99'] * 1e3:>12.1f} {cpu:>18.2f}")
    for s in summaries[1:]:
        ttft = s.ttft_s["p50"] / base.ttft_s["p50"]
        cpu = (s.router_cpu_ms_per_request or math.nan) - (base.router_cpu_ms_per_request or math.nan)
        lines.append(
            f"{s.api} vs {base.api}: TTFT p50 x{ttft:.3f} (target <= {API_TTFT_P50_TARGET:.2f}: "
            f"{'met' if ttft <= API_TTFT_P50_TARGET else 'NOT met'}), router CPU {cpu:+.2f} ms/request "
            f"(target <= +{API_CPU_TARGET_MS:g}: {'met' if cpu <= API_CPU_TARGET_MS else 'NOT met'})"
        )
    return "\n".join(lines)


def plot(runs: Sequence[RunResult], path: Path) -> None:
    """Latency CDFs (TTFT, TPOT) per policy; link utilisation, t and completions over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    rate_ax = axes[1][1].twinx()
    for run in runs:
        done = [r for r in run.records if r.ok and r.at_s >= run.warmup_s]
        for ax, values in ((axes[0][0], [r.ttft_s for r in done]), (axes[0][1], [r.tpot_s for r in done])):
            xs = np.sort([v for v in values if v is not None])
            if len(xs):
                ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=run.label)
        util = [
            (s.t_s, s.link_bps / s.link_rate_bps) for s in run.samples if s.link_bps is not None and s.link_rate_bps
        ]
        if util:
            axes[1][0].plot(*zip(*util, strict=True), label=f"{run.label} utilisation")
        ts = [(s.t_s, s.threshold_tokens) for s in run.samples if s.threshold_tokens is not None]
        if ts:
            axes[1][1].step(*zip(*ts, strict=True), where="post", label=f"{run.label} t", linestyle="--")
        ends = np.sort([r.done_s for r in run.records if r.ok and r.done_s is not None])
        if len(ends):
            edges = np.arange(0.0, max(run.duration_s, float(ends[-1])) + 5.0, 5.0)
            counts, _ = np.histogram(ends, edges)
            rate_ax.plot(edges[:-1] + 2.5, counts / 5.0, label=f"{run.label} req/s")
    rate_ax.set_ylabel("completions / s (5 s bins)")
    rate_ax.legend(loc="upper right")
    _labels(axes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _labels(axes: Any) -> None:
    axes[0][0].set(xlabel="TTFT (s)", ylabel="CDF", title="time to first token")
    axes[0][1].set(xlabel="TPOT (s)", ylabel="CDF", title="time per output token")
    axes[1][0].set(xlabel="time (s)", ylabel="link bit/s / shaped rate", title="PrfaaS -> PD link utilisation")
    axes[1][1].set(xlabel="time (s)", ylabel="t (tokens)", title="routing threshold t and throughput")
    for ax, where in ((axes[0][0], "lower right"), (axes[0][1], "lower right"), (axes[1][0], "lower right")):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc=where)
    if axes[1][1].get_legend_handles_labels()[0]:
        axes[1][1].legend(loc="upper left")
