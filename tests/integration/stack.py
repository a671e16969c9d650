"""An in-process PrfaaS-PD stack on loopback ports: real gRPC servers, one event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from prfaas.service.grpc_server import RunningServer, channel
from prfaas.service.tls import TlsSettings
from prfaas.v1 import router_pb2_grpc
from services.cachepool.server import build_server as build_pool
from services.cachepool.settings import CachePoolSettings
from services.decode.server import build_server as build_decode
from services.decode.settings import DecodeSettings
from services.prefill.server import build_server as build_prefill
from services.prefill.settings import PrefillSettings
from services.router.server import build_server as build_router
from services.router.settings import RouterSettings

Started = tuple[RunningServer, Callable[[], Awaitable[None]]]


@dataclass
class Stack:
    router: router_pb2_grpc.RouterServiceStub
    servers: dict[str, RunningServer] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)


@asynccontextmanager
async def local_stack(
    threshold_tokens: int = 48,
    block_size: int = 16,
    num_decode: int = 1,
    transfer_streams: int = 1,
    credit_window_bytes: int = 32 << 20,
    chunk_bytes: int = 4 << 20,
    router: dict[str, object] | None = None,
    decode: dict[str, object] | None = None,
    prefill: dict[str, object] | None = None,
    tls: TlsSettings | None = None,
    **engine: int | str,
) -> AsyncIterator[Stack]:
    """`router`, `decode` and `prefill` override those services' settings; `tls` puts every hop on TLS
    (each service serves and calls with the same certificate)."""
    started: list[Started] = []
    addresses: dict[str, str] = {}

    async def add(name: str, starting: Awaitable[Started]) -> str:
        srv = await starting
        started.append(srv)
        addresses[name] = f"127.0.0.1:{srv[0].port}"
        return addresses[name]

    secure: dict[str, Any] = {}
    if tls is not None:
        secure = dict(tls_cert=tls.cert_file, tls_key=tls.key_file, tls_ca=tls.ca_file, tls_client_auth=tls.client_auth)
    common = dict(block_size=block_size, max_prefill_tokens=block_size * 4, num_blocks=512, **engine, **secure)
    try:
        pools = [await add(f"pool-{c}", build_pool(CachePoolSettings(**secure))) for c in ("prfaas", "pd")]
        decoders = [
            await add(
                f"decode-{i}",
                build_decode(DecodeSettings(credit_window_bytes=credit_window_bytes, **common, **(decode or {}))),
            )
            for i in range(num_decode)
        ]
        common = {**common, "transfer_streams": transfer_streams, "chunk_bytes": chunk_bytes, **(prefill or {})}
        prfaas = await add("prefill-prfaas", build_prefill(PrefillSettings(cluster="prfaas", pool=pools[0], **common)))
        pd = await add("prefill-pd", build_prefill(PrefillSettings(cluster="pd", pool=pools[1], **common)))
        router = await add(
            "router",
            build_router(
                RouterSettings(
                    prfaas_prefill=prfaas,
                    pd_prefill=pd,
                    decode=",".join(decoders),
                    prfaas_pool=pools[0],
                    pd_pool=pools[1],
                    threshold_tokens=threshold_tokens,
                    block_size=block_size,
                    **secure,
                    **(router or {}),  # type: ignore[arg-type]
                )
            ),
        )
        ch = channel(router, tls)
        yield Stack(
            router_pb2_grpc.RouterServiceStub(ch),
            {n: s for n, (s, _) in zip(addresses, started, strict=True)},
            addresses,
        )
        await ch.close()
    finally:
        for srv, cleanup in reversed(started):
            await srv.stop(0.5)
            await cleanup()


async def collect(stub: router_pb2_grpc.RouterServiceStub, request: object) -> tuple[list[int], object]:
    ids: list[int] = []
    route = None
    async for msg in stub.Generate(request, timeout=120):
        if msg.HasField("route"):
            route = msg.route
        ids.extend(msg.token_ids)
    return ids, route


def is_status(exc: BaseException, code: grpc.StatusCode) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == code
