"""PD worker: one engine behind both `PrefillService` and `DecodeService`, so the router can convert
it between the prefill and decode roles (paper §3.4.3, long timescale) without restarting it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import fields

from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.engine import Engine
from prfaas.engine.factory import build_engine
from prfaas.service.grpc_server import RunningServer, start_server
from prfaas.transfer.dataplane import DataListener
from prfaas.transfer.framing import add_decode_service
from prfaas.v1 import decode_pb2, prefill_pb2, prefill_pb2_grpc
from services.decode.server import DecodeServicer
from services.decode.settings import DecodeSettings
from services.pd.settings import PdSettings
from services.prefill.server import PrefillServicer


def decode_settings(settings: PdSettings) -> DecodeSettings:
    """The decode role's settings: every `DecodeSettings` field a PD worker has, taken from it."""
    names = {f.name for f in fields(DecodeSettings)} & {f.name for f in fields(PdSettings)}
    return DecodeSettings(**{n: getattr(settings, n) for n in names})


async def build_server(
    settings: PdSettings, engine: Engine | None = None
) -> tuple[RunningServer, Callable[[], Awaitable[None]]]:
    runner = AsyncEngine(engine or build_engine(settings), "pd-engine", settings.threads)
    runner.start()
    prefill = PrefillServicer(runner, settings)
    ssl_context = prefill.tls.server_ssl_context() if prefill.tls else None
    data = await DataListener.start(
        settings.host, settings.kv_data_port, ssl_context=ssl_context, max_buffered_bytes=settings.credit_window_bytes
    )
    decode = DecodeServicer(runner, decode_settings(settings), data)
    decode.start_leases()
    running = await start_server(
        settings.host,
        settings.port,
        [
            lambda s: prefill_pb2_grpc.add_PrefillServiceServicer_to_server(prefill, s),
            lambda s: add_decode_service(decode, s),
        ],
        [
            prefill_pb2.DESCRIPTOR.services_by_name["PrefillService"].full_name,
            decode_pb2.DESCRIPTOR.services_by_name["DecodeService"].full_name,
        ],
        tls=prefill.tls,
    )

    async def cleanup() -> None:
        await decode.stop_leases()
        await prefill.close()
        await data.close()
        await runner.stop()

    return running, cleanup
