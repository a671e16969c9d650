import pytest

from prfaas.sched.routing import WorkerView, pick_worker


def test_least_loaded_wins_without_cache_affinity() -> None:
    workers = [WorkerView("a", 3, 512), WorkerView("b", 1, 0), WorkerView("c", 1, 64)]
    assert pick_worker(workers, cache_affine=False).address == "b"  # ties broken by address


def test_cache_affinity_prefers_the_longest_prefix_then_load() -> None:
    workers = [WorkerView("a", 3, 512), WorkerView("b", 1, 0), WorkerView("c", 0, 512)]
    assert pick_worker(workers, cache_affine=True).address == "c"


def test_no_workers_is_an_error() -> None:
    with pytest.raises(ValueError, match="no workers"):
        pick_worker([], cache_affine=True)
