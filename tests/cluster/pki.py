"""Certificates for the test control plane: one CA, the API server's serving certificate, client certificates.

Made fresh for every cluster so nothing from an earlier (possibly crashed) run is trusted by the next one.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_Key = ec.EllipticCurvePrivateKey


def _key() -> _Key:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _builder(subject: x509.Name, issuer: x509.Name, key: _Key) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
    )


def _pem(key: _Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, cert: x509.Certificate, key: _Key) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = path.with_suffix(".key")
    key_file.write_bytes(_pem(key))
    key_file.chmod(0o600)


def _ca(cn: str) -> tuple[x509.Certificate, _Key]:
    key, name = _key(), _name(cn)
    cert = (
        _builder(name, name, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_pki(folder: Path, clients: dict[str, tuple[str, str | None]], *, ips: Sequence[str] = ()) -> None:
    """Write ca, apiserver, service-account and one client pair per entry ``file: (user, group)`` into folder.

    The API server's certificate names 127.0.0.1, ``ips`` (where it listens, the ``kubernetes`` Service IP) and
    the Service's DNS names.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("dsexport-test-ca")
    ca_name = ca.subject
    _write(folder / "ca", ca, ca_key)

    def issue(file: str, cn: str, org: str | None, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> None:
        key = _key()
        builder = _builder(_name(cn, org), ca_name, key).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        _write(folder / file, builder.sign(ca_key, hashes.SHA256()), key)

    sans: list[x509.GeneralName] = [
        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in sorted({"127.0.0.1", *ips})),
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"),
    ]
    issue("apiserver", "kube-apiserver", None, ExtendedKeyUsageOID.SERVER_AUTH, sans)
    for file, (user, group) in clients.items():
        issue(file, user, group, ExtendedKeyUsageOID.CLIENT_AUTH, [])

    sa_key = _key()
    (folder / "sa.key").write_bytes(_pem(sa_key))
    (folder / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def serving_certificate(dns_names: Sequence[str]) -> tuple[bytes, bytes, bytes]:
    """A throwaway CA and a server certificate it signed for ``dns_names``: (ca, cert, key) as PEM."""
    ca, ca_key = _ca("dsexport-test-webhook-ca")
    key = _key()
    cert = (
        _builder(_name(dns_names[0]), ca.subject, key)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return ca.public_bytes(pem), cert.public_bytes(pem), _pem(key)
