"""`prfaas bench soak`: open-loop load at a fraction of the planner's capacity on a local mock-engine stack
while faults are injected on a schedule, then an account of every request and of what the services hold.

Every request ends one of three ways: completed (all its tokens), failed with a gRPC status the client can
act on, or lost (no answer by the end of the drain, or fewer tokens than asked without an error). Lost must
be 0. After the drain every worker must be back at its starting free blocks with nothing registered or
queued: blocks outstanding must be 0.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from prfaas.bench.load import LoadRequest, RequestRecord, WorkloadSpec, build_requests, run_load
from prfaas.bench.serve import predicted_rps
from prfaas.stack import LocalStack, Service, Topology
from prfaas.v1 import decode_pb2, decode_pb2_grpc, prefill_pb2, prefill_pb2_grpc

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "soak-mock.json"


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do to which service: `kill` (SIGKILL, restarted after the outage) or `hang` (SIGSTOP, then
    SIGCONT: a service that is there but answers nothing)."""

    action: str
    service: str


# One fault per period, in this order, round robin: every kind of service fails at least once in 7 periods.
SCHEDULE = (
    Fault("kill", "prefill-prfaas-0"),
    Fault("kill", "decode-0"),
    Fault("kill", "cachepool-prfaas"),
    Fault("hang", "cachepool-pd"),
    Fault("kill", "router"),
    Fault("kill", "prefill-pd-0"),
    Fault("hang", "decode-1"),
)


@dataclass(frozen=True, slots=True)
class SoakSpec:
    duration_s: float = 600.0
    load: float = 0.8  # fraction of the capacity (`capacity_rps`, or measured)
    fault_period_s: float = 60.0  # one fault starts every period (the first half a period in)
    outage_s: float = 5.0  # how long a killed service stays down / a hung one stays stopped
    output_tokens: int = 16
    drain_s: float = 60.0
    seed: int = 0
    client_retries: int = 8  # the SDK's retries of UNAVAILABLE / RESOURCE_EXHAUSTED (streams are resumed)
    client_backoff_s: float = 0.25  # first retry's backoff; doubling, capped at 10 s: ~18-36 s in all
    capacity_rps: float | None = None  # what `load` is a fraction of; None: measured first (`calibrate`)
    calibrate_s: float = 240.0  # the measurement's length (offered 1.5x the planner's prediction, no faults)

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or not 0 < self.load <= 2 or self.fault_period_s <= self.outage_s or self.outage_s <= 0:
            raise ValueError("need duration_s > 0, 0 < load <= 2 and fault_period_s > outage_s > 0")
        if self.client_retries < 0 or self.client_backoff_s < 0:
            raise ValueError("client_retries and client_backoff_s must be >= 0")
        if (self.capacity_rps is not None and self.capacity_rps <= 0) or self.calibrate_s < 30:
            raise ValueError("capacity_rps must be positive and calibrate_s >= 30")


