"""The profile-driven mock model: it runs the real engine, sleeps for the modelled time (recorded by a
fake clock here), sizes its state like the profile × bytes_scale, and survives export/import."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest
import torch

from prfaas.engine.engine import Engine, EngineConfig, ExportRequest
from prfaas.engine.sampling import SamplingParams
from prfaas.kv.spec import HybridSpec, LayerSpec
from prfaas.kv.wire import KvChunk, KvManifest
from prfaas.model.kimi_linear import PrefillInput
from prfaas.model.mock import MockModel, MockSettings, mock_config, paper_mock
from prfaas.sched.scenario import paper_h20

TIME_SCALE = 0.01
BYTES_SCALE = 0.005
GREEDY = SamplingParams(max_new_tokens=8, ignore_eos=True)


class FakeClock:
    def __init__(self) -> None:
        self.sleeps_s: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps_s.append(seconds)

    @property
    def total_s(self) -> float:
        return sum(self.sleeps_s)


def make_model(role: str = "pd", clock: FakeClock | None = None) -> MockModel:
    settings = paper_mock(role, TIME_SCALE, BYTES_SCALE)
    return MockModel(mock_config(settings), settings, (clock or FakeClock()).sleep)


def make_engine(model: MockModel, **kw: int) -> Engine:
    cfg = dict(block_size=16, num_blocks=128, max_seqs=4, max_prefill_tokens=32)
    cfg.update(kw)
    return Engine(model, EngineConfig(**cfg))  # type: ignore[arg-type]


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


# -- the engine on the mock ------------------------------------------------------------------------------
def test_generate_is_deterministic_and_batched_equals_alone() -> None:
    prompts = [prompt(n, i) for i, n in enumerate([5, 16, 33, 70])]
    alone = [make_engine(make_model()).generate([p], GREEDY)[0].token_ids for p in prompts]
    together = make_engine(make_model()).generate(prompts, GREEDY)
    assert [r.token_ids for r in together] == alone
    assert all(len(t) == GREEDY.max_new_tokens for t in alone)
    assert len({tuple(t) for t in alone}) == len(alone)


def test_prefix_reuse_gives_same_tokens() -> None:
    engine = make_engine(make_model())
    p = prompt(70, 1)
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)  # 70 + 11 computed tokens cross 80
    first = engine.generate([p], params)[0]
    second = engine.generate([p], params)[0]
    assert (first.cached_tokens, second.cached_tokens) == (0, 64)
    assert second.token_ids == first.token_ids
    longer = engine.generate([[*p, *first.token_ids, 7, 8, 9]], params)[0]
    cold = make_engine(make_model()).generate([[*p, *first.token_ids, 7, 8, 9]], params)[0]
    assert longer.cached_tokens == 64 + 16  # decoded tokens were snapshotted at their block boundary
    assert longer.token_ids == cold.token_ids


def test_chunked_prefill_equals_one_shot() -> None:
    p = prompt(100, 3)
    chunked = make_engine(make_model(), max_prefill_tokens=16).generate([p], GREEDY)[0]
    one_shot = make_engine(make_model(), max_prefill_tokens=128).generate([p], GREEDY)[0]
    assert chunked.token_ids == one_shot.token_ids


# -- modelled durations ----------------------------------------------------------------------------------
def prefill_only(role: str, length: int, max_prefill_tokens: int) -> tuple[FakeClock, MockModel]:
    clock = FakeClock()
    model = make_model(role, clock)
    engine = make_engine(model, max_prefill_tokens=max_prefill_tokens, num_blocks=512)
    engine.generate([prompt(length, 0)], SamplingParams(max_new_tokens=1, ignore_eos=True))
    return clock, model


def test_one_chunk_prefill_sleeps_time_scale_times_t_of_l() -> None:
    clock, model = prefill_only("prfaas", 1000, 1024)
    expected_s = TIME_SCALE * (0.389 + 0.04206 * 1.0 + 9.94e-5 * 1.0**2)  # paper H200 fit, l in K tokens
    assert clock.total_s == pytest.approx(expected_s, rel=1e-9)
    assert len(clock.sleeps_s) == model.config.num_hidden_layers  # one equal slice per layer
    assert clock.sleeps_s == pytest.approx([expected_s / len(clock.sleeps_s)] * len(clock.sleeps_s))


def test_chunked_prefill_sleeps_the_chunk_formula() -> None:
    clock, _ = prefill_only("prfaas", 1000, 256)  # chunks [0,256) [256,512) [512,768) [768,1000)
    a, b, c = 0.389, 0.04206 / 1000, 9.94e-5 / 1000**2
    cuts = [0, 256, 512, 768, 1000]
    expected_s = sum(a + b * (e - s) + c * (e * e - s * s) for s, e in itertools.pairwise(cuts))
    assert clock.total_s == pytest.approx(TIME_SCALE * expected_s, rel=1e-9)


def test_decode_steps_sleep_the_step_time() -> None:
    clock = FakeClock()
    model = make_model("pd", clock)
    make_engine(model).generate([prompt(10, 0)], GREEDY)
    step_s = TIME_SCALE * 0.025  # paper H20: T_decode = 25 ms
    num_layers = model.config.num_hidden_layers
    assert sum(clock.sleeps_s[:num_layers]) == pytest.approx(model.prefill_seconds(0, 10))
    assert clock.sleeps_s[num_layers:] == pytest.approx([step_s] * (GREEDY.max_new_tokens - 1))
    batch_s = [model.decode_seconds(b) for b in (1, 19, 20, 40)]
    assert batch_s == pytest.approx([step_s, step_s, 2 * step_s, 3 * step_s])  # BS_max = 19.968: waves


def test_decode_step_scale_stretches_only_decode_steps() -> None:
    base = MockModel.from_settings(paper_mock("pd", TIME_SCALE, 0.01))
    stretched = MockModel.from_settings(paper_mock("pd", TIME_SCALE, 0.01, decode_step_scale=32.0))
    assert stretched.decode_seconds(20) == pytest.approx(32.0 * base.decode_seconds(20))
    assert stretched.prefill_seconds(0, 4096) == base.prefill_seconds(0, 4096)
    with pytest.raises(ValueError, match="decode_step_scale must be"):
        paper_mock("pd", TIME_SCALE, 0.01, decode_step_scale=0.0)


def test_token_scale_makes_one_mock_token_cost_k_paper_tokens() -> None:
    paper = paper_mock("prfaas", TIME_SCALE, 0.01)
    scaled = paper_mock("prfaas", TIME_SCALE, 0.01, token_scale=10)
    base, model = MockModel.from_settings(paper), MockModel.from_settings(scaled)
    assert model.prefill_seconds(0, 3000) == pytest.approx(base.prefill_seconds(0, 30_000))
    assert model.prefill_seconds(1000, 3000) == pytest.approx(base.prefill_seconds(10_000, 30_000))
    assert scaled.target_bytes_per_token == pytest.approx(10 * paper.target_bytes_per_token)
    assert scaled.target_fixed_bytes == paper.target_fixed_bytes  # the linear state does not grow with length
    with pytest.raises(ValueError, match="token_scale must be"):
        paper_mock("prfaas", TIME_SCALE, 0.01, token_scale=0)


def test_prefill_only_profile_refuses_to_decode() -> None:
    with pytest.raises(RuntimeError, match="prefill only"):
        make_engine(make_model("prfaas")).generate([prompt(10, 0)], GREEDY)


def test_hook_runs_after_each_layer_slice() -> None:
    events: list[str] = []

    def hook(layer: LayerSpec) -> None:
        events.append(f"hook {layer.index}")

    settings = paper_mock("pd", TIME_SCALE, BYTES_SCALE)
    model = MockModel(mock_config(settings), settings, lambda s: events.append("sleep"))
    engine = make_engine(model)
    table = torch.tensor(engine.cache.blocks.allocate(2))
    inp = PrefillInput(torch.tensor(prompt(20, 0)), 0, table, engine.cache.take_slot(), 16)
    out = model.prefill(engine.cache, inp, hook)
    assert events == [e for i in range(len(engine.spec.layers)) for e in ("sleep", f"hook {i}")]
    assert [tokens for tokens, _ in out.snapshots] == [16]
    assert out.last_logits.shape == (model.config.vocab_size,)


# -- sizes -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bytes_scale", [1.0, 0.1, 0.01, 0.005, 0.0025])
def test_state_sizes_match_scaled_profile(bytes_scale: float) -> None:
    settings = MockSettings(paper_h20(), TIME_SCALE, bytes_scale)
    spec = HybridSpec.from_config(mock_config(settings), 64, torch.float32)
    mib = 2**20
    assert spec.full_bytes_per_token == pytest.approx(16.74 * mib / 1000 * bytes_scale, rel=0.05)
    assert spec.linear_state_bytes == pytest.approx(172 * mib * bytes_scale, rel=0.05)
    assert [layer.kind for layer in spec.layers[:4]] == ["linear_attention"] * 3 + ["full_attention"]


def test_both_paper_roles_share_one_state_layout() -> None:
    prfaas, pd = (mock_config(paper_mock(role, TIME_SCALE, BYTES_SCALE)) for role in ("prfaas", "pd"))
    assert prfaas.fingerprint() == pd.fingerprint()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: mock_config(MockSettings(paper_h20(), 1.0, 0.001)), "use bytes_scale >= 0.00228"),
        (lambda: paper_mock("decode", 1.0, 0.01), "unknown role 'decode'"),
        (lambda: MockSettings(paper_h20(), -1.0, 0.01), "time_scale must be"),
        (lambda: MockSettings(paper_h20(), 1.0, 0.0), "bytes_scale must be in"),
    ],
)
def test_bad_settings_say_what_to_fix(make: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


# -- export / import -------------------------------------------------------------------------------------
Tamper = Callable[[Engine, int], None]


def disaggregated(src: Engine, dst: Engine, ids: list[int], tamper: Tamper | None = None) -> list[int]:
    """Prefill on `src`, ship chunks as shuffled bytes, import, tamper, decode on `dst`."""
    start = dst.match_prefix(ids).num_tokens
    wire: list[bytes] = []
    export = ExportRequest(lambda c: wire.append(c.to_bytes()), start, chunk_bytes=2048)  # 1 head per chunk
    rid = src.add_request(ids, GREEDY, export=export)
    manifest = KvManifest.decode(src.manifest(rid).encode())
    first = None
    while src.has_work:
        for ev in src.step():
            first = ev.token_id
    assert first is not None
    dst.begin_import(manifest, ids, GREEDY)
    random.Random(len(ids)).shuffle(wire)
    for blob in wire:
        dst.apply_chunk(KvChunk.decode(blob))
    seq = dst.get(rid)
    assert seq is not None and seq.slot is not None
    if tamper is not None:
        tamper(dst, seq.slot)
    tokens = [dst.finish_import(rid, first).token_id]
    while dst.has_work:
        tokens += [ev.token_id for ev in dst.step() if ev.request_id == rid]
    return tokens


@pytest.mark.parametrize("length", [31, 32, 57, 100])
def test_export_import_equals_monolithic(length: int) -> None:
    ids = prompt(length, length)
    mono = make_engine(make_model("pd")).generate([ids], GREEDY)[0].token_ids
    assert disaggregated(make_engine(make_model("prfaas")), make_engine(make_model("pd")), ids) == mono


def test_export_import_with_prefix_hit_on_receiver() -> None:
    ids = prompt(90, 7)
    receiver = make_engine(make_model("pd"))
    receiver.generate([[*ids[:33], 1, 2, 3]], GREEDY)  # receiver now caches the first 32 tokens
    assert receiver.match_prefix(ids).num_tokens == 32
    mono = make_engine(make_model("pd")).generate([ids], GREEDY)[0].token_ids
    assert disaggregated(make_engine(make_model("prfaas")), receiver, ids) == mono


def _zero_slot(engine: Engine, slot: int) -> None:
    engine.cache.reset_slot(slot)


def _bump_one_head(engine: Engine, slot: int) -> None:
    engine.cache.recurrent[2][slot, 1] += 1


def _zero_one_conv_tail(engine: Engine, slot: int) -> None:
    engine.cache.conv[1][slot].zero_()


def _swap_two_layers(engine: Engine, slot: int) -> None:
    rec = engine.cache.recurrent
    rec[0][slot], rec[1][slot] = rec[1][slot].clone(), rec[0][slot].clone()


@pytest.mark.parametrize("tamper", [_zero_slot, _bump_one_head, _zero_one_conv_tail, _swap_two_layers])
def test_corrupt_linear_state_changes_tokens(tamper: Tamper) -> None:
    ids = prompt(57, 57)
    mono = make_engine(make_model("pd")).generate([ids], GREEDY)[0].token_ids
    broken = disaggregated(make_engine(make_model("prfaas")), make_engine(make_model("pd")), ids, tamper)
    assert broken[0] == mono[0]  # the first token comes from the sender's prefill
    assert broken[1:] != mono[1:]
