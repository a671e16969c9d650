"""`prfaas bench route`: the router's own dispatcher (`services.router.dispatch`) deciding from pushed state
for 1, 8, 64 and 256 decode workers at 4K- and 32K-token prompts, measured by `prfaas.bench.route`."""

from __future__ import annotations

import argparse
import asyncio
import json

from prfaas.bench.route import BLOCK_SIZE, Decide, RouteDeployment, RoutePoint, deployment, format_table, measure
from prfaas.state.table import SourceTable


def add_parser(kinds: argparse._SubParsersAction) -> None:
    r = kinds.add_parser("route", help="routing decisions/s and router CPU per decision vs the number of sources")
    r.add_argument("--sources", default="1,8,64,256", help="decode workers publishing state (comma-separated)")
    r.add_argument("--prompt-tokens", default="4096,32768", help="prompt lengths (comma-separated)")
    r.add_argument("--decisions", type=int, default=2000, help="decisions timed per point")
    r.add_argument("--cache-blocks", type=int, default=8192, help="KV blocks each source caches")
    r.add_argument("--json", action="store_true")
    r.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    points = asyncio.run(_run_all(_ints(args.sources), _ints(args.prompt_tokens), args.decisions, args.cache_blocks))
    print(json.dumps([p.as_dict() for p in points]) if args.json else format_table(points))
    return 0


async def _run_all(sources: list[int], prompts: list[int], decisions: int, cache_blocks: int) -> list[RoutePoint]:
    points = []
    for tokens in prompts:
        for n in sources:
            table, dep = SourceTable(), deployment(n)
            points.append(await measure(table, dep, router_decide(table, dep), tokens, decisions, cache_blocks))
    return points


def router_decide(table: SourceTable, dep: RouteDeployment) -> Decide:
    """The router's dispatcher over `table`, as `build_server` wires it (no servers: nothing is called)."""
    from prfaas.sched.routing import PD, PRFAAS
    from services.router.cluster import Cluster
    from services.router.control import RouterControl
    from services.router.dispatch import Dispatcher
    from services.router.health import Health
    from services.router.prompt import Prompt
    from services.router.roles import RoleTable
    from services.router.settings import RouterSettings

    settings = RouterSettings(
        decode=",".join(dep.decoders),
        prfaas_prefill=dep.prefill[0],
        pd_prefill=dep.prefill[1],
        prfaas_pool=dep.pools[0],
        pd_pool=dep.pools[1],
        block_size=BLOCK_SIZE,
        replan_period_s=0,
    )
    roles = RoleTable([dep.prefill[1]], dep.decoders, (), 0)
    control = RouterControl(settings, 1, roles.split)
    clusters = {c: Cluster(c, [dep.prefill[i]], dep.pools[i]) for i, c in enumerate((PRFAAS, PD))}
    dispatcher = Dispatcher(settings, control, clusters, table, Health(1.0), roles)

    async def decide(prompt: list[int]) -> str:
        return (await dispatcher.decide(Prompt("bench", "", prompt))).decoder

    return decide


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]
