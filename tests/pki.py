"""A throwaway PKI for TLS tests: a CA, a service certificate for localhost/127.0.0.1 (server and client
use), a client certificate, and a second, untrusted CA with a client certificate of its own."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from prfaas.service.tls import TlsSettings

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class Pki:
    ca: Path  # the trusted CA's certificate
    service: TlsSettings  # what every service runs with: its certificate, the CA, client auth on
    client: TlsSettings  # a client holding a certificate from the trusted CA
    anonymous: TlsSettings  # a client that verifies the server but has no certificate
    rogue: TlsSettings  # a client whose certificate comes from another CA


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _cert(
    subject: str, key: Key, issuer: tuple[x509.Name, Key] | None, *, is_ca: bool, san: bool = False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if san:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, stem: str, cert: x509.Certificate, key: Key | None = None) -> tuple[str, str]:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        key_path.write_bytes(pem)
    return str(cert_path), str(key_path)


def _ca(folder: Path, stem: str) -> tuple[x509.Name, Key, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(f"{stem} CA", key, None, is_ca=True)
    return cert.subject, key, _write(folder, stem, cert)[0]


def _leaf(folder: Path, stem: str, issuer: tuple[x509.Name, Key]) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    return _write(folder, stem, _cert(stem, key, issuer, is_ca=False, san=True), key)


def make_pki(folder: Path) -> Pki:
    ca_name, ca_key, ca = _ca(folder, "ca")
    _rogue_name, rogue_key, _rogue_ca = _ca(folder, "rogue-ca")
    service = _leaf(folder, "service", (ca_name, ca_key))
    client = _leaf(folder, "client", (ca_name, ca_key))
    rogue = _leaf(folder, "rogue-client", (_rogue_name, rogue_key))
    return Pki(
        ca=Path(ca),
        service=TlsSettings(*service, ca_file=ca, client_auth=True),
        client=TlsSettings(*client, ca_file=ca),
        anonymous=TlsSettings(ca_file=ca),
        rogue=TlsSettings(*rogue, ca_file=ca),
    )
