"""State streams: workers and cache pools publish what they hold and their load (`publisher`, `stream`,
`sources`); routers subscribe (`Watch`) and keep an index of it (docs/state-streams.md)."""

from prfaas.state.publisher import StatePublisher
from prfaas.state.stream import StateStream, Subscription

__all__ = ["StatePublisher", "StateStream", "Subscription"]
