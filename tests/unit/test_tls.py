"""TlsSettings: validation that says what to fix, and the ssl contexts of a raw TCP data plane."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from prfaas.service.settings import SettingsError, parse_settings
from prfaas.service.tls import TlsError, TlsSettings, service_tls
from services.cachepool.settings import CachePoolSettings
from tests.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_key_without_cert_names_both_flags(pki: Pki) -> None:
    with pytest.raises(TlsError, match=r"--tls-key is set but --tls-cert is not"):
        TlsSettings(key_file=pki.service.key_file)


def test_unreadable_file_is_named(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(TlsError, match=rf"--tls-ca {missing}: cannot read the file"):
        TlsSettings(ca_file=str(missing))


def test_client_auth_needs_a_ca(pki: Pki) -> None:
    with pytest.raises(TlsError, match="--tls-client-auth needs --tls-ca"):
        TlsSettings(pki.service.cert_file, pki.service.key_file, client_auth=True)


def test_mismatched_key_is_refused_at_parse_time(pki: Pki) -> None:
    with pytest.raises(TlsError, match="not a PEM certificate chain and its matching private key"):
        TlsSettings(pki.service.cert_file, pki.client.key_file)


def test_a_key_is_not_a_ca(pki: Pki) -> None:
    with pytest.raises(TlsError, match="not a PEM CA certificate"):
        TlsSettings(ca_file=pki.service.key_file)


def test_service_settings_from_env_and_flags(pki: Pki) -> None:
    env = {"PRFAAS_TLS_CERT": pki.service.cert_file, "PRFAAS_TLS_KEY": pki.service.key_file}
    settings = parse_settings(CachePoolSettings, ["--tls-ca", str(pki.ca), "--tls-client-auth"], env)
    assert service_tls(settings) == pki.service
    assert service_tls(CachePoolSettings()) is None


def test_a_service_needs_its_own_certificate(pki: Pki) -> None:
    with pytest.raises(SettingsError, match="TLS for a service needs --tls-cert and --tls-key"):
        parse_settings(CachePoolSettings, ["--tls-ca", str(pki.ca)], {})


async def _echo_once(server: TlsSettings, client: TlsSettings) -> bytes:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await reader.readexactly(4))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server.server_ssl_context())
    port = srv.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client.client_ssl_context(), server_hostname="localhost"
        )
        writer.write(b"ping")
        await writer.drain()
        data = await reader.readexactly(4)
        writer.close()
        return data
    finally:
        srv.close()
        await srv.wait_closed()


async def test_raw_tcp_mutual_tls(pki: Pki) -> None:
    assert await _echo_once(pki.service, pki.client) == b"ping"


@pytest.mark.parametrize("who", ["anonymous", "rogue"])
async def test_raw_tcp_refuses_clients_without_a_trusted_certificate(pki: Pki, who: str) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        await _echo_once(pki.service, getattr(pki, who))


async def test_raw_tcp_client_refuses_an_untrusted_server(pki: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path)  # a server with a certificate from a CA the client does not trust
    with pytest.raises(ssl.SSLCertVerificationError):
        await _echo_once(other.service, pki.client)
