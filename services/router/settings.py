"""Router settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from prfaas.kv.prefix import DEFAULT_BLOCK_SIZE
from prfaas.model.tiny import TINY_NAME
from prfaas.service.settings import ServerSettings


def split_addresses(value: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in value.split(",") if a.strip())


@dataclass(frozen=True)
class RouterSettings(ServerSettings):
    """The router: threshold routing between the PrfaaS and the local PD cluster."""

    model: str = TINY_NAME  # for the tokenizer and input validation
    prfaas_prefill: str = ""  # comma-separated host:port of PrfaaS prefill workers
    pd_prefill: str = ""  # local PD prefill workers
    decode: str = ""  # local PD decode workers
    pd_workers: str = ""  # dual-role PD workers (services.pd): the router assigns and converts their roles
    pd_prefill_workers: int = 0  # how many of pd_workers start in the prefill role
    drain_timeout_s: float = 60.0  # a converting worker waits this long for its old role's work to finish
    prfaas_pool: str = ""  # host:port of the PrfaaS cluster's cache pool (optional)
    pd_pool: str = ""  # the PD cluster's cache pool (optional)
    threshold_tokens: int = 1024  # t: incremental length above which a request goes to PrfaaS
    block_size: int = DEFAULT_BLOCK_SIZE  # must match the workers' (checked at startup)
    max_model_len: int = 0  # prompt + output limit checked here; 0 = the model config's
    request_timeout_s: float = 300.0
    max_attempts: int = 3  # tries per request: a failed prefill or decode worker is retried elsewhere (retry.py)
    liveness_timeout_s: float = 10.0  # an attempt whose prefill worker answers no health check this long is retried
    token_stall_timeout_s: float = 60.0  # a generating decode stream with no token this long is retried elsewhere
    health_interval_s: float = 1.0  # a backend marked down gets a health check this often until it answers
    probe_timeout_s: float = 2.0  # the startup check of each worker (GetWorkerInfo)
    state_silence_s: float = 5.0  # a source whose state stream brings nothing this long is marked down
    prefix_copy_timeout_s: float = 30.0  # copying a cached prefix from one cluster's pool to the other's
    policy: str = "prfaas"  # prfaas, prfaas-static-t, prfaas-no-cache, prfaas-no-short, homogeneous, naive
    link_gbps: float = 100.0  # capacity of the PrfaaS -> PD link (utilization = measured egress / this)
    prfaas_queue_limit: int = 4  # per PrfaaS prefill worker: above it t rises / traffic stays local
    replan_period_s: float = 30.0  # long timescale: re-fit profiles and re-plan t; 0 disables
    # Clients must send `authorization: Bearer <token>` (prefer PRFAAS_AUTH_TOKEN to the flag); not in repr().
    auth_token: str = field(default="", repr=False)
    # A decode worker takes new requests while fewer than this x its slots are registered there (decoding,
    # or being prefilled for it); when none does, requests get RESOURCE_EXHAUSTED before any prefill work.
    decode_queue_factor: float = 2.0
    max_inflight_requests: int = 1024  # Generate calls beyond this get RESOURCE_EXHAUSTED + retry-after-ms
    retry_after_ms: int = 1000  # the retry hint sent with RESOURCE_EXHAUSTED
    # The OpenAI-compatible HTTP API (docs/openai-api.md) on this port of `host`, same TLS and bearer token as
    # the gRPC port; unset: not served, 0: any free port (printed as `openai api on port N`).
    http_port: int | None = None
    http_drain_timeout_s: float = 30.0  # on stop, open HTTP requests (streams) get this long to finish

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_inflight_requests < 1 or self.retry_after_ms < 0:
            raise ValueError("max_inflight_requests must be >= 1 and retry_after_ms >= 0")
        if (self.http_port is not None and not 0 <= self.http_port <= 65535) or self.http_drain_timeout_s < 0:
            raise ValueError("http_port must be in [0, 65535] (0: any free port) and http_drain_timeout_s >= 0")
        if self.decode_queue_factor < 1:
            raise ValueError("decode_queue_factor must be >= 1 (registered requests per decode slot)")
        dual = split_addresses(self.pd_workers)
        if not split_addresses(self.decode) and len(dual) <= self.pd_prefill_workers:
            raise ValueError("at least one decode worker is required (--decode host:port or --pd-workers)")
        if not (split_addresses(self.pd_prefill) or split_addresses(self.prfaas_prefill) or self.pd_prefill_workers):
            raise ValueError("at least one prefill worker is required (--pd-prefill or --prfaas-prefill)")
        if self.max_attempts < 1 or self.liveness_timeout_s <= 0 or self.health_interval_s <= 0:
            raise ValueError("max_attempts must be >= 1, liveness_timeout_s and health_interval_s positive")
        if min(self.probe_timeout_s, self.prefix_copy_timeout_s, self.state_silence_s) <= 0:
            raise ValueError("probe_timeout_s, prefix_copy_timeout_s and state_silence_s must be positive")
        if self.token_stall_timeout_s <= 0:
            raise ValueError("token_stall_timeout_s must be positive (seconds between two tokens of a stream)")
        if self.threshold_tokens < 0:
            raise ValueError("threshold_tokens must be >= 0")
        from prfaas.sched.policy import POLICIES

        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose from {', '.join(POLICIES)}")
        if self.link_gbps <= 0 or self.prfaas_queue_limit < 1 or self.replan_period_s < 0:
            raise ValueError("link_gbps and prfaas_queue_limit must be positive, replan_period_s >= 0")
