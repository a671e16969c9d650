"""A client's request as the router serves it: ids checked, text tokenized, the prompt validated against the
model (the same rule the engines apply, `prfaas.engine.validation`), and generated tokens turned back into
text."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from prfaas.engine.validation import DEFAULT_MAX_NEW_TOKENS, InvalidRequest, check_prompt
from prfaas.model.checkpoint import read_config
from prfaas.model.config import ModelConfig
from prfaas.model.tiny import resolve_model
from prfaas.model.tokenizer import Tokenizer, load_tokenizer
from prfaas.service.convert import check_request_id, check_tenant, sampling_from_pb
from prfaas.v1 import router_pb2


class BadRequest(ValueError):
    """The client's request is invalid; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Prompt:
    request_id: str
    tenant_id: str
    token_ids: list[int]
    received: tuple[int, ...] = ()  # output tokens the client has from an earlier, broken call


class PromptReader:
    def __init__(self, model: str, max_model_len: int = 0) -> None:
        folder = resolve_model(model)
        self.model_name = model
        self.model: ModelConfig = read_config(folder)
        self.tokenizer: Tokenizer | None = load_tokenizer(model, folder)
        self.max_model_len = max_model_len or self.model.max_position_embeddings

    def read(self, request: router_pb2.GenerateRequest) -> Prompt:
        """The request's prompt; raises `BadRequest` naming what to fix."""
        rid = request.request_id or f"req-{uuid.uuid4().hex[:16]}"
        try:
            check_request_id(rid)
            check_tenant(request.tenant_id)
            sampling_from_pb(request.sampling)
            ids = self._token_ids(request)
            max_new = request.sampling.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
            check_prompt(ids, max_new, self.model.vocab_size, self.max_model_len)
        except (InvalidRequest, ValueError) as exc:
            raise BadRequest(str(exc)) from exc
        return Prompt(rid, request.tenant_id, ids, self._received(request, max_new))

    def _token_ids(self, request: router_pb2.GenerateRequest) -> list[int]:
        kind = request.WhichOneof("prompt")
        if kind == "text":
            if self.tokenizer is None:
                raise BadRequest(f"model {self.model_name} has no tokenizer here: send token_ids")
            return self.tokenizer.encode(request.text)
        if kind == "token_ids":
            return list(request.token_ids.ids)
        raise BadRequest("prompt is missing: set text or token_ids")

    def _received(self, request: router_pb2.GenerateRequest, max_new: int) -> tuple[int, ...]:
        """The tokens a resumed call's client already has (`resume_token_ids`)."""
        received = tuple(request.resume_token_ids)
        if len(received) >= max_new:
            raise BadRequest(
                f"resume_token_ids has {len(received)} tokens, max_new_tokens is {max_new}: nothing is left to generate"
            )
        if received and max(received) >= self.model.vocab_size:
            raise BadRequest(f"resume_token_ids holds a token id outside the vocabulary [0, {self.model.vocab_size})")
        return received

    def delta(self, ids: list[int], new: list[int]) -> str:
        """Append `new` to the generated `ids`; the text those tokens add ("" without a tokenizer)."""
        if self.tokenizer is None:
            ids.extend(new)
            return ""
        before = self.tokenizer.decode(ids)
        ids.extend(new)
        return self.tokenizer.decode(ids)[len(before) :]
