"""`prfaas bench route`: what one routing decision costs the router when it decides from pushed state.

For each number of sources (decode workers publishing their KV; plus one prefill worker per cluster and the
two cache pools) and each prompt length, the router's state is filled the way the sources fill it: a
snapshot per source of what it caches, then, between decisions, the deltas and load reports a live
deployment sends (the chosen decode worker stores the prompt's blocks, old blocks are evicted, every source
reports its load a few times a second). The decision itself is the router's own (`decide`, given by the
caller: the command builds the real router dispatcher). Figures: decisions per second, CPU per decision
(thread CPU time, decisions only), CPU per applied state message, and the index's memory per held block.

Workload: prompts share long prefixes (documents of which each request reads a prefix, then its own
question), like the agentic and long-document traces the paper serves; every source holds a random set of
documents up to its cache capacity.
"""

from __future__ import annotations

import random
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass

from prfaas.kv.prefix import block_hashes
from prfaas.state.table import SourceTable
from prfaas.v1 import state_pb2

Decide = Callable[[list[int]], Awaitable[str]]  # a prompt -> the decode worker chosen
BLOCK_SIZE = 64
NUM_DOCUMENTS = 64


@dataclass(frozen=True, slots=True)
class RoutePoint:
    sources: int  # decode workers publishing (plus 2 prefill workers and 2 pools)
    prompt_tokens: int
    decisions: int
    decisions_per_s: float
    cpu_us_per_decision: float
    cpu_us_per_message: float  # applying one delta or load report
    held_blocks: int  # (source, block) pairs in the index
    index_bytes_per_block: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RouteDeployment:
    """The addresses the router routes over."""

    decoders: tuple[str, ...]
    prefill: tuple[str, str]  # one PrfaaS, one PD prefill worker
    pools: tuple[str, str]  # PrfaaS pool, PD pool


def deployment(num_decoders: int) -> RouteDeployment:
    decoders = tuple(f"10.1.{i // 250}.{i % 250 + 1}:50061" for i in range(num_decoders))
    return RouteDeployment(decoders, ("10.2.0.1:50052", "10.3.0.1:50054"), ("10.2.0.2:50071", "10.3.0.2:50072"))


