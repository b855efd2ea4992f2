"""The sftp backend against OpenSSH's sshd: atomic visibility, create-only commits, logins, host keys, retries."""

from __future__ import annotations

import base64
import io
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from tests.servers import ProcessServer, Target, sshd, wait_until

from dsexport import resources
from dsexport.destinations import AlreadyExistsError, DestinationError, open_transport
from dsexport.destinations.sftp import SftpTransport

NAME = "Destination/partner-sftp"


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sshd")


@pytest.fixture(scope="session")
def target(workdir: Path) -> Iterator[Target]:
    target = sshd.launch(workdir)
    yield target
    assert target.server is not None
    target.server.stop()


@pytest.fixture
def server(target: Target) -> Iterator[ProcessServer]:
    """The server, running again after the test whatever the test did to it."""
    assert target.server is not None
    yield target.server
    target.server.start()


def connect(target: Target, secret: dict[str, str] | None = None, **block: Any) -> SftpTransport:
    destination = resources.Destination.model_validate(
        {
            "metadata": {"name": "partner-sftp"},
            "spec": {"type": "sftp", "sftp": {**target.block, **block}, "credentialsSecretRef": {"name": "creds"}},
        }
    )
    credentials = target.secret if secret is None else secret
    assert credentials is not None
    transport = open_transport(destination, credentials)
    assert isinstance(transport, SftpTransport)
    return transport


@pytest.fixture
def transport(target: Target) -> Iterator[SftpTransport]:
    transport = connect(target)
    yield transport
    transport.close()


@pytest.fixture
def folder() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def refused(fn: Any, *secrets: str) -> str:
    """The DestinationError message of ``fn()``; no secret in it nor in any exception it chains, even hidden."""
    with pytest.raises(DestinationError) as info:
        fn()
    chain: list[BaseException] = []
    error: BaseException | None = info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    text = "\n".join(f"{e!r} {e.args!r}" for e in chain)
    for secret in secrets:
        assert secret not in text
    assert info.value.__cause__ is None
    message = str(info.value)
    assert message.startswith(f"{NAME}: ")
    return message


def test_large_file_reads_back_identical_and_leaves_no_temporary(
    transport: SftpTransport, workdir: Path, folder: str
) -> None:
    data = os.urandom((9 << 20) + 12345)
    key = f"{folder}/ds/exportTime=202612010000/part-00000.parquet"
    with transport.open_write(key) as out:
        view = memoryview(data)
        for start in range(0, len(data), 1 << 20):
            out.write(view[start : start + (1 << 20)])
    assert transport.get(key) == data
    assert (sshd.login_folder(workdir) / key).read_bytes() == data
    assert list(transport.list_keys(folder)) == [key]
    assert transport.exists(key)


def test_error_inside_open_write_leaves_nothing(transport: SftpTransport, workdir: Path, folder: str) -> None:
    key = f"{folder}/part-00000.parquet"
    with pytest.raises(RuntimeError, match="encoder failed"), transport.open_write(key) as out:
        out.write(b"x" * 300_000)
        raise RuntimeError("encoder failed")
    assert not transport.exists(key)
    assert list(transport.list_keys(folder)) == []
    assert [p.name for p in (sshd.login_folder(workdir) / folder).iterdir()] == []


def test_put_create_only_refuses_the_second_writer(transport: SftpTransport, folder: str) -> None:
    key = f"{folder}/_manifest.json"
    transport.put(key, b"first", create_only=True)
    with pytest.raises(AlreadyExistsError) as info:
        transport.put(key, b"second", create_only=True)
    assert str(info.value).startswith(f"{NAME}: ")
    assert transport.get(key) == b"first"
    assert list(transport.list_keys(folder)) == [key]  # the refused writer's temporary file is gone


def test_put_replaces(transport: SftpTransport, folder: str) -> None:
    transport.put(f"{folder}/_SUCCESS", b"one")
    transport.put(f"{folder}/_SUCCESS", b"")
    assert transport.get(f"{folder}/_SUCCESS") == b""
    assert transport.get(f"{folder}/missing") is None


def test_list_and_delete(transport: SftpTransport, folder: str) -> None:
    keys = [f"{folder}/a/1", f"{folder}/b/2", f"{folder}/b/c/3", f"{folder}/b/.4.tmp-0123"]
    for key in keys:
        transport.put(key, key.encode())
    assert transport.list_prefixes(folder) == ["a", "b"]
    assert transport.list_prefixes(f"{folder}/b") == ["c"]
    assert transport.list_prefixes(f"{folder}/nothing") == []
    assert list(transport.list_keys(f"{folder}/b")) == sorted(keys[1:])
    assert list(transport.list_keys(folder)) == sorted(keys)
    transport.delete([f"{folder}/a/1", f"{folder}/b/c/3", f"{folder}/never-there"])
    assert transport.list_prefixes(folder) == ["b"]  # emptied folders go, as on an object store
    assert list(transport.list_keys(folder)) == sorted([keys[1], keys[3]])
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


def test_unusable_known_hosts(target: Target) -> None:
    assert "not a valid known_hosts line" in refused(lambda: connect(target, knownHosts="host ssh-ed25519 !!!"))
    assert "no usable host key" in refused(lambda: connect(target, knownHosts="# nothing here\n"))


