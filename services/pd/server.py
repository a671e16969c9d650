"""PD worker: one engine behind both `PrefillService` and `DecodeService`, so the router can convert
it between the prefill and decode roles (paper §3.4.3, long timescale) without restarting it. One state
stream serves both services' `Watch`, its load carrying both roles' fields."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.engine import Engine
from prfaas.engine.settings import build_engine
from prfaas.service.grpc_server import RunningServer, start_server
from prfaas.service.worker import worker_info
from prfaas.state.sources import engine_publisher
from prfaas.transfer.framing import add_decode_service
from prfaas.v1 import decode_pb2, prefill_pb2, prefill_pb2_grpc
from services.decode.server import start_receiver, stop_receiver
from services.pd.settings import PdSettings
from services.prefill.server import PrefillServicer


async def build_server(
    settings: PdSettings, engine: Engine | None = None
) -> tuple[RunningServer, Callable[[], Awaitable[None]]]:
    runner = AsyncEngine(engine or build_engine(settings), "pd-engine", settings.threads)
    runner.start()
    state = engine_publisher(runner, worker_info(settings, runner.info.fingerprint))
    prefill = PrefillServicer(runner, settings, state)
    decode = await start_receiver(runner, settings, state)  # PdSettings is a DecodeSettings: every decode knob applies
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
        tls=settings.tls,
    )
    running.closing.append(state.close)

    async def cleanup() -> None:
        await stop_receiver(decode)
        await prefill.close()
        await runner.stop()

    return running, cleanup
