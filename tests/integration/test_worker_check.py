"""Workers report what they run (`GetWorkerInfo`), and the router refuses to start when they disagree with it
or with each other, with a message that says what to fix."""

from __future__ import annotations

import asyncio
import sys

import pytest

from prfaas.engine.async_engine import AsyncEngine
from prfaas.service.grpc_server import StartupError, channel
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
    decode = await build_decode(DecodeSettings(**ENGINE))  # type: ignore[arg-type]
    prefill = await build_prefill(PrefillSettings(**ENGINE))  # type: ignore[arg-type]
    addresses = dict(decode=f"127.0.0.1:{decode[0].port}", pd_prefill=f"127.0.0.1:{prefill[0].port}")
    try:
        with pytest.raises(StartupError, match=r"blocks of 64 tokens but worker .* has 16.*same --block-size"):
            await build_router(RouterSettings(block_size=64, **addresses))
        router, cleanup = await build_router(RouterSettings(block_size=16, **addresses))  # agreeing: starts
        await router.stop(0.1)
        await cleanup()
    finally:
        for srv, stop in (decode, prefill):
            await srv.stop(0.1)
            await stop()


async def test_router_refuses_workers_with_different_layouts() -> None:
    real = await build_decode(DecodeSettings(**ENGINE))  # type: ignore[arg-type]
    mock = await build_prefill(PrefillSettings(engine="mock", **ENGINE))  # type: ignore[arg-type]
    try:
        with pytest.raises(StartupError, match="different engine layouts.*same --model, --engine"):
            await check_workers([f"127.0.0.1:{mock[0].port}"], [f"127.0.0.1:{real[0].port}"], 16, None, 5.0)
    finally:
        for srv, stop in (real, mock):
            await srv.stop(0.1)
            await stop()


async def test_a_worker_that_does_not_answer_is_not_checked() -> None:
    decode = await build_decode(DecodeSettings(**ENGINE))  # type: ignore[arg-type]
    try:
        infos = await check_workers(["127.0.0.1:9"], [f"127.0.0.1:{decode[0].port}"], 16, None, 0.5)
        assert list(infos) == [f"127.0.0.1:{decode[0].port}"]
    finally:
        await decode[0].stop(0.1)
        await decode[1]()


async def test_the_router_process_says_what_to_fix_and_exits_2() -> None:
    decode = await build_decode(DecodeSettings(**ENGINE))  # type: ignore[arg-type]
    try:
        argv = ["--decode", f"127.0.0.1:{decode[0].port}", "--pd-prefill", f"127.0.0.1:{decode[0].port}"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.router", *argv, "--block-size", "32", stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 2
        lines = err.decode().strip().splitlines()
        assert "Traceback" not in err.decode()
        assert lines[-1].startswith("python -m services.router: error: block size mismatch")
    finally:
        await decode[0].stop(0.1)
        await decode[1]()
