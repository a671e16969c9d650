"""Building and running a grpc.aio server the same way for every service.

Every server serves `grpc.health.v1` and server reflection next to its own services, binds to a
host:port (port 0 picks a free one), and stops gracefully: health turns NOT_SERVING, in-flight RPCs
get a grace period, then the server stops.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from prfaas.service.malformed import MalformedRequestInterceptor
from prfaas.service.status import SERVICE
from prfaas.service.tls import TlsSettings
from prfaas.telemetry.metrics import start_metrics_server
from prfaas.telemetry.tracing import ServerTracingInterceptor, client_interceptors, setup_tracing

log = logging.getLogger(__name__)
S = TypeVar("S")
MAX_MESSAGE_BYTES = 64 << 20
# HTTP/2 keepalive: the heartbeat of every long-lived call between services (a Decode registration
# waiting for its state, a KV transfer waiting for credit). Each side pings its peer after
# KEEPALIVE_MS without a frame and gives the connection up when no answer comes in KEEPALIVE_TIMEOUT_MS,
# so a peer that vanished without closing its connection (a host gone, a cut link) breaks its calls
# within ~15 s: the client gets UNAVAILABLE, the server's handler is cancelled and frees what it held.
KEEPALIVE_MS, KEEPALIVE_TIMEOUT_MS = 10_000, 5_000
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),  # what recent grpc-core waits for the ping's ack
    ("grpc.keepalive_permit_without_calls", 0),  # only while calls are open
    ("grpc.http2.max_pings_without_data", 0),  # a call that is quiet (waiting) still gets its heartbeat
    # a server accepts its clients' pings at that pace (the default would answer them with GOAWAY)
    ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
]

Registrar = Callable[[grpc.aio.Server], None]


class StartupError(RuntimeError):
    """A service cannot start as configured; the message says what to fix."""


@dataclass(slots=True)
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    servicer: object | None = None  # the service's own servicer, for in-process inspection
    # called as the server starts stopping: ends the calls that never end on their own (state streams),
    # which would otherwise hold the whole grace period
    closing: list[Callable[[], None]] = field(default_factory=list)

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", status)

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.set_serving(False)
        for close in self.closing:
            close()
        await self.server.stop(grace_s)


async def start_server(
    host: str,
    port: int,
    registrars: Sequence[Registrar],
    service_names: Sequence[str],
    *,
    tls: TlsSettings | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> RunningServer:
    """Create, register, bind and start a server; return it with its bound port.

    With `tls` the port speaks only TLS (and requires client certificates if `tls.client_auth`);
    `interceptors` run inside the tracing interceptor, e.g. the router's bearer-token check; request
    messages that do not parse are refused with INVALID_ARGUMENT."""
    chain = [ServerTracingInterceptor(), *interceptors, MalformedRequestInterceptor()]
    server = grpc.aio.server(options=CHANNEL_OPTIONS, interceptors=chain)
    for register in registrars:
        register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    address = f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, tls.server_credentials())
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    await server.start()
    running = RunningServer(server, bound, health_servicer)
    await running.set_serving(True)
    return running


async def serve_until_signal(
    start: Callable[[], Awaitable[tuple[RunningServer, Callable[[], Awaitable[None]]]]],
    name: str,
    drain_timeout_s: float = 30.0,
) -> None:
    """Start a service, print where it listens, and shut it down gracefully on SIGTERM/SIGINT:
    health turns NOT_SERVING, new RPCs are refused, in-flight ones get `drain_timeout_s` to finish."""
    running, cleanup = await start()
    print(f"{name} listening on port {running.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("%s draining (up to %.0fs)", name, drain_timeout_s)
    await running.stop(drain_timeout_s)
    await cleanup()


def channel(address: str, tls: TlsSettings | None = None) -> grpc.aio.Channel:
    """A client channel that carries the trace context of the calling code; TLS when `tls` is given."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=client_interceptors())
    return grpc.aio.secure_channel(
        address, tls.channel_credentials(), options=CHANNEL_OPTIONS, interceptors=client_interceptors()
    )


def run_service(
    settings_cls: type[S],
    build: Callable[[S], Awaitable[tuple[RunningServer, Callable[[], Awaitable[None]]]]],
    name: str,
    prog: str,
) -> None:
    """The body of every `python -m services.<name>`: settings from flags/env, uvloop, serve until signalled."""
    import uvloop

    from prfaas.service.settings import SettingsError, parse_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = parse_settings(settings_cls, prog=prog)
    except SettingsError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    SERVICE["name"] = name
    metrics_port = getattr(settings, "metrics_port", None)
    if metrics_port is not None:
        print(f"{name} metrics on port {start_metrics_server(metrics_port)}", flush=True)
    provider = setup_tracing(f"prfaas-{name.replace(' ', '-')}")
    try:
        uvloop.run(serve_until_signal(lambda: build(settings), name))
    except StartupError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    finally:
        if provider is not None:
            provider.shutdown()  # flush the last spans
