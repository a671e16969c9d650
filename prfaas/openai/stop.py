"""Stop strings over streamed text: what can be shown now, and where the output ends."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Cuts generated text at the first occurrence of any stop string; the stop string itself is not output.

    Text arrives in pieces and a stop string may straddle them, so the longest tail of the unshown text that
    is a proper prefix of some stop string is held back until the next piece decides it; everything before
    that tail cannot start a match and is shown at once. A match therefore always starts inside the held-back
    text, and the earliest match wins, as in OpenAI's API."""

    def __init__(self, stops: Sequence[str]) -> None:
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        self.stops = tuple(stops)
        self.matched: str | None = None  # the stop string found, once found
        self._held = ""

    def feed(self, text: str) -> str:
        """Add generated text; return what can be shown now (nothing more once a stop string matched)."""
        if self.matched is not None:
            return ""
        pending = self._held + text
        hits = [(i, s) for s in self.stops if (i := pending.find(s)) >= 0]
        if hits:
            start, self.matched = min(hits)
            self._held = ""
            return pending[:start]
        keep = self._partial(pending)
        self._held = pending[len(pending) - keep :]
        return pending[: len(pending) - keep]

    def flush(self) -> str:
        """The held-back text, once generation has ended without a match."""
        held, self._held = self._held, ""
        return held

    def _partial(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        longest = min(len(text), max((len(s) - 1 for s in self.stops), default=0))
        return next((k for k in range(longest, 0, -1) if any(s.startswith(text[-k:]) for s in self.stops)), 0)
