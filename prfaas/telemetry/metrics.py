"""Prometheus metrics of the whole system, each defined once here, and the ``/metrics`` endpoint.

Every metric lives in ``REGISTRY``, a dedicated ``CollectorRegistry`` (not prometheus_client's global default),
so tests and several services started in one process never collide: all services of one process share these
objects and tell themselves apart by the ``service`` / ``cluster`` label. Names follow Prometheus conventions:
``prfaas_`` prefix, base units (seconds, bytes), ``_total`` on counters.

Histogram buckets (upper bounds):

- ``TTFT_BUCKETS_S``, 10 ms .. 128 s, roughly doubling: a short local prompt on the tiny model answers in
  milliseconds, a 128k-token PrfaaS prefill plus KV shipping takes tens of seconds.
- ``TPOT_BUCKETS_S``, 1 ms .. 1 s: one decode step of a continuous batch.
- ``KV_BYTES_BUCKETS``, 4 KiB .. 16 GiB in powers of 4: the tiny model's states are kilobytes, a 128k-token
  Kimi Linear prompt is ~2.4 GB (paper Table 6).
- ``KV_TRANSFER_BUCKETS_S``, 1 ms .. 64 s: a transfer overlaps prefill, and a congested link stretches it.
- ``PREFILL_BUCKETS_S``, 5 ms .. 64 s: from a short prompt to a long one on the slower PD-P hardware.
- ``HTTP_BUCKETS_S``, 1 ms .. 300 s: an HTTP request to its last byte, from a refused one to a long generation.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.parser import text_string_to_metric_families

REGISTRY = CollectorRegistry(auto_describe=True)

TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
TPOT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)
KV_BYTES_BUCKETS = tuple(float(4**k) for k in range(6, 18))  # 4 KiB .. 16 GiB
KV_TRANSFER_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
PREFILL_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
HTTP_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 300.0)

# Histograms
TTFT_SECONDS = Histogram(
    "prfaas_ttft_seconds",
    "Time to first token seen by the router, by route.",
    ["route"],
    buckets=TTFT_BUCKETS_S,
    registry=REGISTRY,
)
TPOT_SECONDS = Histogram(
    "prfaas_tpot_seconds",
    "Time per output token after the first, by route.",
    ["route"],
    buckets=TPOT_BUCKETS_S,
    registry=REGISTRY,
)
KV_TRANSFER_BYTES = Histogram(
    "prfaas_kv_transfer_bytes",
    "KV state bytes shipped to a decode worker per request, by route.",
    ["route"],
    buckets=KV_BYTES_BUCKETS,
    registry=REGISTRY,
)
KV_TRANSFER_SECONDS = Histogram(
    "prfaas_kv_transfer_seconds",
    "Wall time of one KV transfer, open to commit, by route.",
    ["route"],
    buckets=KV_TRANSFER_BUCKETS_S,
    registry=REGISTRY,
)
PREFILL_SECONDS = Histogram(
    "prfaas_prefill_seconds",
    "Prefill compute time per request, by cluster (prfaas or pd).",
    ["cluster"],
    buckets=PREFILL_BUCKETS_S,
    registry=REGISTRY,
)
HTTP_REQUEST_SECONDS = Histogram(
    "prfaas_http_request_seconds",
    "Wall time of an HTTP API request to its last byte (a stream: to its end), by endpoint.",
    ["endpoint"],
    buckets=HTTP_BUCKETS_S,
    registry=REGISTRY,
)

# Gauges
QUEUE_DEPTH = Gauge(
    "prfaas_queue_depth", "Requests held in a service's queue.", ["service", "queue"], registry=REGISTRY
)
LINK_UTILIZATION = Gauge(
    "prfaas_link_utilization_ratio",
    "PrfaaS->PD egress bytes/s over link capacity, recent window, 0..1.",
    registry=REGISTRY,
)
LINK_CAPACITY = Gauge(
    "prfaas_link_capacity_gbps",
    "What the router takes the PrfaaS->PD link to carry: configured, or measured while it is the bottleneck.",
    registry=REGISTRY,
)
ROUTING_THRESHOLD = Gauge(
    "prfaas_routing_threshold_tokens", "The routing threshold t in effect (inf: never offload).", registry=REGISTRY
)
KV_BLOCKS_FREE = Gauge("prfaas_kv_blocks_free", "Free KV cache blocks of an engine.", ["service"], registry=REGISTRY)
ACTIVE_SEQUENCES = Gauge(
    "prfaas_active_sequences", "Sequences an engine is prefilling or decoding.", ["service"], registry=REGISTRY
)

# Counters (prometheus_client exposes the family without ``_total`` and the sample with it)
REQUESTS = Counter(
    "prfaas_requests_total",
    "Routed requests, by route and routing rule (see reason_label).",
    ["route", "reason"],
    registry=REGISTRY,
)
CACHE_HIT_TOKENS = Counter(
    "prfaas_cache_hit_tokens_total",
    "Prompt tokens served from a prefix cache, by cluster.",
    ["cluster"],
    registry=REGISTRY,
)
ROLE_SWITCHES = Counter("prfaas_role_switches_total", "PD worker prefill<->decode role changes.", registry=REGISTRY)
ERRORS = Counter(
    "prfaas_errors_total",
    "RPCs that ended in an error, by service and gRPC status code name.",
    ["service", "code"],
    registry=REGISTRY,
)
KV_TRANSFERS_MISSING = Counter(
    "prfaas_kv_transfers_missing_total", "Requests whose KV state was expected but never arrived.", registry=REGISTRY
)
BACKEND_UP = Gauge(
    "prfaas_backend_up",
    "The router's view of a backend (worker or pool): 1 healthy, 0 marked down.",
    ["address"],
    registry=REGISTRY,
)
REQUEST_RETRIES = Counter(
    "prfaas_request_retries_total",
    "Request attempts the router started again, by what failed.",
    ["failed"],
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "prfaas_http_requests_total",
    "HTTP API requests, by endpoint (the path, or other) and response status.",
    ["endpoint", "status"],
    registry=REGISTRY,
)
KV_TRANSFER_STALL_SECONDS = Counter(
    "prfaas_kv_transfer_stall_seconds_total", "Time KV senders waited for flow-control credit.", registry=REGISTRY
)

# Routing reasons -> rule label, first match wins. Free text (token counts, queue depths) never becomes a label.
REASON_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"worker answers"), "fallback"),
    (re.compile(r"\bunavailable\b|^no \w+ prefill worker available"), "unavailable"),
    (re.compile(r"\boverloaded\b"), "overloaded"),
    (re.compile(r"^abundant\b"), "abundant"),
    (re.compile(r"^scarce\b"), "scarce"),
    (re.compile(r"^homogeneous\b"), "homogeneous"),
    (re.compile(r"^naive\b"), "naive"),
    (re.compile(r"^incremental \d+ "), "threshold"),
)
REASON_LABELS = frozenset(label for _, label in REASON_RULES) | {"other"}


def reason_label(reason_text: str) -> str:
    """The routing rule behind a router reason, e.g. ``"abundant: l=11 <= t=2048"`` -> ``"abundant"``,
    ``"PrfaaS unavailable"`` -> ``"unavailable"``, a re-route because the chosen side did not answer ->
    ``"fallback"``; anything unknown -> ``"other"``. Always one of ``REASON_LABELS``."""
    text = reason_text.strip()
    return next((label for pattern, label in REASON_RULES if pattern.search(text)), "other")


def count_request(route: str, reason_text: str) -> None:
    """Count one routed request under its bounded reason label."""
    REQUESTS.labels(route=route, reason=reason_label(reason_text)).inc()


@dataclass(frozen=True, slots=True)
class MetricsServer:
    """A running ``/metrics`` endpoint: the bound port, and ``stop()`` to close it."""

    host: str
    port: int
    httpd: WSGIServer
    thread: threading.Thread

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5.0)


def serve_metrics(port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``REGISTRY`` at ``http://host:port/metrics`` from a daemon thread.

    ``start_http_server`` (prometheus_client >= 0.20) returns its ``WSGIServer`` and thread, so with ``port=0``
    the OS picks a free port and we read the bound one back from the server socket."""
    httpd, thread = start_http_server(port, addr=host, registry=REGISTRY)
    return MetricsServer(host, int(httpd.server_port), httpd, thread)


def start_metrics_server(port: int, host: str = "127.0.0.1") -> int:
    """Start the endpoint for the life of the process and return the bound port (``port=0``: a free one)."""
    return serve_metrics(port, host).port


MetricKey = tuple[str, frozenset[tuple[str, str]]]


def parse_metrics(text: str) -> dict[MetricKey, float]:
    """Prometheus text exposition -> ``{(sample name, frozenset of label pairs): value}``.

    Sample names keep their suffixes (``_total``, ``_bucket`` with its ``le`` label, ``_sum``, ``_count``)."""
    return {
        (sample.name, frozenset(sample.labels.items())): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
