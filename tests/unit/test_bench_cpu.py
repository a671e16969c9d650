"""`prfaas bench cpu` pieces that need no stack: reading a process's CPU time, kinds, the table's verdicts."""

from __future__ import annotations

import os
import time

from prfaas.bench.cpu import CpuPoint, format_table, kind_of, process_cpu_s


def test_process_cpu_time_grows_with_work() -> None:
    before = process_cpu_s(os.getpid())
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    assert process_cpu_s(os.getpid()) - before >= 0.03  # 10 ms ticks


def test_services_are_grouped_by_kind() -> None:
    names = ["router", "decode-11", "cachepool-prfaas", "prefill-pd-0", "prefill-prfaas-1"]
    assert [kind_of(n) for n in names] == ["router", "decode", "cachepool", "prefill", "prefill"]


def test_the_table_reads_against_the_targets() -> None:
    idle = dict.fromkeys(("router", "decode", "cachepool", "prefill"), 1.0)
    one = CpuPoint(1, 30, {"router": 0.8, "decode": 10.0, "cachepool": 5.0, "prefill": 50.0}, 0.1, idle)
    twelve = CpuPoint(12, 30, {"router": 1.2, "decode": 11.0, "cachepool": 5.0, "prefill": 50.0}, 0.1, idle)
    table = format_table([one, twelve])
    assert "router: 12 vs 1 decode workers x1.50 (target <= 1.20: NOT met)" in table
    assert "decode: 12 vs 1 decode workers x1.10 (target <= 1.20: met)" in table
    assert "router CPU per request 0.80 ms (target <= 1 ms: met)" in table
