"""PD worker settings: one engine serving both the prefill and the decode role."""

from __future__ import annotations

from dataclasses import dataclass

from services.prefill.settings import PrefillSettings


@dataclass(frozen=True, slots=True)
class PdSettings(PrefillSettings):
    """A local PD worker that the router can switch between the prefill and decode roles."""

    # The decode role's settings (`services.decode.settings.DecodeSettings`); `max_queued_requests` bounds
    # each role's queue.
    credit_window_bytes: int = 32 << 20
    register_timeout_s: float = 30.0
    kv_data_port: int = 0
    kv_lease_s: float = 60.0
    import_wait_s: float = 60.0
