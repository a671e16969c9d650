"""The pool's API contract on both backends, Redis being a real `redis-server` on a loopback port.

The test bodies are `TestPoolApi` from tests/unit/test_pool.py; only the `pool` fixture differs.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
import redis
import redis.asyncio as aioredis

from prfaas.pool import BlockEntry, HybridPrefixPool, make_pool
from tests.unit.test_pool import BS, CAPACITY_BYTES, chain
from tests.unit.test_pool import TestPoolApi as _PoolApi

REDIS_MAXMEMORY_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class RedisServer:
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return True
        except OSError:
            time.sleep(0.02)
    return False


def _start(binary: str) -> tuple[subprocess.Popen[bytes], int]:
    for _ in range(3):  # a port picked free can be taken before redis binds it
        port = _free_port()
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--maxmemory", str(REDIS_MAXMEMORY_BYTES), "--maxmemory-policy", "allkeys-lru"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if _wait_ready(proc, port):
            return proc, port
        proc.kill()
        proc.wait()
    pytest.fail(f"{binary} did not start on a loopback port after 3 tries")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed, and the Redis pool tests need a real one: "
            "run `apt-get install -y redis-server` (Debian/Ubuntu) and rerun"
        )
    proc, port = _start(binary)
    yield RedisServer(port)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
async def redis_admin(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client on a flushed db with zeroed server counters."""
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    await client.flushdb()
    await client.config_resetstat()
    yield client
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def capacity_bytes(backend_name: str) -> int:
    return CAPACITY_BYTES if backend_name == "memory" else REDIS_MAXMEMORY_BYTES


@pytest.fixture
def pool_url(backend_name: str, request: pytest.FixtureRequest) -> str:
    if backend_name == "memory":
        return f"memory://?capacity_bytes={CAPACITY_BYTES}"
    server: RedisServer = request.getfixturevalue("redis_server")
    with redis.Redis(host="127.0.0.1", port=server.port) as client:
        client.flushdb()
        client.config_resetstat()
    return server.url


@pytest.fixture
async def pool(pool_url: str) -> AsyncIterator[HybridPrefixPool]:
    async with make_pool(pool_url) as p:
        yield p


class TestPoolApi(_PoolApi):
    """Every contract test, once per backend."""


async def test_redis_evicts_at_maxmemory(redis_server: RedisServer, redis_admin: aioredis.Redis) -> None:
    baseline = int((await redis_admin.info("memory"))["used_memory"])
    limit = baseline + (2 << 20)
    await redis_admin.config_set("maxmemory", limit)
    try:
        async with make_pool(redis_server.url) as pool:
            hashes = chain(40)
            for depth, h in enumerate(hashes):  # 40 x 100 KiB = 4 MiB through a 2 MiB budget
                await pool.put_blocks("t", [BlockEntry(h, depth, bytes(100 << 10), b"s")])
            stats = await pool.stats()
            assert stats.capacity_bytes == limit
            assert stats.num_evictions > 0 and stats.num_entries < 80
            assert stats.used_bytes <= limit + (200 << 10)
            last = await pool.get_blocks("t", hashes[-1:])
            assert [(e.depth, e.snapshot) for e in last] == [(39, b"s")]
            assert (await pool.match("t", hashes, 41 * BS, BS)).num_blocks < 40
    finally:
        await redis_admin.config_set("maxmemory", REDIS_MAXMEMORY_BYTES)


async def test_pools_on_one_redis_db_share_entries(redis_server: RedisServer, redis_admin: aioredis.Redis) -> None:
    hashes = chain(2)
    async with make_pool(redis_server.url) as writer, make_pool(redis_server.url) as reader:
        await writer.put_blocks("t", [BlockEntry(hashes[0], 0, b"kv0"), BlockEntry(hashes[1], 1, b"kv1", b"s")])
        assert (await reader.match("t", hashes, 100, BS)).num_blocks == 2
        assert [e.kv for e in await reader.get_blocks("t", hashes)] == [b"kv0", b"kv1"]
