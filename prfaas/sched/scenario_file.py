"""Read a planning ``Scenario`` from JSON (the format is documented in ``prfaas.cli.plan``).

Every error is a ``ValueError`` (or ``OSError`` for an unreadable file) whose message names the
offending key, so the CLI can print it as is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prfaas.sched.profile import (
    DecodeCapacity,
    HardwareProfile,
    KvSize,
    LinearKvSize,
    PrefillTime,
    QuadraticPrefillTime,
    TableKvSize,
    TablePrefillTime,
)
from prfaas.sched.scenario import LengthModel, Scenario
from prfaas.sched.trace import MOONCAKE_BLOCK_TOKENS, load_mooncake_trace
from prfaas.sched.workload import EmpiricalLengths, TruncatedLogNormal


def load_scenario(path: str | Path) -> Scenario:
    """Parse the JSON scenario at ``path``; relative trace paths resolve against its folder."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    try:
        return scenario_from_dict(data, base_dir=path.parent)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def scenario_from_dict(data: Any, base_dir: Path = Path()) -> Scenario:
    obj = _object(data, "scenario")
    return Scenario(
        prfaas=_hardware(_field(obj, "prfaas", "scenario"), "prfaas"),
        pd=_hardware(_field(obj, "pd", "scenario"), "pd"),
        num_prfaas=int(_number(obj, "num_prfaas", "scenario")),
        num_pd=int(_number(obj, "num_pd", "scenario")),
        link_gbps=_number(obj, "link_gbps", "scenario"),
        output_tokens=_number(obj, "output_tokens", "scenario"),
        lengths=_workload(_field(obj, "workload", "scenario"), base_dir),
    )


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _field(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise ValueError(f"{where}.{key} is missing")
    return obj[key]


def _number(obj: dict[str, Any], key: str, where: str) -> float:
    value = _field(obj, key, where)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}.{key} must be a number, got {value!r}")
    return float(value)


def _points(obj: dict[str, Any], where: str) -> list[tuple[float, float]]:
    raw = _field(obj, "points", where)
    if not isinstance(raw, list) or not all(isinstance(p, list) and len(p) == 2 for p in raw):
        raise ValueError(f"{where}.points must be a list of [tokens, value] pairs")
    return [(float(x), float(y)) for x, y in raw]


def _hardware(value: Any, where: str) -> HardwareProfile:
    obj = _object(value, where)
    decode = obj.get("decode")
    return HardwareProfile(
        name=str(obj.get("name", where)),
        prefill=_prefill(_object(_field(obj, "prefill", where), f"{where}.prefill"), f"{where}.prefill"),
        kv=_kv(_object(_field(obj, "kv", where), f"{where}.kv"), f"{where}.kv"),
        decode=None if decode is None else _decode(_object(decode, f"{where}.decode"), f"{where}.decode"),
    )


def _prefill(obj: dict[str, Any], where: str) -> PrefillTime:
    kind = _field(obj, "kind", where)
    if kind == "quadratic":
        return QuadraticPrefillTime(
            _number(obj, "a_s", where),
            _number(obj, "b_s_per_token", where),
            _number(obj, "c_s_per_token2", where),
        )
    if kind == "table":
        return TablePrefillTime.from_points(_points(obj, where))
    raise ValueError(f"{where}.kind must be 'quadratic' or 'table', got {kind!r}")


def _kv(obj: dict[str, Any], where: str) -> KvSize:
    kind = _field(obj, "kind", where)
    if kind == "linear":
        return LinearKvSize(_number(obj, "fixed_bytes", where), _number(obj, "bytes_per_token", where))
    if kind == "table":
        return TableKvSize.from_points(_points(obj, where))
    raise ValueError(f"{where}.kind must be 'linear' or 'table', got {kind!r}")


def _decode(obj: dict[str, Any], where: str) -> DecodeCapacity:
    return DecodeCapacity(_number(obj, "max_batch_size", where), _number(obj, "step_s", where))


def _workload(value: Any, base_dir: Path) -> LengthModel:
    where = "workload"
    obj = _object(value, where)
    kind = _field(obj, "kind", where)
    if kind == "lognormal":
        return TruncatedLogNormal(
            _number(obj, "mu", where),
            _number(obj, "sigma", where),
            _number(obj, "lo_tokens", where),
            _number(obj, "hi_tokens", where),
        )
    if kind == "empirical":
        lengths = _field(obj, "lengths_tokens", where)
        if not isinstance(lengths, list):
            raise ValueError(f"{where}.lengths_tokens must be a list of token counts")
        return EmpiricalLengths.of(float(x) for x in lengths)
    if kind == "mooncake":
        block_tokens = int(obj.get("block_tokens", MOONCAKE_BLOCK_TOKENS))
        trace = load_mooncake_trace(base_dir / str(_field(obj, "path", where)), block_tokens)
        return trace.uncached_lengths() if obj.get("prefix_cache", True) else trace.input_lengths()
    raise ValueError(f"{where}.kind must be 'lognormal', 'empirical' or 'mooncake', got {kind!r}")
