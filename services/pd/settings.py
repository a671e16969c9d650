"""PD worker settings: one engine serving both the prefill and the decode role."""

from __future__ import annotations

from dataclasses import dataclass

from services.decode.settings import DecodeSettings
from services.prefill.settings import PrefillSettings


@dataclass(frozen=True)
class PdSettings(PrefillSettings, DecodeSettings):
    """A local PD worker that the router can switch between the prefill and decode roles.

    It is both a `PrefillSettings` and a `DecodeSettings`: every knob of either role applies to it, and each
    role's servicer takes this object as its own settings. `max_queued_requests` bounds each role's queue."""
