"""PNG figures of simulation results (matplotlib, imported lazily: it is an optional dependency)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from prfaas.sim.metrics import SimResult


def plot_results(results: Mapping[str, SimResult], out_dir: Path) -> list[Path]:
    """Write ``ttft_cdf.png`` (TTFT CDF per policy) and ``link_threshold.png`` (egress utilisation, link
    capacity and the routing threshold ``t`` over time per policy); return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "ttft_cdf.png", out_dir / "link_threshold.png"]
    _plot_cdf(results, paths[0])
    _plot_series(results, paths[1])
    return paths


def _plot_cdf(results: Mapping[str, SimResult], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, result in results.items():
        values = np.sort(np.asarray(result.ttft_values_s))
        if values.size:
            ax.plot(values, np.arange(1, values.size + 1) / values.size, label=name)
    ax.set(xlabel="TTFT (s)", ylabel="fraction of requests", title="TTFT CDF (measurement window)")
    ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_series(results: Mapping[str, SimResult], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    for name, result in results.items():
        times = [s.time_s for s in result.samples]
        top.plot(times, [s.egress_utilization for s in result.samples], label=name, linewidth=0.9)
        t_k = [s.threshold_tokens / 1000 if math.isfinite(s.threshold_tokens) else math.nan for s in result.samples]
        if any(math.isfinite(v) for v in t_k):
            bottom.plot(times, t_k, label=name, linewidth=0.9)
    first = next(iter(results.values()), None)
    if first is not None and first.samples:
        capacity = top.twinx()
        capacity.plot([s.time_s for s in first.samples], [s.link_gbps for s in first.samples], "k:", linewidth=0.8)
        capacity.set_ylabel("link capacity (Gbps, dotted)")
    top.set(ylabel="egress utilisation", ylim=(0, 1.05), title="PrfaaS -> PD link and routing threshold")
    bottom.set(xlabel="time (s)", ylabel="threshold t (K tokens)")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    top.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
