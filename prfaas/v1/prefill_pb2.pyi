from prfaas.v1 import common_pb2 as _common_pb2
from prfaas.v1 import state_pb2 as _state_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PrefillRequest(_message.Message):
    __slots__ = ("request_id", "tenant_id", "token_ids", "sampling", "decode_address", "epoch", "pool_hit_blocks", "pool_hint")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    DECODE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    POOL_HIT_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    POOL_HINT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tenant_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    decode_address: str
    epoch: int
    pool_hit_blocks: int
    pool_hint: bool
    def __init__(self, request_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., decode_address: _Optional[str] = ..., epoch: _Optional[int] = ..., pool_hit_blocks: _Optional[int] = ..., pool_hint: _Optional[bool] = ...) -> None: ...

class PrefillResponse(_message.Message):
    __slots__ = ("first_token_id", "cached_tokens", "receiver_cached_tokens", "kv_bytes", "num_chunks", "prefill_s", "transfer_s", "queue_s", "tail_s", "last_layer_bytes", "num_streams", "stalled_s")
    FIRST_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_S_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_S_FIELD_NUMBER: _ClassVar[int]
    QUEUE_S_FIELD_NUMBER: _ClassVar[int]
    TAIL_S_FIELD_NUMBER: _ClassVar[int]
    LAST_LAYER_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_STREAMS_FIELD_NUMBER: _ClassVar[int]
    STALLED_S_FIELD_NUMBER: _ClassVar[int]
    first_token_id: int
    cached_tokens: int
    receiver_cached_tokens: int
    kv_bytes: int
    num_chunks: int
    prefill_s: float
    transfer_s: float
    queue_s: float
    tail_s: float
    last_layer_bytes: int
    num_streams: int
    stalled_s: float
    def __init__(self, first_token_id: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., receiver_cached_tokens: _Optional[int] = ..., kv_bytes: _Optional[int] = ..., num_chunks: _Optional[int] = ..., prefill_s: _Optional[float] = ..., transfer_s: _Optional[float] = ..., queue_s: _Optional[float] = ..., tail_s: _Optional[float] = ..., last_layer_bytes: _Optional[int] = ..., num_streams: _Optional[int] = ..., stalled_s: _Optional[float] = ...) -> None: ...

class GetLoadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetLoadResponse(_message.Message):
    __slots__ = ("queue_depth", "queued_tokens", "free_blocks", "samples")
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    QUEUED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FREE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    queue_depth: int
    queued_tokens: int
    free_blocks: int
    samples: _containers.RepeatedCompositeFieldContainer[_state_pb2.PrefillSample]
    def __init__(self, queue_depth: _Optional[int] = ..., queued_tokens: _Optional[int] = ..., free_blocks: _Optional[int] = ..., samples: _Optional[_Iterable[_Union[_state_pb2.PrefillSample, _Mapping]]] = ...) -> None: ...
