"""What the destination backends share, without a server: part buffers, folder prefixes, secret scrubbing, the
create-only put whose reply was lost, known_hosts parsing, and how a local folder's OS errors are classified."""

from __future__ import annotations

import base64
import errno
import os
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from dsexport import api
from dsexport.destinations import AlreadyExistsError, DestinationError, filesystem, retry
from dsexport.destinations.base import folder_prefix, scrub
from dsexport.destinations.buffer import PartBuffer
from dsexport.destinations.filesystem import FilesystemTransport
from dsexport.destinations.sftp import host_keys

NAME = "Destination/unit"


# --------------------------------------------------------------------------------------------------- PartBuffer


def test_part_buffer_keeps_what_cannot_change_and_copies_the_rest() -> None:
    buffer = PartBuffer()
    reused = bytearray(b"abcdef")
    buffer.append(b"012")
    buffer.append(memoryview(b"0123456789")[3:6])
    buffer.append(memoryview(reused)[:3])
    buffer.append(memoryview(reused)[3:])
    reused[:] = b"XXXYYY"  # the caller reuses its buffers as soon as write returns
    assert len(buffer) == 12
    assert buffer.take() == b"012345abcdef"
    assert len(buffer) == 0 and not buffer
    assert buffer.take() == b""


def test_part_buffer_hands_a_single_bytes_piece_over_without_a_copy() -> None:
    buffer = PartBuffer()
    data = os.urandom(1000)
    buffer.append(data)
    assert buffer.take() is data


# ---------------------------------------------------------------------------------------- folders and secrets


@pytest.mark.parametrize(("prefix", "folder"), [("", ""), ("/", ""), ("a", "a/"), ("a/b/", "a/b/"), ("/a/b", "a/b/")])
def test_folder_prefix(prefix: str, folder: str) -> None:
    assert folder_prefix(prefix) == folder


def test_scrub_replaces_every_credential_value() -> None:
    account_key = "c2VjcmV0LWtleQ=="
    connection_string = f"AccountName=acct;AccountKey={account_key}"
    text = f"failed with {connection_string}; key {account_key}; again {account_key}"
    scrubbed = scrub(text, secrets=[account_key, "", connection_string])
    assert scrubbed == "failed with ***; key ***; again ***"
    assert scrub("nothing secret here", secrets=[]) == "nothing secret here"


# ------------------------------------------------------------------------------------------- create-only put


class _Store:
    """A create-only store whose first reply is lost after the write landed, as a dropped connection does."""

    def __init__(self, *, held: bytes | None = None, lose_first_reply: bool = False) -> None:
        self.held = held
        self.lose_first_reply = lose_first_reply

    def send(self, data: bytes) -> None:
        if self.held is not None:
            raise AlreadyExistsError(f"{NAME}: exists")
        self.held = data
        if self.lose_first_reply:
            self.lose_first_reply = False
            raise ConnectionResetError("reply lost")

    def retried(self, fn: Callable[[], object]) -> object:
        policy = retry.RetryPolicy(attempts=3, base_seconds=0, deadline_seconds=5)
        return retry.call(fn, transient=lambda e: isinstance(e, ConnectionError), policy=policy)


def test_create_only_put_whose_reply_was_lost_finds_its_own_bytes() -> None:
    store = _Store(lose_first_reply=True)
    retry.create_only_put(
        lambda: store.send(b"ours"), retried=store.retried, read_back=lambda: store.held, data=b"ours"
    )
    assert store.held == b"ours"


def test_create_only_put_refused_on_a_retry_by_other_bytes_is_a_conflict() -> None:
    """Ours landed, then another writer replaced it before our retry looked: not ours to claim."""
    store = _Store(lose_first_reply=True)
    with pytest.raises(AlreadyExistsError):
        retry.create_only_put(
            lambda: store.send(b"ours"), retried=store.retried, read_back=lambda: b"theirs", data=b"ours"
        )


def test_create_only_put_refused_at_once_is_a_conflict_even_with_the_same_bytes() -> None:
    store = _Store(held=b"ours")
    read: list[bool] = []

    def read_back() -> bytes | None:
        read.append(True)
        return store.held

    with pytest.raises(AlreadyExistsError):
        retry.create_only_put(lambda: store.send(b"ours"), retried=store.retried, read_back=read_back, data=b"ours")
    assert read == []  # the first attempt met an object that was there before us: nothing to check


