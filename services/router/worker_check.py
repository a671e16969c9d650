"""The router's startup check: every worker it was given runs the same engine layout, with the block size
the router hashes prompts with. A mismatch used to pass silently (a router/worker block-size mismatch gave
zero prefix hits; two layouts refused every transfer between them); now the router refuses to start."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc

from prfaas.service.grpc_server import StartupError, channel
from prfaas.service.tls import TlsSettings
from prfaas.v1 import common_pb2, decode_pb2_grpc, prefill_pb2_grpc

log = logging.getLogger(__name__)


async def check_workers(
    prefill: Sequence[str], decode: Sequence[str], block_size: int, tls: TlsSettings | None, timeout_s: float
) -> dict[str, common_pb2.WorkerInfo]:
    """Ask every worker what it runs (`GetWorkerInfo`); raise `StartupError` naming the workers that differ.
    A worker that does not answer in `timeout_s` is not checked (it may still be starting): logged."""
    asked = [(a, _ask_prefill(a, tls, timeout_s)) for a in prefill]
    asked += [(a, _ask_decode(a, tls, timeout_s)) for a in decode]
    answers = await asyncio.gather(*(coro for _, coro in asked), return_exceptions=True)
    infos = {a: r for (a, _), r in zip(asked, answers, strict=True) if isinstance(r, common_pb2.WorkerInfo)}
    for (address, _), answer in zip(asked, answers, strict=True):
        if not isinstance(answer, common_pb2.WorkerInfo):
            log.warning("worker %s did not report what it runs (%s): not checked", address, _why(answer))
    _check_block_size(infos, block_size)
    _check_layout(infos)
    return infos


def _check_block_size(infos: dict[str, common_pb2.WorkerInfo], block_size: int) -> None:
    wrong = [f"{a} has {i.block_size}" for a, i in infos.items() if i.block_size != block_size]
    if wrong:
        raise StartupError(
            f"block size mismatch: the router hashes prompts in blocks of {block_size} tokens but worker "
            f"{', '.join(wrong)}: give the router and every worker the same --block-size"
        )


def _check_layout(infos: dict[str, common_pb2.WorkerInfo]) -> None:
    layouts = {i.fingerprint for i in infos.values()}
    if len(layouts) > 1:
        found = "; ".join(f"{a}: model {i.model}, fingerprint {i.fingerprint}" for a, i in sorted(infos.items()))
        raise StartupError(
            f"the workers run different engine layouts, so KV cannot move between them ({found}): "
            "give every worker the same --model, --engine and --block-size"
        )


async def _ask_prefill(address: str, tls: TlsSettings | None, timeout_s: float) -> common_pb2.WorkerInfo:
    async with channel(address, tls) as ch:
        stub = prefill_pb2_grpc.PrefillServiceStub(ch)
        return (await stub.GetWorkerInfo(common_pb2.GetWorkerInfoRequest(), timeout=timeout_s)).info


async def _ask_decode(address: str, tls: TlsSettings | None, timeout_s: float) -> common_pb2.WorkerInfo:
    async with channel(address, tls) as ch:
        stub = decode_pb2_grpc.DecodeServiceStub(ch)
        return (await stub.GetWorkerInfo(common_pb2.GetWorkerInfoRequest(), timeout=timeout_s)).info


def _why(answer: object) -> str:
    if isinstance(answer, grpc.aio.AioRpcError):
        return f"{answer.code().name}: {answer.details()}"
    return repr(answer)