class Workload:
    """Documents (shared prefixes) and prompts that read one of them, then a question of their own."""

    def __init__(self, prompt_tokens: int, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.prompt_tokens = prompt_tokens
        doc_tokens = prompt_tokens * 3 // 4
        self.documents = [[self.rng.randrange(1, 50_000) for _ in range(doc_tokens)] for _ in range(NUM_DOCUMENTS)]
        self.doc_hashes = [block_hashes(d, BLOCK_SIZE) for d in self.documents]

    def prompt(self) -> list[int]:
        doc = self.rng.choice(self.documents)
        return doc + [self.rng.randrange(1, 50_000) for _ in range(self.prompt_tokens - len(doc))]


def fill(table: SourceTable, dep: RouteDeployment, work: Workload, cache_blocks: int) -> None:
    """Every source's snapshot: a random set of documents, up to `cache_blocks` blocks."""
    per_doc = len(work.doc_hashes[0])
    for source in (*dep.decoders, *dep.prefill, *dep.pools):
        docs = work.rng.sample(range(NUM_DOCUMENTS), k=min(NUM_DOCUMENTS, max(1, cache_blocks // per_doc)))
        blocks = [h for d in docs for h in work.doc_hashes[d]]
        snapshots = blocks[::16] if source in dep.pools else []
        load = state_pb2.LoadReport(registered=work.rng.randrange(8), slots=32, free_blocks=1024)
        snap = state_pb2.StateSnapshot(block_hashes=blocks, snapshot_hashes=snapshots, load=load)
        table.apply(source, state_pb2.StateEvent(instance_id=source, seq=1, snapshot=snap))


class EventStream:
    """The state messages one request causes in a live deployment: the chosen decode worker stores the
    prompt's blocks (evicting as many old ones as a full cache must) and reports its load when the request
    registers and when it finishes; the prefill worker reports its queue twice; the pool stores the prompt's
    new blocks. Six messages per request, whatever the number of sources (idle sources do not report)."""

    def __init__(self, table: SourceTable, dep: RouteDeployment, rng: random.Random) -> None:
        self.table, self.dep, self.rng = table, dep, rng
        self.seq = dict.fromkeys((*dep.decoders, *dep.prefill, *dep.pools), 1)
        self.held = {s: list(table.index.blocks_of(s)) for s in self.seq}
        self.outbox: list[tuple[str, state_pb2.StateEvent]] = []

    def after_decision(self, decoder: str, prompt: list[int]) -> list[tuple[str, state_pb2.StateEvent]]:
        """The messages (source, message) the request causes, in order (built here, applied by the caller)."""
        self.outbox = []
        stored = block_hashes(prompt, BLOCK_SIZE)
        held = self.held[decoder]
        removed = [held.pop(self.rng.randrange(len(held))) for _ in range(min(len(held), len(stored) // 4))]
        held.extend(stored)
        self._send(decoder, kv=state_pb2.KvDelta(stored=stored, removed=removed))
        prefill, pool = self.rng.choice(self.dep.prefill), self.rng.choice(self.dep.pools)
        for source in (decoder, decoder, prefill, prefill):
            self._send(source, load=state_pb2.LoadReport(registered=self.rng.randrange(16), slots=32))
        self._send(pool, kv=state_pb2.KvDelta(stored=stored[-4:], snapshots_stored=stored[-1:]))
        return self.outbox

    def _send(self, source: str, **event: object) -> None:
        self.seq[source] += 1
        message = state_pb2.StateEvent(instance_id=source, seq=self.seq[source], **event)  # type: ignore[arg-type]
        self.outbox.append((source, message))


async def measure(
    table: SourceTable, dep: RouteDeployment, decide: Decide, prompt_tokens: int, decisions: int, cache_blocks: int
) -> RoutePoint:
    """Fill the table, then time `decisions` decisions with the live event stream between them."""
    work = Workload(prompt_tokens)
    tracemalloc.start()
    fill(table, dep, work, cache_blocks)
    index_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    held = sum(table.index.held(s)[0] + table.index.held(s)[1] for s in table.sources)
    stream = EventStream(table, dep, work.rng)
    prompts = [work.prompt() for _ in range(decisions)]
    decide_cpu = events_cpu = 0.0
    applied = 0
    wall = 0.0
    for prompt in prompts:
        w0, t0 = time.perf_counter(), time.thread_time()
        decoder = await decide(prompt)
        decide_cpu, wall = decide_cpu + time.thread_time() - t0, wall + time.perf_counter() - w0
        messages = stream.after_decision(decoder, prompt)
        t1 = time.thread_time()
        for source, message in messages:
            table.apply(source, message)
        events_cpu, applied = events_cpu + time.thread_time() - t1, applied + len(messages)
    return RoutePoint(
        len(dep.decoders),
        prompt_tokens,
        decisions,
        decisions / max(wall, 1e-9),
        decide_cpu / decisions * 1e6,
        events_cpu / max(applied, 1) * 1e6,
        held,
        index_bytes / max(held, 1),
    )


def format_table(points: Sequence[RoutePoint]) -> str:
    head = "sources  prompt   decisions/s  CPU/decision  CPU/message  held blocks  index bytes/block"
    rows = [
        f"{p.sources:>7}  {p.prompt_tokens:>6}  {p.decisions_per_s:>12,.0f}  {p.cpu_us_per_decision:>9,.0f} us"
        f"  {p.cpu_us_per_message:>8,.1f} us  {p.held_blocks:>11,}  {p.index_bytes_per_block:>17,.0f}"
        for p in points
    ]
    return "\n".join([head, *rows])
