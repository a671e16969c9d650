"""Request validation shared by the router (before any work is routed) and the engine (before a request
is admitted): one rule, one wording, whichever side finds the problem."""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_MAX_NEW_TOKENS = 32  # when a request does not say


class InvalidRequest(ValueError):
    """The request cannot be served as given; the message says what to change."""


def check_prompt(prompt_ids: Sequence[int], max_new_tokens: int, vocab_size: int, max_model_len: int) -> None:
    """A prompt is servable when it is not empty, every token id is in the vocabulary and prompt plus
    output fit the model's length limit."""
    if not prompt_ids:
        raise InvalidRequest("prompt is empty: give at least one token")
    if min(prompt_ids) < 0 or max(prompt_ids) >= vocab_size:  # min()/max(): C speed on long prompts
        pos, tok = next((i, t) for i, t in enumerate(prompt_ids) if not 0 <= t < vocab_size)
        raise InvalidRequest(f"token id {tok} at position {pos} is outside the vocabulary [0, {vocab_size})")
    if len(prompt_ids) + max_new_tokens > max_model_len:
        raise InvalidRequest(
            f"prompt of {len(prompt_ids)} tokens plus max_new_tokens {max_new_tokens} exceeds the model's "
            f"max_model_len {max_model_len}: shorten the prompt or lower max_new_tokens"
        )
