"""The KV data plane on TLS: frames arrive with the deployment's certificates; a plaintext sender, one without a
certificate and one from another CA never get a frame in."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from prfaas.client import TlsSettings
from prfaas.transfer.dataplane import DataConnection, DataListener, DataPlaneError
from tests.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def listener(pki: Pki) -> AsyncIterator[DataListener]:
    ssl_context = pki.service.server_ssl_context()
    started = await DataListener.start("127.0.0.1", 0, ssl_context=ssl_context, hello_timeout_s=1.0)
    yield started
    await started.close()


async def _send(listener: DataListener, tls: TlsSettings | None) -> list[bytes]:
    offer = listener.offer()
    ssl_context = tls.client_ssl_context() if tls is not None else None
    sender = await DataConnection.open("127.0.0.1", offer.port, offer.token, timeout_s=3, ssl_context=ssl_context)
    receiver = await offer.connection(3)
    frames = [secrets.token_bytes(n) for n in (10, 1 << 20)]
    collecting = asyncio.create_task(_collect(receiver))
    for frame in frames:
        await sender.send(memoryview(frame))
    await sender.finish()
    got = await collecting
    sender.close()
    return got if got == frames else []


async def _collect(receiver: object) -> list[bytes]:
    return [bytes(frame) async for frame in receiver.frames()]  # type: ignore[attr-defined]


async def test_frames_cross_the_data_plane_on_mutual_tls(listener: DataListener, pki: Pki) -> None:
    assert len(await _send(listener, pki.client)) == 2
    assert len(await _send(listener, pki.service)) == 2  # services connect with their own certificate


@pytest.mark.parametrize("who", ["plaintext", "anonymous", "rogue"])
async def test_senders_without_a_valid_certificate_are_refused(listener: DataListener, pki: Pki, who: str) -> None:
    tls = {"plaintext": None, "anonymous": pki.anonymous, "rogue": pki.rogue}[who]
    with pytest.raises((DataPlaneError, TimeoutError, OSError)):
        await _send(listener, tls)
    assert listener.num_accepted == 0


def test_pki_files_exist(pki: Pki) -> None:
    assert all(Path(p).is_file() for p in (pki.service.cert_file, pki.service.key_file, pki.ca))
