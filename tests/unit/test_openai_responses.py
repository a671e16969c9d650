"""prfaas.openai.choice, responses, sse and errors: choices assembled from router chunks, the exact OpenAI
shapes, the `prfaas` object, the error shape and the status mapping."""

from __future__ import annotations

import json

import grpc

from prfaas.client.types import GenerationChunk, RouteInfo
from prfaas.openai import sse
from prfaas.openai.choice import Choice
from prfaas.openai.errors import ApiError, from_status
from prfaas.openai.responses import CHAT, COMPLETIONS, Reply, chunk_body, model_list, response_body, usage_chunk

ROUTE = RouteInfo("prfaas", "scarce: l=90 > t=48", 32, 4096, 0.25, 100, "p:1", "d:1", 0.01, 0.02, 0.2, 0.01, 0.01)
REPLY = Reply("cmpl-1", 1700000000, "kimi-linear-tiny")
USAGE = {
    "prompt_tokens": 100,
    "completion_tokens": 3,
    "total_tokens": 103,
    "prompt_tokens_details": {"cached_tokens": 32},
}


def chunks() -> list[GenerationChunk]:
    return [
        GenerationChunk((1,), "Hel", route=ROUTE),
        GenerationChunk((2,), "lo"),
        GenerationChunk((3,), "!", "length"),
    ]


def choice(index: int = 0, stops: tuple[str, ...] = ()) -> Choice:
    c = Choice(index, stops)
    for chunk in chunks():
        c.add(chunk)
    return c


def test_a_choice_collects_tokens_text_route_and_finish() -> None:
    c = choice()
    assert (c.token_ids, c.text, c.finish_reason, c.route) == ([1, 2, 3], "Hello!", "length", ROUTE)


def test_a_stop_string_finishes_the_choice_with_stop() -> None:
    c = Choice(0, ["ll"])
    deltas = [c.add(chunk) for chunk in chunks()[:2]]
    assert [(d.text, d.finish_reason) for d in deltas] == [("He", None), ("", "stop")]
    assert c.text == "He" and c.finish_reason == "stop" and c.token_ids == [1, 2]


def test_held_back_text_comes_out_with_the_last_delta() -> None:
    c = Choice(0, ["!?"])
    assert [c.add(chunk).text for chunk in chunks()] == ["Hel", "lo", "!"] and c.finish_reason == "length"


def test_the_completion_shape() -> None:
    body = response_body(COMPLETIONS, REPLY, [choice()])
    assert body == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1700000000,
        "model": "kimi-linear-tiny",
        "choices": [{"index": 0, "text": "Hello!", "finish_reason": "length", "logprobs": None}],
        "usage": USAGE,
        "prfaas": {
            "route": "prfaas",
            "reason": "scarce: l=90 > t=48",
            "cached_tokens": 32,
            "kv_bytes": 4096,
            "ttft_s": 0.25,
            "prompt_tokens": 100,
            "prefill_worker": "p:1",
            "decode_worker": "d:1",
            "route_s": 0.01,
            "queue_s": 0.02,
            "prefill_s": 0.2,
            "transfer_tail_s": 0.01,
            "decode_admit_s": 0.01,
        },
    }


def test_the_chat_shape_with_two_choices_and_token_ids() -> None:
    reply = Reply("chatcmpl-1", 1, "m", return_token_ids=True)
    body = response_body(CHAT, reply, [choice(0), choice(1)])
    message = {"role": "assistant", "content": "Hello!"}
    assert body["object"] == "chat.completion"
    assert body["choices"][1] == {
        "index": 1,
        "message": message,
        "finish_reason": "length",
        "logprobs": None,
        "token_ids": [1, 2, 3],
    }
    assert body["usage"]["completion_tokens"] == 6 and body["usage"]["prompt_tokens"] == 100  # the prompt once
    assert body["prfaas"]["route"] == "prfaas" and [r["kv_bytes"] for r in body["prfaas"]["choices"]] == [4096, 4096]


def test_stream_chunks() -> None:
    c = Choice(0)
    first, middle, last = (c.add(chunk) for chunk in chunks())
    opening = chunk_body(CHAT, REPLY, first)
    assert opening["object"] == "chat.completion.chunk" and opening["prfaas"]["route"] == "prfaas"
    assert opening["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None, "logprobs": None}
    ]
    assert chunk_body(CHAT, REPLY, middle)["choices"][0]["delta"] == {"content": "lo"} and "prfaas" not in chunk_body(
        CHAT, REPLY, middle
    )
    assert chunk_body(COMPLETIONS, REPLY, last)["choices"] == [
        {"index": 0, "text": "!", "finish_reason": "length", "logprobs": None}
    ]
    assert usage_chunk(COMPLETIONS, REPLY, [c]) == {
        **chunk_body(COMPLETIONS, REPLY, middle),
        "choices": [],
        "usage": USAGE,
    }


def test_sse_events_and_done() -> None:
    assert sse.event({"a": [1, "é"]}) == b'data: {"a":[1,"\\u00e9"]}\n\n'
    assert json.loads(sse.event({"a": 1})[len(b"data: ") :]) == {"a": 1}
    assert sse.DONE == b"data: [DONE]\n\n"


def test_models_list() -> None:
    assert model_list("m", 5) == {
        "object": "list",
        "data": [{"id": "m", "object": "model", "created": 5, "owned_by": "prfaas"}],
    }


def test_router_statuses_map_to_http_statuses_once() -> None:
    cases = {
        grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
        grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
        grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
        grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
        grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
        grpc.StatusCode.INTERNAL: (500, "server_error"),
    }
    for code, (status, kind) in cases.items():
        error = from_status(code, "why")
        assert error.status == status and error.body() == {
            "error": {"message": "why", "type": kind, "param": None, "code": code.name.lower()}
        }


def test_retry_after_is_rounded_up_to_seconds_and_sent_in_ms_too() -> None:
    assert from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", 1001).headers() == {
        "Retry-After": "2",
        "retry-after-ms": "1001",
    }
    assert from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", 1000).headers()["Retry-After"] == "1"
    assert ApiError(400, "bad", param="n").headers() == {}
