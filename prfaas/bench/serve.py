"""`prfaas bench serve`: real services, real KV over (optionally) the emulated link, open-loop load, measured.

One run = one policy: start the topology (`LocalStack`, with the PrfaaS cluster behind the shaped link when
one is given), send the workload open loop through the SDK, sample the link's byte counters and the router's
threshold twice a second, apply link events (`30:rate=40mbit` changes the link 30 s in), stop the stack.
`--compare` repeats this per policy on the same workload; homogeneous and naive get the deployments of the
paper's §4.1 baselines (built from the same hardware budget by the planner), like the simulator's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prfaas.bench.cpu import process_cpu_s
from prfaas.bench.load import LoadRequest, RequestRecord, WorkloadSpec, retokened, run_load
from prfaas.netem import LinkSpec, parse_link_spec
from prfaas.netem.shaper import run_command
from prfaas.sched.planner import evaluate, homogeneous_baseline, naive_baseline
from prfaas.sched.scenario import Scenario, paper_h20, paper_h200, paper_workload
from prfaas.sched.workload import split_at
from prfaas.stack import LocalStack, Topology

SAMPLE_PERIOD_S = 0.5
_THRESHOLD = re.compile(r"^prfaas_routing_threshold_tokens (\S+)$", re.MULTILINE)
_CAPACITY = re.compile(r"^prfaas_link_capacity_gbps (\S+)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class LinkEvent:
    at_s: float
    spec: str  # keys to change, e.g. "rate=40mbit"

    @classmethod
    def parse(cls, text: str) -> LinkEvent:
        at, sep, spec = text.partition(":")
        try:
            at_s = float(at)
        except ValueError:
            at_s = math.nan
        if not sep or not spec or not at_s >= 0:
            raise ValueError(f"link event {text!r}: expected SECONDS:SPEC, e.g. 30:rate=40mbit")
        parse_link_spec(spec, base=LinkSpec("1gbit"))  # validates the keys now, not mid-run
        return cls(at_s, spec)


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float
    link_rate_bps: float | None  # the shaped rate at this time (None: no emulated link)
    link_bps: float | None  # PrfaaS -> PD bytes on the link over the last period, in bit/s
    link_tx_bytes: int | None  # PrfaaS -> PD bytes on the link since it was created (interface counter)
    threshold_tokens: float | None  # the router's t (inf: never offload)
    capacity_gbps: float | None = None  # what the router takes the link to carry (configured or measured)


@dataclass(slots=True)
class Sampler:
    """Samples the link (interface byte counters in dc1: every PrfaaS -> PD byte) and the router's t."""

    stack: LocalStack
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self, t0: float, events: Sequence[LinkEvent]) -> threading.Thread:
        thread = threading.Thread(target=self._loop, args=(t0, sorted(events, key=lambda e: e.at_s)), daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def sample_now(self, t0: float) -> None:
        """A last sample after the load (the samples' byte counters then cover the whole run)."""
        sent, last = self._link_bytes(), self.samples[-1] if self.samples else None
        now = time.perf_counter()
        bps = None
        if sent is not None and last is not None and last.link_tx_bytes is not None and now - t0 > last.t_s:
            bps = (sent - last.link_tx_bytes) * 8 / (now - t0 - last.t_s)
        self.samples.append(Sample(now - t0, self._rate(), bps, sent, *self._router()))

    def _loop(self, t0: float, events: list[LinkEvent]) -> None:
        last_bytes, last_t = self._link_bytes(), time.perf_counter()
        self.samples.append(Sample(last_t - t0, self._rate(), None, last_bytes, *self._router()))
        while not self._stop.wait(SAMPLE_PERIOD_S):
            now = time.perf_counter()
            while events and now - t0 >= events[0].at_s:
                self._apply(events.pop(0))
            sent = self._link_bytes()
            bps = None if sent is None or last_bytes is None else (sent - last_bytes) * 8 / (now - last_t)
            self.samples.append(Sample(now - t0, self._rate(), bps, sent, *self._router()))
            last_bytes, last_t = sent, now

    def _rate(self) -> float | None:
        link = self.stack.emulated
        return None if link is None else link.state.spec.rate_bps

    def _apply(self, event: LinkEvent) -> None:
        link = self.stack.emulated
        if link is not None:
            link.set(parse_link_spec(event.spec, base=link.state.spec))

    def _link_bytes(self) -> int | None:
        link = self.stack.emulated
        if link is None:
            return None
        stats = json.loads(run_command(["ip", "-n", link.dc1, "-s", "-j", "link", "show"]))
        return sum(int(d["stats64"]["tx"]["bytes"]) for d in stats if d["ifname"] != "lo")

    def _router(self) -> tuple[float | None, float | None]:
        """The router's t and link capacity, from its /metrics."""
        router = next((s for s in self.stack.services if s.name == "router"), None)
        if router is None or router.metrics_address is None:
            return None, None
        try:
            with urllib.request.urlopen(f"http://{router.metrics_address}/metrics", timeout=1.0) as resp:
                text = resp.read().decode()
        except OSError:
            return None, None
        found = [pattern.search(text) for pattern in (_THRESHOLD, _CAPACITY)]
        return (float(found[0].group(1)) if found[0] else None), (float(found[1].group(1)) if found[1] else None)


@dataclass(frozen=True, slots=True)
class RunResult:
    policy: str
    topology: Topology
    link: str | None
    records: list[RequestRecord]
    samples: list[Sample]
    duration_s: float
    warmup_s: float
    api: str = "grpc"  # the front the requests came through: "grpc" (the SDK) or "openai" (HTTP)
    router_cpu_s: float | None = None  # CPU seconds the router process spent during the run

    @property
    def label(self) -> str:
        """The policy, and the front when it is not the gRPC one (keys of records.json, plot legends)."""
        return self.policy if self.api == "grpc" else f"{self.policy}-{self.api}"


def policy_topology(base: Topology, policy: str) -> Topology:
    """The deployment a policy runs on: prfaas* on `base`; homogeneous and naive on the paper's baselines
    built from the same instances (homogeneous: every instance PD hardware with the planner's best split,
    no PrfaaS cluster; naive: every prefill on PrfaaS, the whole PD cluster decodes)."""
    scenario = scaled_scenario(base, None)
    if policy == "homogeneous":
        best = homogeneous_baseline(scenario)
        return dataclasses.replace(
            base, policy=policy, prfaas_prefill=0, pd_prefill=best.n_prefill, decode=best.n_decode
        )
    if policy == "naive":
        return dataclasses.replace(base, policy=policy, pd_prefill=0, decode=base.pd_prefill + base.decode)
    return dataclasses.replace(base, policy=policy)


def scaled_scenario(topology: Topology, link: LinkSpec | None, output_tokens: int = 16) -> Scenario:
    """The planner's scenario for a mock run: the paper's hardware at the topology's instance counts, the
    link in paper units (an emulated rate R carries R x time_scale / bytes_scale of paper bytes per paper
    second) and the output length the decode slots are held for (tokens x decode_step_scale)."""
    gbps = topology.link_gbps if link is None else link.rate_bps / 1e9
    paper_gbps = gbps * topology.time_scale / topology.bytes_scale
    num_pd = topology.pd_prefill + topology.decode
    out = output_tokens * topology.decode_step_scale
    return Scenario(paper_h200(), paper_h20(), topology.prfaas_prefill, num_pd, paper_gbps, out, paper_workload())


def predicted_rps(base: Topology, policy: str, link: LinkSpec | None, output_tokens: int) -> float:
    """The planner's throughput for `policy` on `base`'s instances (as `policy_topology` deploys them), in
    scaled requests/s (paper requests/s / time_scale)."""
    scenario = scaled_scenario(base, link, output_tokens)
    if policy == "homogeneous":
        point = homogeneous_baseline(scenario)
    elif policy == "naive":
        point = naive_baseline(scenario)
    else:
        split = split_at(scenario.lengths, base.threshold_tokens * base.token_scale)  # in paper tokens
        point = evaluate(scenario, split, scenario.num_prfaas, base.pd_prefill, base.decode)
    return point.throughput_rps / base.time_scale


def run_policy(
    topology: Topology,
    link: LinkSpec | None,
    requests: Sequence[LoadRequest],
    workload: WorkloadSpec,
    *,
    warmup_s: float,
    events: Sequence[LinkEvent] = (),
    drain_s: float = 30.0,
    progress: Callable[[int, int, float], None] | None = None,
) -> RunResult:
    with LocalStack(topology, link) as stack:
        sampler = Sampler(stack)
        t0 = time.perf_counter()
        thread = sampler.run(t0, events)
        try:
            records = asyncio.run(
                run_load(stack.router, requests, duration_s=workload.duration_s, drain_s=drain_s, progress=progress)
            )
        finally:
            sampler.stop()
            thread.join()
            sampler.sample_now(t0)
    return RunResult(
        topology.policy,
        topology,
        None if link is None else str(link),
        records,
        sampler.samples,
        workload.duration_s,
        warmup_s,
    )


APIS = ("grpc", "openai")


def run_fronts(
    topology: Topology,
    link: LinkSpec | None,
    requests: Sequence[LoadRequest],
    workload: WorkloadSpec,
    apis: Sequence[str],
    *,
    warmup_s: float,
    drain_s: float = 30.0,
    progress: Callable[[int, int, float], None] | None = None,
) -> list[RunResult]:
    """The same workload through each front (`apis`) on one stack, one after the other, with the router's
    CPU time measured around each. Each pass after the first gets the same arrivals and lengths with other
    tokens (`retokened`), so no pass finds the previous one's prefixes cached."""
    results = []
    with LocalStack(dataclasses.replace(topology, http_port=0), link) as stack:
        router_pid = stack.service("router").proc.pid
        for i, api in enumerate(apis):
            batch = requests if i == 0 else retokened(requests, workload.seed + 1000 + i)
            url = stack.openai_url if api == "openai" else None
            cpu0 = process_cpu_s(router_pid)
            load = run_load(
                stack.router,
                batch,
                duration_s=workload.duration_s,
                drain_s=drain_s,
                progress=progress,
                openai_url=url,
                model=topology.model,
            )
            records = asyncio.run(load)
            cpu_s = process_cpu_s(router_pid) - cpu0
            link_text = None if link is None else str(link)
            results.append(
                RunResult(topology.policy, topology, link_text, records, [], workload.duration_s, warmup_s, api, cpu_s)
            )
    return results
