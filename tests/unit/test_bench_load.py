"""Workloads of `prfaas bench serve`: deterministic, shaped as specified, with real prefix reuse where asked."""

from __future__ import annotations

import pytest

from prfaas.bench.load import TOKEN_RANGE, RequestRecord, WorkloadSpec, build_requests


def test_workloads_are_deterministic_per_seed_and_differ_across_seeds() -> None:
    for kind in ("lognormal", "mooncake", "shared-prefix"):
        a = build_requests(WorkloadSpec(kind, rate_rps=2.0, duration_s=30, length_scale=0.05, seed=1))
        b = build_requests(WorkloadSpec(kind, rate_rps=2.0, duration_s=30, length_scale=0.05, seed=1))
        c = build_requests(WorkloadSpec(kind, rate_rps=2.0, duration_s=30, length_scale=0.05, seed=2))
        assert a == b and a != c, kind
        assert all(0 <= r.at_s < 30 for r in a)
        assert [r.at_s for r in a] == sorted(r.at_s for r in a)
        assert all(TOKEN_RANGE[0] <= t < TOKEN_RANGE[1] for r in a for t in r.token_ids)


def test_lognormal_rate_and_lengths_follow_the_paper_law_scaled() -> None:
    reqs = build_requests(WorkloadSpec("lognormal", rate_rps=5.0, duration_s=400, length_scale=0.01))
    assert 1800 <= len(reqs) <= 2200  # Poisson: 2000 +- 4.5 sigma
    lengths = sorted(len(r.token_ids) for r in reqs)
    assert 80 <= lengths[len(lengths) // 2] <= 400  # the paper's median (~20K tokens) x 0.01
    assert max(lengths) <= 1310  # truncated at 128K x 0.01 (+rounding)
    assert {r.output_tokens for r in reqs} == {16}


def test_mooncake_replay_shares_token_prefixes_exactly_where_hash_ids_do() -> None:
    reqs = build_requests(WorkloadSpec("mooncake", rate_rps=None, duration_s=20))
    assert len(reqs) > 10
    first, second = reqs[0].token_ids, reqs[1].token_ids  # hash ids [0, 1, ...] and [0, 14, ...]
    assert first[:512] == second[:512] and first[512:1024] != second[512:1024]
    assert len(first) == 6758 and reqs[0].output_tokens == 500


def test_shared_prefix_requests_start_with_one_of_the_group_prefixes() -> None:
    spec = WorkloadSpec("shared-prefix", rate_rps=4.0, duration_s=30, groups=3, prefix_tokens=256, suffix_tokens=32)
    reqs = build_requests(spec)
    prefixes = {r.token_ids[:256] for r in reqs}
    assert len(prefixes) == 3 and all(len(r.token_ids) == 288 for r in reqs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "zipf"}, "unknown workload 'zipf'"),
        ({"kind": "lognormal", "rate_rps": None}, "needs a rate"),
        ({"kind": "lognormal", "rate_rps": -1.0}, "must be positive"),
        ({"kind": "lognormal", "output_tokens": 0}, "output_tokens"),
    ],
)
def test_bad_workload_specs_say_what_to_fix(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WorkloadSpec(**kwargs)  # type: ignore[arg-type]


def test_record_latencies() -> None:
    rec = RequestRecord(at_s=1.0, prompt_tokens=10, first_token_s=1.5, done_s=3.5, num_tokens=5)
    assert rec.ok and rec.ttft_s == 0.5 and rec.tpot_s == pytest.approx(0.5)
    assert RequestRecord(0.0, 1, error="UNAVAILABLE").ttft_s is None
