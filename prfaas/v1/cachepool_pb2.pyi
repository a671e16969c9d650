from prfaas.v1 import state_pb2 as _state_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LookupPrefixRequest(_message.Message):
    __slots__ = ("tenant_id", "block_hashes", "prompt_tokens", "block_size")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    block_hashes: _containers.RepeatedScalarFieldContainer[bytes]
    prompt_tokens: int
    block_size: int
    def __init__(self, tenant_id: _Optional[str] = ..., block_hashes: _Optional[_Iterable[bytes]] = ..., prompt_tokens: _Optional[int] = ..., block_size: _Optional[int] = ...) -> None: ...

class LookupPrefixResponse(_message.Message):
    __slots__ = ("num_blocks", "num_tokens")
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    num_blocks: int
    num_tokens: int
    def __init__(self, num_blocks: _Optional[int] = ..., num_tokens: _Optional[int] = ...) -> None: ...

class PutBlocksRequest(_message.Message):
    __slots__ = ("tenant_id", "block")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    block: PoolBlock
    def __init__(self, tenant_id: _Optional[str] = ..., block: _Optional[_Union[PoolBlock, _Mapping]] = ...) -> None: ...

class PoolBlock(_message.Message):
    __slots__ = ("block_hash", "depth", "kv", "snapshot")
    BLOCK_HASH_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    KV_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    block_hash: bytes
    depth: int
    kv: bytes
    snapshot: bytes
    def __init__(self, block_hash: _Optional[bytes] = ..., depth: _Optional[int] = ..., kv: _Optional[bytes] = ..., snapshot: _Optional[bytes] = ...) -> None: ...

class PutBlocksResponse(_message.Message):
    __slots__ = ("stored_bytes",)
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    stored_bytes: int
    def __init__(self, stored_bytes: _Optional[int] = ...) -> None: ...

class GetBlocksRequest(_message.Message):
    __slots__ = ("tenant_id", "block_hashes")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    block_hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, tenant_id: _Optional[str] = ..., block_hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetBlocksResponse(_message.Message):
    __slots__ = ("block",)
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    block: PoolBlock
    def __init__(self, block: _Optional[_Union[PoolBlock, _Mapping]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("entries", "used_bytes", "capacity_bytes", "hits", "misses", "evictions")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    entries: int
    used_bytes: int
    capacity_bytes: int
    hits: int
    misses: int
    evictions: int
    def __init__(self, entries: _Optional[int] = ..., used_bytes: _Optional[int] = ..., capacity_bytes: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., evictions: _Optional[int] = ...) -> None: ...
