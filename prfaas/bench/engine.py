"""Engine benchmark: prefill tokens/s and decode tokens/s for this engine and for transformers'
`KimiLinearForCausalLM` on the same checkpoint, machine and run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from prfaas.engine.engine import Engine, EngineConfig
from prfaas.engine.sampling import SamplingParams


@dataclass(frozen=True, slots=True)
class EngineBenchResult:
    prefill_1k_tps: float
    prefill_8k_tps: float
    decode_b1_tps: float
    decode_b16_tps: float
    hf_prefill_1k_tps: float | None
    hf_prefill_8k_tps: float | None
    hf_decode_b1_tps: float | None

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def _median_time(fn: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _prompt(n: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def ours_prefill_tps(engine: Engine, tokens: int, repeats: int) -> float:
    seeds = iter(range(1000, 2000))
    vocab = engine.model.config.vocab_size

    def once() -> None:  # a fresh prompt each time: no prefix hits
        engine.generate([_prompt(tokens, vocab, next(seeds))], SamplingParams(max_new_tokens=1))

    once()  # warm-up
    return tokens / _median_time(once, repeats)


def ours_decode_tps(engine: Engine, batch: int, steps: int, prompt_tokens: int = 128) -> float:
    vocab = engine.model.config.vocab_size
    params = SamplingParams(max_new_tokens=steps + 1, ignore_eos=True)
    for i in range(batch):
        engine.add_request(_prompt(prompt_tokens, vocab, 5000 + i), params)
    while engine.waiting or engine.prefilling:
        engine.step()
    t0 = time.perf_counter()
    produced = 0
    while engine.has_work:
        produced += len(engine.step())
    return produced / (time.perf_counter() - t0)


def hf_prefill_tps(model: torch.nn.Module, tokens: int, repeats: int, vocab: int) -> float:
    ids = torch.tensor([_prompt(tokens, vocab, 7)])

    def once() -> None:
        with torch.no_grad():
            model(ids, use_cache=True, logits_to_keep=1)

    once()
    return tokens / _median_time(once, repeats)


def hf_decode_tps(model: torch.nn.Module, steps: int, vocab: int, prompt_tokens: int = 128) -> float:
    ids = torch.tensor([_prompt(prompt_tokens, vocab, 9)])
    with torch.no_grad():
        out = model(ids, use_cache=True, logits_to_keep=1)
        cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model(token, cache=cache, use_cache=True)
            cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
    return steps / (time.perf_counter() - t0)


def load_hf(folder: Path) -> torch.nn.Module | None:
    try:
        from transformers import KimiLinearForCausalLM
    except ImportError:
        return None
    model: torch.nn.Module = KimiLinearForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model


def run_engine_bench(
    folder: Path,
    repeats: int = 3,
    decode_steps: int = 64,
    with_hf: bool = True,
    log: Callable[[str], None] = print,
) -> EngineBenchResult:
    engine = Engine.from_pretrained(folder, EngineConfig(num_blocks=2048, max_seqs=32))
    vocab = engine.model.config.vocab_size
    log("ours: prefill 1K / 8K, decode batch 1 / 16 ...")
    p1, p8 = ours_prefill_tps(engine, 1024, repeats), ours_prefill_tps(engine, 8192, repeats)
    d1, d16 = ours_decode_tps(engine, 1, decode_steps), ours_decode_tps(engine, 16, decode_steps)
    hf = load_hf(folder) if with_hf else None
    h1 = h8 = hd = None
    if hf is not None:
        log("transformers: prefill 1K / 8K, decode batch 1 ...")
        h1, h8 = (
            hf_prefill_tps(hf, 1024, repeats, vocab),
            hf_prefill_tps(hf, 8192, max(1, repeats - 1), vocab),
        )
        hd = hf_decode_tps(hf, decode_steps, vocab)
    return EngineBenchResult(p1, p8, d1, d16, h1, h8, hd)


def format_table(r: EngineBenchResult) -> str:
    def ratio(a: float, b: float | None) -> str:
        return f"{a / b:6.1f}x" if b else "   n/a"

    def num(x: float | None) -> str:
        return f"{x:10.0f}" if x is not None else "       n/a"

    rows = [
        ("prefill 1K tokens/s", r.prefill_1k_tps, r.hf_prefill_1k_tps),
        ("prefill 8K tokens/s", r.prefill_8k_tps, r.hf_prefill_8k_tps),
        ("decode b=1 tokens/s", r.decode_b1_tps, r.hf_decode_b1_tps),
        ("decode b=16 tokens/s (vs HF b=1)", r.decode_b16_tps, r.hf_decode_b1_tps),
    ]
    lines = [f"{'metric':36} {'prfaas':>10} {'transformers':>12} {'ratio':>7}"]
    lines += [f"{name:36} {num(a)} {num(b):>12} {ratio(a, b):>7}" for name, a, b in rows]
    return "\n".join(lines)
