"""When a failed call is tried again, and how long to wait first."""

from __future__ import annotations

import random
from dataclasses import dataclass

from prfaas.client.errors import OverloadedError, PrfaasError, UnavailableError

RETRYABLE: tuple[type[PrfaasError], ...] = (UnavailableError, OverloadedError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry UNAVAILABLE and RESOURCE_EXHAUSTED up to `retries` times with jittered exponential backoff.

    Retry n (1-based) waits uniformly in [b/2, b] with b = min(max_backoff_s, backoff_s * 2**(n-1)):
    exponential growth spreads a burst of failures out, the jitter keeps clients that failed together from
    retrying together. A server's `retry-after-ms` hint (on RESOURCE_EXHAUSTED) is a lower bound on the
    wait. Whether a call may be retried at all (no response received yet, deadline not passed) is the
    caller's decision; this only rates the error.
    """

    retries: int = 3
    backoff_s: float = 0.1
    max_backoff_s: float = 10.0
    resume: bool = True  # a stream broken after tokens arrived continues after them (`call.GenerateCall`)

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError(f"backoff must be >= 0, got {self.backoff_s=} {self.max_backoff_s=}")

    def delay_s(self, retry: int, error: PrfaasError) -> float | None:
        """Seconds to wait before retry number `retry` after `error`; None when the error must surface."""
        if retry > self.retries or not isinstance(error, RETRYABLE):
            return None
        base_s = min(self.max_backoff_s, self.backoff_s * 2.0 ** (retry - 1))
        wait_s = base_s * random.uniform(0.5, 1.0)
        if isinstance(error, OverloadedError) and error.retry_after_s is not None:
            wait_s = max(wait_s, error.retry_after_s)
        return wait_s
