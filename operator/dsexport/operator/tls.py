"""The admission webhook's certificate: self-signed, made at start-up, never written anywhere but a private folder.

The API server verifies it with the CA bundle that the operator puts into the ValidatingWebhookConfiguration
itself, so nothing (no cert-manager, no Secret) has to be installed beside the operator; a new leader makes a new
certificate and replaces the bundle.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS: Final = 365


@dataclass(frozen=True)
class Certificate:
    cert_file: Path
    key_file: Path
    pem: bytes  # also the CA bundle: the certificate is its own issuer


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def self_signed(*, names: Sequence[str], now: dt.datetime | None = None) -> Certificate:
    """A certificate for ``names`` (DNS names or IP addresses; the first is the subject), in a fresh folder
    readable by this user only."""
    if not names:
        raise ValueError("a certificate needs at least one name")
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in dict.fromkeys(names)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = Path(tempfile.mkdtemp(prefix="dsexport-webhook-"))  # mode 0700
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_file, key_file = folder / "tls.crt", folder / "tls.key"
    cert_file.write_bytes(pem)
    key_file.touch(mode=0o600)
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Certificate(cert_file=cert_file, key_file=key_file, pem=pem)
