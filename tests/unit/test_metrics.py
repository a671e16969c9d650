"""prfaas.telemetry.metrics: the metric catalogue, the /metrics endpoint, reason labels, the text parser."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

from prfaas.telemetry import metrics
from prfaas.telemetry.metrics import REGISTRY, parse_metrics, reason_label

# family name (prometheus_client drops a counter's "_total"), type, label names
EXPECTED = {
    "prfaas_ttft_seconds": ("histogram", ("route",)),
    "prfaas_tpot_seconds": ("histogram", ("route",)),
    "prfaas_kv_transfer_bytes": ("histogram", ("route",)),
    "prfaas_kv_transfer_seconds": ("histogram", ("route",)),
    "prfaas_prefill_seconds": ("histogram", ("cluster",)),
    "prfaas_queue_depth": ("gauge", ("service", "queue")),
    "prfaas_link_utilization_ratio": ("gauge", ()),
    "prfaas_routing_threshold_tokens": ("gauge", ()),
    "prfaas_kv_blocks_free": ("gauge", ("service",)),
    "prfaas_active_sequences": ("gauge", ("service",)),
    "prfaas_requests": ("counter", ("route", "reason")),
    "prfaas_cache_hit_tokens": ("counter", ("cluster",)),
    "prfaas_role_switches": ("counter", ()),
    "prfaas_errors": ("counter", ("service", "code")),
    "prfaas_kv_transfers_missing": ("counter", ()),
    "prfaas_kv_transfer_stall_seconds": ("counter", ()),
    "prfaas_backend_up": ("gauge", ("address",)),
    "prfaas_link_capacity_gbps": ("gauge", ()),
    "prfaas_request_retries": ("counter", ("failed",)),
    "prfaas_http_requests": ("counter", ("endpoint", "status")),
    "prfaas_http_request_seconds": ("histogram", ("endpoint",)),
}
OBJECTS = {
    "prfaas_ttft_seconds": metrics.TTFT_SECONDS,
    "prfaas_tpot_seconds": metrics.TPOT_SECONDS,
    "prfaas_kv_transfer_bytes": metrics.KV_TRANSFER_BYTES,
    "prfaas_kv_transfer_seconds": metrics.KV_TRANSFER_SECONDS,
    "prfaas_prefill_seconds": metrics.PREFILL_SECONDS,
    "prfaas_queue_depth": metrics.QUEUE_DEPTH,
    "prfaas_link_utilization_ratio": metrics.LINK_UTILIZATION,
    "prfaas_routing_threshold_tokens": metrics.ROUTING_THRESHOLD,
    "prfaas_kv_blocks_free": metrics.KV_BLOCKS_FREE,
    "prfaas_active_sequences": metrics.ACTIVE_SEQUENCES,
    "prfaas_requests": metrics.REQUESTS,
    "prfaas_cache_hit_tokens": metrics.CACHE_HIT_TOKENS,
    "prfaas_role_switches": metrics.ROLE_SWITCHES,
    "prfaas_errors": metrics.ERRORS,
    "prfaas_kv_transfers_missing": metrics.KV_TRANSFERS_MISSING,
    "prfaas_kv_transfer_stall_seconds": metrics.KV_TRANSFER_STALL_SECONDS,
    "prfaas_backend_up": metrics.BACKEND_UP,
    "prfaas_link_capacity_gbps": metrics.LINK_CAPACITY,
    "prfaas_request_retries": metrics.REQUEST_RETRIES,
    "prfaas_http_requests": metrics.HTTP_REQUESTS,
    "prfaas_http_request_seconds": metrics.HTTP_REQUEST_SECONDS,
}


def test_registry_holds_exactly_the_catalogue_with_help() -> None:
    families = {family.name: family for family in REGISTRY.collect()}
    assert set(families) == set(EXPECTED)
    for name, (kind, _) in EXPECTED.items():
        assert families[name].type == kind, name
        assert families[name].documentation.strip(), f"{name} has no help string"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_label_names(name: str) -> None:
    assert OBJECTS[name]._labelnames == EXPECTED[name][1]


def test_counters_are_exposed_with_total_suffix() -> None:
    counters = [family for family in REGISTRY.collect() if family.type == "counter"]
    samples = {sample.name for family in counters for sample in family.samples}
    assert {"prfaas_role_switches_total", "prfaas_kv_transfer_stall_seconds_total"} <= samples


def test_not_in_the_default_registry() -> None:
    assert DEFAULT_REGISTRY.get_sample_value("prfaas_role_switches_total") is None


def test_bucket_boundaries() -> None:
    assert metrics.TTFT_BUCKETS_S[0] == 0.01 and metrics.TTFT_BUCKETS_S[-1] == 128.0
    assert metrics.KV_BYTES_BUCKETS[0] == 4096 and metrics.KV_BYTES_BUCKETS[-1] == 16 * 2**30
    for buckets in (metrics.TTFT_BUCKETS_S, metrics.TPOT_BUCKETS_S, metrics.KV_TRANSFER_BUCKETS_S):
        assert list(buckets) == sorted(set(buckets))
    metrics.KV_TRANSFER_BYTES.labels(route="bucket-test").observe(5000)
    le = {"route": "bucket-test", "le": "16384.0"}
    assert REGISTRY.get_sample_value("prfaas_kv_transfer_bytes_bucket", le) == 1.0
    assert REGISTRY.get_sample_value("prfaas_kv_transfer_bytes_bucket", {**le, "le": "4096.0"}) == 0.0


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("abundant: l=11 <= t=2048", "abundant"),
        ("abundant: l=9000 > t=2048, prefix moves from local", "abundant"),
        ("scarce: l=9000 > t=2048", "scarce"),
        ("PrfaaS unavailable", "unavailable"),
        ("no PrfaaS prefill worker available", "unavailable"),
        ("no local prefill worker available", "unavailable"),
        ("PrfaaS overloaded: queue 17", "overloaded"),
        ("homogeneous: always local", "homogeneous"),
        ("naive: always prfaas", "naive"),
        ("incremental 5000 > t=4096", "threshold"),
        ("scarce: l=9000 > t=2048; no prfaas worker answers", "fallback"),
        ("something new", "other"),
        ("", "other"),
    ],
)
def test_reason_label(text: str, label: str) -> None:
    assert reason_label(text) == label
    assert label in metrics.REASON_LABELS


def test_count_request_uses_the_bounded_label() -> None:
    key = {"route": "count-test", "reason": "scarce"}
    before = REGISTRY.get_sample_value("prfaas_requests_total", key) or 0.0
    metrics.count_request("count-test", "scarce: l=5 > t=1")
    metrics.count_request("count-test", "scarce: l=7 > t=1")
    assert REGISTRY.get_sample_value("prfaas_requests_total", key) == before + 2


@pytest.fixture
def server() -> Iterator[metrics.MetricsServer]:
    handle = metrics.serve_metrics(0)
    yield handle
    handle.stop()


def test_endpoint_serves_the_registry_on_a_free_port(server: metrics.MetricsServer) -> None:
    assert server.port > 0
    metrics.ERRORS.labels(service="endpoint-test", code="UNAVAILABLE").inc(3)
    metrics.LINK_UTILIZATION.set(0.25)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for name in EXPECTED:
        assert f"# HELP {name}" in text
    samples = parse_metrics(text)
    assert samples[("prfaas_errors_total", frozenset({("service", "endpoint-test"), ("code", "UNAVAILABLE")}))] == 3
    assert samples[("prfaas_link_utilization_ratio", frozenset())] == 0.25


def test_start_metrics_server_returns_the_bound_port() -> None:
    port = metrics.start_metrics_server(0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200


def test_parse_metrics() -> None:
    text = (
        "# HELP x_total things\n# TYPE x_total counter\n"
        'x_total{a="1",b="two"} 4.0\n'
        "# HELP h_seconds latency\n# TYPE h_seconds histogram\n"
        'h_seconds_bucket{le="0.5"} 1.0\nh_seconds_bucket{le="+Inf"} 3.0\n'
        "h_seconds_count 3.0\nh_seconds_sum 2.5\n"
        "# HELP g gauge\n# TYPE g gauge\ng +Inf\n"
    )
    assert parse_metrics(text) == {
        ("x_total", frozenset({("a", "1"), ("b", "two")})): 4.0,
        ("h_seconds_bucket", frozenset({("le", "0.5")})): 1.0,
        ("h_seconds_bucket", frozenset({("le", "+Inf")})): 3.0,
        ("h_seconds_count", frozenset()): 3.0,
        ("h_seconds_sum", frozenset()): 2.5,
        ("g", frozenset()): float("inf"),
    }
