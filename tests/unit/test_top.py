"""prfaas top: the histogram quantile estimate, endpoint parsing, and one frame of a live stack."""

from __future__ import annotations

import argparse
import asyncio
import math
import socket
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from prometheus_client.metrics import MetricWrapperBase

from prfaas.cli import top
from prfaas.telemetry import metrics

INF = math.inf
# cumulative counts of observations 0.03, 0.07, 0.2, 0.3
FOUR = [(0.05, 1.0), (0.1, 2.0), (0.25, 3.0), (0.5, 4.0), (INF, 4.0)]


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, FOUR, 0.1),  # rank 2 ends bucket (0.05, 0.1]
        (0.9, FOUR, 0.4),  # rank 3.6: 0.25 + 0.25 * (3.6 - 3) / 1
        (0.25, FOUR, 0.05),  # rank 1 in the first bucket, which starts at 0
        (0.5, list(reversed(FOUR)), 0.1),  # order does not matter
        (0.5, [(1.0, 4.0), (INF, 4.0)], 0.5),  # rank 2 of 4 halfway through [0, 1]
        (0.75, [(1.0, 0.0), (3.0, 4.0), (INF, 4.0)], 2.5),  # 1 + 2 * 3 / 4
        (0.5, [(1.0, 1.0), (2.0, 2.0), (INF, 10.0)], 2.0),  # rank 5 in +Inf: the highest finite bound
        (0.0, [(1.0, 0.0), (2.0, 2.0), (INF, 2.0)], 1.0),  # empty buckets are skipped: the lowest one's start
        (1.0, [(1.0, 2.0), (2.0, 2.0), (INF, 2.0)], 1.0),  # ... and so are the empty ones above
        (1.0, FOUR, 0.5),
    ],
)
def test_histogram_quantile(q: float, buckets: list[tuple[float, float]], expected: float) -> None:
    assert top.histogram_quantile(q, buckets) == pytest.approx(expected)


def test_histogram_quantile_empty_and_out_of_range() -> None:
    assert top.histogram_quantile(0.5, []) is None
    assert top.histogram_quantile(0.5, [(1.0, 0.0), (INF, 0.0)]) is None
    with pytest.raises(ValueError, match="quantile"):
        top.histogram_quantile(1.5, FOUR)


def test_histogram_buckets_add_up_label_sets() -> None:
    def key(route: str, le: str) -> metrics.MetricKey:
        return ("h_bucket", frozenset({("route", route), ("le", le)}))

    samples = {key("a", "1.0"): 1.0, key("a", "+Inf"): 2.0, key("b", "1.0"): 3.0, key("b", "+Inf"): 3.0}
    assert top.histogram_buckets(samples, "h") == [(1.0, 4.0), (INF, 5.0)]
    assert top.histogram_buckets(samples, "h", route="b") == [(1.0, 3.0), (INF, 3.0)]


def test_parse_endpoints() -> None:
    assert top.parse_endpoints("router=127.0.0.1:9100, decode=host:1") == (
        top.Endpoint("router", "127.0.0.1:9100"),
        top.Endpoint("decode", "host:1"),
    )
    for bad in ("router", "router=host", "=h:1", "r=h:port"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=HOST:PORT"):
            top.parse_endpoints(bad)


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="prfaas")
    top.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["top", *argv])


def test_nothing_to_watch_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(["--once"])
    assert args.run is top.run
    assert top.run(args) == top.EXIT_BAD_INPUT
    assert "--targets" in capsys.readouterr().err
    assert top.run(_args(["--targets", "r=h:1", "--interval-s", "0"])) == top.EXIT_BAD_INPUT
    assert "--interval-s" in capsys.readouterr().err


def _dead_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def metrics_port() -> Iterator[int]:
    """A live endpoint over known values (the labelled metrics are cleared first: the registry is shared)."""
    labelled: tuple[MetricWrapperBase, ...] = (metrics.TTFT_SECONDS, metrics.KV_TRANSFER_BYTES, metrics.REQUESTS)
    labelled += (metrics.ERRORS, metrics.QUEUE_DEPTH, metrics.ACTIVE_SEQUENCES, metrics.KV_BLOCKS_FREE)
    for metric in labelled:
        metric.clear()
    for ttft_s in (0.03, 0.07, 0.2, 0.3):
        metrics.TTFT_SECONDS.labels(route="prfaas").observe(ttft_s)
    for _ in range(2):
        metrics.TTFT_SECONDS.labels(route="local").observe(0.005)
        metrics.count_request("local", "PrfaaS unavailable")
    for _ in range(3):
        metrics.count_request("prfaas", "scarce: l=9000 > t=2048")
    metrics.KV_TRANSFER_BYTES.labels(route="prfaas").observe(2 * 2**20)
    metrics.KV_TRANSFER_BYTES.labels(route="prfaas").observe(2**20)
    metrics.QUEUE_DEPTH.labels(service="decode", queue="waiting").set(3)
    metrics.QUEUE_DEPTH.labels(service="decode", queue="running").set(1)
    metrics.ACTIVE_SEQUENCES.labels(service="decode").set(5)
    metrics.KV_BLOCKS_FREE.labels(service="decode").set(123)
    metrics.ERRORS.labels(service="router", code="UNAVAILABLE").inc(2)
    metrics.LINK_UTILIZATION.set(0.42)
    metrics.ROUTING_THRESHOLD.set(2048)
    server = metrics.serve_metrics(0)
    yield server.port
    server.stop()


@pytest.fixture
async def health() -> AsyncIterator[tuple[int, health_aio.HealthServicer]]:
    server = grpc.aio.server()
    servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    yield port, servicer
    await server.stop(None)


async def test_once_against_a_live_stack(
    metrics_port: int, health: tuple[int, health_aio.HealthServicer], capsys: pytest.CaptureFixture[str]
) -> None:
    grpc_port, servicer = health
    dead = _dead_address()
    argv = ["--once", "--targets", f"router=127.0.0.1:{metrics_port},ghost={dead}"]
    args = _args([*argv, "--grpc", f"router=127.0.0.1:{grpc_port},ghost={dead}"])
    assert await asyncio.to_thread(top.run, args) == 0  # off the loop: the health server lives on it
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()}

    assert lines["router"] == ["router", "SERVING", "up", "5", "123", "waiting=3", "running=1"]
    assert lines["ghost"] == ["ghost", "DOWN", "DOWN", "-", "-", "-"]
    assert lines["prfaas"] == ["prfaas", "3", "0.100s", "0.400s", "3.0", "MiB", "scarce=3"]
    assert lines["local"] == ["local", "2", "0.005s", "0.009s", "-", "unavailable=2"]
    assert lines["all"] == ["all", "5", "0.050s", "0.350s", "3.0", "MiB", "-"]
    assert lines["link"] == ["link", "utilization", "0.42", "threshold", "t", "2048", "tokens"]
    assert lines["errors"] == ["errors", "UNAVAILABLE=2"]

    await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert await asyncio.to_thread(top.run, args) == 0
    assert "router           NOT_SERVING" in capsys.readouterr().out
