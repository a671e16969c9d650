"""Decode worker settings."""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.service.worker import WorkerSettings


@dataclass(frozen=True)
class DecodeSettings(WorkerSettings):
    """A decode worker: receives KV from prefill workers, decodes with continuous batching."""

    credit_window_bytes: int = 32 << 20  # bytes a sender may have in flight per transfer
    register_timeout_s: float = 30.0  # a transfer waits this long for its Decode registration (and data connection)
    kv_data_port: int = 0  # TCP port of the KV data plane on `host` (0: any free port)
    kv_lease_s: float = 60.0  # a registered request whose transfer shows no progress this long is dropped
    import_wait_s: float = 60.0  # a finished prefill's state waits this long for free blocks and a slot here

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kv_lease_s <= 0:
            raise ValueError("kv_lease_s must be positive (seconds a request may wait for its KV without progress)")
        if self.import_wait_s < 0:
            raise ValueError("import_wait_s must be >= 0 (seconds a transfer waits for room in the engine)")
        if self.credit_window_bytes <= 0:
            raise ValueError("credit_window_bytes must be positive")
        if self.register_timeout_s <= 0:
            raise ValueError("register_timeout_s must be positive")
        if not 0 <= self.kv_data_port <= 65535:
            raise ValueError(f"kv_data_port must be a TCP port in 0..65535 (0: any free port), got {self.kv_data_port}")
