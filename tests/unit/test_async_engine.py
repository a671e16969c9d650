"""The asyncio shell around the engine: an imported sequence's first token reaches its stream before the
tokens of the steps that follow."""

from __future__ import annotations

import asyncio
import time

from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.engine import Engine, EngineConfig
from prfaas.engine.sequence import TokenEvent


class InstantDecode(Engine):
    """A real engine whose imported sequence decodes one more token at once, in the next step."""

    decoding_one = False

    def finish_import(self, request_id: str, first_token_id: int) -> TokenEvent:
        self.decoding_one = True
        return TokenEvent(request_id, first_token_id, 0, None)

    @property
    def has_work(self) -> bool:
        return self.decoding_one

    def step(self) -> list[TokenEvent]:
        self.decoding_one, self.last_step = False, ("decode", 1)
        return [TokenEvent("r", 2, 1, "length")]


async def test_the_first_token_of_an_import_comes_before_the_next_steps_tokens() -> None:
    runner = AsyncEngine(InstantDecode.from_pretrained("kimi-linear-tiny", EngineConfig(block_size=16)))
    runner.start()
    try:
        events = runner.open_stream("r")
        finishing = asyncio.ensure_future(runner.finish_import("r", 1))
        await asyncio.sleep(0)  # the command is submitted
        time.sleep(0.2)  # the loop is busy while the engine runs the command and the next step
        await finishing
        got = [await asyncio.wait_for(events.get(), 5) for _ in range(2)]
    finally:
        await runner.stop()
    assert [(e.index, e.token_id) for e in got] == [(0, 1), (1, 2)]
