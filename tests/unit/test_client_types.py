"""prfaas.client.types and prfaas.client.codec: validation and the wire mapping."""

from __future__ import annotations

from typing import Any

import pytest

from prfaas.client.codec import ResultCollector, decode_chunk, encode_request
from prfaas.client.types import GenerationChunk, RouteInfo, Sampling
from prfaas.v1 import common_pb2, router_pb2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"stop_token_ids": [1, -2]}, "stop_token_ids"),
    ],
)
def test_sampling_rejects_what_the_server_would(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Sampling(**kwargs)


def test_sampling_stores_stop_ids_as_a_tuple() -> None:
    assert Sampling(stop_token_ids=[3, 4]).stop_token_ids == (3, 4)
    assert hash(Sampling(stop_token_ids=[3])) == hash(Sampling(stop_token_ids=(3,)))


def test_encode_request_without_a_tenant() -> None:
    request = encode_request([7], Sampling(), request_id="r", tenant_id=None)
    assert request == router_pb2.GenerateRequest(
        request_id="r",
        token_ids=router_pb2.TokenIds(ids=[7]),
        sampling=common_pb2.SamplingParams(max_new_tokens=32, top_p=1.0),
    )


def test_decode_chunk_reads_route_and_finish_reason() -> None:
    message = router_pb2.GenerateResponse(
        token_ids=[1],
        text="a",
        finish_reason=common_pb2.FINISH_REASON_STOP,
        route=router_pb2.RouteInfo(route=common_pb2.ROUTE_LOCAL, reason="short", prompt_tokens=5),
    )
    assert decode_chunk(message) == GenerationChunk(
        token_ids=(1,),
        text="a",
        finish_reason="stop",
        route=RouteInfo("local", "short", 0, 0, 0.0, 5, "", ""),
    )
    assert decode_chunk(router_pb2.GenerateResponse()) == GenerationChunk(token_ids=(), text="")


def test_unknown_route_reads_unspecified() -> None:
    message = router_pb2.GenerateResponse(route=router_pb2.RouteInfo(route=common_pb2.ROUTE_UNSPECIFIED))
    chunk = decode_chunk(message)
    assert chunk.route is not None and chunk.route.route == "unspecified"


def test_collector_keeps_first_route_and_last_finish_reason() -> None:
    route = RouteInfo("prfaas", "r", 1, 2, 0.1, 3, "p", "d")
    collector = ResultCollector("req-1")
    collector.add(GenerationChunk((1, 2), "ab", None, route))
    collector.add(GenerationChunk((3,), "c", "length", None))
    result = collector.result()
    assert (result.request_id, result.token_ids, result.text) == ("req-1", (1, 2, 3), "abc")
    assert (result.finish_reason, result.route) == ("length", route)
    assert result.elapsed_s >= 0
