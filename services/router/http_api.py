"""The router's OpenAI-compatible HTTP API (`--http-port`): `POST /v1/completions`, `POST /v1/chat/completions`,
`GET /v1/models` and `GET /health`, served in the router's process and event loop (no extra hop).

A handler converts the request (`prfaas.openai.request`), hands each choice to `RouterServicer.generate`, the
path gRPC's Generate takes too (admission, validation, routing, retries), and converts the router's messages
back (`prfaas.openai.choice`, `responses`). Errors cross once: a `RouterError`'s status becomes the HTTP
status (`prfaas.openai.errors`). A client that goes away closes its generations, and closing one cancels its
calls on every worker."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from prfaas.client.codec import decode_chunk, encode_request
from prfaas.model.tiny import resolve_model
from prfaas.openai import sse
from prfaas.openai.chat import ChatTemplate
from prfaas.openai.choice import Choice, ChoiceDelta
from prfaas.openai.errors import ApiError, from_status
from prfaas.openai.request import Generation, chat_generation, completion_generation
from prfaas.openai.responses import CHAT, COMPLETIONS, Format, Reply, chunk_body, model_list, response_body, usage_chunk
from prfaas.service.http_server import HttpMetrics, RunningHttpServer, start_http_server
from prfaas.v1 import router_pb2
from services.router.server import RouterError, RouterServicer

T = TypeVar("T")
TENANT_HEADER = "x-prfaas-tenant"  # wins over the body's `user`
CLIENT_GONE = 499  # the status recorded for a request whose client disconnected before the answer


class ClientGone(Exception):
    """The client disconnected while its request was being served."""


class OpenAiApi:
    def __init__(self, servicer: RouterServicer) -> None:
        self.servicer = servicer
        self.model = servicer.settings.model
        self.template = ChatTemplate.for_model(resolve_model(self.model))
        self.created = int(time.time())
        self.serving = False
        self._token = servicer.settings.auth_token.encode()
        self._running: RunningHttpServer | None = None

    def app(self) -> ASGIApp:
        routes = [
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
        ]
        app = Starlette(routes=routes, exception_handlers={ApiError: _api_error, HTTPException: _http_error})
        return HttpMetrics(app, [route.path for route in routes])

    async def start(self, port: int) -> int:
        """Serve on the router's host (and TLS) at `port` (0: any free port); the bound port."""
        s = self.servicer.settings
        self._running = await start_http_server(self.app(), s.host, port, s.tls, s.http_drain_timeout_s)
        self.serving = True
        return self._running.port

    async def stop(self) -> None:
        """/health turns 503, new connections are refused, open requests get the drain timeout."""
        self.serving = False
        if self._running is not None:
            await self._running.stop()

    async def completions(self, request: Request) -> Response:
        body = await self._body(request)
        return await self._serve(request, completion_generation(body, request.headers.get(TENANT_HEADER)), COMPLETIONS)

    async def chat_completions(self, request: Request) -> Response:
        body = await self._body(request)
        generation = chat_generation(body, request.headers.get(TENANT_HEADER), self.template)
        return await self._serve(request, generation, CHAT)

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        return JSONResponse(model_list(self.model, self.created))

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "serving" if self.serving else "stopping"}, 200 if self.serving else 503)

    def _authorize(self, request: Request) -> None:
        """The router's bearer token (`auth_token`), when it has one, compared in constant time."""
        if not self._token:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing bearer token: send the header `Authorization: Bearer <token>`")
        if not hmac.compare_digest(token.strip().encode(), self._token):
            raise ApiError(401, "invalid bearer token", code="invalid_api_key")

    async def _body(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        return body

    async def _serve(self, request: Request, generation: Generation, fmt: Format) -> Response:
        if generation.model != self.model:
            message = f"the model `{generation.model}` does not exist: this server serves `{self.model}`"
            raise ApiError(404, message, param="model", code="model_not_found")
        reply = Reply(f"{fmt.id_prefix}-{uuid.uuid4().hex}", int(time.time()), self.model, generation.return_token_ids)
        choices = [Choice(i, generation.stop) for i in range(generation.n)]
        deltas = self._deltas(generation, reply.id, choices)
        try:
            if generation.stream:  # the status waits for the first token, so a refusal is still an HTTP error
                first = await _unless_disconnected(request, anext(deltas))
                events = _events(fmt, reply, choices, generation.include_usage, first, deltas)
                closed = BackgroundTask(deltas.aclose)  # also when the client left before the body started
                return StreamingResponse(events, media_type="text/event-stream", background=closed)
            await _unless_disconnected(request, _drain(deltas))
        except RouterError as exc:
            raise from_status(exc.code, str(exc), exc.retry_after_ms) from exc
        except ClientGone:
            return Response(status_code=CLIENT_GONE)
        return JSONResponse(response_body(fmt, reply, choices))

    def _deltas(
        self, generation: Generation, reply_id: str, choices: Sequence[Choice]
    ) -> AsyncGenerator[ChoiceDelta, None]:
        """Every choice's deltas as they come."""
        streams = [self._choice(_router_request(generation, reply_id, c.index), c) for c in choices]
        return streams[0] if len(streams) == 1 else merge(streams)

    async def _choice(self, request: router_pb2.GenerateRequest, choice: Choice) -> AsyncGenerator[ChoiceDelta, None]:
        """One choice from the router; leaving early (a stop string, a client gone) cancels its generation."""
        async with contextlib.aclosing(self.servicer.generate(request)) as messages:
            async for message in messages:
                delta = choice.add(decode_chunk(message))
                yield delta
                if delta.finish_reason is not None:
                    return


def _router_request(generation: Generation, reply_id: str, index: int) -> router_pb2.GenerateRequest:
    """Choice `index` as a router request of its own: id `<reply id>-<index>`, sampled with seed + index."""
    sampling = generation.choice_sampling(index)
    return encode_request(generation.prompt, sampling, request_id=f"{reply_id}-{index}", tenant_id=generation.tenant_id)


async def _events(
    fmt: Format,
    reply: Reply,
    choices: Sequence[Choice],
    include_usage: bool,
    first: ChoiceDelta,
    deltas: AsyncGenerator[ChoiceDelta, None],
) -> AsyncIterator[bytes]:
    """The SSE body; an error after the first chunk arrives as an `error` event (the status is sent)."""
    async with contextlib.aclosing(deltas):
        yield sse.event(chunk_body(fmt, reply, first))
        try:
            async for delta in deltas:
                yield sse.event(chunk_body(fmt, reply, delta))
        except RouterError as exc:
            yield sse.event(from_status(exc.code, str(exc), exc.retry_after_ms).body())
            yield sse.DONE
            return
    if include_usage:
        yield sse.event(usage_chunk(fmt, reply, choices))
    yield sse.DONE


@dataclass(frozen=True, slots=True)
class _Ended:
    error: Exception | None = None


async def merge(streams: Sequence[AsyncGenerator[T, None]]) -> AsyncGenerator[T, None]:
    """The items of several streams as they come, each stream pumped by its own task. The first error ends
    it; closing it closes every stream."""
    queue: asyncio.Queue[T | _Ended] = asyncio.Queue()

    async def pump(stream: AsyncGenerator[T, None]) -> None:
        error = None
        try:
            async with contextlib.aclosing(stream):
                async for item in stream:
                    await queue.put(item)
        except Exception as exc:
            error = exc
        await queue.put(_Ended(error))

    tasks = [asyncio.create_task(pump(stream)) for stream in streams]
    try:
        for _ in tasks:
            while not isinstance(got := await queue.get(), _Ended):
                yield got
            if got.error is not None:
                raise got.error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _drain(deltas: AsyncIterator[ChoiceDelta]) -> None:
    async for _ in deltas:
        pass


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, or `ClientGone` (with `work` cancelled) when the client disconnects first."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait([task, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ClientGone
    return task.result()


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read: receive() waits for nothing else)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _api_error(request: Request, exc: Exception) -> Response:
    error = exc if isinstance(exc, ApiError) else ApiError(500, str(exc))
    return JSONResponse(error.body(), error.status, error.headers())


def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (an unknown path, a wrong method) in the same error shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    return _api_error(request, ApiError(status, f"{request.method} {request.url.path}: {exc}"))
