"""prfaas.openai.chat: the checkpoint's chat template, else the simple one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prfaas.openai.chat import SIMPLE_TEMPLATE, ChatTemplate, ChatTemplateError

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
# The shape of a real checkpoint's template: special tokens, a loop, a check that raises, the generation prompt.
HF_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'tool' %}{{ raise_exception('tool messages need tools') }}{% endif %}"
    "<|im_{{ m['role'] }}|>{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_assistant|>{% endif %}"
)


def write_config(folder: Path, **config: object) -> Path:
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_the_simple_template_is_one_line_per_message() -> None:
    assert ChatTemplate(SIMPLE_TEMPLATE).render(MESSAGES) == "system: Be brief.\nuser: Hi\nassistant: "


def test_a_folder_without_a_template_gets_the_simple_one(tmp_path: Path) -> None:
    assert ChatTemplate.for_model(tmp_path).source == SIMPLE_TEMPLATE
    assert ChatTemplate.for_model(write_config(tmp_path, bos_token="<s>")).source == SIMPLE_TEMPLATE


def test_the_checkpoint_template_renders_with_its_special_tokens(tmp_path: Path) -> None:
    template = ChatTemplate.for_model(write_config(tmp_path, chat_template=HF_TEMPLATE, bos_token={"content": "<s>"}))
    expected = "<s><|im_system|>Be brief.<|im_end|>\n<|im_user|>Hi<|im_end|>\n<|im_assistant|>"
    assert template.render(MESSAGES) == expected


def test_a_list_of_named_templates_uses_the_default(tmp_path: Path) -> None:
    named = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "{{ messages[0].content }}"}]
    assert ChatTemplate.for_model(write_config(tmp_path, chat_template=named)).render(MESSAGES) == "Be brief."


def test_a_refusal_of_the_template_says_why() -> None:
    with pytest.raises(ChatTemplateError, match="tool messages need tools"):
        ChatTemplate(HF_TEMPLATE).render([{"role": "tool", "content": "x"}])


def test_the_template_runs_sandboxed() -> None:
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ messages.__class__.__mro__ }}").render(MESSAGES)
