"""Decode worker settings."""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.engine.factory import EngineSettings
from prfaas.service.tls import service_tls


@dataclass(frozen=True, slots=True)
class DecodeSettings(EngineSettings):
    """A decode worker: receives KV from prefill workers, decodes with continuous batching."""

    host: str = "127.0.0.1"
    port: int = 0
    credit_window_bytes: int = 32 << 20  # bytes a sender may have in flight per transfer
    register_timeout_s: float = 30.0  # a transfer waits this long for its Decode registration (and data connection)
    kv_data_port: int = 0  # TCP port of the KV data plane on `host` (0: any free port)
    kv_lease_s: float = 60.0  # a registered request whose transfer shows no progress this long is dropped
    import_wait_s: float = 60.0  # a finished prefill's state waits this long for free blocks and a slot here
    max_queued_requests: int = 256  # registered requests (waiting for state or decoding) before RESOURCE_EXHAUSTED
    tls_cert: str = ""  # PEM certificate chain: serves this port and is presented to the services it calls
    tls_key: str = ""  # PEM private key of tls_cert
    tls_ca: str = ""  # PEM CA that signs the other services' (and, with tls_client_auth, the clients') certificates
    tls_client_auth: bool = False  # mutual TLS: refuse clients without a certificate signed by tls_ca

    def __post_init__(self) -> None:
        EngineSettings.__post_init__(self)
        service_tls(self)
        if self.max_queued_requests < 1:
            raise ValueError("max_queued_requests must be >= 1")
        if self.kv_lease_s <= 0:
            raise ValueError("kv_lease_s must be positive (seconds a request may wait for its KV without progress)")
        if self.import_wait_s < 0:
            raise ValueError("import_wait_s must be >= 0 (seconds a transfer waits for room in the engine)")
        if self.credit_window_bytes <= 0:
            raise ValueError("credit_window_bytes must be positive")
        if not 0 <= self.kv_data_port <= 65535:
            raise ValueError(f"kv_data_port must be a TCP port in 0..65535 (0: any free port), got {self.kv_data_port}")
