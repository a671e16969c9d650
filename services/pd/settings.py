"""PD worker settings: one engine serving both the prefill and the decode role."""

from __future__ import annotations

from dataclasses import dataclass

from services.prefill.settings import PrefillSettings


@dataclass(frozen=True, slots=True)
class PdSettings(PrefillSettings):
    """A local PD worker that the router can switch between the prefill and decode roles."""

    credit_window_bytes: int = 32 << 20
    register_timeout_s: float = 30.0
