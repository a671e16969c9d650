"""Build a pool from a URL, the one place where backend settings are parsed."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from prfaas.pool.backends import MemoryBackend, PoolBackend, RedisBackend
from prfaas.pool.pool import HybridPrefixPool

DEFAULT_CAPACITY_BYTES = 1 << 30
_N = TypeVar("_N", int, float)
URL_FORMATS = "'memory://?capacity_bytes=N' or 'redis://[:password@]host[:port][/db][?timeout_s=S]'"


def make_pool(url: str) -> HybridPrefixPool:
    """`memory://?capacity_bytes=N` (in-process, N defaults to 1 GiB) or `redis://host:port/db`."""
    try:
        return HybridPrefixPool(_backend(urlsplit(url)))
    except ValueError as e:
        raise ValueError(f"bad pool URL {url!r}: {e}; expected {URL_FORMATS}") from None


def _backend(parts: SplitResult) -> PoolBackend:
    builder = _BUILDERS.get(parts.scheme)
    if builder is None:
        raise ValueError(f"unknown scheme {parts.scheme!r}, use one of {sorted(_BUILDERS)}")
    return builder(parts)


def _memory(parts: SplitResult) -> PoolBackend:
    if parts.netloc or parts.path or parts.fragment:
        raise ValueError("a memory pool takes no host, path or fragment")
    params = _params(parts, {"capacity_bytes"})
    return MemoryBackend(_number(int, params, "capacity_bytes", DEFAULT_CAPACITY_BYTES))


def _redis(parts: SplitResult) -> PoolBackend:
    if parts.fragment:
        raise ValueError("a redis pool takes no fragment")
    params = _params(parts, {"timeout_s"})
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"the path must be a db number like /0, got {parts.path!r}")
    return RedisBackend(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        db=int(db),
        password=None if parts.password is None else unquote(parts.password),
        timeout_s=_number(float, params, "timeout_s", 5.0),
    )


def _params(parts: SplitResult, allowed: set[str]) -> dict[str, str]:
    pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    names = [name for name, _ in pairs]
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}, allowed: {sorted(allowed)}")
    if len(set(names)) != len(names):
        raise ValueError("a parameter is given twice")
    return dict(pairs)


def _number(kind: type[_N], params: dict[str, str], name: str, default: _N) -> _N:
    if name not in params:
        return default
    try:
        value = kind(params[name])
    except ValueError:
        raise ValueError(f"{name} must be a positive number, got {params[name]!r}") from None
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {params[name]!r}")
    return value


_BUILDERS: dict[str, Callable[[SplitResult], PoolBackend]] = {"memory": _memory, "redis": _redis}
