"""The router's OpenAI-compatible HTTP API against a real in-process stack, through the official `openai`
package (sync and async clients, `max_retries=0`) and plain HTTP (httpx).

Greedy output equals the offline engine's on both routes, usage counts are exact, a repeated prompt shows its
cached tokens, stop strings cut the text and the generation, n choices are n seeded requests, every error
arrives with its status and the nested shape the SDK parses, and a client that goes away frees the decode
worker's blocks."""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
import openai
import pytest
import pytest_asyncio

from prfaas.client import AsyncClient, Sampling
from prfaas.model.tiny import TINY_NAME
from prfaas.openai.chat import SIMPLE_TEMPLATE, ChatTemplate
from prfaas.service.grpc_server import StartupError
from prfaas.telemetry.metrics import HTTP_REQUESTS
from tests.integration.stack import Stack, local_stack
from tests.integration.test_e2e import MAX_NEW, _free_blocks, offline
from tests.pki import Pki, make_pki

pytestmark = pytest.mark.asyncio(loop_scope="module")
T = TypeVar("T")
GREEDY: dict[str, Any] = {"model": TINY_NAME, "temperature": 0, "max_tokens": MAX_NEW}
EXTRA = {"ignore_eos": True, "return_token_ids": True}  # vLLM's extensions: fixed length, token ids back
SHORT = "Explain KV caches."  # 18 byte tokens: local (t = 48)
LONG = "A long prompt crosses the link to the PrfaaS cluster, whose prefill workers stream its KV state back. "


def ids(text: str) -> list[int]:
    return list(text.encode())  # kimi-linear-tiny's byte tokenizer


def http_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.servers['router'].servicer.http_port}"  # type: ignore[attr-defined]


