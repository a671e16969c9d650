"""Security end to end: mutual TLS on every hop, the router's bearer token, tenant isolation in the
prefix caches."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from prfaas.cli.main import main
from prfaas.client import AsyncClient, AuthenticationError, Sampling, TlsSettings, UnavailableError
from prfaas.kv.prefix import block_hashes
from prfaas.service.convert import tenant_salt
from prfaas.service.grpc_server import channel
from prfaas.v1 import cachepool_pb2, cachepool_pb2_grpc, decode_pb2, decode_pb2_grpc
from services.cachepool.server import build_server as build_pool
from services.cachepool.settings import CachePoolSettings
from tests.integration.stack import collect, local_stack
from tests.integration.test_e2e import offline, prompt, request
from tests.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_fields(tls: TlsSettings) -> dict[str, object]:
    return dict(tls_cert=tls.cert_file, tls_key=tls.key_file, tls_ca=tls.ca_file, tls_client_auth=tls.client_auth)


async def _stats(address: str, tls: TlsSettings | None) -> cachepool_pb2.GetStatsResponse:
    async with channel(address, tls) as ch:
        return await cachepool_pb2_grpc.CachePoolServiceStub(ch).GetStats(cachepool_pb2.GetStatsRequest(), timeout=5)


async def test_mutual_tls_admits_only_certificates_of_the_deployment_ca(pki: Pki) -> None:
    running, cleanup = await build_pool(CachePoolSettings(**_tls_fields(pki.service)))  # type: ignore[arg-type]
    address = f"127.0.0.1:{running.port}"
    try:
        assert (await _stats(address, pki.client)).capacity_bytes > 0
        assert (await _stats(address, pki.service)).capacity_bytes > 0  # services call each other with theirs
        refused = {}
        for who, tls in [("plaintext", None), ("no certificate", pki.anonymous), ("other CA", pki.rogue)]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _stats(address, tls)
            refused[who] = err.value.code()
    finally:
        await running.stop(0.1)
        await cleanup()
    assert refused == dict.fromkeys(refused, grpc.StatusCode.UNAVAILABLE)


async def test_every_hop_on_mutual_tls_serves_both_routes(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    short, long_ = prompt(20, 11), prompt(100, 12)
    expected = offline([short, long_])
    sampling = Sampling(max_new_tokens=6, ignore_eos=True)
    async with local_stack(threshold_tokens=48, tls=pki.service, router={"auth_token": "tok"}) as stack:
        router = stack.addresses["router"]
        async with AsyncClient(router, token="tok", tls=pki.client, retries=0) as client:
            local = await client.generate(short, sampling)
            remote = await client.generate(long_, sampling)
        async with AsyncClient(router, token="tok", tls=pki.anonymous, retries=0) as client:
            with pytest.raises(UnavailableError):
                await client.generate(short, sampling)
        decoder = next(srv.servicer for name, srv in stack.servers.items() if name.startswith("decode"))
        data_connections = decoder.receiver.data.num_accepted  # type: ignore[union-attr]
        capsys.readouterr()
        flags = ["--tls-ca", pki.client.ca_file, "--tls-cert", pki.client.cert_file, "--tls-key", pki.client.key_file]
        argv = ["generate", "--router", router, "--token-ids", ",".join(map(str, short)), "--max-new-tokens", "6"]
        exit_code = await asyncio.to_thread(main, [*argv, "--ignore-eos", "--json", "--token", "tok", *flags])
        cli = json.loads(capsys.readouterr().out)
    assert list(local.token_ids) == expected[0] and local.route and local.route.route == "local"
    assert list(remote.token_ids) == expected[1] and remote.route and remote.route.route == "prfaas"
    assert remote.route.kv_bytes > 0  # the cross-datacenter hop (prefill -> decode) ran on TLS too,
    assert data_connections >= 1  # chunks included: on the TLS data plane
    assert exit_code == 0 and cli["token_ids"] == expected[0] and cli["route"] == "local"


async def test_bearer_token_guards_generate_but_not_health() -> None:
    ids = prompt(20, 13)
    async with local_stack(threshold_tokens=48, router={"auth_token": "s3cret-token"}) as stack:
        router = stack.addresses["router"]
        async with AsyncClient(router, token="s3cret-token", retries=0) as client:
            ok = await client.generate(ids, Sampling(max_new_tokens=4, ignore_eos=True))
        failures = {}
        for who, token in [("none", None), ("wrong", "s3cret-tokem")]:
            async with AsyncClient(router, token=token, retries=0) as client:
                with pytest.raises(AuthenticationError) as err:
                    await client.generate(ids, Sampling(max_new_tokens=4))
            failures[who] = err.value.message
        async with channel(router) as ch:
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert len(ok.token_ids) == 4
    assert "missing bearer token" in failures["none"] and failures["wrong"] == "invalid bearer token"
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def _pool_hit(address: str, tenant: str, hashes: list[bytes], prompt_tokens: int) -> int:
    async with channel(address) as ch:
        hit = await cachepool_pb2_grpc.CachePoolServiceStub(ch).LookupPrefix(
            cachepool_pb2.LookupPrefixRequest(
                tenant_id=tenant, block_hashes=hashes, prompt_tokens=prompt_tokens, block_size=16
            )
        )
    return int(hit.num_tokens)


async def _decode_hit(address: str, tenant: str, ids: list[int]) -> int:
    async with channel(address) as ch:
        match = await decode_pb2_grpc.DecodeServiceStub(ch).MatchPrefix(
            decode_pb2.MatchPrefixRequest(tenant_id=tenant, token_ids=ids)
        )
    return int(match.cached_tokens)


async def test_tenant_b_gets_no_hit_on_tenant_a_prefix() -> None:
    """Tenant A's repeated prompt hits; tenant B's identical prompt finds nothing in either pool or on the
    decode worker, so it is computed and shipped in full: B sees exactly what a cold prompt costs."""
    ids = prompt(100, 14)
    hashes_a, hashes_b = (block_hashes(ids, 16, tenant_salt(t)) for t in ("tenant-a", "tenant-b"))
    async with local_stack(threshold_tokens=48) as stack:
        pool, decoder = stack.addresses["pool-prfaas"], stack.addresses["decode-0"]
        _, a_first = await collect(stack.router, request(ids, tenant_id="tenant-a"))
        _, a_again = await collect(stack.router, request(ids, tenant_id="tenant-a"))
        for _ in range(100):  # the prefill worker publishes to its pool in the background
            if await _pool_hit(pool, "tenant-a", hashes_a, len(ids)) == 96:
                break
            await asyncio.sleep(0.02)
        seen_by_b = {
            "pool, B's hashes": await _pool_hit(pool, "tenant-b", hashes_b, len(ids)),
            "pool, A's hashes": await _pool_hit(pool, "tenant-b", hashes_a, len(ids)),
            "pd pool": await _pool_hit(stack.addresses["pool-pd"], "tenant-b", hashes_b, len(ids)),
            "decode worker": await _decode_hit(decoder, "tenant-b", ids),
            "decode worker, default tenant": await _decode_hit(decoder, "", ids),
        }
        seen_by_a = (await _pool_hit(pool, "tenant-a", hashes_a, len(ids)), await _decode_hit(decoder, "tenant-a", ids))
        _, b_first = await collect(stack.router, request(ids, tenant_id="tenant-b"))
    assert a_first.cached_tokens == 0 and a_again.cached_tokens == 96 and seen_by_a == (96, 96)
    assert seen_by_b == dict.fromkeys(seen_by_b, 0)
    assert b_first.cached_tokens == 0
    assert b_first.kv_bytes == a_first.kv_bytes  # the full state shipped again, as for a cold prompt
