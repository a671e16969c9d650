"""``prfaas top``: a live terminal view of a running stack.

Each frame scrapes every ``--targets`` metrics endpoint (``/metrics``, see ``prfaas.telemetry.metrics``) and
asks every ``--grpc`` address for ``grpc.health.v1`` status, all at once with 1 s timeouts, then prints:

- one row per service (the names given to ``--targets`` and ``--grpc``; the same name joins both): health
  (SERVING / NOT_SERVING / DOWN), whether its metrics answered, active sequences, free KV blocks, queue
  depths by queue (each summed over the ``service`` labels that endpoint exports);
- router totals over all endpoints that answered (counters and histograms add up; the router-only gauges
  are 0 elsewhere): requests, TTFT p50/p90 and KV bytes by route, link utilisation, ``t``, errors by code.

Unreachable targets show as DOWN; ``top`` never fails on them. ``--once`` prints one frame and exits.
"""

from __future__ import annotations

import argparse
import http.client
import math
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from prfaas.telemetry.metrics import MetricKey, parse_metrics

TIMEOUT_S = 1.0
CLEAR_SCREEN = "\x1b[2J\x1b[H"
EXIT_BAD_INPUT = 2
Samples = dict[MetricKey, float]


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    address: str  # host:port


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One scrape: health by ``--grpc`` name, samples by ``--targets`` name (None: the endpoint is down)."""

    health: dict[str, str]
    metrics: dict[str, Samples | None]


def parse_endpoints(text: str) -> tuple[Endpoint, ...]:
    """``"router=127.0.0.1:9100,decode=h:9101"`` -> endpoints; ``argparse.ArgumentTypeError`` says what is wrong."""
    endpoints = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, address = item.partition("=")
        host, colon, port = address.rpartition(":")
        if not (sep and name and host and colon and port.isdigit()):
            raise argparse.ArgumentTypeError(f"expected NAME=HOST:PORT, got {item!r}")
        endpoints.append(Endpoint(name.strip(), address.strip()))
    return tuple(endpoints)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``top`` on a ``parser.add_subparsers()`` object."""
    parser = subparsers.add_parser("top", help="live view of a running stack's health and metrics")
    parser.add_argument("--targets", type=parse_endpoints, default=(), help="metrics endpoints NAME=HOST:PORT,...")
    parser.add_argument("--grpc", type=parse_endpoints, default=(), help="gRPC health checks NAME=HOST:PORT,...")
    parser.add_argument("--interval-s", type=float, default=2.0, help="seconds between frames")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.targets and not args.grpc:
        print("prfaas top: error: give --targets and/or --grpc", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.interval_s <= 0:
        print(f"prfaas top: error: --interval-s must be > 0, got {args.interval_s}", file=sys.stderr)
        return EXIT_BAD_INPUT
    names = _names(args.targets, args.grpc)
    if args.once:
        print(render(take_snapshot(args.targets, args.grpc), names))
        return 0
    try:
        while True:
            print(CLEAR_SCREEN + render(take_snapshot(args.targets, args.grpc), names), flush=True)
            time.sleep(args.interval_s)
    except KeyboardInterrupt:
        return 0


def _names(targets: Sequence[Endpoint], health: Sequence[Endpoint]) -> list[str]:
    return list(dict.fromkeys(e.name for e in (*targets, *health)))


def fetch_metrics(address: str) -> Samples | None:
    """Scrape ``http://address/metrics``; None when it does not answer or answers garbage."""
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=TIMEOUT_S) as response:
            return parse_metrics(response.read().decode())
    except (OSError, ValueError, http.client.HTTPException):
        return None


def check_health(address: str) -> str:
    """``grpc.health.v1`` status name of the server's overall health (``"SERVING"``...); ``"DOWN"`` on any error."""
    try:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
    except grpc.RpcError:
        return "DOWN"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def take_snapshot(targets: Sequence[Endpoint], health: Sequence[Endpoint]) -> Snapshot:
    """Scrape and health-check everything concurrently, so a frame takes about one timeout at worst."""
    with ThreadPoolExecutor(max_workers=max(1, len(targets) + len(health))) as pool:
        scrapes = {e.name: pool.submit(fetch_metrics, e.address) for e in targets}
        checks = {e.name: pool.submit(check_health, e.address) for e in health}
        return Snapshot({n: f.result() for n, f in checks.items()}, {n: f.result() for n, f in scrapes.items()})


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of one histogram, as Prometheus's ``histogram_quantile`` estimates it.

    ``buckets`` are ``(le, cumulative count)`` pairs with ``+Inf`` last. With ``rank = q x total``, take the
    first non-empty bucket whose cumulative count reaches ``rank`` and interpolate linearly between its lower
    bound (the previous ``le``; 0 for the first bucket unless its bound is negative) and its ``le``, assuming
    observations spread evenly inside it. A rank in the ``+Inf`` bucket returns the highest finite bound.
    None when there are no observations."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank, lower, below = q * ordered[-1][1], min(0.0, ordered[0][0]), 0.0
    for upper, cumulative in ordered:
        if cumulative >= rank and cumulative > below:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (cumulative - below)
        lower, below = upper, cumulative
    return lower


