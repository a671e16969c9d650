"""Cache pool settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CachePoolSettings:
    """A cluster's hybrid prefix cache pool."""

    host: str = "127.0.0.1"
    port: int = 0
    backend: str = "memory://?capacity_bytes=1073741824"  # or redis://host:port/db
    metrics_port: int | None = None  # serve Prometheus /metrics here (0 = any free port)

    def __post_init__(self) -> None:
        if not self.backend.startswith(("memory://", "redis://")):
            raise ValueError(f"backend must be a memory:// or redis:// URL, got {self.backend!r}")
