"""Cache pool settings."""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.service.settings import ServerSettings


@dataclass(frozen=True)
class CachePoolSettings(ServerSettings):
    """A cluster's hybrid prefix cache pool."""

    backend: str = "memory://?capacity_bytes=1073741824"  # or redis://host:port/db

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.backend.startswith(("memory://", "redis://")):
            raise ValueError(f"backend must be a memory:// or redis:// URL, got {self.backend!r}")
