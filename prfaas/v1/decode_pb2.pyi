from prfaas.v1 import common_pb2 as _common_pb2
from prfaas.v1 import state_pb2 as _state_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DecodeRequest(_message.Message):
    __slots__ = ("request_id", "tenant_id", "token_ids", "sampling")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tenant_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    def __init__(self, request_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("token_ids", "finish_reason", "kv_bytes")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: _common_pb2.FinishReason
    kv_bytes: int
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., kv_bytes: _Optional[int] = ...) -> None: ...

class TransferKvRequest(_message.Message):
    __slots__ = ("open", "manifest", "chunk", "commit")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    open: TransferOpen
    manifest: bytes
    chunk: bytes
    commit: TransferCommit
    def __init__(self, open: _Optional[_Union[TransferOpen, _Mapping]] = ..., manifest: _Optional[bytes] = ..., chunk: _Optional[bytes] = ..., commit: _Optional[_Union[TransferCommit, _Mapping]] = ...) -> None: ...

class TransferOpen(_message.Message):
    __slots__ = ("request_id", "epoch", "fingerprint", "stream_index", "num_streams", "data_plane")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    STREAM_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_STREAMS_FIELD_NUMBER: _ClassVar[int]
    DATA_PLANE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    epoch: int
    fingerprint: str
    stream_index: int
    num_streams: int
    data_plane: bool
    def __init__(self, request_id: _Optional[str] = ..., epoch: _Optional[int] = ..., fingerprint: _Optional[str] = ..., stream_index: _Optional[int] = ..., num_streams: _Optional[int] = ..., data_plane: _Optional[bool] = ...) -> None: ...

class TransferCommit(_message.Message):
    __slots__ = ("first_token_id",)
    FIRST_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    first_token_id: int
    def __init__(self, first_token_id: _Optional[int] = ...) -> None: ...

class TransferKvResponse(_message.Message):
    __slots__ = ("accept", "credit_bytes", "done")
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    CREDIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    accept: TransferAccept
    credit_bytes: int
    done: TransferDone
    def __init__(self, accept: _Optional[_Union[TransferAccept, _Mapping]] = ..., credit_bytes: _Optional[int] = ..., done: _Optional[_Union[TransferDone, _Mapping]] = ...) -> None: ...

class TransferAccept(_message.Message):
    __slots__ = ("start_tokens", "credit_bytes", "data_port", "data_token")
    START_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CREDIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_PORT_FIELD_NUMBER: _ClassVar[int]
    DATA_TOKEN_FIELD_NUMBER: _ClassVar[int]
    start_tokens: int
    credit_bytes: int
    data_port: int
    data_token: bytes
    def __init__(self, start_tokens: _Optional[int] = ..., credit_bytes: _Optional[int] = ..., data_port: _Optional[int] = ..., data_token: _Optional[bytes] = ...) -> None: ...

class TransferDone(_message.Message):
    __slots__ = ("kv_bytes",)
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    kv_bytes: int
    def __init__(self, kv_bytes: _Optional[int] = ...) -> None: ...

class MatchPrefixRequest(_message.Message):
    __slots__ = ("tenant_id", "token_ids")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, tenant_id: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class MatchPrefixResponse(_message.Message):
    __slots__ = ("cached_tokens",)
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    cached_tokens: int
    def __init__(self, cached_tokens: _Optional[int] = ...) -> None: ...

class GetDecodeLoadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetDecodeLoadResponse(_message.Message):
    __slots__ = ("active", "free_blocks", "samples", "max_seqs")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    FREE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQS_FIELD_NUMBER: _ClassVar[int]
    active: int
    free_blocks: int
    samples: _containers.RepeatedCompositeFieldContainer[_state_pb2.DecodeStepSample]
    max_seqs: int
    def __init__(self, active: _Optional[int] = ..., free_blocks: _Optional[int] = ..., samples: _Optional[_Iterable[_Union[_state_pb2.DecodeStepSample, _Mapping]]] = ..., max_seqs: _Optional[int] = ...) -> None: ...
