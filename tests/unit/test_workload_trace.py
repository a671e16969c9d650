"""Mooncake trace loading and the uncached lengths an unbounded prefix cache leaves."""

import json
from pathlib import Path

import pytest

from prfaas.sched.trace import load_mooncake_trace, parse_mooncake_lines
from prfaas.sched.workload import mean_tokens

TRACE = Path("/work/shared/data/mooncake-traces/conversation_trace.jsonl")


def line(timestamp: int, input_length: int, hash_ids: list[int], output_length: int = 10) -> str:
    record = {
        "timestamp": timestamp,
        "input_length": input_length,
        "output_length": output_length,
        "hash_ids": hash_ids,
    }
    return json.dumps(record)


def test_prefix_hits_in_arrival_order() -> None:
    trace = parse_mooncake_lines(
        [
            line(30, 1500, [1, 2, 3]),  # third: hits all 3 blocks (1536 >= 1500) -> 1 token
            line(0, 1500, [1, 2, 3]),  # first: cold
            line(10, 1400, [1, 2, 4]),  # second: hits [1, 2] -> 1400 - 1024
            line(20, 100, [5], output_length=30),  # cold
            "",
        ]
    )
    assert len(trace.requests) == 4
    assert sorted(trace.uncached_lengths().lengths_tokens) == [1.0, 100.0, 376.0, 1500.0]
    assert sorted(trace.input_lengths().lengths_tokens) == [100.0, 1400.0, 1500.0, 1500.0]
    assert trace.mean_output_tokens == 15.0


def test_a_shared_id_at_another_position_is_no_hit() -> None:
    trace = parse_mooncake_lines([line(0, 1024, [1, 2]), line(1, 1024, [2, 1])])
    assert sorted(trace.uncached_lengths().lengths_tokens) == [1024.0, 1024.0]


def test_block_size_is_configurable() -> None:
    trace = parse_mooncake_lines([line(0, 64, [1, 2]), line(1, 64, [1, 3])], block_tokens=16)
    assert sorted(trace.uncached_lengths().lengths_tokens) == [48.0, 64.0]


def test_bad_line_is_named() -> None:
    with pytest.raises(ValueError, match=r"t\.jsonl:2: not a Mooncake trace record"):
        parse_mooncake_lines([line(0, 10, [1]), '{"timestamp": 1}'], source="t.jsonl")
    with pytest.raises(ValueError, match="no requests"):
        parse_mooncake_lines([], source="t.jsonl")


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text(line(0, 700, [1, 2]) + "\n" + line(5, 900, [1, 2]) + "\n")
    trace = load_mooncake_trace(path)
    assert sorted(trace.uncached_lengths().lengths_tokens) == [1.0, 700.0]  # 900 - 1024 clamps to 1


@pytest.mark.skipif(not TRACE.exists(), reason="shared Mooncake trace not present")
def test_shared_conversation_trace() -> None:
    trace = load_mooncake_trace(TRACE)
    assert len(trace.requests) == 12_031
    full, uncached = mean_tokens(trace.input_lengths()), mean_tokens(trace.uncached_lengths())
    assert full == pytest.approx(12_035, abs=1)
    assert trace.mean_output_tokens == pytest.approx(343, abs=1)
    assert 1 - uncached / full == pytest.approx(0.37, abs=0.03)  # README: "about 40%" reusable
