"""The webhook's self-signed certificate passes a verifying TLS client that trusts only it, for each name."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest
from cryptography import x509

from dsexport.operator import tls


def _handshake(cert: tls.Certificate, *, server_hostname: str) -> None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert.cert_file, cert.key_file)
    client_ctx = ssl.create_default_context(cadata=cert.pem.decode())
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.recv(1)
            except (ssl.SSLError, OSError):
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as conn,
            ):
                conn.sendall(b"x")
        finally:
            thread.join(timeout=10)


def test_the_certificate_verifies_for_its_names_only() -> None:
    cert = tls.self_signed(names=["127.0.0.1", "dsexport-webhook.ops.svc"])
    sans = x509.load_pem_x509_certificate(cert.pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert [str(ip) for ip in sans.value.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.value.get_values_for_type(x509.DNSName) == ["dsexport-webhook.ops.svc"]
    assert cert.key_file.stat().st_mode & 0o077 == 0  # the key is this user's only
    _handshake(cert, server_hostname="127.0.0.1")
    _handshake(cert, server_hostname="dsexport-webhook.ops.svc")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(cert, server_hostname="elsewhere.example")


def test_a_certificate_needs_a_name() -> None:
    with pytest.raises(ValueError, match="at least one name"):
        tls.self_signed(names=[])
