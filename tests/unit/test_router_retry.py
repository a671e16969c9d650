"""The router's retry rule, attempt ids, resumed attempts, and which failures mark a worker down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from prfaas.bench.load import LoadRequest, RequestRecord
from prfaas.bench.soak import SoakSpec, account, blame
from prfaas.service.convert import check_request_id
from prfaas.v1 import common_pb2, decode_pb2, prefill_pb2
from services.router.health import Health
from services.router.liveness import race
from services.router.retry import DECODE_STAGE, PREFILL_STAGE, AttemptFailed, Failure, attempt_id, resumed, should_retry

UNAVAILABLE, DEADLINE = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize(
    ("code", "attempt", "remaining_s", "expected"),
    [
        (UNAVAILABLE, 0, 10.0, True),
        (DEADLINE, 1, 10.0, True),
        (grpc.StatusCode.ABORTED, 0, 10.0, True),
        (UNAVAILABLE, 2, 10.0, False),  # the third attempt was the last
        (UNAVAILABLE, 0, 0.01, False),  # no time left
        (grpc.StatusCode.INVALID_ARGUMENT, 0, 10.0, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 0, 10.0, False),  # the client gets the retry-after hint
    ],
)
def test_should_retry(code: grpc.StatusCode, attempt: int, remaining_s: float, expected: bool) -> None:
    assert should_retry(Failure(PREFILL_STAGE, "w:1", code, ""), attempt, 3, remaining_s) is expected


def test_which_failures_mark_the_worker_down() -> None:
    assert Failure(PREFILL_STAGE, "p:1", UNAVAILABLE, "failed to connect").worker_down
    assert Failure(DECODE_STAGE, "d:1", UNAVAILABLE, "Socket closed").worker_down
    assert Failure(PREFILL_STAGE, "p:1", DEADLINE, "Deadline Exceeded").worker_down
    assert not Failure(PREFILL_STAGE, "p:1", UNAVAILABLE, "KV transfer to d:1 failed: reset").worker_down
    assert not Failure(DECODE_STAGE, "d:1", grpc.StatusCode.ABORTED, "KV lease expired").worker_down
    assert not Failure(DECODE_STAGE, "d:1", grpc.StatusCode.INVALID_ARGUMENT, "bad").worker_down


def test_attempt_ids_are_distinct_and_valid() -> None:
    assert attempt_id("req-1", "a1b2c3", 0) == "req-1:a1b2c3.0"
    assert attempt_id("req-1", "a1b2c3", 2) == "req-1:a1b2c3.2"
    assert attempt_id("req-1", "a1b2c3", 0) != attempt_id("req-1", "ffffff", 0)  # a client's retry of the id
    for attempt in (1, 12):
        long = attempt_id("x" * 128, "a1b2c3", attempt)
        check_request_id(long)
        assert long.endswith(f":a1b2c3.{attempt}")


def test_resumed_attempt_prefills_what_was_generated_and_asks_for_the_rest() -> None:
    sampling = common_pb2.SamplingParams(max_new_tokens=10, ignore_eos=True, temperature=0.0)
    ids, left = resumed([1, 2, 3], [7, 8], sampling)
    assert ids == [1, 2, 3, 7, 8]
    assert left.max_new_tokens == 8 and left.ignore_eos
    assert sampling.max_new_tokens == 10  # the request's own parameters are untouched


def test_health_marks_down_and_up() -> None:
    health = Health(interval_s=0.5)
    health.mark_down("a:1", "boom")
    assert not health.is_up("a:1") and health.up(["a:1", "b:2"]) == ["b:2"]
    health.mark_up("a:1")
    assert health.is_up("a:1") and health.down == {}


def test_soak_accounting_counts_short_and_unanswered_requests_as_lost() -> None:
    requests = [LoadRequest(0.0, (1,), 4)] * 4
    records = [
        RequestRecord(0.0, 1, first_token_s=0.1, done_s=1.0, num_tokens=4),
        RequestRecord(0.0, 1, error="UNAVAILABLE"),
        RequestRecord(0.0, 1, error="unfinished", request_id="u"),
        RequestRecord(0.0, 1, first_token_s=0.1, done_s=1.0, num_tokens=3, request_id="s"),  # short, no error
    ]
    assert account(records, requests) == (1, {"UNAVAILABLE": 1}, ["u 0/4 (sent at 0.0s)", "s 3/4 (sent at 0.0s)"])
    with pytest.raises(ValueError):
        SoakSpec(fault_period_s=5.0, outage_s=5.0)


def test_soak_blames_each_failure_on_the_last_fault_before_it() -> None:
    faults = [(20.0, "kill a"), (60.0, "kill b")]
    records = [
        RequestRecord(1.0, 1, error="UNAVAILABLE", failed_s=5.0),
        RequestRecord(15.0, 1, error="UNAVAILABLE", failed_s=21.0),
        RequestRecord(50.0, 1, error="unfinished"),  # never answered: blamed by when it was sent
        RequestRecord(55.0, 1, error="ABORTED", failed_s=70.0),
        RequestRecord(56.0, 1, first_token_s=57.0, done_s=58.0, num_tokens=1),
    ]
    assert blame(records, faults) == {"no fault yet": 1, "kill a": 2, "kill b": 1}


async def test_requests_waiting_on_one_worker_share_its_liveness_probes() -> None:
    health = Health(interval_s=0.02)
    calls: list[str] = []

    async def silent(address: str, timeout_s: float) -> bool:
        calls.append(address)
        return False

    health.check = silent  # type: ignore[method-assign]
    await asyncio.wait_for(asyncio.gather(*(health.unresponsive("a:1", 0.1) for _ in range(5))), 2)
    assert 4 <= len(calls) <= 12  # one loop for five waiters: ~0.1 s / 0.02 s probes, not five times that
    assert health._watches == {}
    waiter = asyncio.ensure_future(health.unresponsive("a:1", 10.0))
    await asyncio.sleep(0.05)
    waiter.cancel()  # the last waiter leaving stops the loop
    await asyncio.sleep(0.05)
    assert health._watches == {} and len(calls) < 30


class _Stream:
    """A decode call that sends `tokens` responses, then nothing (a stuck request on a live worker)."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[decode_pb2.DecodeResponse]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[decode_pb2.DecodeResponse]:
        for i in range(self.tokens):
            yield decode_pb2.DecodeResponse(token_ids=[i])
        await asyncio.Event().wait()

    def cancel(self) -> None:
        self.cancelled = True


async def test_a_stream_that_stops_bringing_tokens_fails_its_attempt() -> None:
    prefill: asyncio.Future[prefill_pb2.PrefillResponse] = asyncio.get_running_loop().create_future()
    prefill.set_result(prefill_pb2.PrefillResponse())
    received = []
    alive = asyncio.Event()  # the worker answers health checks all along
    with pytest.raises(AttemptFailed) as err:
        async for resp in race(_Stream(3), prefill, "d:1", "p:1", alive.wait(), 10.0, 0.2):  # type: ignore[arg-type]
            received.extend(resp.token_ids)
    assert received == [0, 1, 2]
    failure = err.value.failure
    assert (failure.stage, failure.address, failure.code) == (DECODE_STAGE, "d:1", grpc.StatusCode.DEADLINE_EXCEEDED)
    assert "no token for 0.2s" in failure.details and should_retry(failure, 0, 3, 10.0)
