"""Which server the SFTP backend is willing to talk to: the ones ``spec.sftp.knownHosts`` names, nothing else.

A password goes to whoever answers the connection, so trust cannot be "first use": an unknown key is refused (never
added), a changed key is refused, and a key marked ``@revoked`` is refused even when another line trusts it. The
lines are read the way OpenSSH reads known_hosts (what ``ssh-keyscan`` prints, hashed names included), so a user
can paste them as they are. Refusals show the offered key's fingerprint, which is what a user compares with the
server administrator's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import paramiko

from dsexport import api
from dsexport.destinations.base import DestinationError

__all__ = ["KnownHosts", "RefuseUnknownHost", "UnknownHostKeyError", "fingerprint", "known_hosts_name", "parse"]


@dataclass(frozen=True)
class KnownHosts:
    """What a knownHosts text trusts: (host pattern, key) pairs, and the keys it revokes (base64)."""

    trusted: list[tuple[str, paramiko.PKey]]
    revoked: frozenset[str] = field(default_factory=frozenset)

    def install(self, ssh: paramiko.SSHClient) -> None:
        """Make ``ssh`` accept exactly these keys and refuse any other (never remembering a new one)."""
        ssh.set_missing_host_key_policy(RefuseUnknownHost())
        for hostname, key in self.trusted:
            ssh.get_host_keys().add(hostname, key.get_name(), key)

    def is_revoked(self, key: paramiko.PKey) -> bool:
        return key.get_base64() in self.revoked


class UnknownHostKeyError(paramiko.SSHException):
    """The server offered a key no knownHosts line trusts; carries it for the message."""

    def __init__(self, key: paramiko.PKey) -> None:
        super().__init__("unknown host key")
        self.key = key


class RefuseUnknownHost(paramiko.MissingHostKeyPolicy):
    """paramiko's RejectPolicy, carrying the offered key so the message can show its fingerprint."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise UnknownHostKeyError(key)


def parse(text: str, *, name: str) -> KnownHosts:
    """Trusted and revoked keys from known_hosts text; hashed names work as in OpenSSH.

    ``@cert-authority`` lines trust nothing here (paramiko does not check host certificates). ``name`` is the
    Destination, for messages.
    """
    trusted: list[tuple[str, paramiko.PKey]] = []
    revoked: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        marker, rest = line.split(None, 1) if line.startswith("@") else ("", line)
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(rest, lineno=number)
        except (paramiko.hostkeys.InvalidHostKey, paramiko.SSHException, ValueError):
            raise DestinationError(f"{name}: knownHosts line {number} is not a valid known_hosts line") from None
        if entry is None:
            continue  # a key type paramiko cannot use
        if marker == "@revoked":
            revoked.add(entry.key.get_base64())
        elif not marker:
            trusted += [(hostname, entry.key) for hostname in entry.hostnames]
    if not trusted:
        raise DestinationError(
            f"{name}: knownHosts has no usable host key line; expected ssh-keyscan output such as "
            "'sftp.example.com ssh-ed25519 AAAA...' (or '[host]:port ...' for a port other than 22)"
        )
    return KnownHosts(trusted, frozenset(revoked))


def known_hosts_name(block: api.Sftp) -> str:
    """The name a known_hosts line must carry for this server (OpenSSH adds the port when it is not 22)."""
    return block.host if block.port == 22 else f"[{block.host}]:{block.port}"


def fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"
