"""Chat messages -> one prompt string, through the checkpoint's own chat template.

A checkpoint's `tokenizer_config.json` may carry a Jinja2 `chat_template` (a string, or a list of named
templates of which "default" is used); it is rendered the way Hugging Face tokenizers do (a sandboxed
environment with `trim_blocks` and `lstrip_blocks`, `messages`, `add_generation_prompt`, the special tokens
and `raise_exception`). A model without one (`kimi-linear-tiny` has none) gets `SIMPLE_TEMPLATE`: one
`role: content` line per message, then `assistant: ` for the model to continue.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

SIMPLE_TEMPLATE = (
    "{% for message in messages %}{{ message.role }}: {{ message.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
_SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")


class ChatTemplateError(ValueError):
    """The messages cannot be rendered (the template refused them, or it is broken); says why."""


class ChatTemplate:
    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self.source = source
        self._template = env.from_string(source)
        self._special = dict(special_tokens or {})

    @classmethod
    def for_model(cls, folder: Path) -> ChatTemplate:
        """The template of the checkpoint in `folder`, else `SIMPLE_TEMPLATE`."""
        path = folder / "tokenizer_config.json"
        config: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        source = _pick(config.get("chat_template"))
        specials = {k: _token_text(config[k]) for k in _SPECIAL_TOKENS if config.get(k)}
        return cls(source or SIMPLE_TEMPLATE, specials)

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt for `messages` ({"role", "content"} each), ending where the assistant's turn begins."""
        try:
            return self._template.render(messages=messages, add_generation_prompt=True, **self._special)
        except TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template cannot render these messages: {exc}") from exc


def _pick(template: object) -> str | None:
    """A `chat_template` value: a string, or [{"name", "template"}, ...] of which "default" is used."""
    if isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        chosen = named.get("default")
        return chosen if isinstance(chosen, str) else None
    return None


def _token_text(token: object) -> str:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    return str(token.get("content", "")) if isinstance(token, dict) else str(token)


def _raise(message: str) -> NoReturn:
    raise TemplateError(message)
