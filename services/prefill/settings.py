"""Prefill worker settings."""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.engine.factory import EngineSettings
from prfaas.kv.wire import DEFAULT_CHUNK_BYTES
from prfaas.service.tls import service_tls


@dataclass(frozen=True, slots=True)
class PrefillSettings(EngineSettings):
    """A prefill worker: prefills prompts and streams their state to decode workers."""

    host: str = "127.0.0.1"
    port: int = 0
    cluster: str = "pd"  # "prfaas" or "pd": which cluster this worker belongs to
    pool: str = ""  # host:port of this cluster's cache pool (optional)
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    transfer_streams: int = 1  # parallel TCP streams per KV transfer (fills long, fat links)
    transfer_timeout_s: float = 120.0
    kv_transport: str = "tcp"  # KV chunks on the decode worker's TCP data plane ("tcp") or in-band on gRPC ("grpc")
    max_queued_requests: int = 256  # requests waiting or running before RESOURCE_EXHAUSTED
    tls_cert: str = ""  # PEM certificate chain: serves this port and is presented to the services it calls
    tls_key: str = ""  # PEM private key of tls_cert
    tls_ca: str = ""  # PEM CA that signs the other services' (and, with tls_client_auth, the clients') certificates
    tls_client_auth: bool = False  # mutual TLS: refuse clients without a certificate signed by tls_ca

    def __post_init__(self) -> None:
        EngineSettings.__post_init__(self)
        service_tls(self)
        if self.max_queued_requests < 1:
            raise ValueError("max_queued_requests must be >= 1")
        if self.cluster not in ("prfaas", "pd"):
            raise ValueError(f"cluster must be 'prfaas' or 'pd', got {self.cluster!r}")
        if self.kv_transport not in ("tcp", "grpc"):
            raise ValueError(f"kv_transport must be 'tcp' (data plane) or 'grpc' (in-band), got {self.kv_transport!r}")
        if not 1 <= self.transfer_streams <= 16:
            raise ValueError("transfer_streams must be in 1..16")
