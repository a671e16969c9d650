"""Responses in OpenAI's shapes: a whole completion or chat completion, stream chunks, the usage chunk, the
model list, and the `prfaas` extension object (where the prompt was prefilled, what was cached, the KV bytes
that crossed to the decode worker, the TTFT split).

The two endpoints differ only in names and in where a choice's text goes (`text`, or `message` / `delta`);
`COMPLETIONS` and `CHAT` hold those differences, the functions below everything else."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prfaas.client.types import RouteInfo
from prfaas.openai.choice import Choice, ChoiceDelta

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reply:
    """What every object of one response shares."""

    id: str
    created: int
    model: str
    return_token_ids: bool = False


class Format(Protocol):
    id_prefix: str
    object: str
    chunk_object: str

    def choice(self, choice: Choice) -> Json: ...
    def delta(self, delta: ChoiceDelta) -> Json: ...


class CompletionFormat:
    id_prefix, object, chunk_object = "cmpl", "text_completion", "text_completion"

    def choice(self, choice: Choice) -> Json:
        return {"index": choice.index, "text": choice.text, "finish_reason": choice.finish_reason, "logprobs": None}

    def delta(self, delta: ChoiceDelta) -> Json:
        return {"index": delta.index, "text": delta.text, "finish_reason": delta.finish_reason, "logprobs": None}


class ChatFormat:
    id_prefix, object, chunk_object = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def choice(self, choice: Choice) -> Json:
        message = {"role": "assistant", "content": choice.text}
        return {"index": choice.index, "message": message, "finish_reason": choice.finish_reason, "logprobs": None}

    def delta(self, delta: ChoiceDelta) -> Json:
        content = {"role": "assistant", "content": delta.text} if delta.first else {"content": delta.text}
        return {"index": delta.index, "delta": content, "finish_reason": delta.finish_reason, "logprobs": None}


COMPLETIONS, CHAT = CompletionFormat(), ChatFormat()


def response_body(fmt: Format, reply: Reply, choices: Sequence[Choice]) -> Json:
    """A whole (non-streamed) response: every choice, usage, and the `prfaas` object."""
    listed = [_token_ids(fmt.choice(c), c.token_ids, reply) for c in choices]
    body = {**_head(reply, fmt.object), "choices": listed, "usage": usage(choices)}
    return {**body, "prfaas": extension(choices)}


def chunk_body(fmt: Format, reply: Reply, delta: ChoiceDelta) -> Json:
    """One stream chunk; the chunk that opens a choice carries that choice's `prfaas` object."""
    body = {**_head(reply, fmt.chunk_object), "choices": [_token_ids(fmt.delta(delta), delta.token_ids, reply)]}
    return {**body, "prfaas": route_fields(delta.route)} if delta.route else body


def usage_chunk(fmt: Format, reply: Reply, choices: Sequence[Choice]) -> Json:
    """The last chunk of a stream with `stream_options.include_usage`: no choices, the usage."""
    return {**_head(reply, fmt.chunk_object), "choices": [], "usage": usage(choices)}


def usage(choices: Sequence[Choice]) -> Json:
    """Prompt tokens (counted once, as the router tokenized them) and cached tokens come from the first
    choice's route; completion tokens are every choice's generated tokens."""
    route = choices[0].route
    prompt, cached = (route.prompt_tokens, route.cached_tokens) if route else (0, 0)
    completion = sum(len(c.token_ids) for c in choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def extension(choices: Sequence[Choice]) -> Json | None:
    """The first choice's route; with several choices, each one's under `choices` as well."""
    first = route_fields(choices[0].route)
    if first is None or len(choices) == 1:
        return first
    return {**first, "choices": [route_fields(c.route) for c in choices]}


def route_fields(route: RouteInfo | None) -> Json | None:
    return dataclasses.asdict(route) if route else None


def model_list(model: str, created: int) -> Json:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "prfaas"}]}


def _head(reply: Reply, kind: str) -> Json:
    return {"id": reply.id, "object": kind, "created": reply.created, "model": reply.model}


def _token_ids(choice: Json, token_ids: Sequence[int], reply: Reply) -> Json:
    """vLLM's `return_token_ids` extension: the generated token ids next to the text."""
    return {**choice, "token_ids": list(token_ids)} if reply.return_token_ids else choice
