"""The paper's topology (4 PrfaaS prefill instances, 3 PD prefill, 5 decode; t = 19.4K) runs for real
with mock engines following the H200/H20 profiles, scaled in time and bytes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prfaas.client import AsyncClient, Sampling
from prfaas.stack import LocalStack, Topology

ROOT = Path(__file__).resolve().parents[2]


async def _run(router: str, lengths: list[int]) -> list[tuple[str, int]]:
    async with AsyncClient(router, timeout_s=120) as client:
        results = await asyncio.gather(
            *(
                client.generate([(7 * i + n) % 500 for i in range(n)], Sampling(max_new_tokens=8, ignore_eos=True))
                for n in lengths
            )
        )
    return [(r.route.route if r.route else "", len(r.token_ids)) for r in results]


def test_paper_topology_with_mock_engines_serves_both_routes() -> None:
    topology = Topology.from_file(ROOT / "configs" / "paper-mock.json")
    with LocalStack(topology) as stack:
        assert len(stack.services) == 2 + 4 + 3 + 5 + 1
        lengths = [1_000, 5_000, 12_000, 25_000, 45_000, 90_000]
        results = asyncio.run(_run(stack.router, lengths))
    assert [route for route, _ in results] == ["local"] * 3 + ["prfaas"] * 3  # t = 19,400 tokens
    assert all(n == 8 for _, n in results)