@dataclass
class SoakResult:
    duration_s: float
    predicted_rps: float  # the planner's capacity for the topology
    capacity_rps: float  # the capacity `load` applies to: given, or measured on this machine
    rate_rps: float
    sent: int
    completed: int
    failed: dict[str, int]  # by gRPC status name
    lost: int
    faults: list[str]
    failed_after: dict[str, int]  # failed or lost requests by the last fault injected before they ended
    rss_start_mib: dict[str, float]
    rss_end_mib: dict[str, float]
    restarted: list[str]
    blocks_outstanding: dict[str, int]  # starting free blocks - free blocks after the drain, per worker
    requests_outstanding: dict[str, int] = field(default_factory=dict)  # registered / queued after the drain
    lost_requests: list[str] = field(default_factory=list)  # "<request id> <tokens received>/<asked> (<story>)"
    log_dir: str = ""  # the services' logs (grep them for a lost request's id)

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def rss_mib(service: Service) -> float:
    """Resident memory of the service's process, from /proc (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{service.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def worker_state(stack: LocalStack) -> dict[str, tuple[int, int]]:
    """(free blocks, requests registered or queued) of every worker."""
    state = {}
    for s in stack.services:
        with grpc.insecure_channel(s.address) as ch:
            if s.name.startswith("decode"):
                d = decode_pb2_grpc.DecodeServiceStub(ch).GetDecodeLoad(decode_pb2.GetDecodeLoadRequest(), timeout=10)
                state[s.name] = (d.free_blocks, d.active)
            elif s.name.startswith("prefill"):
                p = prefill_pb2_grpc.PrefillServiceStub(ch).GetLoad(prefill_pb2.GetLoadRequest(), timeout=10)
                state[s.name] = (p.free_blocks, p.queue_depth)
    return state


def settle(stack: LocalStack, baseline: dict[str, tuple[int, int]], timeout_s: float) -> dict[str, tuple[int, int]]:
    """The workers' state once it is back at `baseline`, or as it is after `timeout_s` (a worker that does not
    answer is left out, so it shows as holding everything)."""
    deadline = time.monotonic() + timeout_s
    state: dict[str, tuple[int, int]] = {}
    while time.monotonic() < deadline:
        try:
            state = worker_state(stack)
        except grpc.RpcError:
            state = {}
        if state == baseline:
            break
        time.sleep(0.5)
    return state


def inject(stack: LocalStack, spec: SoakSpec, log: Callable[[str], None], t0: float) -> list[tuple[float, str]]:
    """Run the schedule until `spec.duration_s` after `t0`; returns what was done, at which time. Runs on
    the thread that started the stack: a restarted service dies with the thread that started it."""
    done: list[tuple[float, str]] = []
    at_s = spec.fault_period_s / 2
    while at_s < spec.duration_s:
        time.sleep(max(0.0, t0 + at_s - time.monotonic()))
        fault = SCHEDULE[len(done) % len(SCHEDULE)]
        service = stack.service(fault.service)
        at = time.monotonic() - t0
        line = f"{at:6.1f}s {fault.action} {fault.service} for {spec.outage_s:g}s"
        log(line)
        done.append((at, line))
        service.proc.send_signal(signal.SIGKILL if fault.action == "kill" else signal.SIGSTOP)
        time.sleep(spec.outage_s)
        if fault.action == "kill":
            stack.restart(fault.service)
        else:
            service.proc.send_signal(signal.SIGCONT)
        at_s += spec.fault_period_s
    return done


def _load(router: str, requests: Sequence[LoadRequest], spec: SoakSpec, out: list[RequestRecord]) -> None:
    load = run_load(
        router,
        requests,
        duration_s=spec.duration_s,
        drain_s=spec.drain_s,
        retries=spec.client_retries,
        backoff_s=spec.client_backoff_s,
    )
    out.extend(asyncio.run(load))


def blame(records: Sequence[RequestRecord], faults: Sequence[tuple[float, str]]) -> dict[str, int]:
    """Failed and unanswered requests counted against the last fault injected before they ended (an
    unanswered one: before it was sent); "no fault yet" for those that ended before the first."""
    counts: Counter[str] = Counter()
    for r in records:
        if r.error is None:
            continue
        ended = r.failed_s if r.failed_s is not None else r.at_s
        counts[next((line for at, line in reversed(faults) if at <= ended), "no fault yet")] += 1
    return dict(counts)


def account(records: Sequence[RequestRecord], requests: Sequence[LoadRequest]) -> tuple[int, dict[str, int], list[str]]:
    """(completed, failed by status, lost): a completion short of its tokens counts as lost; each lost
    request as "<request id> <tokens received>/<asked>"."""
    done = [r.ok and r.num_tokens == q.output_tokens for r, q in zip(records, requests, strict=True)]
    failed = Counter(r.error for r in records if r.error not in (None, "unfinished"))
    lost = [
        f"{r.request_id} {r.num_tokens}/{q.output_tokens}{_story(r)}"
        for r, q, ok in zip(records, requests, done, strict=True)
        if not ok and r.error in (None, "unfinished")
    ]
    return sum(done), dict(failed), lost


def _story(r: RequestRecord) -> str:
    """What is known of a lost request: when it was sent, where it went, when its last token came."""
    parts = [f"sent at {r.at_s:.1f}s"]
    if r.route:
        parts.append(f"{r.route} route, decode worker {r.decode_worker}")
    if r.last_token_s is not None:
        parts.append(f"last token at {r.last_token_s:.1f}s")
    return " (" + ", ".join(parts) + ")"


def calibrate(stack: LocalStack, spec: SoakSpec, predicted: float) -> float:
    """The stack's measured capacity: completions per second over the last two thirds of `calibrate_s` of
    open-loop load at 1.5x the planner's prediction, no faults, no retries (the mock engines model the
    paper's hardware, but on a small machine the processes' own CPU work makes the live stack slower)."""
    offered = 1.5 * predicted
    workload = WorkloadSpec(
        rate_rps=offered, duration_s=spec.calibrate_s, output_tokens=spec.output_tokens, seed=spec.seed + 1
    )
    records = asyncio.run(run_load(stack.router, build_requests(workload), duration_s=spec.calibrate_s, drain_s=0))
    start_s = spec.calibrate_s / 3
    done = sum(r.ok and r.done_s is not None and r.done_s >= start_s for r in records)
    return done / (spec.calibrate_s - start_s)


def run_soak(topology: Topology, spec: SoakSpec, log: Callable[[str], None] = print) -> SoakResult:
    predicted = predicted_rps(topology, topology.policy, None, spec.output_tokens)
    with LocalStack(topology) as stack:
        baseline = worker_state(stack)
        pids = {s.name: s.proc.pid for s in stack.services}
        rss_start = {s.name: rss_mib(s) for s in stack.services}  # as launched, before any load
        capacity = spec.capacity_rps
        if capacity is None:
            log(f"calibrating: {spec.calibrate_s:g}s at 1.5 x the planner's {predicted:.2f} req/s")
            capacity = calibrate(stack, spec, predicted)
            if capacity <= 0:
                raise RuntimeError(
                    f"calibration completed no request in {spec.calibrate_s:g}s (see {stack.log_dir}): "
                    "give --capacity-rps or a longer --calibrate-s"
                )
            settle(stack, baseline, timeout_s=120.0)
        rate = spec.load * capacity
        workload = WorkloadSpec(
            rate_rps=rate, duration_s=spec.duration_s, output_tokens=spec.output_tokens, seed=spec.seed
        )
        requests = build_requests(workload)
        log(
            f"soak: {len(requests)} requests at {rate:.2f} req/s ({spec.load:.0%} of {capacity:.2f} req/s; "
            f"the planner predicts {predicted:.2f}) for {spec.duration_s:g}s"
        )
        records: list[RequestRecord] = []
        load = threading.Thread(target=_load, args=(stack.router, requests, spec, records), daemon=True)
        t0 = time.monotonic()  # the load's clock starts within milliseconds of this
        load.start()
        faults = inject(stack, spec, log, t0)
        load.join()
        end = settle(stack, baseline, timeout_s=120.0)
        completed, failed, lost = account(records, requests)
        return SoakResult(
            duration_s=spec.duration_s,
            predicted_rps=predicted,
            capacity_rps=capacity,
            rate_rps=rate,
            sent=len(requests),
            completed=completed,
            failed=failed,
            lost=len(lost),
            faults=[line for _, line in faults],
            failed_after=blame(records, faults),
            rss_start_mib=rss_start,
            rss_end_mib={s.name: rss_mib(s) for s in stack.services},
            restarted=sorted(s.name for s in stack.services if s.proc.pid != pids[s.name]),
            blocks_outstanding={k: baseline[k][0] - end.get(k, (0, 0))[0] for k in baseline},
            requests_outstanding={k: end.get(k, (0, 0))[1] for k in baseline},
            lost_requests=lost,
            log_dir=str(stack.log_dir),
        )


def format_soak(r: SoakResult) -> str:
    lines = [
        f"capacity {r.capacity_rps:.2f} req/s (planner: {r.predicted_rps:.2f})",
        f"soak {r.duration_s:g}s at {r.rate_rps:.2f} req/s: sent {r.sent}, completed {r.completed}, "
        f"failed {sum(r.failed.values())} {r.failed or ''}, lost {r.lost}",
        f"faults ({len(r.faults)}), with the requests that failed or went unanswered after each:",
        *(f"  {f}  -> {r.failed_after.get(f, 0)}" for f in r.faults),
        f"{'service':<18} {'RSS start MiB':>14} {'RSS end MiB':>12} {'blocks out':>11} {'requests out':>13}",
    ]
    for name, start in r.rss_start_mib.items():
        mark = " (restarted)" if name in r.restarted else ""
        blocks = r.blocks_outstanding.get(name)
        reqs = r.requests_outstanding.get(name)
        lines.append(
            f"{name:<18} {start:>14.0f} {r.rss_end_mib.get(name, 0.0):>12.0f} "
            f"{'' if blocks is None else blocks:>11} {'' if reqs is None else reqs:>13}{mark}"
        )
    if r.failed_after.get("no fault yet"):
        lines.append(f"  before the first fault -> {r.failed_after['no fault yet']}")
    lines.append(f"blocks outstanding at the end: {sum(r.blocks_outstanding.values())}")
    if r.lost_requests:
        lines += ["lost requests (id, tokens received/asked):", *(f"  {x}" for x in r.lost_requests)]
    lines.append(f"service logs: {r.log_dir}")
    return "\n".join(lines)
