"""OpenAI request bodies -> `Generation`, the one value the HTTP front hands on.

Unknown fields are ignored, as OpenAI does; fields that would change the result and are not implemented here
(`REFUSED`) are refused with a 400 naming the field rather than silently ignored. Defaults are OpenAI's:
temperature 1 (sampled: send `temperature: 0` for greedy), 16 tokens for `/v1/completions`. Extensions, as
vLLM spells them: `stop_token_ids`, `ignore_eos`, `return_token_ids`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from prfaas.client.types import Sampling
from prfaas.engine.sampling import MIN_TEMPERATURE
from prfaas.engine.validation import DEFAULT_MAX_NEW_TOKENS
from prfaas.openai.chat import ChatTemplate, ChatTemplateError
from prfaas.openai.errors import ApiError
from prfaas.service.convert import check_tenant

MAX_CHOICES = 128
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the router's
_UINT64 = 1 << 64
TokenId = Annotated[int, Field(ge=0, lt=1 << 32)]


def _given(value: object) -> bool:
    return value not in (None, False, 0, "", [], {})


# field -> does this value ask for something not implemented here
REFUSED: dict[str, Callable[[object], bool]] = {
    "logprobs": lambda v: v is not None and v is not False,
    "top_logprobs": _given,
    "echo": _given,
    "best_of": lambda v: v not in (None, 1),
    "logit_bias": _given,
    "tools": _given,
    "functions": _given,
    "response_format": lambda v: v is not None and not (isinstance(v, dict) and v.get("type") == "text"),
    "suffix": _given,
    "presence_penalty": _given,
    "frequency_penalty": _given,
}


@dataclass(frozen=True, slots=True)
class Generation:
    """One OpenAI request as the router serves it: `n` choices of `prompt`, choice i sampled with seed + i."""

    model: str
    prompt: str | tuple[int, ...]
    sampling: Sampling
    n: int = 1
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    tenant_id: str = ""
    return_token_ids: bool = False

    def choice_sampling(self, index: int) -> Sampling:
        return replace(self.sampling, seed=(self.sampling.seed + index) % _UINT64)


class _StreamOptions(BaseModel):
    include_usage: bool = False


class _Request(BaseModel):
    """What both endpoints take; a null field counts as absent."""

    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] = []
    stop_token_ids: list[TokenId] = []
    ignore_eos: bool = False
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: _StreamOptions = _StreamOptions()
    user: str = ""
    return_token_ids: bool = False

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class CompletionRequest(_Request):
    prompt: str | list[TokenId] | list[str] | list[list[TokenId]]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The content as one string; only text parts are supported."""
        if not isinstance(self.content, list):
            return self.content or ""
        if any(part.get("type") != "text" or not isinstance(part.get("text"), str) for part in self.content):
            raise ApiError(400, "messages: only text content parts are supported", param="messages")
        return "\n".join(part["text"] for part in self.content)


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


def completion_generation(body: Mapping[str, Any], tenant_header: str | None) -> Generation:
    """A `/v1/completions` body; raises `ApiError` (400) naming what to fix."""
    req = _validated(CompletionRequest, body)
    return _generation(req, _one_prompt(req.prompt), req.max_tokens or COMPLETION_MAX_TOKENS, tenant_header)


def chat_generation(body: Mapping[str, Any], tenant_header: str | None, template: ChatTemplate) -> Generation:
    """A `/v1/chat/completions` body, its messages rendered by `template`; raises `ApiError`."""
    req = _validated(ChatRequest, body)
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    try:
        prompt = template.render(messages)
    except ChatTemplateError as exc:
        raise ApiError(400, str(exc), param="messages") from exc
    return _generation(req, prompt, req.max_completion_tokens or req.max_tokens, tenant_header)


M = TypeVar("M", bound=_Request)


def _validated(model: type[M], body: Mapping[str, Any]) -> M:
    for name, asks in REFUSED.items():
        if asks(body.get(name)):
            message = f"{name} is not supported by this server: leave it out"
            raise ApiError(400, message, param=name, code="unsupported_parameter")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else None
        raise ApiError(400, f"{field or 'body'}: {error['msg']}", param=field) from exc


def _one_prompt(prompt: str | Sequence[int] | Sequence[str] | Sequence[Sequence[int]]) -> str | tuple[int, ...]:
    """A prompt string or token ids; a list holding one prompt is that prompt, a longer one is a batch."""
    if isinstance(prompt, str):
        return prompt
    if prompt and not isinstance(prompt[0], int):
        if len(prompt) > 1:
            raise ApiError(400, "prompt: batches of prompts are not supported: send one per request", param="prompt")
        return _one_prompt(prompt[0])
    return tuple(prompt)  # type: ignore[arg-type]


def _generation(req: _Request, prompt: str | tuple[int, ...], max_tokens: int | None, tenant: str | None) -> Generation:
    tenant_id = tenant or req.user
    try:
        check_tenant(tenant_id)
    except ValueError as exc:
        raise ApiError(400, f"{exc} (from X-Prfaas-Tenant, else user)", param="user") from exc
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop)
    if not all(stop):
        raise ApiError(400, "stop: stop strings must not be empty", param="stop")
    return Generation(
        req.model,
        prompt,
        _sampling(req, max_tokens),
        req.n,
        stop,
        req.stream,
        req.stream_options.include_usage,
        tenant_id,
        req.return_token_ids,
    )


def _sampling(req: _Request, max_tokens: int | None) -> Sampling:
    """Without a seed a sampled request draws one (OpenAI's requests are not reproducible unless seeded)."""
    greedy = req.temperature < MIN_TEMPERATURE
    seed = req.seed if req.seed is not None else (0 if greedy else secrets.randbits(63))
    return Sampling(
        max_new_tokens=max_tokens or DEFAULT_MAX_NEW_TOKENS,
        temperature=req.temperature,
        top_p=req.top_p,
        seed=seed % _UINT64,
        stop_token_ids=tuple(req.stop_token_ids),
        ignore_eos=req.ignore_eos,
    )
