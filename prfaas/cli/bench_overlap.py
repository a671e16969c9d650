"""`prfaas bench overlap`: a real prefill and a real decode worker, in this process on loopback, measured by
`prfaas.bench.overlap`."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict

from prfaas.engine.settings import EngineSettings


def add_parser(kinds: argparse._SubParsersAction) -> None:
    o = kinds.add_parser("overlap", help="how much of a KV transfer layer-wise streaming hides (real workers)")
    o.add_argument("--prompt-tokens", type=int, default=8192)
    o.add_argument("--threads", type=int, default=1, help="torch threads per engine")
    o.add_argument("--json", action="store_true")
    o.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from prfaas.bench.overlap import format_overlap, run_overlap_bench

    workers = in_process_workers(args.prompt_tokens, args.threads)
    result = asyncio.run(run_overlap_bench(workers, args.prompt_tokens))
    print(json.dumps(result.as_dict()) if args.json else format_overlap(result))
    return 0


@asynccontextmanager
async def in_process_workers(
    prompt_tokens: int, threads: int, block_size: int = EngineSettings.block_size
) -> AsyncIterator[tuple[str, str]]:
    """A prefill and a decode worker served from this event loop, with room for the prompt several times
    over; yields their addresses (prefill, decode) and stops both on exit."""
    from services.decode.server import build_server as build_decode
    from services.decode.settings import DecodeSettings
    from services.prefill.server import build_server as build_prefill
    from services.prefill.settings import PrefillSettings

    engine = EngineSettings(block_size=block_size, num_blocks=4 * prompt_tokens // block_size + 64, threads=threads)
    decode, stop_decode = await build_decode(DecodeSettings(**asdict(engine)))
    prefill, stop_prefill = await build_prefill(PrefillSettings(**asdict(engine)))
    try:
        yield f"127.0.0.1:{prefill.port}", f"127.0.0.1:{decode.port}"
    finally:
        for server, stop in ((prefill, stop_prefill), (decode, stop_decode)):
            await server.stop(0.5)
            await stop()
