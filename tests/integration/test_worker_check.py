"""Workers report what they run (`GetWorkerInfo`), and the router refuses to start when they disagree with it
or with each other, with a message that says what to fix."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from prfaas.engine.async_engine import AsyncEngine
from prfaas.service.grpc_server import RunningServer, StartupError, channel
from prfaas.v1 import common_pb2, decode_pb2_grpc, prefill_pb2_grpc
from services.decode.server import build_server as build_decode
from services.decode.settings import DecodeSettings
from services.pd.server import build_server as build_pd
from services.pd.settings import PdSettings
from services.prefill.server import build_server as build_prefill
from services.prefill.settings import PrefillSettings
from services.router.server import build_server as build_router
from services.router.settings import RouterSettings
from services.router.worker_check import check_workers

ENGINE = dict(block_size=16, max_prefill_tokens=64, num_blocks=128)
Started = tuple[RunningServer, Callable[[], Awaitable[None]]]


@asynccontextmanager
async def serving(*starting: Awaitable[Started]) -> AsyncIterator[list[str]]:
    """Start servers; yield their addresses; stop them."""
    started = [await s for s in starting]
    try:
        yield [f"127.0.0.1:{srv.port}" for srv, _ in started]
    finally:
        for srv, cleanup in started:
            await srv.stop(0.1)
            await cleanup()


async def test_workers_report_block_size_fingerprint_and_slots() -> None:
    decode = await build_decode(DecodeSettings(max_seqs=7, **ENGINE))  # type: ignore[arg-type]
    pd = await build_pd(PdSettings(max_seqs=5, **ENGINE))  # type: ignore[arg-type]
    try:
        async with channel(f"127.0.0.1:{decode[0].port}") as ch:
            got = (await decode_pb2_grpc.DecodeServiceStub(ch).GetWorkerInfo(common_pb2.GetWorkerInfoRequest())).info
        async with channel(f"127.0.0.1:{pd[0].port}") as ch:
            as_prefill = await prefill_pb2_grpc.PrefillServiceStub(ch).GetWorkerInfo(common_pb2.GetWorkerInfoRequest())
        servicer = decode[0].servicer
        assert servicer is not None
        engine = servicer.engine  # type: ignore[attr-defined]
        assert isinstance(engine, AsyncEngine)
        assert (got.block_size, got.max_seqs, got.num_blocks, got.model) == (16, 7, 128, "kimi-linear-tiny")
        assert got.fingerprint == engine.info.fingerprint and len(got.fingerprint) > 8
        assert (as_prefill.info.block_size, as_prefill.info.max_seqs) == (16, 5)
        assert as_prefill.info.fingerprint == got.fingerprint  # same model, same layout
    finally:
        for srv, cleanup in (decode, pd):
            await srv.stop(0.1)
            await cleanup()


async def test_router_refuses_a_block_size_its_workers_do_not_use() -> None:
    starting = build_decode(DecodeSettings(**ENGINE)), build_prefill(PrefillSettings(**ENGINE))  # type: ignore[arg-type]
    async with serving(*starting) as (decode, prefill):
        with pytest.raises(StartupError, match=r"blocks of 64 tokens but worker .* has 16.*same --block-size"):
            await build_router(RouterSettings(block_size=64, decode=decode, pd_prefill=prefill))
        async with serving(build_router(RouterSettings(block_size=16, decode=decode, pd_prefill=prefill))):
            pass  # agreeing: starts


async def test_router_refuses_workers_with_different_layouts() -> None:
    real = build_decode(DecodeSettings(**ENGINE))  # type: ignore[arg-type]
    mock = build_prefill(PrefillSettings(engine="mock", **ENGINE))  # type: ignore[arg-type]
    async with serving(real, mock) as (decode, prefill):
        with pytest.raises(StartupError, match=r"different engine layouts.*same --model, --engine"):
            await check_workers([prefill], [decode], 16, None, 5.0)


async def test_a_worker_that_does_not_answer_is_not_checked() -> None:
    async with serving(build_decode(DecodeSettings(**ENGINE))) as (decode,):  # type: ignore[arg-type]
        assert list(await check_workers(["127.0.0.1:9"], [decode], 16, None, 0.5)) == [decode]


async def test_the_router_process_says_what_to_fix_and_exits_2() -> None:
    async with serving(build_decode(DecodeSettings(**ENGINE))) as (decode,):  # type: ignore[arg-type]
        argv = ["--decode", decode, "--pd-prefill", decode, "--block-size", "32"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.router", *argv, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 2 and "Traceback" not in err.decode()
        last = err.decode().strip().splitlines()[-1]
        assert last.startswith("python -m services.router: error: block size mismatch")
