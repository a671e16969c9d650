"""Chunk frames are valid TransferKvRequest messages and parse back without copies."""

from __future__ import annotations

import torch

from prfaas.kv.wire import FULL_KV, ChunkKey, KvChunk
from prfaas.transfer.framing import frame_chunk, parse_request
from prfaas.v1 import decode_pb2


def test_frame_is_a_valid_protobuf_message_and_parses_back() -> None:
    chunk = KvChunk("r", 0, 3, ChunkKey(1, FULL_KV, 0, 300), torch.randn(300, 80))  # > 127 bytes: multi-byte varint
    frame = frame_chunk(chunk)
    assert decode_pb2.TransferKvRequest.FromString(frame).chunk == chunk.to_bytes()
    view = parse_request(frame)
    assert isinstance(view, memoryview)
    assert torch.equal(KvChunk.decode(view).tensor, chunk.tensor)


def test_other_messages_parse_as_protobuf() -> None:
    msg = decode_pb2.TransferKvRequest(commit=decode_pb2.TransferCommit(first_token_id=7))
    parsed = parse_request(msg.SerializeToString())
    assert isinstance(parsed, decode_pb2.TransferKvRequest) and parsed.commit.first_token_id == 7
    manifest = decode_pb2.TransferKvRequest(manifest=b"PKVM{}")
    assert isinstance(parse_request(manifest.SerializeToString()), decode_pb2.TransferKvRequest)
