"""Zero-copy framing of `TransferKvRequest` messages on the KV path.

A chunk message is protobuf field 3 (`chunk`, bytes): one tag byte, a varint length, then the encoded
chunk. The prefill side builds that frame once, on the engine thread, and the sender writes it as
the serialized message (no protobuf object, no re-serialization); the decode side receives raw bytes
and hands a memoryview of the chunk to `KvChunk.decode` (no parse copy). The bytes on the wire are a
valid `TransferKvRequest`, so either end also interoperates with plain protobuf peers.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor

from prfaas.kv.wire import KvChunk
from prfaas.v1 import decode_pb2

CHUNK_TAG = (3 << 3) | 2  # field number 3, length-delimited
SERVICE = "prfaas.v1.DecodeService"
METHOD = f"/{SERVICE}/TransferKv"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(raw):
        byte = raw[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("truncated varint")


def frame_chunk(chunk: KvChunk) -> bytes:
    """The serialized `TransferKvRequest(chunk=...)` for one chunk, built with a single copy."""
    header, payload = chunk.encode()
    return b"".join([bytes([CHUNK_TAG]), _varint(len(header) + len(payload)), header, payload])


def parse_request(raw: bytes) -> memoryview | decode_pb2.TransferKvRequest:
    """A chunk's encoded bytes (as a view into `raw`), or any other message parsed."""
    if raw[:1] == bytes([CHUNK_TAG]):
        try:
            size, start = _read_varint(raw, 1)
        except ValueError:
            size, start = -1, 0
        if start + size == len(raw):
            return memoryview(raw)[start:]
    return decode_pb2.TransferKvRequest.FromString(raw)


def add_decode_service(servicer: Any, server: grpc.aio.Server) -> None:
    """Register a `DecodeService` servicer like the generated helper does, except that `TransferKv`
    receives raw message bytes (to be read with `parse_request`). Built from the service descriptor, so
    every RPC the proto declares is served."""
    handlers = {m.name: _handler(servicer, m) for m in decode_pb2.DESCRIPTOR.services_by_name["DecodeService"].methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def _handler(servicer: Any, method: MethodDescriptor) -> grpc.RpcMethodHandler:
    request = message_factory.GetMessageClass(method.input_type)
    response = message_factory.GetMessageClass(method.output_type)
    parse = None if method.name == "TransferKv" else request.FromString
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(method.client_streaming, method.server_streaming)]
    return make(getattr(servicer, method.name), parse, response.SerializeToString)

