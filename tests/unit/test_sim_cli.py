"""``prfaas simulate``: the JSON report's keys, the table, the plots, and exit status 2 on bad input."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from prfaas.cli import simulate


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="prfaas")
    simulate.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["simulate", *argv])
    code: int = args.run(args)
    return code


QUICK = ["--duration-s", "120", "--rate-rps", "1.0"]

SUMMARY_KEYS = {
    "policy",
    "deployment",
    "throughput_rps",
    "arrived",
    "completed",
    "unfinished",
    "ttft_mean_s",
    "ttft_p50_s",
    "ttft_p90_s",
    "ttft_p99_s",
    "tpot_mean_ms",
    "offload_fraction",
    "prefix_hit_fraction",
    "prefix_moves",
    "mean_egress_gbps",
    "final_threshold_tokens",
    "final_split",
    "events",
    "events_per_s",
    "series",
}


def test_json_report_has_the_plan_and_every_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli([*QUICK, "--json", "--policy", "prfaas-static-t,homogeneous,naive", "--link-event", "60:10"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"preset", "workload", "duration_s", "warmup_s", "seed", "plan", "policies"}
    assert report["plan"]["threshold_tokens"] == 19_400
    assert list(report["policies"]) == ["prfaas-static-t", "homogeneous", "naive"]
    for summary in report["policies"].values():
        assert set(summary) == SUMMARY_KEYS
        assert set(summary["series"]) == {"time_s", "egress_utilization", "link_gbps", "threshold_tokens"}
    static = report["policies"]["prfaas-static-t"]
    assert (static["deployment"], static["final_threshold_tokens"]) == ("4/3/5", 19_400)
    assert report["policies"]["homogeneous"]["final_threshold_tokens"] is None  # t = inf is not JSON
    assert static["series"]["link_gbps"][0] == 100.0 and static["series"]["link_gbps"][-1] == 10.0


def test_table_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli([*QUICK, "--workload", "burst", "--policy", "prfaas,homogeneous", "--plot", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "Lambda_max=3.247" in captured.out
    assert "throughput vs homogeneous: prfaas" in captured.out
    for name in ("ttft_cdf.png", "link_threshold.png"):
        assert (tmp_path / name).stat().st_size > 0
        assert f"wrote {tmp_path / name}" in captured.err


def test_plot_without_matplotlib_exits_2_before_simulating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *args: None)  # no optional package installed
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("simulated although the --plot files could never be drawn")

    monkeypatch.setattr(simulate, "run_policy", never)
    assert run_cli([*QUICK, "--plot", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "prfaas simulate: error: --plot needs matplotlib; install it with `pip install 'prfaas[plot]'`, "
        "or run without --plot\n"
    )


def test_mooncake_replay_ends_with_the_trace(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--workload", "mooncake", "--rate-rps", "60", "--duration-s", "1000", "--policy", "prfaas", "--json"]
    assert run_cli(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["duration_s"] == pytest.approx(12_031 / 60, rel=0.01)
    assert "--duration-s is cut" in captured.err
    assert report["policies"]["prfaas"]["prefix_hit_fraction"] > 0.2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--policy", "prfaas,bogus"], "--policy: unknown bogus"),
        (["--link-event", "300"], "--link-event '300': expected T:GBPS"),
        (["--link-event", "300:0"], "--link-event '300:0'"),
        (["--burst", "x:2"], "--burst 'x:2': expected T:RPS"),
        (["--rate-rps", "-1"], "--rate-rps must be > 0"),
        (["--duration-s", "0"], "--duration-s must be > 0"),
        (["--warmup-s", "700"], "--warmup-s must be in [0, 600)"),
        (["--cache-blocks", "-5"], "--cache-blocks must be >= 0"),
        (["--workload", "mooncake", "--burst", "10:2"], "--burst applies to the lognormal and burst workloads"),
        (["--workload", "mooncake", "--trace", "/nonexistent.jsonl"], "No such file"),
    ],
)
def test_bad_input_exits_2_with_a_message(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("prfaas simulate: error: ") and message in err
