"""`AsyncClient` and `Client`: the PrfaaS router's Generate RPC as Python calls.

Both are thin loops over the same parts: `CallOptions.new_call` builds the request and starts the deadline,
`GenerateCall` decodes responses and decides retries, `from_rpc_error` maps failures. Only the transport
differs: `grpc.aio` for the async client, the blocking `grpc` channel for the sync one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Generator
from types import TracebackType

import grpc

from prfaas.client.call import CallOptions
from prfaas.client.codec import Prompt, ResultCollector, new_request_id
from prfaas.client.retry import RetryPolicy
from prfaas.client.types import GenerationChunk, GenerationResult, Sampling
from prfaas.service.tls import TlsSettings
from prfaas.v1 import router_pb2_grpc


def _credentials(
    credentials: grpc.ChannelCredentials | None, tls: TlsSettings | None
) -> grpc.ChannelCredentials | None:
    if credentials is not None and tls is not None:
        raise ValueError("give either tls or credentials, not both")
    return tls.channel_credentials() if tls is not None else credentials


class AsyncClient:
    """Asyncio client for a PrfaaS router at `target` ("host:port").

    `token` is sent as `authorization: Bearer <token>`; `timeout_s` is the default deadline of each call,
    retries included (None: no deadline); UNAVAILABLE and RESOURCE_EXHAUSTED are retried up to `retries`
    times with jittered exponential backoff from `backoff_s`. A stream that breaks after tokens arrived is
    resumed after them (`resume`; the router continues with the tokens an unbroken call gives), so the
    caller sees one stream; with `resume=False` such a break is raised.
    `tls` (CA to verify the router, and a client certificate for mutual TLS) or ready-made gRPC
    `credentials` switch to a TLS channel. Failures raise `prfaas.client.errors.PrfaasError` subclasses.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        timeout_s: float | None = 60,
        retries: int = 3,
        backoff_s: float = 0.1,
        credentials: grpc.ChannelCredentials | None = None,
        tls: TlsSettings | None = None,
        resume: bool = True,
    ) -> None:
        self._options = CallOptions(token, timeout_s, RetryPolicy(retries=retries, backoff_s=backoff_s, resume=resume))
        credentials = _credentials(credentials, tls)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials)
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)

    async def stream(
        self,
        prompt: Prompt,
        sampling: Sampling | None = None,
        *,
        tenant_id: str | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Generate tokens for `prompt` (text or token ids), yielding chunks as they arrive.

        The first chunk carries `route`, the last `finish_reason`. `timeout_s` overrides the client's
        default; `request_id` defaults to a fresh uuid-based id, reused on every retry. Leaving the loop
        early and calling `aclose()` on the generator cancels the call.
        """
        call = self._options.new_call(prompt, sampling, tenant_id=tenant_id, request_id=request_id, timeout_s=timeout_s)
        while True:
            request, attempt_timeout_s = call.attempt()
            rpc = self._stub.Generate(request, timeout=attempt_timeout_s, metadata=call.metadata)
            try:
                async for message in rpc:
                    yield call.received(message)
                return
            except grpc.RpcError as err:
                delay_s = call.backoff_s(err)
            finally:
                rpc.cancel()
            await asyncio.sleep(delay_s)

    async def generate(
        self,
        prompt: Prompt,
        sampling: Sampling | None = None,
        *,
        tenant_id: str | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> GenerationResult:
        """Generate tokens for `prompt` and return them all at once; arguments as in `stream`."""
        collector = ResultCollector(request_id or new_request_id())
        chunks = self.stream(
            prompt, sampling, tenant_id=tenant_id, request_id=collector.request_id, timeout_s=timeout_s
        )
        async for chunk in chunks:
            collector.add(chunk)
        return collector.result()

    async def close(self) -> None:
        """Close the channel, cancelling calls still in flight."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Client:
    """Blocking client with the same surface as `AsyncClient` (see there), over a synchronous channel."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        timeout_s: float | None = 60,
        retries: int = 3,
        backoff_s: float = 0.1,
        credentials: grpc.ChannelCredentials | None = None,
        tls: TlsSettings | None = None,
        resume: bool = True,
    ) -> None:
        self._options = CallOptions(token, timeout_s, RetryPolicy(retries=retries, backoff_s=backoff_s, resume=resume))
        credentials = _credentials(credentials, tls)
        if credentials is None:
            self._channel = grpc.insecure_channel(target)
        else:
            self._channel = grpc.secure_channel(target, credentials)
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)

    def stream(
        self,
        prompt: Prompt,
        sampling: Sampling | None = None,
        *,
        tenant_id: str | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> Generator[GenerationChunk, None, None]:
        """Generate tokens for `prompt`, yielding chunks as they arrive; see `AsyncClient.stream`."""
        call = self._options.new_call(prompt, sampling, tenant_id=tenant_id, request_id=request_id, timeout_s=timeout_s)
        while True:
            request, attempt_timeout_s = call.attempt()
            rpc = self._stub.Generate(request, timeout=attempt_timeout_s, metadata=call.metadata)
            try:
                for message in rpc:
                    yield call.received(message)
                return
            except grpc.RpcError as err:
                delay_s = call.backoff_s(err)
            finally:
                rpc.cancel()
            time.sleep(delay_s)

    def generate(
        self,
        prompt: Prompt,
        sampling: Sampling | None = None,
        *,
        tenant_id: str | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> GenerationResult:
        """Generate tokens for `prompt` and return them all at once; see `AsyncClient.generate`."""
        collector = ResultCollector(request_id or new_request_id())
        chunks = self.stream(
            prompt, sampling, tenant_id=tenant_id, request_id=collector.request_id, timeout_s=timeout_s
        )
        for chunk in chunks:
            collector.add(chunk)
        return collector.result()

    def close(self) -> None:
        """Close the channel, cancelling calls still in flight."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
