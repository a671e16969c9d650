"""The router's retry rule, attempt ids, resumed attempts, and which failures mark a worker down."""

from __future__ import annotations

import grpc
import pytest

from prfaas.bench.load import LoadRequest, RequestRecord
from prfaas.bench.soak import SoakSpec, account, blame
from prfaas.v1 import common_pb2
from services.router.health import Health
from services.router.retry import DECODE, PREFILL, Failure, attempt_id, resumed, should_retry

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
    assert should_retry(Failure(PREFILL, "w:1", code, ""), attempt, 3, remaining_s) is expected


def test_which_failures_mark_the_worker_down() -> None:
    assert Failure(PREFILL, "p:1", UNAVAILABLE, "failed to connect").worker_down
    assert Failure(DECODE, "d:1", UNAVAILABLE, "Socket closed").worker_down
    assert Failure(PREFILL, "p:1", DEADLINE, "Deadline Exceeded").worker_down
    assert not Failure(PREFILL, "p:1", UNAVAILABLE, "KV transfer to d:1 failed: reset").worker_down
    assert not Failure(DECODE, "d:1", grpc.StatusCode.ABORTED, "KV lease expired").worker_down
    assert not Failure(DECODE, "d:1", grpc.StatusCode.INVALID_ARGUMENT, "bad").worker_down


def test_attempt_ids_are_distinct_and_valid() -> None:
    assert attempt_id("req-1", 0) == "req-1"
    assert attempt_id("req-1", 2) == "req-1:2"
    assert len(attempt_id("x" * 128, 1)) <= 128


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
    assert account(records, requests) == (1, {"UNAVAILABLE": 1}, ["u 0/4", "s 3/4"])
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
