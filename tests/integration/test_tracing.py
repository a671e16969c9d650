"""One request is one trace across router, cache pools, prefill worker and decode worker, exported over
real OTLP/gRPC to a real TraceService receiver."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from prfaas.client import AsyncClient, Sampling
from prfaas.stack import LocalStack, Topology


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[tuple[str, trace_pb2.Span]] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for rs in request.resource_spans:
            names = [a.value.string_value for a in rs.resource.attributes if a.key == "service.name"]
            for ss in rs.scope_spans:
                self.spans.extend((names[0] if names else "?", span) for span in ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_one_request_is_one_trace_across_all_services(monkeypatch: pytest.MonkeyPatch) -> None:
    receiver = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    stack = LocalStack(Topology(threshold_tokens=32))
    await asyncio.to_thread(stack.__enter__)
    try:
        async with AsyncClient(stack.router, timeout_s=60) as client:
            prompt = "a prompt long enough to be offloaded to the PrfaaS cluster, and to fill whole KV blocks " * 2
            result = await client.generate(prompt, Sampling(4))
    finally:
        await asyncio.to_thread(stack.stop)  # SIGTERM: every service flushes its spans
    await server.stop(0)
    assert result.route is not None and result.route.route == "prfaas"

    traces: dict[bytes, list[tuple[str, trace_pb2.Span]]] = defaultdict(list)
    for service, span in receiver.spans:
        traces[span.trace_id].append((service, span))
    [generate] = [s for _, s in receiver.spans if s.name == "prfaas.v1.RouterService/Generate"]
    spans = traces[generate.trace_id]
    services = {service.rsplit("-", 1)[0] if service[-1].isdigit() else service for service, _ in spans}
    assert {
        "prfaas-router",
        "prfaas-prefill-prfaas",
        "prfaas-decode",
        "prfaas-cachepool-prfaas",  # the PrfaaS prefill worker publishes the prompt's blocks to its pool
    } <= services
    assert "prfaas-cachepool-pd" not in services  # the router asks no pool: it routes from their state streams
    ids = {s.span_id for _, s in spans}
    roots = [s for _, s in spans if not s.parent_span_id]
    assert roots == [generate]  # everything else hangs off the router's span
    assert all(s.parent_span_id in ids for _, s in spans if s.parent_span_id)
    names = {s.name for _, s in spans}
    assert {
        "route",
        "prefill",
        "kv.transfer",
        "prfaas.v1.DecodeService/TransferKv",
        "prfaas.v1.PrefillService/Prefill",
        "prfaas.v1.CachePoolService/PutBlocks",
    } <= names
    transfer = next(s for _, s in spans if s.name == "kv.transfer")
    attrs = {a.key for a in transfer.attributes}
    assert {"kv.bytes", "kv.chunks", "kv.streams", "kv.duration_s", "kv.gbps", "kv.stalled_s"} <= attrs
    prefill = next(s for _, s in spans if s.name == "prefill")
    assert any(e.name == "kv.chunk" for e in prefill.events)