@asynccontextmanager
async def api_stack(**router: object) -> AsyncIterator[Stack]:
    async with local_stack(threshold_tokens=48, router={"http_port": 0, **router}) as stack:
        yield stack


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack() -> AsyncIterator[Stack]:
    async with api_stack() as started:
        yield started


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{http_url(stack)}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def aclient(stack: Stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{http_url(stack)}/v1", api_key="unused", max_retries=0)


async def blocking(call: Callable[[], T]) -> T:
    """The sync client in a thread: the servers run on this event loop."""
    return await asyncio.to_thread(call)


async def grpc_text(stack: Stack, prompt: str, max_new: int = MAX_NEW) -> str:
    """What the gRPC SDK returns for the same greedy request."""
    async with AsyncClient(stack.addresses["router"], retries=0) as sdk:
        return (await sdk.generate(prompt, Sampling(max_new_tokens=max_new, ignore_eos=True))).text


async def until_released(stack: Stack, baseline: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    for _ in range(200):  # within 2 s
        if (now := await _free_blocks(stack)) == baseline:
            return now
        await asyncio.sleep(0.01)
    return await _free_blocks(stack)


# -- completions and chat: same tokens as offline, exact usage, the prfaas object ----------------------------------
async def test_completions_match_offline_on_both_routes(stack: Stack, client: openai.OpenAI) -> None:
    expected = offline([ids(SHORT), ids(LONG)])
    short = await blocking(lambda: client.completions.create(prompt=SHORT, extra_body=EXTRA, **GREEDY))
    long_ = await blocking(lambda: client.completions.create(prompt=LONG, extra_body=EXTRA, **GREEDY))
    again = await blocking(lambda: client.completions.create(prompt=LONG, extra_body=EXTRA, **GREEDY))
    texts = [await grpc_text(stack, SHORT), await grpc_text(stack, LONG)]
    for got, want, text, prompt in [(short, expected[0], texts[0], SHORT), (long_, expected[1], texts[1], LONG)]:
        (choice,) = got.choices
        assert got.object == "text_completion" and got.model == TINY_NAME and got.id.startswith("cmpl-")
        assert choice.model_extra["token_ids"] == want and choice.text == text and choice.finish_reason == "length"
        assert got.usage is not None and got.usage.prompt_tokens == len(ids(prompt))
        assert (got.usage.completion_tokens, got.usage.total_tokens) == (MAX_NEW, len(ids(prompt)) + MAX_NEW)
    assert short.model_extra["prfaas"]["route"] == "local" and long_.model_extra["prfaas"]["route"] == "prfaas"
    assert long_.model_extra["prfaas"]["kv_bytes"] > 0 and "> t=48" in long_.model_extra["prfaas"]["reason"]
    assert long_.usage.prompt_tokens_details.cached_tokens == 0
    assert again.choices[0].model_extra["token_ids"] == expected[1]
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert cached >= 64 and cached == again.model_extra["prfaas"]["cached_tokens"]


async def test_token_id_prompt_and_the_ttft_split(client: openai.OpenAI) -> None:
    prompt = ids("token ids go straight to the router")
    (expected,) = offline([prompt])
    got = await blocking(lambda: client.completions.create(prompt=prompt, extra_body=EXTRA, **GREEDY))
    extension = got.model_extra["prfaas"]
    assert got.choices[0].model_extra["token_ids"] == expected
    assert got.usage is not None and got.usage.prompt_tokens == len(prompt)
    parts = ("route_s", "queue_s", "prefill_s", "transfer_tail_s", "decode_admit_s")
    assert all(extension[p] >= 0 for p in parts) and sum(extension[p] for p in parts) <= extension["ttft_s"] + 1e-6
    assert extension["prefill_worker"] and extension["decode_worker"] and extension["prompt_tokens"] == len(prompt)


async def test_streamed_completion_with_usage(stack: Stack, aclient: openai.AsyncOpenAI) -> None:
    prompt = "(streamed) " + LONG  # a prefix of its own: not cached by another test
    (expected,) = offline([ids(prompt)])
    options = {"include_usage": True}
    stream = await aclient.completions.create(
        prompt=prompt, stream=True, stream_options=options, extra_body=EXTRA, **GREEDY
    )  # type: ignore[call-overload]
    chunks = [chunk async for chunk in stream]
    *generated, last = chunks
    assert [t for c in generated for t in c.choices[0].model_extra["token_ids"]] == expected
    assert "".join(c.choices[0].text for c in generated) == await grpc_text(stack, prompt)
    assert generated[0].model_extra["prfaas"]["route"] == "prfaas"
    assert [c.choices[0].finish_reason for c in generated][-1] == "length"
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (len(ids(prompt)), MAX_NEW)


async def test_chat_renders_the_template_and_matches_offline(stack: Stack, client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is PrfaaS?"}]
    rendered = ChatTemplate(SIMPLE_TEMPLATE).render(messages)
    assert rendered == "system: Be brief.\nuser: What is PrfaaS?\nassistant: "
    (expected,) = offline([ids(rendered)])
    got = await blocking(lambda: client.chat.completions.create(messages=messages, extra_body=EXTRA, **GREEDY))  # type: ignore[arg-type]
    (choice,) = got.choices
    assert got.object == "chat.completion" and got.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content == await grpc_text(stack, rendered)
    assert (choice.model_extra or {})["token_ids"] == expected and choice.finish_reason == "length"
    assert got.usage is not None and (got.usage.prompt_tokens, got.usage.completion_tokens) == (len(rendered), MAX_NEW)


async def test_streamed_chat(stack: Stack, aclient: openai.AsyncOpenAI) -> None:
    parts = [{"type": "text", "text": "(chat)"}, {"type": "text", "text": LONG}]  # joined with a newline
    messages = [{"role": "user", "content": parts}]
    rendered = ChatTemplate(SIMPLE_TEMPLATE).render([{"role": "user", "content": "(chat)\n" + LONG}])
    stream = await aclient.chat.completions.create(  # type: ignore[call-overload]
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
        extra_body={"ignore_eos": True},
    )
    chunks = [chunk async for chunk in stream]
    *generated, last = chunks
    assert generated[0].choices[0].delta.role == "assistant" and generated[0].model_extra["prfaas"]["route"] == "prfaas"
    assert "".join(c.choices[0].delta.content or "" for c in generated) == await grpc_text(stack, rendered)
    assert (
        all(c.object == "chat.completion.chunk" for c in chunks) and generated[-1].choices[0].finish_reason == "length"
    )
    assert last.choices == [] and last.usage is not None and last.usage.prompt_tokens == len(rendered)


# -- stop strings and n -----------------------------------------------------------------------------------------
async def test_a_stop_string_cuts_the_text_and_the_generation(stack: Stack, client: openai.OpenAI) -> None:
    prompt, max_new = "Stop strings end a completion early.", 200
    full = await grpc_text(stack, prompt, max_new)
    start = next(i for i in range(8, len(full)) if full.find(full[i : i + 2]) == i)  # first occurrence at i
    stop = full[start : start + 2]
    baseline = await _free_blocks(stack)
    request = {**GREEDY, "max_tokens": max_new, "stop": [stop, "never appears"], "extra_body": EXTRA}
    got = await blocking(lambda: client.completions.create(prompt=prompt, **request))
    streamed = await blocking(lambda: list(client.completions.create(prompt=prompt, stream=True, **request)))
    (choice,) = got.choices
    assert choice.text == full[:start] and choice.finish_reason == "stop"
    assert got.usage is not None and got.usage.completion_tokens < max_new  # the rest was never generated
    assert "".join(c.choices[0].text for c in streamed) == full[:start]
    assert streamed[-1].choices[0].finish_reason == "stop"
    assert await until_released(stack, baseline) == baseline  # both generations cancelled on the workers


async def test_n_choices_are_seeded_requests(client: openai.OpenAI) -> None:
    prompt = "Sampled choices differ."
    sampled = {**GREEDY, "temperature": 0.9, "seed": 7, "extra_body": EXTRA}
    both = await blocking(lambda: client.completions.create(prompt=prompt, n=2, **sampled))
    alone = [await blocking(lambda: client.completions.create(prompt=prompt, **{**sampled, "seed": 7}))]
    alone += [await blocking(lambda: client.completions.create(prompt=prompt, **{**sampled, "seed": 8}))]
    greedy = await blocking(lambda: client.completions.create(prompt=prompt, n=2, extra_body=EXTRA, **GREEDY))
    tokens = [c.model_extra["token_ids"] for c in both.choices]
    assert [c.index for c in both.choices] == [0, 1]
    assert tokens == [a.choices[0].model_extra["token_ids"] for a in alone] and tokens[0] != tokens[1]
    assert both.usage is not None and both.usage.completion_tokens == 2 * MAX_NEW
    assert both.usage.prompt_tokens == len(ids(prompt))
    assert [route["route"] for route in both.model_extra["prfaas"]["choices"]] == ["local", "local"]
    assert greedy.choices[0].model_extra["token_ids"] == greedy.choices[1].model_extra["token_ids"]


async def test_n_choices_stream_with_their_index(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        messages=[{"role": "user", "content": "two"}], n=2, stream=True, **GREEDY, extra_body=EXTRA
    )
    by_index: dict[int, list[int]] = {0: [], 1: []}
    async for chunk in stream:
        by_index[chunk.choices[0].index] += chunk.choices[0].model_extra["token_ids"]
    assert len(by_index[0]) == MAX_NEW and by_index[0] == by_index[1]


# -- errors: status, SDK exception class, nested shape -------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"prompt": list(range(10)) * 7000}, None, "exceeds the model's max_model_len"),
        ({"prompt": [1, 600]}, None, "outside the vocabulary"),
        ({"prompt": "x", "logprobs": 2}, "logprobs", "logprobs is not supported"),
        ({"prompt": "x", "best_of": 2}, "best_of", "best_of is not supported"),
        ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty", "not supported"),
        ({"prompt": "x", "temperature": 3}, "temperature", "temperature"),
        ({"prompt": ["a", "b"]}, "prompt", "batches of prompts are not supported"),
        ({"prompt": "x", "stop": ""}, "stop", "must not be empty"),
        ({"prompt": "x", "user": "bad tenant!"}, "user", "tenant id"),
    ],
)
async def test_bad_completions_are_400(client: openai.OpenAI, body: dict[str, Any], param: str, message: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await blocking(lambda: client.completions.create(**{**GREEDY, **body}))
    assert err.value.status_code == 400 and message in err.value.message
    assert err.value.body["param"] == param and err.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    ok = await blocking(lambda: client.completions.create(prompt="still serving", **GREEDY))
    assert ok.choices[0].finish_reason in ("length", "stop")


async def test_bad_chat_requests_are_400(client: openai.OpenAI) -> None:
    image = [{"type": "image_url", "image_url": {"url": "http://example.invalid/x.png"}}]
    cases = {
        "messages": [{"role": "user", "content": image}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "response_format": {"type": "json_object"},
    }
    for field, value in cases.items():
        body = {"messages": [{"role": "user", "content": "hi"}], field: value}
        with pytest.raises(openai.BadRequestError) as err:
            await blocking(lambda b=body: client.chat.completions.create(**{**GREEDY, **b}))  # type: ignore[misc]
        assert err.value.body["param"] == field, field  # type: ignore[index]


async def test_unknown_model_is_404_and_unknown_fields_are_ignored(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await blocking(lambda: client.completions.create(prompt="x", **{**GREEDY, "model": "gpt-4o"}))
    assert "gpt-4o" in err.value.message and err.value.code == "model_not_found"
    extra = {"some_future_field": {"a": 1}, "logprobs": None, "presence_penalty": 0, "best_of": 1, "echo": False}
    ok = await blocking(lambda: client.completions.create(prompt="x", extra_body=extra, **GREEDY))
    assert ok.usage is not None and ok.usage.prompt_tokens == 1


async def test_plain_http_errors_have_the_nested_shape(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=http_url(stack)) as http:
        malformed = await http.post(
            "/v1/completions", content=b'{"model": ', headers={"content-type": "application/json"}
        )
        not_object = await http.post("/v1/chat/completions", json=[1, 2])
        missing = await http.post("/v1/completions", json={"model": TINY_NAME})
        unknown_path = await http.get("/v1/engines")
        wrong_method = await http.get("/v1/completions")
    for response, status in [
        (malformed, 400),
        (not_object, 400),
        (missing, 400),
        (unknown_path, 404),
        (wrong_method, 405),
    ]:
        error = response.json()["error"]
        assert response.status_code == status and set(error) == {"message", "type", "param", "code"}, response.text
        assert error["message"]
    assert "not valid JSON" in malformed.json()["error"]["message"]
    assert missing.json()["error"]["param"] == "prompt" and "Field required" in missing.json()["error"]["message"]


async def test_bearer_token_guards_the_api_but_not_health(capsys: pytest.CaptureFixture[str]) -> None:
    async with api_stack(auth_token="s3cret") as stack:
        url = http_url(stack)
        announced = capsys.readouterr().out
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="s3creT", max_retries=0)
        ok = await blocking(lambda: good.completions.create(prompt="x", **GREEDY))
        models = await blocking(lambda: [m.id for m in good.models.list()])
        with pytest.raises(openai.AuthenticationError) as refused:
            await blocking(lambda: wrong.completions.create(prompt="x", **GREEDY))
        async with httpx.AsyncClient(base_url=url) as http:
            missing = await http.post("/v1/completions", json={"prompt": "x", **GREEDY})
            unlisted = await http.get("/v1/models")
            health = await http.get("/health")
    assert ok.usage is not None and ok.usage.completion_tokens == MAX_NEW and models == [TINY_NAME]
    assert refused.value.status_code == 401 and refused.value.body["message"] == "invalid bearer token"  # type: ignore[index]
    assert missing.status_code == 401 and "missing bearer token" in missing.json()["error"]["message"]
    assert unlisted.status_code == 401 and health.status_code == 200
    assert f"openai api on port {url.rsplit(':', 1)[1]}\n" in announced  # for the launcher to read


async def test_a_taken_http_port_stops_the_router_with_a_clear_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match=f"--http-port {port}: cannot serve the OpenAI API"):
            async with api_stack(http_port=port):
                pass


async def test_overload_is_429_with_retry_after() -> None:
    async with api_stack(max_inflight_requests=1, retry_after_ms=1500) as stack:
        client = openai.OpenAI(base_url=f"{http_url(stack)}/v1", api_key="x", max_retries=0)
        stack.servers["router"].servicer.inflight = 1  # type: ignore[attr-defined]  # one request in flight
        with pytest.raises(openai.RateLimitError) as err:
            await blocking(lambda: client.completions.create(prompt="x", **GREEDY))
        with pytest.raises(openai.RateLimitError) as streamed:
            await blocking(lambda: client.completions.create(prompt="x", stream=True, **GREEDY))
        stack.servers["router"].servicer.inflight = 0  # type: ignore[attr-defined]
        after = await blocking(lambda: client.completions.create(prompt="x", **GREEDY))
    assert "max_inflight_requests" in err.value.message and err.value.code == "resource_exhausted"
    headers = err.value.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"]) == (str(math.ceil(1.5)), "1500")
    assert streamed.value.status_code == 429 and after.usage is not None


async def test_a_deadline_is_504_or_an_error_event_and_no_live_decode_worker_503() -> None:
    endless = {**GREEDY, "prompt": "x", "max_tokens": 5000}  # far beyond a 1 s deadline
    async with api_stack(request_timeout_s=1.0) as stack:
        client = openai.OpenAI(base_url=f"{http_url(stack)}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as late:
            await blocking(lambda: client.completions.create(**{**endless, "extra_body": {"ignore_eos": True}}))
        async with httpx.AsyncClient(base_url=http_url(stack), timeout=30) as http:
            streamed = await http.post("/v1/completions", json={**endless, "stream": True, "ignore_eos": True})
        await stack.servers["decode-0"].stop(0)
        with pytest.raises(openai.InternalServerError) as down:
            await blocking(lambda: client.completions.create(prompt="x", **GREEDY))
    assert late.value.status_code == 504 and late.value.code == "deadline_exceeded"
    events = [line.removeprefix("data: ") for line in streamed.text.splitlines() if line]
    assert streamed.status_code == 200 and len(events) > 3 and events[-1] == "[DONE]"  # tokens came, then:
    assert json.loads(events[-2])["error"]["code"] == "deadline_exceeded"
    assert down.value.status_code == 503 and down.value.code == "unavailable", down.value.message


# -- a client that goes away ------------------------------------------------------------------------------------
async def test_a_client_leaving_mid_stream_frees_the_blocks(stack: Stack) -> None:
    baseline = await _free_blocks(stack)
    body = {**GREEDY, "prompt": "(abandoned) " + LONG, "max_tokens": 400, "stream": True, "ignore_eos": True}
    async with (
        httpx.AsyncClient(base_url=http_url(stack)) as http,
        http.stream("POST", "/v1/completions", json=body) as r,
    ):
        lines = r.aiter_lines()
        chunks = [line async for line in _first(lines, 3)]
        during = await _free_blocks(stack)
    assert r.status_code == 200 and all(c.startswith("data: {") for c in chunks)
    assert during[0] < baseline[0] and during[1] == 1  # the decode worker was generating
    assert await until_released(stack, baseline) == baseline


async def test_a_client_giving_up_on_a_whole_response_frees_the_blocks(stack: Stack) -> None:
    baseline = await _free_blocks(stack)
    gone_before = HTTP_REQUESTS.labels("/v1/completions", "499")._value.get()
    body = {**GREEDY, "prompt": "a long answer nobody waits for", "max_tokens": 2000, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=http_url(stack), timeout=0.5) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/completions", json=body)
    assert await until_released(stack, baseline) == baseline
    for _ in range(100):
        if HTTP_REQUESTS.labels("/v1/completions", "499")._value.get() == gone_before + 1:
            break
        await asyncio.sleep(0.01)
    assert HTTP_REQUESTS.labels("/v1/completions", "499")._value.get() == gone_before + 1


async def _first(lines: AsyncIterator[str], count: int) -> AsyncIterator[str]:
    async for line in lines:
        if line:
            yield line
            count -= 1
            if not count:
                return


# -- health, models, metrics, TLS --------------------------------------------------------------------------------
async def test_health_models_and_metrics(stack: Stack, client: openai.OpenAI) -> None:
    before = HTTP_REQUESTS.labels("/v1/models", "200")._value.get()
    models = await blocking(lambda: client.models.list())
    async with httpx.AsyncClient(base_url=http_url(stack)) as http:
        health = await http.get("/health")
    assert [(m.id, m.object, m.owned_by) for m in models.data] == [(TINY_NAME, "model", "prfaas")]
    assert health.status_code == 200 and health.json() == {"status": "serving"}
    assert HTTP_REQUESTS.labels("/v1/models", "200")._value.get() == before + 1


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def test_https_with_the_routers_certificate_and_client_auth(pki: Pki) -> None:
    async with local_stack(threshold_tokens=48, tls=pki.service, router={"http_port": 0}) as stack:
        url = http_url(stack).replace("http://", "https://")
        async with httpx.AsyncClient(base_url=url, verify=pki.client.client_ssl_context()) as http:
            ok = await http.post("/v1/completions", json={"prompt": "x", **GREEDY})
        async with httpx.AsyncClient(base_url=url, verify=pki.anonymous.client_ssl_context()) as http:
            with pytest.raises(httpx.HTTPError):
                await http.get("/health")  # no client certificate
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == MAX_NEW


async def test_tenants_from_user_or_header_do_not_share_prefixes(client: openai.OpenAI) -> None:
    prompt = "(tenant) " + LONG

    def cached(**kw: Any) -> int:
        got = client.completions.create(prompt=prompt, **GREEDY, **kw)
        return got.usage.prompt_tokens_details.cached_tokens

    first = await blocking(lambda: cached(user="tenant-a"))
    other = await blocking(lambda: cached(user="tenant-b"))
    header = await blocking(lambda: cached(user="tenant-b", extra_headers={"X-Prfaas-Tenant": "tenant-a"}))
    assert (first, other) == (0, 0) and header >= 64
