"""Cache pool settings."""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.service.tls import service_tls


@dataclass(frozen=True, slots=True)
class CachePoolSettings:
    """A cluster's hybrid prefix cache pool."""

    host: str = "127.0.0.1"
    port: int = 0
    backend: str = "memory://?capacity_bytes=1073741824"  # or redis://host:port/db
    metrics_port: int | None = None  # serve Prometheus /metrics here (0 = any free port)
    tls_cert: str = ""  # PEM certificate chain: serves this port and is presented to the services it calls
    tls_key: str = ""  # PEM private key of tls_cert
    tls_ca: str = ""  # PEM CA that signs the other services' (and, with tls_client_auth, the clients') certificates
    tls_client_auth: bool = False  # mutual TLS: refuse clients without a certificate signed by tls_ca

    def __post_init__(self) -> None:
        service_tls(self)
        if not self.backend.startswith(("memory://", "redis://")):
            raise ValueError(f"backend must be a memory:// or redis:// URL, got {self.backend!r}")
