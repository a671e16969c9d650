"""TLS and mutual TLS for every channel: gRPC credentials and `ssl` contexts from one value object.

A service has one identity: its certificate and key serve its own port and are presented as the client
certificate when it calls other services; the CA verifies the peers it calls and, with client auth on,
the clients that call it. With client auth on every service, only holders of a certificate signed by
the deployment's CA can reach any port, the cross-datacenter link included.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc


class TlsError(ValueError):
    """The TLS configuration is unusable; the message names the flag to fix."""


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """PEM files: `cert_file` + `key_file` (this side's certificate chain and key), `ca_file` (the CA that
    signs the peers' certificates; empty = the system roots, for clients) and `client_auth` (a server
    requires a client certificate signed by `ca_file`)."""

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    client_auth: bool = False

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            given, missing = ("--tls-cert", "--tls-key") if self.cert_file else ("--tls-key", "--tls-cert")
            raise TlsError(f"{given} is set but {missing} is not: a certificate needs its private key, give both")
        if self.client_auth and not self.ca_file:
            raise TlsError("--tls-client-auth needs --tls-ca: the CA that signs the clients' certificates")
        for flag, path in (("--tls-cert", self.cert_file), ("--tls-key", self.key_file), ("--tls-ca", self.ca_file)):
            if path:
                _read(flag, path)
        _check_pem(self)

    @property
    def has_identity(self) -> bool:
        return bool(self.cert_file)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for a gRPC server port (needs a certificate)."""
        self._need_identity("a TLS server")
        return grpc.ssl_server_credentials(
            [(_read("--tls-key", self.key_file), _read("--tls-cert", self.cert_file))],
            root_certificates=_read("--tls-ca", self.ca_file) if self.client_auth else None,
            require_client_auth=self.client_auth,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for a gRPC channel: verify the server with `ca_file`, present the certificate if set."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read("--tls-ca", self.ca_file) if self.ca_file else None,
            private_key=_read("--tls-key", self.key_file) if self.has_identity else None,
            certificate_chain=_read("--tls-cert", self.cert_file) if self.has_identity else None,
        )

    def server_ssl_context(self) -> ssl.SSLContext:
        """The server side of a raw TCP connection (e.g. a KV data plane), same policy as the gRPC port."""
        self._need_identity("a TLS server")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.client_auth:
            ctx.load_verify_locations(cafile=self.ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_ssl_context(self) -> ssl.SSLContext:
        """The client side of a raw TCP connection: verifies the server's certificate and host name."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.has_identity:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def _need_identity(self, what: str) -> None:
        if not self.has_identity:
            raise TlsError(f"{what} needs --tls-cert and --tls-key")


class TlsFields(Protocol):
    """The four TLS fields every service's settings carry (`--tls-cert`, `PRFAAS_TLS_CERT`, ...)."""

    @property
    def tls_cert(self) -> str: ...
    @property
    def tls_key(self) -> str: ...
    @property
    def tls_ca(self) -> str: ...
    @property
    def tls_client_auth(self) -> bool: ...


def service_tls(settings: TlsFields) -> TlsSettings | None:
    """A service's TLS from its settings: None when no TLS field is set, else validated.

    A service serves TLS on its own port, so once any TLS field is set it needs a certificate."""
    if not (settings.tls_cert or settings.tls_key or settings.tls_ca or settings.tls_client_auth):
        return None
    tls = TlsSettings(settings.tls_cert, settings.tls_key, settings.tls_ca, settings.tls_client_auth)
    if not tls.has_identity:
        raise TlsError("TLS for a service needs --tls-cert and --tls-key (its own certificate), not only --tls-ca")
    return tls


def _read(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"{flag} {path}: cannot read the file ({exc.strerror or exc})") from exc


def _check_pem(tls: TlsSettings) -> None:
    """Load the files the way a handshake will, so a bad file fails here and not at the first connection."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.cert_file:
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except ssl.SSLError as exc:
            raise TlsError(
                f"--tls-cert {tls.cert_file} / --tls-key {tls.key_file}: not a PEM certificate chain and its "
                f"matching private key ({exc.reason or exc})"
            ) from exc
    if tls.ca_file:
        try:
            ctx.load_verify_locations(cafile=tls.ca_file)
        except ssl.SSLError as exc:
            raise TlsError(f"--tls-ca {tls.ca_file}: not a PEM CA certificate ({exc.reason or exc})") from exc
