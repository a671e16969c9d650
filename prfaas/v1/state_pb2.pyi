from prfaas.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WatchRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StateEvent(_message.Message):
    __slots__ = ("instance_id", "seq", "snapshot", "kv", "load")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    KV_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    seq: int
    snapshot: StateSnapshot
    kv: KvDelta
    load: LoadReport
    def __init__(self, instance_id: _Optional[str] = ..., seq: _Optional[int] = ..., snapshot: _Optional[_Union[StateSnapshot, _Mapping]] = ..., kv: _Optional[_Union[KvDelta, _Mapping]] = ..., load: _Optional[_Union[LoadReport, _Mapping]] = ...) -> None: ...

class StateSnapshot(_message.Message):
    __slots__ = ("block_hashes", "snapshot_hashes", "load", "info")
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_HASHES_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    block_hashes: _containers.RepeatedScalarFieldContainer[bytes]
    snapshot_hashes: _containers.RepeatedScalarFieldContainer[bytes]
    load: LoadReport
    info: _common_pb2.WorkerInfo
    def __init__(self, block_hashes: _Optional[_Iterable[bytes]] = ..., snapshot_hashes: _Optional[_Iterable[bytes]] = ..., load: _Optional[_Union[LoadReport, _Mapping]] = ..., info: _Optional[_Union[_common_pb2.WorkerInfo, _Mapping]] = ...) -> None: ...

class KvDelta(_message.Message):
    __slots__ = ("cleared", "removed", "snapshots_removed", "stored", "snapshots_stored")
    CLEARED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTS_STORED_FIELD_NUMBER: _ClassVar[int]
    cleared: bool
    removed: _containers.RepeatedScalarFieldContainer[bytes]
    snapshots_removed: _containers.RepeatedScalarFieldContainer[bytes]
    stored: _containers.RepeatedScalarFieldContainer[bytes]
    snapshots_stored: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, cleared: _Optional[bool] = ..., removed: _Optional[_Iterable[bytes]] = ..., snapshots_removed: _Optional[_Iterable[bytes]] = ..., stored: _Optional[_Iterable[bytes]] = ..., snapshots_stored: _Optional[_Iterable[bytes]] = ...) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("queue_depth", "queued_tokens", "registered", "slots", "free_blocks", "prefill_samples", "decode_samples")
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    QUEUED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    FREE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DECODE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    queue_depth: int
    queued_tokens: int
    registered: int
    slots: int
    free_blocks: int
    prefill_samples: _containers.RepeatedCompositeFieldContainer[PrefillSample]
    decode_samples: _containers.RepeatedCompositeFieldContainer[DecodeStepSample]
    def __init__(self, queue_depth: _Optional[int] = ..., queued_tokens: _Optional[int] = ..., registered: _Optional[int] = ..., slots: _Optional[int] = ..., free_blocks: _Optional[int] = ..., prefill_samples: _Optional[_Iterable[_Union[PrefillSample, _Mapping]]] = ..., decode_samples: _Optional[_Iterable[_Union[DecodeStepSample, _Mapping]]] = ...) -> None: ...

class PrefillSample(_message.Message):
    __slots__ = ("tokens", "seconds", "kv_bytes")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    tokens: int
    seconds: float
    kv_bytes: int
    def __init__(self, tokens: _Optional[int] = ..., seconds: _Optional[float] = ..., kv_bytes: _Optional[int] = ...) -> None: ...

class DecodeStepSample(_message.Message):
    __slots__ = ("batch", "seconds")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    batch: int
    seconds: float
    def __init__(self, batch: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...
