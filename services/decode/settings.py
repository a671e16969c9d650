"""Decode worker settings."""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.engine.factory import EngineSettings


@dataclass(frozen=True, slots=True)
class DecodeSettings(EngineSettings):
    """A decode worker: receives KV from prefill workers, decodes with continuous batching."""

    host: str = "127.0.0.1"
    port: int = 0
    credit_window_bytes: int = 32 << 20  # bytes a sender may have in flight per transfer
    register_timeout_s: float = 30.0  # a transfer waits this long for its Decode registration (and data connection)
    kv_data_port: int = 0  # TCP port of the KV data plane on `host` (0: any free port)

    def __post_init__(self) -> None:
        EngineSettings.__post_init__(self)
        if self.credit_window_bytes <= 0:
            raise ValueError("credit_window_bytes must be positive")
        if not 0 <= self.kv_data_port <= 65535:
            raise ValueError(f"kv_data_port must be a TCP port in 0..65535 (0: any free port), got {self.kv_data_port}")
