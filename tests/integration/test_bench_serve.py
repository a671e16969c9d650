"""`prfaas bench serve` end to end: real services with mock engines, open-loop load, the report's files; with
the emulated link (root), KV crosses it and the link's counters see at least the KV bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "engine": "mock",
    "prfaas_prefill": 1,
    "pd_prefill": 1,
    "decode": 1,
    "threshold_tokens": 19400,
    "time_scale": 0.02,
    "bytes_scale": 0.005,
    "decode_step_scale": 4,
    "num_blocks": 8192,
    "max_prefill_tokens": 131072,
    "snapshot_every_blocks": 64,
    "max_model_len": 140000,
    "replan_period_s": 0,
}


def _serve(tmp_path: Path, *extra: str) -> list[dict[str, object]]:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    argv = [sys.executable, "-m", "prfaas.cli.main", "bench", "serve", "--config", str(config), "--rate-rps", "3"]
    argv += ["--duration-s", "6", "--warmup-s", "1", "--drain-s", "20", "--out", str(tmp_path / "out"), "--json"]
    done = subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=300, cwd=ROOT, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished" in done.stderr  # the progress bar
    for name in ("summary.json", "records.json", "serve.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    return list(json.loads(done.stdout))


def test_bench_serve_runs_a_workload_and_reports_it(tmp_path: Path) -> None:
    (summary,) = _serve(tmp_path, "--workload", "shared-prefix")
    assert summary["policy"] == "prfaas" and summary["sent"] == summary["completed"] and summary["completed"] > 5
    assert summary["errors"] == {} and summary["link_bytes"] is None
    ttft, tpot = summary["ttft_s"], summary["tpot_s"]
    assert isinstance(ttft, dict) and isinstance(tpot, dict)
    assert 0 < ttft["p50"] <= ttft["p90"] <= ttft["p99"] and tpot["p50"] > 0
    records = json.loads((tmp_path / "out" / "records.json").read_text())["prfaas"]["records"]
    assert sum(r["cached_tokens"] > 0 for r in records) > 0  # shared prefixes were reused
    for r in records:  # the router's TTFT split fits inside the TTFT the client saw
        parts = r["breakdown_s"]
        assert parts["prefill_s"] > 0 and all(v >= 0 for v in parts.values())
        assert sum(parts.values()) <= r["first_token_s"] - r["at_s"] + 0.01


def test_bench_serve_compares_policies_across_the_emulated_link(tmp_path: Path, linkable: None) -> None:
    link = ["--emulate-link", "rate=200mbit,delay=2ms", "--link-event", "3:rate=100mbit"]
    prfaas, naive = _serve(tmp_path, *link, "--compare", "prfaas,naive")
    assert (prfaas["policy"], naive["policy"]) == ("prfaas", "naive")
    assert naive["offload_fraction"] == 1.0 and naive["completed"] == naive["sent"]
    for s in (prfaas, naive):
        assert isinstance(s["link_bytes"], int) and s["link_bytes"] >= s["kv_bytes_prfaas"]  # KV crossed the link
    samples = json.loads((tmp_path / "out" / "records.json").read_text())["naive"]["samples"]
    assert {s["link_rate_bps"] for s in samples} == {2e8, 1e8}  # the link event applied mid-run
    assert any(s["threshold_tokens"] for s in samples)  # the router's t, read through its forwarded /metrics


def test_bench_serve_compares_the_grpc_and_openai_fronts_on_one_stack(tmp_path: Path) -> None:
    grpc_front, openai_front = _serve(tmp_path, "--api", "grpc,openai")
    assert (grpc_front["api"], openai_front["api"]) == ("grpc", "openai")
    for front in (grpc_front, openai_front):
        assert front["sent"] == front["completed"] > 5 and front["errors"] == {}
        assert 0 < front["ttft_s"]["p50"] <= front["ttft_s"]["p99"]  # type: ignore[index]
        assert 0 < front["router_cpu_ms_per_request"] < 1000  # type: ignore[operator]
    records = json.loads((tmp_path / "out" / "records.json").read_text())
    assert set(records) == {"prfaas", "prfaas-openai"}
    assert all(r["num_tokens"] == 16 and r["route"] for r in records["prfaas-openai"]["records"])
