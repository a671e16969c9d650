"""`prfaas bench soak`, short: faults on a schedule lose no request and leak no block (slow: minutes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_short_soak_loses_nothing_and_leaks_no_block() -> None:
    argv = [sys.executable, "-m", "prfaas.cli.main", "bench", "soak", "--json", "--duration-s", "30"]
    argv += ["--fault-period-s", "8", "--outage-s", "2", "--drain-s", "240", "--calibrate-s", "60"]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=900)
    result = json.loads(out.stdout.splitlines()[-1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert result["lost"] == 0 and not any(result["blocks_outstanding"].values())
    assert not any(result["requests_outstanding"].values())
    assert result["completed"] + sum(result["failed"].values()) == result["sent"]
    assert set(result["failed"]) <= {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}  # a clear status, or nothing
    assert result["capacity_rps"] > 0 and result["rate_rps"] == pytest.approx(0.8 * result["capacity_rps"])
    assert len(result["faults"]) == 4
