"""``prfaas plan`` (prfaas/cli/plan.py) and the JSON scenario format it reads."""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from prfaas.cli import plan as plan_cli
from prfaas.sched.planner import plan, search
from prfaas.sched.scenario import MIB_BYTES, paper_scenario
from prfaas.sched.scenario_file import load_scenario, scenario_from_dict

JSON_KEYS = [
    "threshold_tokens",
    "n_prfaas",
    "n_prefill",
    "n_decode",
    "throughput_rps",
    "offload_fraction",
    "egress_gbps",
    "homogeneous_rps",
    "naive_rps",
    "bottleneck",
]


def paper_scenario_json() -> dict[str, Any]:
    kv = {"kind": "linear", "fixed_bytes": 172 * MIB_BYTES, "bytes_per_token": 16.74 * MIB_BYTES / 1000}
    return {
        "num_prfaas": 4,
        "num_pd": 8,
        "link_gbps": 100,
        "output_tokens": 1024,
        "prfaas": {
            "name": "8xH200",
            "prefill": {
                "kind": "quadratic",
                "a_s": 0.389,
                "b_s_per_token": 4.206e-5,
                "c_s_per_token2": 9.94e-11,
            },
            "kv": kv,
        },
        "pd": {
            "name": "8xH20",
            "prefill": {"kind": "quadratic", "a_s": 0.386, "b_s_per_token": 1.413e-4, "c_s_per_token2": 0},
            "kv": kv,
            "decode": {"max_batch_size": 0.78 * 0.025 * 1024, "step_s": 0.025},
        },
        "workload": {"kind": "lognormal", "mu": 9.9, "sigma": 1.0, "lo_tokens": 128, "hi_tokens": 131072},
    }


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    plan_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plan", *argv])
    assert args.run is plan_cli.run
    return plan_cli.run(args)


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_json_keys_and_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == JSON_KEYS
    assert (out["threshold_tokens"], out["n_prfaas"], out["n_prefill"], out["n_decode"]) == (19400, 4, 3, 5)
    assert out["throughput_rps"] == pytest.approx(3.24, rel=0.02)
    assert out["bottleneck"] == "prfaas-compute"


def test_table_shows_paper_column_for_the_plain_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli() == 0
    out = capsys.readouterr().out
    assert "paper" in out.splitlines()[1]
    assert "3.25" in out and "3.24" in out and "4 / 3 / 5" in out and "2.11 (9/3)" in out


def test_overrides_drop_the_paper_column(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("--link-gbps", "10", "--t-step-tokens", "1000") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "PrfaaS-PD plan (preset paper, with overrides)"
    assert lines[1].split() == ["model"]
    egress_gbps = next(float(line.split()[-1]) for line in lines if line.startswith("egress"))
    assert 9.0 < egress_gbps <= 10.0  # the 10 Gbps link now nearly binds (Eq. 3's second term)


def test_instance_and_output_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("--json", "--prfaas-instances", "2", "--pd-instances", "6", "--output-tokens", "512")
    assert run_cli(*argv, "--t-step-tokens", "500") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_prfaas"] == 2 and out["n_prefill"] + out["n_decode"] == 6


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--link-gbps", "-5"), "--link-gbps must be a bandwidth > 0 Gbps"),
        (("--prfaas-instances", "0"), "--prfaas-instances must be at least 1 instance"),
        (("--pd-instances", "0"), "--pd-instances must be at least 1 instance"),
        (("--output-tokens", "0"), "--output-tokens must be a length > 0 tokens"),
        (("--t-step-tokens", "0"), "--t-step-tokens must be a step of at least 1 token"),
        (("--t-step-tokens", "1"), "use a larger step"),
        (("--scenario", "/nonexistent/scenario.json"), "No such file"),
    ],
)
def test_bad_input_exits_2(argv: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(*argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err


def test_bad_scenario_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert run_cli("--scenario", str(broken)) == 2
    assert "not valid JSON" in capsys.readouterr().err

    data = paper_scenario_json()
    del data["pd"]["decode"]
    assert run_cli("--scenario", str(write_json(tmp_path / "nodecode.json", data))) == 2
    assert "needs a decode capacity" in capsys.readouterr().err

    data = paper_scenario_json()
    del data["workload"]["sigma"]
    assert run_cli("--scenario", str(write_json(tmp_path / "nosigma.json", data))) == 2
    assert "workload.sigma is missing" in capsys.readouterr().err

    data = paper_scenario_json()
    data["link_gbps"] = -1
    assert run_cli("--scenario", str(write_json(tmp_path / "neg.json", data))) == 2
    assert "link_gbps must be > 0" in capsys.readouterr().err


def test_scenario_file_reproduces_the_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_json(tmp_path / "paper.json", paper_scenario_json())
    assert run_cli("--scenario", str(path), "--json") == 0
    from_file = json.loads(capsys.readouterr().out)
    assert from_file == pytest.approx(plan(paper_scenario()).summary())


def test_scenario_file_with_tables_and_trace(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        "\n".join(
            json.dumps({"timestamp": i, "input_length": n, "output_length": 100, "hash_ids": [i]})
            for i, n in enumerate([2000, 8000, 30000, 60000])
        )
    )
    data = paper_scenario_json()
    data["pd"]["prefill"] = {"kind": "table", "points": [[1000, 0.53], [128000, 18.5]]}
    data["prfaas"]["kv"] = {"kind": "table", "points": [[1000, 2.0e8], [128000, 2.43e9]]}
    data["workload"] = {"kind": "mooncake", "path": "trace.jsonl", "prefix_cache": True}
    scenario = load_scenario(write_json(tmp_path / "s.json", data))
    assert scenario.lengths.max_tokens == 60000
    assert scenario.pd.prefill_s(64500) == pytest.approx((0.53 + 18.5) / 2)
    best = search(scenario, 1000)
    assert best.throughput_rps > 0


def test_scenario_from_dict_rejects_bad_kinds() -> None:
    data = paper_scenario_json()
    data["prfaas"]["prefill"]["kind"] = "cubic"
    with pytest.raises(ValueError, match=r"prfaas\.prefill\.kind must be 'quadratic' or 'table'"):
        scenario_from_dict(data)
    data = paper_scenario_json()
    data["num_pd"] = "eight"
    with pytest.raises(ValueError, match=r"scenario\.num_pd must be a number"):
        scenario_from_dict(data)


def test_plot_writes_two_pngs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    assert run_cli("--json", "--plot", str(tmp_path / "fig")) == 0
    captured = capsys.readouterr()
    assert list(json.loads(captured.out)) == JSON_KEYS  # plot messages stay off stdout
    for name in ("figure5a_split.png", "figure5b_threshold.png"):
        png = tmp_path / "fig" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(png) in captured.err


def test_plot_without_matplotlib_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert run_cli("--plot", str(tmp_path)) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