# --------------------------------------------------------------------------------------------- known_hosts


def _public_key() -> tuple[str, paramiko.PKey]:
    """A fresh host key, as a known_hosts line's ``type base64`` and as paramiko's key."""
    line = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    kind, data = line.split()
    return line, paramiko.PKey.from_type_string(kind, base64.b64decode(data))


def test_known_hosts_plain_hashed_revoked_and_cert_authority_lines() -> None:
    plain, plain_key = _public_key()
    hashed, hashed_key = _public_key()
    revoked, revoked_key = _public_key()
    authority, authority_key = _public_key()
    text = "\n".join(
        [
            "# ssh-keyscan output",
            "",
            f"[sftp.example.com]:2222 {plain}",
            f"{paramiko.HostKeys.hash_host('other.example.com')} {hashed}",
            f"@revoked * {revoked}",
            f"@cert-authority *.example.com {authority}",
        ]
    )
    known = host_keys.parse(text, name=NAME)
    assert [(host, key.get_base64()) for host, key in known.trusted] == [
        ("[sftp.example.com]:2222", plain_key.get_base64()),
        (known.trusted[1][0], hashed_key.get_base64()),
    ]
    assert known.trusted[1][0].startswith("|1|")  # kept hashed: paramiko matches it as OpenSSH does
    assert known.is_revoked(revoked_key)
    assert not known.is_revoked(plain_key)
    assert not any(key.get_base64() == authority_key.get_base64() for _, key in known.trusted)  # trusts nothing

    ssh = paramiko.SSHClient()
    known.install(ssh)
    assert ssh.get_host_keys().lookup("other.example.com") is not None  # the hashed name matches
    assert ssh.get_host_keys().lookup("unknown.example.com") is None
    with pytest.raises(host_keys.UnknownHostKeyError) as info:
        host_keys.RefuseUnknownHost().missing_host_key(ssh, "unknown.example.com", plain_key)
    assert info.value.key is plain_key


@pytest.mark.parametrize(
    ("text", "problem"),
    [("host ssh-ed25519 !!!", "line 1 is not a valid known_hosts line"), ("# nothing\n", "no usable host key line")],
    ids=["invalid-line", "no-key-line"],
)
def test_unusable_known_hosts_are_permanent(text: str, problem: str) -> None:
    with pytest.raises(DestinationError, match=problem) as info:
        host_keys.parse(text, name=NAME)
    assert info.value.transient is False


@pytest.mark.parametrize(("port", "name"), [(22, "sftp.example.com"), (2222, "[sftp.example.com]:2222")])
def test_known_hosts_name_carries_a_port_other_than_22(port: int, name: str) -> None:
    block = api.Sftp.model_validate({"host": "sftp.example.com", "port": port, "username": "u", "knownHosts": "x"})
    assert host_keys.known_hosts_name(block) == name


# ------------------------------------------------------------------------------------ a local folder's errors


def _failing(monkeypatch: pytest.MonkeyPatch, name: str, code: int) -> None:
    """Make ``os.<name>`` fail with errno ``code``, as a full disk or a dead NFS server would."""

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, name, fail)


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        (errno.EIO, True),
        (errno.ESTALE, True),
        (errno.ETIMEDOUT, True),
        (errno.ENOTCONN, True),
        (errno.ENOSPC, False),
        (errno.EDQUOT, False),
        (errno.EACCES, False),
        (errno.EROFS, False),
    ],
    ids=lambda value: str(value).lower() if isinstance(value, bool) else errno.errorcode[value],
)
def test_a_local_folder_classifies_os_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, transient: bool
) -> None:
    transport = FilesystemTransport(tmp_path, name=NAME)
    _failing(monkeypatch, "fsync", code)
    operations: list[Callable[[], object]] = [
        lambda: transport.put("a/x", b"1"),
        lambda: transport.put("a/y", b"1", create_only=True),
        lambda: _write(transport, "a/z", b"1"),
    ]
    for operation in operations:
        with pytest.raises(DestinationError) as info:
            operation()
        assert info.value.transient is transient
        assert str(info.value).startswith(f"{NAME}: ")
        assert os.strerror(code) in str(info.value)
    monkeypatch.undo()
    assert list(transport.list_keys("")) == []  # no temporary left behind