def histogram_buckets(samples: Samples, name: str, **match: str) -> list[tuple[float, float]]:
    """``(le, cumulative count)`` of histogram ``name`` summed over the label sets that contain ``match``."""
    counts: defaultdict[float, float] = defaultdict(float)
    for labels, value in _matching(samples, f"{name}_bucket", match):
        counts[float(labels["le"])] += value
    return sorted(counts.items())


def total(samples: Samples, name: str, **match: str) -> float | None:
    """Sum of sample ``name`` over the label sets that contain ``match``; None when there is none."""
    values = [value for _, value in _matching(samples, name, match)]
    return sum(values) if values else None


def by_label(samples: Samples, name: str, label: str, **match: str) -> dict[str, float]:
    """Sample ``name`` summed per value of ``label``, in order of first appearance."""
    sums: dict[str, float] = {}
    for labels, value in _matching(samples, name, match):
        if label in labels:
            sums[labels[label]] = sums.get(labels[label], 0.0) + value
    return sums


def _matching(samples: Samples, name: str, match: dict[str, str]) -> list[tuple[dict[str, str], float]]:
    found = [(dict(labels), value) for (sample, labels), value in samples.items() if sample == name]
    return [(labels, value) for labels, value in found if all(labels.get(k) == v for k, v in match.items())]


def merge(snapshot: Snapshot) -> Samples:
    """All endpoints that answered, added up sample by sample."""
    merged: defaultdict[MetricKey, float] = defaultdict(float)
    for samples in snapshot.metrics.values():
        for key, value in (samples or {}).items():
            merged[key] += value
    return dict(merged)


def render(snapshot: Snapshot, names: Sequence[str]) -> str:
    """One frame of plain text."""
    rows = [f"{'SERVICE':<16} {'HEALTH':<12} {'METRICS':<8} {'ACTIVE':>6} {'FREE_BLOCKS':>11}  QUEUES"]
    rows += [_service_row(name, snapshot) for name in names]
    return "\n".join([time.strftime("prfaas top  %H:%M:%S"), "", *rows, "", *_router_rows(merge(snapshot))])


def _service_row(name: str, snapshot: Snapshot) -> str:
    health = snapshot.health.get(name, "-")
    state = "-" if name not in snapshot.metrics else "up" if snapshot.metrics[name] is not None else "DOWN"
    samples = snapshot.metrics.get(name) or {}
    active = _fmt(total(samples, "prfaas_active_sequences"))
    free = _fmt(total(samples, "prfaas_kv_blocks_free"))
    queues = " ".join(f"{q}={_fmt(v)}" for q, v in by_label(samples, "prfaas_queue_depth", "queue").items())
    return f"{name:<16} {health:<12} {state:<8} {active:>6} {free:>11}  {queues or '-'}"


def _router_rows(samples: Samples) -> list[str]:
    requests = by_label(samples, "prfaas_requests_total", "route")
    routes = list(dict.fromkeys([*requests, *by_label(samples, "prfaas_ttft_seconds_count", "route")]))
    rows = [f"{'ROUTE':<10} {'REQUESTS':>8} {'TTFT_P50':>9} {'TTFT_P90':>9} {'KV_BYTES':>10}  REASONS"]
    rows += [_route_row(route, samples, requests.get(route)) for route in routes]
    rows.append(_route_row("all", samples, sum(requests.values()) if requests else None, show_reasons=False))
    link, t = total(samples, "prfaas_link_utilization_ratio"), total(samples, "prfaas_routing_threshold_tokens")
    errors = " ".join(f"{c}={_fmt(v)}" for c, v in by_label(samples, "prfaas_errors_total", "code").items())
    missing = _fmt(total(samples, "prfaas_kv_transfers_missing_total"))
    stall = total(samples, "prfaas_kv_transfer_stall_seconds_total")
    return [
        *rows,
        "",
        f"link utilization {_fmt(link)}   threshold t {_fmt(t)} tokens",
        f"kv transfers missing {missing}   credit stall {_seconds(stall)}",
        f"errors {errors or '-'}",
    ]


def _route_row(route: str, samples: Samples, requests: float | None, show_reasons: bool = True) -> str:
    match = {} if route == "all" else {"route": route}
    buckets = histogram_buckets(samples, "prfaas_ttft_seconds", **match)
    p50, p90 = (_seconds(histogram_quantile(q, buckets)) for q in (0.5, 0.9))
    kv_bytes = _bytes(total(samples, "prfaas_kv_transfer_bytes_sum", **match))
    reasons = by_label(samples, "prfaas_requests_total", "reason", **match) if show_reasons else {}
    why = " ".join(f"{r}={_fmt(v)}" for r, v in reasons.items())
    return f"{route:<10} {_fmt(requests):>8} {p50:>9} {p90:>9} {kv_bytes:>10}  {why or '-'}"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return str(int(value)) if value.is_integer() else f"{value:.3g}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def _bytes(value: float | None) -> str:
    if value is None:
        return "-"
    units = ("B", "KiB", "MiB", "GiB")
    exponent = 0
    while abs(value) >= 1024 and exponent < len(units) - 1:
        value, exponent = value / 1024, exponent + 1
    return f"{value:.0f} B" if exponent == 0 else f"{value:.1f} {units[exponent]}"
