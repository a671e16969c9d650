"""Pool URLs: each backend's settings parsed once, bad URLs rejected with the expected format."""

from __future__ import annotations

import pytest

from prfaas.pool import MemoryBackend, RedisBackend, make_pool
from prfaas.pool.factory import DEFAULT_CAPACITY_BYTES


@pytest.mark.parametrize(
    ("url", "capacity_bytes"),
    [
        ("memory://", DEFAULT_CAPACITY_BYTES),
        ("memory:", DEFAULT_CAPACITY_BYTES),
        ("memory://?capacity_bytes=4096", 4096),
    ],
)
async def test_memory_urls(url: str, capacity_bytes: int) -> None:
    async with make_pool(url) as pool:
        assert isinstance(pool.backend, MemoryBackend)
        assert (await pool.stats()).capacity_bytes == capacity_bytes


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("redis://", ("127.0.0.1", 6379, 0, None)),
        ("redis://cache.local:7000/3?timeout_s=0.5", ("cache.local", 7000, 3, None)),
        ("redis://:p%40ss@10.0.0.2/", ("10.0.0.2", 6379, 0, "p@ss")),
    ],
)
async def test_redis_urls(url: str, where: tuple[str, int, int, str | None]) -> None:
    async with make_pool(url) as pool:  # no connection is made until the first call
        assert isinstance(pool.backend, RedisBackend)
        conn = pool.backend._cache.client.connection_pool.connection_kwargs
        assert (conn["host"], conn["port"], conn["db"], conn["password"]) == where


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "unknown scheme ''"),
        ("http://host", "unknown scheme 'http'"),
        ("memory://host", "no host, path or fragment"),
        ("memory://?capacity_bytes=0", "capacity_bytes must be positive"),
        ("memory://?capacity_bytes=1GB", "capacity_bytes must be a positive number"),
        ("memory://?capacity=5", r"unknown parameter\(s\) \['capacity'\]"),
        ("memory://?capacity_bytes=1&capacity_bytes=2", "given twice"),
        ("memory://?capacity_bytes", "bad query field"),
        ("memory://?capacity_bytes=", "capacity_bytes must be a positive number"),
        ("redis://host:port", "Port could not be cast"),
        ("redis://host/zero", "db number like /0"),
        ("redis://host/0?timeout_s=-1", "timeout_s must be positive"),
        ("redis://host/0?db=1", r"unknown parameter\(s\) \['db'\]"),
    ],
)
def test_bad_urls_say_what_is_expected(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        make_pool(url)
    assert "expected 'memory://?capacity_bytes=N' or 'redis://" in str(info.value)