@pytest.mark.parametrize("key_name", ["id_ed25519", "id_rsa", "id_ecdsa"])
def test_private_key_login(target: Target, workdir: Path, key_name: str, folder: str) -> None:
    secret = {"privateKey": sshd.client_key(workdir, key_name)}
    if key_name == "id_ed25519":
        secret["passphrase"] = sshd.KEY_PASSPHRASE
    transport = connect(target, secret)
    transport.put(f"{folder}/{key_name}", b"hello")
    assert transport.get(f"{folder}/{key_name}") == b"hello"
    transport.close()


def test_wrong_password_is_refused_at_once(target: Target) -> None:
    assert target.wrong_secret is not None
    started = time.monotonic()
    message = refused(lambda: connect(target, target.wrong_secret), target.wrong_secret["password"])
    assert time.monotonic() - started < 10  # not retried
    assert "refused the login of user dsexport-sftp" in message


def test_unauthorised_key_is_refused(target: Target, workdir: Path) -> None:
    key = sshd.client_key(workdir, "unauthorised")
    assert "refused the login" in refused(lambda: connect(target, {"privateKey": key}), key.splitlines()[1])


def test_wrong_or_missing_passphrase(target: Target, workdir: Path) -> None:
    key = sshd.client_key(workdir, "id_ed25519")
    message = refused(lambda: connect(target, {"privateKey": key, "passphrase": "not-it-7c1e"}), "not-it-7c1e")
    assert "passphrase is wrong" in message
    assert "no passphrase" in refused(lambda: connect(target, {"privateKey": key}))
    assert "not a private key" in refused(lambda: connect(target, {"privateKey": "garbage"}))
    assert "password or a privateKey" in refused(lambda: connect(target, {}))


def _server_key(workdir: Path) -> paramiko.PKey:
    kind, data = (workdir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(data))


def test_unknown_host_key_is_refused(target: Target, workdir: Path) -> None:
    port = target.block["port"]
    other_host = target.block["knownHosts"].replace(f"[127.0.0.1]:{port}", "sftp.example.com")
    message = refused(lambda: connect(target, knownHosts=other_host))
    assert f"host key of [127.0.0.1]:{port}" in message
    assert _server_key(workdir).fingerprint in message
    assert "not in knownHosts" in message


def test_changed_host_key_is_refused(target: Target, workdir: Path) -> None:
    port = target.block["port"]
    impostor = paramiko.Ed25519Key.from_private_key(  # any other ed25519 key: the user's client key will do
        io.StringIO(sshd.client_key(workdir, "unauthorised"))
    )
    message = refused(lambda: connect(target, knownHosts=f"[127.0.0.1]:{port} ssh-ed25519 {impostor.get_base64()}"))
    assert "does not match knownHosts" in message
    assert _server_key(workdir).fingerprint in message
    assert impostor.fingerprint in message


def test_hashed_known_hosts_line(target: Target, folder: str) -> None:
    name, kind, key = target.block["knownHosts"].split()
    hashed = f"# from ssh-keyscan -H\n{paramiko.HostKeys.hash_host(name)} {kind} {key}\n"
    transport = connect(target, knownHosts=hashed)
    transport.put(f"{folder}/x", b"1")
    transport.close()


def test_missing_login_folder_fails_fast(target: Target) -> None:
    started = time.monotonic()
    assert target.secret is not None
    message = refused(lambda: connect(target, **target.missing_block), target.secret["password"])
    assert time.monotonic() - started < 10
    assert "refused an SFTP session" in message


def test_dropped_connection_is_reopened(
    transport: SftpTransport, server: ProcessServer, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server goes away between two writes and comes back while the second one is being retried."""
    monkeypatch.setenv("DSEXPORT_RETRY_ATTEMPTS", "30")
    transport.put(f"{folder}/before", b"1")
    attempts: list[int] = []
    reconnect = transport._reconnect

    def counting() -> None:
        attempts.append(1)
        reconnect()

    monkeypatch.setattr(transport, "_reconnect", counting)
    server.stop()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with transport.open_write(f"{folder}/after") as out:
                out.write(b"2" * 100_000)
        except BaseException as e:
            errors.append(e)

    # The write runs on a thread and the server restarts on this one: a server dies with the thread that
    # started it (PR_SET_PDEATHSIG), so it must not be a short-lived one.
    thread = threading.Thread(target=write)
    thread.start()
    wait_until(lambda: len(attempts) >= 2, timeout=30, what="the client to retry")
    server.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors == []
    assert transport.get(f"{folder}/after") == b"2" * 100_000
    assert len(attempts) >= 3


def test_server_gone_for_good_fails_within_the_deadline(
    transport: SftpTransport, server: ProcessServer, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSEXPORT_RETRY_DEADLINE", "2")
    monkeypatch.setenv("DSEXPORT_RETRY_ATTEMPTS", "100")
    server.stop()
    started = time.monotonic()
    message = refused(lambda: transport.put(f"{folder}/x", b"1"))
    assert time.monotonic() - started < 15
    assert "retries ran out" in message
