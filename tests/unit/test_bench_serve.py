"""`prfaas bench serve` pieces that need no services: link events, deployments, predictions, the summary."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from prfaas.bench.load import RequestRecord
from prfaas.bench.serve import LinkEvent, RunResult, Sample, policy_topology, predicted_rps
from prfaas.bench.serve_report import Slo, format_api_compare, format_compare, summarize
from prfaas.cli import bench_serve
from prfaas.cli.main import main
from prfaas.netem import parse_link_spec
from prfaas.stack import Topology

ROOT = Path(__file__).resolve().parents[2]


def test_link_events_parse_and_refuse_bad_input() -> None:
    assert LinkEvent.parse("30:rate=40mbit") == LinkEvent(30.0, "rate=40mbit")
    for bad, message in (
        ("rate=1gbit", "SECONDS:SPEC"),
        ("-1:rate=1gbit", "SECONDS:SPEC"),
        ("5:speed=1", "unknown key"),
    ):
        with pytest.raises(ValueError, match=message):
            LinkEvent.parse(bad)


def test_policies_get_the_paper_baseline_deployments_and_the_planner_ratios() -> None:
    base = Topology.from_file(ROOT / "configs" / "serve-mock.json")
    homogeneous, naive = policy_topology(base, "homogeneous"), policy_topology(base, "naive")
    assert (homogeneous.prfaas_prefill, homogeneous.pd_prefill + homogeneous.decode) == (0, 12)
    assert (naive.prfaas_prefill, naive.pd_prefill, naive.decode) == (4, 0, 8)
    link = parse_link_spec("rate=1gbit")  # x time_scale / bytes_scale = the paper's 100 Gbps
    prfaas, homo, nai = (predicted_rps(base, p, link, 16) for p in ("prfaas", "homogeneous", "naive"))
    assert prfaas * base.time_scale == pytest.approx(3.24, abs=0.02)  # the paper's Lambda_max
    assert prfaas / homo == pytest.approx(3.24 / 2.11, rel=0.02) and prfaas / nai == pytest.approx(1.31, abs=0.02)


def _run(policy: str, records: list[RequestRecord]) -> RunResult:
    steps = (
        (0.0, None, 1000),
        (0.5, 0.0, 1000),
        (1.0, 9e7, 5_626_000),
        (1.5, 9.5e7, 11_563_500),
        (2.0, 1e6, 11_626_000),
    )
    samples = [Sample(t, 1e8, bps, sent, 19400.0) for t, bps, sent in steps]
    return RunResult(policy, Topology(), "rate=100mbit", records, samples, duration_s=10.0, warmup_s=2.0)


def test_summary_counts_the_window_the_slo_and_the_link() -> None:
    records = [
        RequestRecord(
            1.0, 100, 1.5, 3.0, 4, "prfaas", 0, 1000
        ),  # arrived in warm-up: counts for throughput and goodput, not latency
        RequestRecord(3.0, 100, 3.2, 4.0, 5, "local", 64, 10),  # fast: meets the SLO
        RequestRecord(4.0, 100, 9.0, 9.5, 2, "prfaas", 0, 2000),  # TTFT 5 s: misses it
        RequestRecord(5.0, 100, 6.0, 12.0, 3, "local"),  # finishes after the window
        RequestRecord(6.0, 100, error="RESOURCE_EXHAUSTED"),
    ]
    s = summarize(_run("prfaas", records), Slo(ttft_s=1.0, tpot_s=1.0), predicted_rps=1.0)
    assert (s.sent, s.completed, s.errors) == (5, 4, {"RESOURCE_EXHAUSTED": 1})
    assert s.throughput_rps == pytest.approx(3 / 8) and s.goodput_rps == pytest.approx(2 / 8)
    assert s.ttft_s["p50"] == pytest.approx(1.0)  # of 0.2, 5.0 and 1.0
    assert s.offload_fraction == pytest.approx(0.5) and s.kv_bytes_prfaas == 3000
    assert s.link_utilization_mean == pytest.approx((0.9 + 0.95) / 2)  # the idle samples are not "busy"
    assert s.link_bytes == 11_625_000
    table = format_compare([s, summarize(_run("naive", records[:2]), Slo(1.0, 1.0), predicted_rps=0.5)])
    assert "naive" in table and "1.50" in table and "2.00" in table  # measured 3/2 and predicted 1.0/0.5


def test_out_without_matplotlib_is_refused_before_the_benchmark_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the benchmark ran although its --out could never be written")

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if `prfaas[plot]` were not installed
    monkeypatch.setattr(bench_serve, "run_policy", never)
    assert main(["bench", "serve", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "prfaas bench serve: error: --out needs matplotlib; install it with `pip install 'prfaas[plot]'`, "
        "or run without --out\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--api", "rest"], "--api takes grpc, openai (comma-separated to compare), got 'rest'"),
        (["--api", "grpc,openai", "--compare", "prfaas,naive"], "compare either fronts"),
    ],
)
def test_bad_api_choices_are_refused_before_anything_starts(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench_serve, "run_fronts", lambda *a, **k: pytest.fail("a stack started"))
    assert main(["bench", "serve", "--quiet", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_front_comparison_reads_against_the_targets() -> None:
    def run(api: str, ttft_s: float, cpu_s: float) -> RunResult:
        records = [
            RequestRecord(float(i), 10, first_token_s=i + ttft_s, done_s=i + 1.0, num_tokens=2) for i in range(4)
        ]
        return RunResult("prfaas", Topology(), None, records, [], 10.0, 0.0, api, cpu_s)

    slo = Slo(5.0, 1.0)
    grpc_, fast, slow = run("grpc", 0.100, 0.040), run("openai", 0.105, 0.042), run("openai", 0.120, 0.048)
    met = format_api_compare([summarize(grpc_, slo), summarize(fast, slo)])
    assert "TTFT p50 x1.050 (target <= 1.10: met), router CPU +0.50 ms/request (target <= +1: met)" in met
    missed = format_api_compare([summarize(grpc_, slo), summarize(slow, slo)])
    assert "TTFT p50 x1.200 (target <= 1.10: NOT met), router CPU +2.00 ms/request (target <= +1: NOT met)" in missed
