"""The simulated request and the two kinds of instance: a prefill queue and a continuously batching decoder.

Instances only keep their own queues and clocks; the simulator decides what a prefill costs and what happens
when one ends.
"""

from __future__ import annotations

import math
from collections import deque

from prfaas.sched.policy import Decision
from prfaas.sched.profile import HardwareProfile

_STEP_SLACK = 1e-9  # a join this close after a step boundary counts as at the boundary


class SimRequest:
    """A request's life: arrival -> route -> (prefix move) -> prefill -> KV transfer -> decode."""

    __slots__ = (
        "arrival_s",
        "block_keys",
        "cached_pd_tokens",
        "computed_tokens",
        "decision",
        "finish_s",
        "first_token_s",
        "id",
        "kv_sent",
        "moved_tokens",
        "output_tokens",
        "prefill_done",
        "prefill_end_s",
        "prefill_estimate_s",
        "prefill_start_s",
        "prompt_tokens",
        "route",
        "transfer_bytes",
    )

    def __init__(self, request_id: int, arrival_s: float, prompt: int, output: int, keys: tuple[int, ...]) -> None:
        self.id = request_id
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt
        self.output_tokens = output
        self.block_keys = keys
        self.route = ""
        self.decision: Decision | None = None
        self.cached_pd_tokens = 0
        self.moved_tokens = 0
        self.computed_tokens = 0
        self.transfer_bytes = 0.0
        self.prefill_estimate_s = 0.0
        self.prefill_start_s = math.nan
        self.prefill_end_s = math.nan
        self.first_token_s = math.nan
        self.finish_s = math.nan
        self.prefill_done = False
        self.kv_sent = False

    @property
    def ttft_s(self) -> float:
        """Arrival until the KV is at the decoder (the prefill samples the first token; it ships with the KV)."""
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first (decode-slot wait included)."""
        return (self.finish_s - self.first_token_s) / self.output_tokens


class PrefillInstance:
    """One prefill instance with a FIFO queue. ``backlog_s`` estimates the work ahead of a new arrival."""

    __slots__ = ("busy_until_s", "current", "draining", "profile", "queue", "queued_s")

    def __init__(self, profile: HardwareProfile) -> None:
        self.profile = profile
        self.queue: deque[SimRequest] = deque()
        self.queued_s = 0.0
        self.current: SimRequest | None = None
        self.busy_until_s = 0.0
        self.draining = False

    @property
    def outstanding(self) -> int:
        return len(self.queue) + (self.current is not None)

    def backlog_s(self, now_s: float) -> float:
        return self.queued_s + max(self.busy_until_s - now_s, 0.0)

    def push(self, req: SimRequest) -> None:
        self.queue.append(req)
        self.queued_s += req.prefill_estimate_s

    def pop(self) -> SimRequest:
        req = self.queue.popleft()
        self.queued_s -= req.prefill_estimate_s
        return req


class DecodeInstance:
    """Continuous batching (Eq. 5): up to ``batch_size`` sequences advance one token per ``step_s``.

    A step takes ``T_decode`` whatever the batch size (the SLO fixes both), so a sequence that joins at a step
    boundary finishes exactly ``L_out`` steps later; no per-step events are needed. Steps run back to back
    from ``origin_s`` while any sequence is active; a sequence arriving mid-step joins at the next boundary,
    one arriving at a full batch waits for a slot (freed at a boundary).
    """

    __slots__ = ("active", "batch_size", "draining", "origin_s", "step_s", "waiting")

    def __init__(self, batch_size: int, step_s: float) -> None:
        if batch_size < 1 or step_s <= 0:
            raise ValueError(f"decode needs batch_size >= 1 and step_s > 0, got {batch_size}, {step_s}")
        self.batch_size = batch_size
        self.step_s = step_s
        self.active = 0
        self.waiting: deque[SimRequest] = deque()
        self.origin_s = 0.0
        self.draining = False

    @property
    def load(self) -> int:
        return self.active + len(self.waiting)

    def join(self, now_s: float) -> float:
        """Take a batch slot; return the step boundary at which the sequence starts (now, if the decoder was idle)."""
        self.active += 1
        if self.active == 1:
            self.origin_s = now_s
            return now_s
        steps = math.ceil((now_s - self.origin_s) / self.step_s - _STEP_SLACK)
        return self.origin_s + steps * self.step_s

    def finish_time_s(self, join_s: float, output_tokens: int) -> float:
        return join_s + output_tokens * self.step_s
