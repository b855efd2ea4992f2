"""The Secret's ``privateKey`` as a paramiko key, with a message that says what is wrong with it.

paramiko reads keys from files and answers a wrong passphrase, a missing one and an unknown format with the same
few exceptions, so users could not tell which to fix; the cryptography library can, so it reads the key first and
tells the type. No exception text is kept: it could quote the key.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from dsexport.destinations.base import DestinationError

__all__ = ["load"]

_UNREADABLE = "privateKey is not a private key paramiko can read (OpenSSH or PEM format expected)"


def load(credentials: Mapping[str, str], *, name: str) -> paramiko.PKey:
    """Any key type paramiko loads, from ``privateKey`` (and ``passphrase``) text: like ``paramiko.PKey.from_path``,
    which only reads files. ``name`` is the Destination, for messages."""
    text = credentials["privateKey"].strip() + "\n"
    passphrase = credentials.get("passphrase") or None
    secret = passphrase.encode() if passphrase else None
    loader = (
        serialization.load_ssh_private_key
        if text.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        else serialization.load_pem_private_key
    )
    problem: str | None = None
    try:
        try:
            loaded = loader(text.encode(), password=secret)
        except TypeError:
            if secret is None:
                raise
            passphrase = None  # a passphrase for an unencrypted key is harmless: ignore it
            loaded = loader(text.encode(), password=None)
    except TypeError:
        problem = "privateKey is encrypted but the Secret has no passphrase"
    except ValueError:
        problem = (
            "privateKey could not be decrypted: the passphrase is wrong, or the key is damaged"
            if secret is not None
            else _UNREADABLE
        )
    except Exception:
        problem = _UNREADABLE
    if problem is not None:
        raise DestinationError(f"{name}: {problem}") from None
    key_class: type[paramiko.PKey]
    if isinstance(loaded, rsa.RSAPrivateKey):
        key_class = paramiko.RSAKey
    elif isinstance(loaded, ed25519.Ed25519PrivateKey):
        key_class = paramiko.Ed25519Key
    elif isinstance(loaded, ec.EllipticCurvePrivateKey):
        key_class = paramiko.ECDSAKey
    else:
        raise DestinationError(f"{name}: privateKey is of a type paramiko cannot use ({type(loaded).__name__})")
    try:
        return key_class.from_private_key(io.StringIO(text), password=passphrase)
    except Exception:
        raise DestinationError(f"{name}: privateKey could not be loaded by paramiko") from None
