"""An HTTP (ASGI) server inside a service's event loop, next to its gRPC server: uvicorn on a socket bound
here (port 0 picks a free one), HTTPS with the service's own certificate when it has TLS, request counts
and latencies in the metrics, and a graceful stop.

The process's signals stay with `serve_until_signal`: this uvicorn neither installs handlers nor re-raises
what it caught, and stops when its owner says so."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import ssl
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prfaas.service.tls import TlsSettings
from prfaas.telemetry.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(slots=True)
class RunningHttpServer:
    port: int
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        """Stop accepting, let open requests finish (up to the drain timeout), then close."""
        self.server.should_exit = True
        await self.task


async def start_http_server(
    app: ASGIApp, host: str, port: int, tls: TlsSettings | None = None, drain_timeout_s: float = 30.0
) -> RunningHttpServer:
    """Serve `app` on host:port; returns once it accepts connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family)
    config = uvicorn.Config(
        app,
        lifespan="off",
        ws="none",
        http="httptools",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=math.ceil(drain_timeout_s),
        **_ssl_options(tls),
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # its startup error
            raise OSError(f"HTTP server on {host}:{port} stopped while starting")
        await asyncio.sleep(0.005)
    return RunningHttpServer(int(sock.getsockname()[1]), server, task)


def _ssl_options(tls: TlsSettings | None) -> dict[str, Any]:
    """The service's TLS policy for uvicorn: its certificate, and client certificates with client auth."""
    if tls is None:
        return {}
    required = ssl.CERT_REQUIRED if tls.client_auth else ssl.CERT_NONE
    return {
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
        "ssl_ca_certs": tls.ca_file or None,
        "ssl_cert_reqs": required,
    }


class HttpMetrics:
    """ASGI middleware: counts every request by endpoint (its path when one of `endpoints`, else "other")
    and response status, and times it to its last byte."""

    def __init__(self, app: ASGIApp, endpoints: Collection[str]) -> None:
        self.app, self.endpoints = app, frozenset(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        status = 500  # unless the app answers

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            HTTP_REQUESTS.labels(endpoint, str(status)).inc()
            HTTP_REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
