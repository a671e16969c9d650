"""The KV data plane: chunk bytes on a plain TCP connection, controlled by the gRPC `TransferKv` stream.

In-band gRPC copies every message once on send (bytes -> grpc slice) and once on receive (slices ->
Python bytes) on top of the kernel's two copies, so on a memory-bandwidth bound host it moves about half
of what plain TCP moves. Disaggregated serving systems (Mooncake's Transfer Engine, NIXL) keep control
on an RPC and put bulk bytes on a transport of their own; so does this module:

  control, on `TransferKv`:   open(data_plane)  ->  <- accept(data_port, token)  ...  credits, commit, done
  data, one TCP connection per transfer stream, to the host the sender dialed:
      sender -> MAGIC | token (16 bytes)       receiver -> ACCEPTED (1 byte), or closes (unknown or used token)
      sender -> u64 length | encoded chunk      ... (the `KvChunk` bytes the in-band path carries)
      sender -> u64 0                           end of this connection's chunks

The receiver reads each frame straight into a buffer it owns (`asyncio.BufferedProtocol`: the kernel's
copy and no other), the servicer decodes and applies it exactly as an in-band chunk (CRC32, request id,
epoch, seq) and grants its bytes back as credit on the gRPC stream. So flow control stays the
`CreditWindow`'s, and manifest and commit stay on the stream. Both ends take an optional
`ssl.SSLContext` (asyncio's TLS transports feed buffered protocols too).
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import cast

MAGIC = b"PKVD"
TOKEN_BYTES = 16
ACCEPTED = b"\x01"
MAX_FRAME_BYTES = 1 << 30
PIECE_BYTES = 1 << 20
_LENGTH = struct.Struct("<Q")


class DataPlaneError(ConnectionError):
    """A data connection was refused, broke off, or carried a malformed frame."""


def data_host(address: str) -> str:
    """The host of a `host:port` (or `[v6]:port`) gRPC address: the data plane lives on the same host."""
    host = address.rpartition(":")[0] or address
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


class _Buffers:
    """Frame buffers reused across frames and connections (a fresh buffer costs a page fault and a
    kernel zero-fill per page); at most `max_free_bytes` are kept."""

    def __init__(self, max_free_bytes: int) -> None:
        self.max_free_bytes = max_free_bytes
        self._free: list[bytearray] = []

    def take(self, size: int) -> memoryview:
        for i, buf in enumerate(self._free):
            if len(buf) >= size:
                return memoryview(self._free.pop(i))[:size]
        return memoryview(bytearray(size))

    def give(self, view: memoryview) -> None:
        assert isinstance(view.obj, bytearray)
        if sum(map(len, self._free)) + len(view.obj) <= self.max_free_bytes:
            self._free.append(view.obj)


class FrameReceiver(asyncio.BufferedProtocol):
    """The receiving end of one data connection: the hello, then length-prefixed frames, each read into
    an owned buffer. Reading pauses while more than `max_buffered_bytes` wait for the consumer (an
    honest sender never has more than its credit window in flight)."""

    def __init__(self, listener: DataListener) -> None:
        self._listener = listener
        self._head = bytearray(len(MAGIC) + TOKEN_BYTES)
        self._target = memoryview(self._head)
        self._filled = 0
        self._on_full: Callable[[], None] = self._hello
        self._frames: asyncio.Queue[memoryview | DataPlaneError | None] = asyncio.Queue()
        self._buffered = 0
        self._paused = self._ended = False
        self._transport: asyncio.Transport | None = None
        self._hello_timer: asyncio.TimerHandle | None = None
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio classes
        self.peer = str(transport.get_extra_info("peername"))
        self._hello_timer = asyncio.get_running_loop().call_later(self._listener.hello_timeout_s, self._transport.abort)
        self._listener._connections.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._target[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._filled == len(self._target):
            self._filled = 0
            self._on_full()

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener._connections.discard(self)
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if not self._ended:
            self._end(DataPlaneError(f"data connection from {self.peer} closed before its end marker ({exc or 'EOF'})"))

    def _expect(self, target: memoryview, on_full: Callable[[], None]) -> None:
        self._target, self._on_full = target, on_full

    def _hello(self) -> None:
        assert self._transport is not None and self._hello_timer is not None
        self._hello_timer.cancel()
        token = bytes(self._head[len(MAGIC) :])
        if self._head[: len(MAGIC)] != MAGIC or not self._listener._claim(token, self):
            self._ended = True  # nobody waits on a refused connection
            self._transport.close()
            return
        self._transport.write(ACCEPTED)
        self._expect(memoryview(self._head)[: _LENGTH.size], self._length)

    def _length(self) -> None:
        (size,) = _LENGTH.unpack_from(self._head)
        if size == 0:
            self._end(None)
            self._expect(memoryview(self._head)[:1], self._trailing)
        elif size > MAX_FRAME_BYTES:
            self._fail(f"a {size}-byte frame exceeds the {MAX_FRAME_BYTES}-byte limit")
        else:
            self._expect(self._listener.buffers.take(size), self._frame)

    def _frame(self) -> None:
        assert self._transport is not None
        self._frames.put_nowait(self._target)
        self._buffered += len(self._target)
        if self._buffered > self._listener.max_buffered_bytes and not self._paused:
            self._paused = True
            self._transport.pause_reading()
        self._expect(memoryview(self._head)[: _LENGTH.size], self._length)

    def _trailing(self) -> None:
        assert self._transport is not None
        self._transport.abort()  # bytes after the end marker: the peer is not speaking this protocol

    def _fail(self, message: str) -> None:
        assert self._transport is not None
        self._end(DataPlaneError(f"data connection from {self.peer}: {message}"))
        self._transport.abort()

    def _end(self, error: DataPlaneError | None) -> None:
        self._ended = True
        self._frames.put_nowait(error)

    async def frames(self) -> AsyncIterator[memoryview]:
        """The frames in arrival order, until the end marker. A frame's view is valid until the next one
        is asked for: its buffer is then reused. A connection lost first raises `DataPlaneError`."""
        while (item := await self._frames.get()) is not None:
            if isinstance(item, DataPlaneError):
                raise item
            self._buffered -= len(item)
            if self._paused and self._buffered <= self._listener.max_buffered_bytes:
                assert self._transport is not None
                self._paused = False
                self._transport.resume_reading()
            try:
                yield item
            finally:
                self._listener.buffers.give(item)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


@dataclass(frozen=True, slots=True)
class DataOffer:
    """One transfer stream's invitation: the port and token the accept carries, and the connection that
    will present that token."""

    port: int
    token: bytes
    connected: asyncio.Future[FrameReceiver]

    async def connection(self, timeout_s: float) -> FrameReceiver:
        try:
            return await asyncio.wait_for(asyncio.shield(self.connected), timeout_s)
        except TimeoutError as exc:
            raise DataPlaneError(f"the sender opened no data connection within {timeout_s:g} s") from exc


class DataListener:
    """A decode worker's data-plane port: hands each offered transfer stream the one connection that
    presents its token (once; an unknown or used token gets the connection closed)."""

    def __init__(self, max_buffered_bytes: int, hello_timeout_s: float) -> None:
        self.max_buffered_bytes = max_buffered_bytes
        self.hello_timeout_s = hello_timeout_s
        self.buffers = _Buffers(2 * max_buffered_bytes)
        self.port = 0
        self.num_accepted = 0  # connections that presented a valid token
        self._server: asyncio.Server | None = None
        self._offers: dict[bytes, asyncio.Future[FrameReceiver]] = {}
        self._connections: set[FrameReceiver] = set()

    @classmethod
    async def start(
        cls,
        host: str,
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        max_buffered_bytes: int = 32 << 20,
        hello_timeout_s: float = 10.0,
    ) -> DataListener:
        """Listen on `host:port` (0: any free port), with TLS when `ssl_context` is given."""
        listener = cls(max_buffered_bytes, hello_timeout_s)
        loop = asyncio.get_running_loop()
        listener._server = await loop.create_server(lambda: FrameReceiver(listener), host, port, ssl=ssl_context)
        listener.port = listener._server.sockets[0].getsockname()[1]
        return listener

    def offer(self) -> DataOffer:
        token = secrets.token_bytes(TOKEN_BYTES)
        connected: asyncio.Future[FrameReceiver] = asyncio.get_running_loop().create_future()
        self._offers[token] = connected
        return DataOffer(self.port, token, connected)

    def withdraw(self, offer: DataOffer) -> None:
        """The stream is over: its token is void and its connection, if any, closed."""
        self._offers.pop(offer.token, None)
        if offer.connected.done() and not offer.connected.cancelled():
            offer.connected.result().close()
        offer.connected.cancel()

    def _claim(self, token: bytes, receiver: FrameReceiver) -> bool:
        connected = self._offers.pop(token, None)
        if connected is None or connected.done():
            return False
        connected.set_result(receiver)
        self.num_accepted += 1
        return True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for receiver in list(self._connections):
                receiver.abort()
            await self._server.wait_closed()


class DataConnection:
    """The sending end of one data connection."""

    def __init__(self, writer: asyncio.StreamWriter, where: str, tls: bool = False) -> None:
        self._writer = writer
        self.where = where
        if not tls:  # drain() waits until the transport holds nothing (an SSL transport never reports zero)
            writer.transport.set_write_buffer_limits(high=0)

    @classmethod
    async def open(
        cls, host: str, port: int, token: bytes, timeout_s: float, ssl_context: ssl.SSLContext | None = None
    ) -> DataConnection:
        """Connect, present `token` and wait for the receiver to take it."""
        where = f"{host}:{port}"
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ssl_context), timeout_s)
        except (OSError, TimeoutError) as exc:
            raise DataPlaneError(f"cannot connect to the KV data plane at {where}: {exc!r}") from exc
        try:
            writer.write(MAGIC + token)
            answer = await asyncio.wait_for(reader.read(1), timeout_s)
        except (OSError, TimeoutError) as exc:
            writer.close()
            raise DataPlaneError(f"no answer from the KV data plane at {where}: {exc!r}") from exc
        if answer != ACCEPTED:
            writer.close()
            raise DataPlaneError(f"the KV data plane at {where} refused the connection (unknown or used token)")
        return cls(writer, where, tls=ssl_context is not None)

    async def send(self, chunk: memoryview) -> None:
        """One frame, written in pieces, each once the last has left for the kernel: asyncio copies the
        part of a write the socket does not take at once, so this caps that copy at a piece."""
        self._writer.write(_LENGTH.pack(len(chunk)))
        for start in range(0, len(chunk), PIECE_BYTES):
            self._writer.write(chunk[start : start + PIECE_BYTES])
            await self._drain()

    async def finish(self) -> None:
        """No more chunks on this connection."""
        self._writer.write(_LENGTH.pack(0))
        await self._drain()

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except OSError as exc:
            raise DataPlaneError(f"data connection to {self.where} broke: {exc!r}") from exc
        if self._writer.is_closing():
            raise DataPlaneError(f"data connection to {self.where} was closed")

    def abort(self) -> None:
        self._writer.transport.abort()

    def close(self) -> None:
        self._writer.close()
