"""prfaas.openai.request: OpenAI bodies -> `Generation`; refused fields, defaults, seeds, tenants."""

from __future__ import annotations

from typing import Any

import pytest

from prfaas.client.types import Sampling
from prfaas.openai.chat import SIMPLE_TEMPLATE, ChatTemplate
from prfaas.openai.errors import ApiError
from prfaas.openai.request import COMPLETION_MAX_TOKENS, REFUSED, Generation, chat_generation, completion_generation

BASE = {"model": "m", "prompt": "hi"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def refused(body: dict[str, Any], tenant: str | None = None) -> ApiError:
    with pytest.raises(ApiError) as err:
        completion_generation(body, tenant)
    assert err.value.status == 400
    return err.value


def test_a_completion_with_openai_defaults() -> None:
    generation = completion_generation(BASE, None)
    assert (generation.model, generation.prompt, generation.n, generation.stop) == ("m", "hi", 1, ())
    assert generation.sampling.max_new_tokens == COMPLETION_MAX_TOKENS == 16
    assert generation.sampling.temperature == 1.0 and generation.sampling.top_p == 1.0
    assert not (generation.stream or generation.include_usage or generation.return_token_ids)


def test_every_field_that_is_implemented() -> None:
    body = {
        **BASE,
        "max_tokens": 9,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 3,
        "stop": "\n",
        "stop_token_ids": [7],
        "ignore_eos": True,
        "n": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "acme",
        "return_token_ids": True,
    }
    sampling = Sampling(9, 0.5, 0.9, 3, (7,), True)
    assert completion_generation(body, None) == Generation("m", "hi", sampling, 2, ("\n",), True, True, "acme", True)


def test_nulls_count_as_absent_and_unknown_fields_are_ignored() -> None:
    body = {**BASE, "temperature": None, "n": None, "stop": None, "metadata": {"x": 1}, "logprobs": None}
    generation = completion_generation(body, None)
    assert generation.sampling.temperature == 1.0 and generation.n == 1 and generation.stop == ()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("logprobs", 1),
        ("logprobs", True),
        ("top_logprobs", 2),
        ("echo", True),
        ("best_of", 3),
        ("logit_bias", {"1": 5}),
        ("tools", [{"type": "function"}]),
        ("functions", [{"name": "f"}]),
        ("response_format", {"type": "json_object"}),
        ("suffix", "end"),
        ("presence_penalty", 0.1),
        ("frequency_penalty", -1),
    ],
)
def test_fields_that_change_results_and_are_not_implemented_are_refused(field: str, value: object) -> None:
    error = refused({**BASE, field: value})
    assert error.param == field and error.code == "unsupported_parameter" and field in str(error)


def test_their_defaults_are_accepted() -> None:
    defaults = {"logprobs": False, "echo": False, "best_of": 1, "logit_bias": {}, "tools": [], "suffix": ""}
    defaults |= {"response_format": {"type": "text"}, "presence_penalty": 0, "frequency_penalty": 0.0}
    assert completion_generation({**BASE, **defaults}, None).prompt == "hi"
    assert set(defaults) <= set(REFUSED)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x"}, "model"),
        ({"model": "m"}, "prompt"),
        ({**BASE, "temperature": 2.5}, "temperature"),
        ({**BASE, "top_p": 0}, "top_p"),
        ({**BASE, "max_tokens": 0}, "max_tokens"),
        ({**BASE, "n": 0}, "n"),
        ({**BASE, "prompt": [1, -2]}, "prompt"),
        ({**BASE, "stop": ["a", ""]}, "stop"),
        ({**BASE, "prompt": ["a", "b"]}, "prompt"),
        ({**BASE, "prompt": [[1], [2]]}, "prompt"),
    ],
)
def test_bad_values_name_their_field(body: dict[str, Any], param: str) -> None:
    assert refused(body).param == param


def test_prompts_one_string_token_ids_or_a_list_holding_one() -> None:
    assert completion_generation({**BASE, "prompt": [5, 6]}, None).prompt == (5, 6)
    assert completion_generation({**BASE, "prompt": ["one"]}, None).prompt == "one"
    assert completion_generation({**BASE, "prompt": [[5, 6]]}, None).prompt == (5, 6)


def test_choice_i_samples_with_seed_plus_i_and_an_unseeded_request_draws_a_seed() -> None:
    seeded = completion_generation({**BASE, "seed": 2**64 - 1}, None)
    assert [seeded.choice_sampling(i).seed for i in range(3)] == [2**64 - 1, 0, 1]
    assert completion_generation({**BASE, "seed": -1}, None).sampling.seed == 2**64 - 1
    drawn = {completion_generation(BASE, None).sampling.seed for _ in range(4)}
    assert len(drawn) == 4
    assert completion_generation({**BASE, "temperature": 0}, None).sampling.seed == 0  # greedy: no seed needed


def test_the_tenant_header_wins_over_user_and_is_checked() -> None:
    assert completion_generation({**BASE, "user": "a"}, "b").tenant_id == "b"
    assert completion_generation({**BASE, "user": "a"}, None).tenant_id == "a"
    assert refused({**BASE, "user": "me@example.com"}).param == "user"
    assert "X-Prfaas-Tenant" in str(refused(BASE, "bad tenant"))


def test_chat_renders_messages_and_takes_max_completion_tokens_first() -> None:
    template = ChatTemplate(SIMPLE_TEMPLATE)
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    body = {**CHAT, "messages": [{"role": "user", "content": parts}], "max_tokens": 5, "max_completion_tokens": 7}
    generation = chat_generation(body, None, template)
    assert generation.prompt == "user: a\nb\nassistant: " and generation.sampling.max_new_tokens == 7
    assert chat_generation({**CHAT, "max_tokens": 5}, None, template).sampling.max_new_tokens == 5
    assert chat_generation(CHAT, None, template).sampling.max_new_tokens == Sampling().max_new_tokens


def test_chat_refuses_non_text_parts_and_an_empty_conversation() -> None:
    template = ChatTemplate(SIMPLE_TEMPLATE)
    image = {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    for body in (image, {**CHAT, "messages": []}):
        with pytest.raises(ApiError) as err:
            chat_generation(body, None, template)
        assert err.value.status == 400 and err.value.param == "messages"


def test_a_template_refusal_is_a_400_on_messages() -> None:
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ApiError, match="roles must alternate") as err:
        chat_generation(CHAT, None, template)
    assert err.value.param == "messages"
