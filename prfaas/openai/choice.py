"""One choice of a response, assembled from the router's stream: its tokens, its text cut at the first stop
string, its finish reason and the route the router reported for it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prfaas.client.types import FinishReason, GenerationChunk, RouteInfo
from prfaas.openai.stop import StopMatcher


@dataclass(frozen=True, slots=True)
class ChoiceDelta:
    """What one router message adds to choice `index`: the text to show now and the tokens that came; the
    route on the choice's first delta, the finish reason on its last."""

    index: int
    text: str
    token_ids: tuple[int, ...]
    first: bool
    finish_reason: FinishReason | None = None
    route: RouteInfo | None = None


class Choice:
    """A choice so far. A stop string ends it ("stop") even though the router would go on: its caller stops
    reading, which cancels the rest of the generation."""

    def __init__(self, index: int, stops: Sequence[str] = ()) -> None:
        self.index = index
        self.token_ids: list[int] = []
        self.route: RouteInfo | None = None
        self.finish_reason: FinishReason | None = None
        self._texts: list[str] = []
        self._stop = StopMatcher(stops)

    @property
    def text(self) -> str:
        return "".join(self._texts)

    def add(self, chunk: GenerationChunk) -> ChoiceDelta:
        """Take one router message; what it adds, with the finish reason once the choice is finished."""
        first = not self._texts
        self.token_ids.extend(chunk.token_ids)
        self.route = self.route or chunk.route
        text = self._stop.feed(chunk.text)
        if self._stop.matched is not None:
            self.finish_reason = "stop"
        elif chunk.finish_reason is not None:
            text += self._stop.flush()
            self.finish_reason = chunk.finish_reason
        self._texts.append(text)
        return ChoiceDelta(self.index, text, chunk.token_ids, first, self.finish_reason, chunk.route)
