"""What the sftp backend does beyond the transport contract, against OpenSSH's sshd: files land in the login
folder, servers without posix-rename, logins by password or key, host key checks, the missing login folder. The
contract itself (atomic visibility, create-only, retries, ...) is test_transport.py's."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import paramiko
import pytest
from tests.destinations.conftest import Connect, Servers
from tests.destinations.contract import count_retries, fail_inside_open_write, refused, refused_once, write
from tests.servers import Target, sshd

from dsexport.destinations import DestinationError
from dsexport.destinations.sftp import SftpTransport

pytestmark = pytest.mark.parametrize("target", ["sftp"], indirect=True)


@pytest.fixture
def workdir(servers: Servers, target: Target) -> Path:
    """The sshd's folder: its host key, the client keys it authorises and the chroot with the login folder."""
    return servers.workdir(target.type)


def test_files_land_in_the_login_folder(transport: SftpTransport, workdir: Path, folder: str) -> None:
    data = os.urandom((9 << 20) + 12345)
    key = f"{folder}/ds/exportTime=202612010000/part-00000.parquet"
    write(transport, key, data)
    assert (sshd.login_folder(workdir) / key).read_bytes() == data


def test_error_inside_open_write_leaves_no_temporary_on_disk(
    transport: SftpTransport, workdir: Path, folder: str
) -> None:
    """Behind the server's back too: a temporary file that listings missed would fill the partner's disk."""
    fail_inside_open_write(transport, f"{folder}/part-00000.parquet", 300_000)
    assert [p.name for p in (sshd.login_folder(workdir) / folder).iterdir()] == []


def test_keys_cannot_escape_the_login_folder(transport: SftpTransport) -> None:
    with pytest.raises(DestinationError, match="escapes"):
        transport.get("../etc/passwd")


def test_server_without_posix_rename(transport: SftpTransport, folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers other than OpenSSH may lack posix-rename@openssh.com: replacing still works, by remove and rename."""

    def unsupported(self: paramiko.SFTPClient, old: str, new: str) -> None:
        raise OSError("Operation unsupported")

    monkeypatch.setattr(paramiko.SFTPClient, "posix_rename", unsupported)
    for body in (b"one", b"two"):
        with transport.open_write(f"{folder}/part") as out:
            out.write(body)
    assert transport.get(f"{folder}/part") == b"two"
    assert list(transport.list_keys(folder)) == [f"{folder}/part"]


def test_unusable_known_hosts(connect: Connect) -> None:
    assert "not a valid known_hosts line" in refused(lambda: connect(knownHosts="host ssh-ed25519 !!!"))
    assert "no usable host key" in refused(lambda: connect(knownHosts="# nothing here\n"))


@pytest.mark.parametrize("key_name", ["id_ed25519", "id_rsa", "id_ecdsa"])
def test_private_key_login(connect: Connect, workdir: Path, key_name: str, folder: str) -> None:
    secret = {"privateKey": sshd.client_key(workdir, key_name)}
    if key_name == "id_ed25519":
        secret["passphrase"] = sshd.KEY_PASSPHRASE
    transport = connect(secret)
    transport.put(f"{folder}/{key_name}", b"hello")
    assert transport.get(f"{folder}/{key_name}") == b"hello"


def test_wrong_password_is_refused_at_once(connect: Connect, target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    assert target.wrong_secret is not None
    failures = count_retries(monkeypatch)
    password = target.wrong_secret["password"]
    message = str(refused_once(failures, lambda: connect(target.wrong_secret), password))  # not retried
    assert "refused the login of user dsexport-sftp" in message


def test_unauthorised_key_is_refused(connect: Connect, workdir: Path) -> None:
    key = sshd.client_key(workdir, "unauthorised")
    assert "refused the login" in refused(lambda: connect({"privateKey": key}), key.splitlines()[1])


def test_wrong_or_missing_passphrase(connect: Connect, workdir: Path) -> None:
    key = sshd.client_key(workdir, "id_ed25519")
    message = refused(lambda: connect({"privateKey": key, "passphrase": "not-it-7c1e"}), "not-it-7c1e")
    assert "passphrase is wrong" in message
    assert "no passphrase" in refused(lambda: connect({"privateKey": key}))
    assert "not a private key" in refused(lambda: connect({"privateKey": "garbage"}))
    assert "password or a privateKey" in refused(lambda: connect({}))


def _server_key(workdir: Path) -> paramiko.PKey:
    kind, data = (workdir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(data))


def test_unknown_host_key_is_refused(connect: Connect, target: Target, workdir: Path) -> None:
    port = target.block["port"]
    other_host = target.block["knownHosts"].replace(f"[127.0.0.1]:{port}", "sftp.example.com")
    message = refused(lambda: connect(knownHosts=other_host))
    assert f"host key of [127.0.0.1]:{port}" in message
    assert _server_key(workdir).fingerprint in message
    assert "not in knownHosts" in message


def test_changed_host_key_is_refused(connect: Connect, target: Target, workdir: Path) -> None:
    port = target.block["port"]
    impostor = paramiko.Ed25519Key.from_private_key(  # any other ed25519 key: the user's client key will do
        io.StringIO(sshd.client_key(workdir, "unauthorised"))
    )
    message = refused(lambda: connect(knownHosts=f"[127.0.0.1]:{port} ssh-ed25519 {impostor.get_base64()}"))
    assert "does not match knownHosts" in message
    assert _server_key(workdir).fingerprint in message
    assert impostor.fingerprint in message


def test_hashed_known_hosts_line(connect: Connect, target: Target, folder: str) -> None:
    name, kind, key = target.block["knownHosts"].split()
    hashed = f"# from ssh-keyscan -H\n{paramiko.HostKeys.hash_host(name)} {kind} {key}\n"
    connect(knownHosts=hashed).put(f"{folder}/x", b"1")


def test_missing_login_folder_fails_fast(connect: Connect, target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    assert target.secret is not None
    failures = count_retries(monkeypatch)
    message = str(refused_once(failures, lambda: connect(**target.missing_block), target.secret["password"]))
    assert "refused an SFTP session" in message