def test_a_missing_or_read_only_folder_is_permanent(tmp_path: Path) -> None:
    missing = FilesystemTransport("/proc/dsexport-no-such-folder", name=NAME)
    with pytest.raises(DestinationError) as info:
        missing.put("x", b"1")
    assert info.value.transient is False
    (tmp_path / "file").write_bytes(b"")
    not_a_folder = FilesystemTransport(tmp_path / "file", name=NAME)
    with pytest.raises(DestinationError) as info:
        _write(not_a_folder, "x", b"1")
    assert info.value.transient is False
    with pytest.raises(DestinationError, match="escapes"):
        FilesystemTransport(tmp_path, name=NAME).get("../x")


def test_a_full_disk_while_streaming_is_a_destination_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    transport = FilesystemTransport(tmp_path, name=NAME)
    _failing(monkeypatch, "posix_fadvise", errno.ENOSPC)
    with pytest.raises(DestinationError, match="No space left") as info, transport.open_write("part") as out:
        out.write(b"x" * (32 << 20))  # SYNC_EVERY: the write starts writeback, which fails
    assert info.value.transient is False
    monkeypatch.undo()
    assert list(transport.list_keys("")) == []


def test_the_callers_own_os_error_passes_through_open_write(tmp_path: Path) -> None:
    """An error of the encoder inside the block is not the destination's: it comes out unchanged."""
    transport = FilesystemTransport(tmp_path, name=NAME)
    with pytest.raises(FileNotFoundError, match="source file gone"), transport.open_write("part") as out:
        out.write(b"x")
        raise FileNotFoundError("source file gone")
    assert list(transport.list_keys("")) == []


def _write(transport: FilesystemTransport, key: str, data: bytes) -> None:
    with transport.open_write(key) as out:
        out.write(data)


def test_a_local_folder_makes_written_parts_durable_before_the_next_put(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts are renamed into place without a folder fsync each; the next put (the commit's claim) first makes
    every folder written or made since durable (the new slot folder's entry in its parent too), then itself."""
    transport = FilesystemTransport(tmp_path, name=NAME)
    events: list[str] = []
    fsync_dir = filesystem._fsync_dir
    link = os.link

    def spy_fsync_dir(path: Path) -> None:
        events.append(f"fsync {path.relative_to(tmp_path)}")
        fsync_dir(path)

    def spy_link(src: str | Path, dst: str | Path) -> None:
        events.append(f"link {Path(dst).relative_to(tmp_path)}")
        link(src, dst)

    monkeypatch.setattr(filesystem, "_fsync_dir", spy_fsync_dir)
    monkeypatch.setattr(os, "link", spy_link)
    _write(transport, "out/events/exportTime=1/part-0", b"0")
    (tmp_path / "source").write_bytes(b"1")
    with (tmp_path / "source").open("rb") as source:
        assert transport.copy_local_file(source, "out/events/exportTime=1/part-1") == 1
    assert events == []
    transport.put("out/events/_first.json", b"{}", create_only=True)
    synced = {"fsync out/events/exportTime=1", "fsync out/events", "fsync out", "fsync ."}
    assert set(events[:-2]) == synced and len(events) == len(synced) + 2
    assert events[-2:] == ["link out/events/_first.json", "fsync out/events"]
    events.clear()
    transport.put("out/events/exportTime=1/_SUCCESS", b"")  # nothing new before it: only its own folder
    assert events == ["fsync out/events/exportTime=1"]


@pytest.mark.parametrize("create_only", [True, False])
def test_a_local_folder_writes_a_small_file_again_when_a_cleaner_removed_its_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, create_only: bool
) -> None:
    """Two runs publishing one commit at once: one cleaning the folder may remove the other's temporary
    ``_SUCCESS`` or manifest before its rename; the put is made again instead of failing the run."""
    transport = FilesystemTransport(tmp_path, name=NAME)
    name = "link" if create_only else "replace"
    original = getattr(os, name)
    removed: list[str] = []

    def cleaner_first(src: str | Path, dst: str | Path) -> None:
        if not removed:
            removed.append(str(src))
            Path(src).unlink()
        original(src, dst)

    monkeypatch.setattr(os, name, cleaner_first)
    transport.put("slot/_SUCCESS", b"marker", create_only=create_only)
    monkeypatch.undo()
    assert removed and (tmp_path / "slot" / "_SUCCESS").read_bytes() == b"marker"
    assert sorted(p.name for p in (tmp_path / "slot").iterdir()) == ["_SUCCESS"]
