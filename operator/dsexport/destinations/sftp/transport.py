"""An SFTP server (paramiko): keys are paths relative to the account's login folder.

A file becomes visible only by a rename, because a reader must never see half a file: it is written under a
temporary name in its own folder, then renamed into place (``posix-rename@openssh.com`` where the server has it,
which replaces atomically). A create-only put uses the plain SFTP rename, because the protocol (and OpenSSH)
refuses it when the target exists, which is what lets exactly one of two writers of a slot commit.

A dropped connection is reopened within the retry policy, and reported as transient once that runs out, since the
server may well be back for the next run; credentials, host keys (see ``host_keys``) and permissions fail at once
and as permanent, with what to fix, and never carry a secret. Writes are pipelined, since waiting for each reply
would leave the connection idle for a round trip per 32 KiB.
"""

from __future__ import annotations

import contextlib
import functools
import posixpath
import secrets
import socket
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import paramiko

from dsexport import api
from dsexport.destinations import retry
from dsexport.destinations.base import AlreadyExistsError, DestinationError, Transport, Writable
from dsexport.destinations.sftp import host_keys, private_key

T = TypeVar("T")

TEMP_MARKER = ".tmp-"
CONNECT_TIMEOUT = 20.0  # TCP connect, banner, authentication, opening a channel
IO_TIMEOUT = 60.0  # one SFTP reply: a server that stops answering is treated as a dropped connection
# AES-GCM first where the server has it: one pass for encryption and integrity instead of AES-CTR plus HMAC,
# which takes about a third less CPU per byte on both ends; paramiko's own order puts it last.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def connect(name: str, block: api.Sftp, credentials: Mapping[str, str]) -> SftpTransport:
    """Connect and log in now, so bad credentials or host keys fail before any data is read."""
    transport = SftpTransport(name, block, credentials)
    transport.check()
    return transport


class SftpTransport(Transport):
    def __init__(self, name: str, block: api.Sftp, credentials: Mapping[str, str]) -> None:
        self._name = name
        self._block = block
        self._password = credentials.get("password") or None
        self._pkey = private_key.load(credentials, name=name) if credentials.get("privateKey") else None
        if self._password is None and self._pkey is None:
            raise DestinationError(f"{name}: the credentials Secret needs a password or a privateKey for SFTP")
        self._known_hosts = host_keys.parse(block.known_hosts, name=name)
        self._lock = threading.Lock()
        self._ssh: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    def describe(self) -> str:
        return f"sftp://{self._block.username}@{self._block.host}:{self._block.port}"

    def check(self) -> None:
        self._call("connecting", lambda sftp: sftp.normalize("."))

    # ------------------------------------------------------------------------------------------------ writes

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[Writable]:
        path = self._path(key)
        temp = _temp_name(path)
        channel, handle = self._call(f"creating {key}", lambda sftp: self._open_for_write(temp))
        try:
            out = _PipelinedWriter(handle, lambda e: self._fail(f"writing {key}", e))
            yield out
            out.finish()
            channel.close()
            self._call(f"renaming {temp} to {key}", lambda sftp: self._replace(sftp, temp, to=path, size=out.size))
        except BaseException:
            with contextlib.suppress(Exception):
                channel.close()
            self._discard(temp)
            raise

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        path = self._path(key)
        attempts = 0

        def attempt(sftp: paramiko.SFTPClient) -> None:
            nonlocal attempts
            attempts += 1
            temp = _temp_name(path)
            try:
                with self._create(sftp, sftp, temp) as f:
                    f.write(data)
                if not create_only:
                    self._replace(sftp, temp, to=path, size=len(data))
                    return
                try:
                    sftp.rename(temp, path)  # plain SFTP rename: refuses an existing target
                except OSError:
                    if not _is_file(sftp, path):
                        raise
                    # A retry after a reply lost in a dropped connection finds its own earlier rename.
                    if attempts > 1 and _read(sftp, path) == data:
                        sftp.remove(temp)
                        return
                    raise AlreadyExistsError(f"{self._name}: {key} already exists at {self.describe()}") from None
            except BaseException:
                with contextlib.suppress(Exception):
                    sftp.remove(temp)
                raise

        self._call(f"writing {key}", attempt)

    # ------------------------------------------------------------------------------------------------- reads

    def get(self, key: str) -> bytes | None:
        path = self._path(key)

        def attempt(sftp: paramiko.SFTPClient) -> bytes | None:
            try:
                return _read(sftp, path)
            except FileNotFoundError:
                return None

        return self._call(f"reading {key}", attempt)

    def exists(self, key: str) -> bool:
        path = self._path(key)
        return self._call(f"looking up {key}", lambda sftp: _is_file(sftp, path))

    def list_prefixes(self, prefix: str) -> list[str]:
        path = self._path(prefix)

        def attempt(sftp: paramiko.SFTPClient) -> list[str]:
            try:
                entries = sftp.listdir_attr(path)
            except FileNotFoundError:
                return []
            return sorted(e.filename for e in entries if stat.S_ISDIR(e.st_mode or 0))

        return self._call(f"listing {prefix or 'the root folder'}", attempt)

    def list_keys(self, prefix: str) -> Iterator[str]:
        root = self._path(prefix)

        def walk(sftp: paramiko.SFTPClient) -> list[str]:
            keys: list[str] = []
            folders = [root]
            while folders:
                folder = folders.pop()
                try:
                    entries = sftp.listdir_attr(folder)
                except FileNotFoundError:
                    continue
                for e in entries:
                    path = posixpath.normpath(posixpath.join(folder, e.filename))
                    if stat.S_ISDIR(e.st_mode or 0):
                        folders.append(path)
                    else:
                        keys.append(path)
            return sorted(keys)

        yield from self._call(f"listing {prefix or 'the root folder'}", walk)

    # ------------------------------------------------------------------------------------------------ delete

    def delete(self, keys: Iterable[str]) -> None:
        folders: set[str] = set()
        for key in keys:
            path = self._path(key)
            self._call(f"deleting {key}", functools.partial(_remove, path=path))
            folders.add(posixpath.dirname(path))
        # Object stores have no empty folders: prune them so listings look the same on every backend.
        for folder in sorted(folders, key=len, reverse=True):
            self._call(f"pruning {folder}", functools.partial(self._prune, folder=folder))

    def close(self) -> None:
        with self._lock:
            if self._ssh is not None:
                self._ssh.close()
            self._ssh = self._sftp = None

    # -------------------------------------------------------------------------------------------- internals

    def _path(self, key: str) -> str:
        """A path relative to the login folder; the server resolves it, so ``..`` must not reach outside."""
        parts = [p for p in key.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise DestinationError(f"{self._name}: key {key!r} escapes the destination folder")
        return "/".join(parts) or "."

    def _open_for_write(self, temp: str) -> tuple[paramiko.SFTPClient, paramiko.SFTPFile]:
        """A file on its own SFTP channel: its pipelined write replies then cannot mix with other requests."""
        ssh_transport = self._connected().get_transport()
        assert ssh_transport is not None
        channel = paramiko.SFTPClient.from_transport(ssh_transport)
        if channel is None:
            raise EOFError("the server closed the SFTP channel")
        try:
            _set_timeout(channel)
            handle = self._create(self._client(), channel, temp)
        except BaseException:
            channel.close()
            raise
        handle.set_pipelined(True)
        return channel, handle

    def _replace(self, sftp: paramiko.SFTPClient, temp: str, *, to: str, size: int) -> None:
        """Rename ``temp`` over ``to`` (``size`` bytes); idempotent, so a retry after a lost reply finds the work
        done."""
        try:
            sftp.posix_rename(temp, to)
        except FileNotFoundError:
            if not _is_file(sftp, temp) and _size(sftp, to) == size:
                return  # an earlier attempt renamed it; only its reply was lost
            raise
        except PermissionError:
            raise
        except OSError as e:
            if self._transient(e):
                raise
            # No posix-rename@openssh.com: a plain rename, which refuses an existing target.
            with contextlib.suppress(FileNotFoundError):
                sftp.remove(to)
            sftp.rename(temp, to)

    def _create(self, sftp: paramiko.SFTPClient, channel: paramiko.SFTPClient, path: str) -> paramiko.SFTPFile:
        """A new file at ``path`` (on ``channel``), its folder made if need be (through ``sftp``). Another writer's
        ``delete`` prunes a folder it empties, which may happen between the mkdir and the open: then both are
        done again."""
        races = 0
        while True:
            self._mkdirs(sftp, posixpath.dirname(path))
            try:
                return channel.open(path, "wb", bufsize=0)
            except FileNotFoundError:
                races += 1
                if races == _FOLDER_RACES:
                    raise

    def _mkdirs(self, sftp: paramiko.SFTPClient, folder: str) -> None:
        if folder in ("", "."):
            return
        try:
            if stat.S_ISDIR(sftp.stat(folder).st_mode or 0):
                return
            raise DestinationError(f"{self._name}: {folder} at {self.describe()} is a file, not a folder")
        except FileNotFoundError:
            pass
        self._mkdirs(sftp, posixpath.dirname(folder))
        try:
            sftp.mkdir(folder)
        except OSError:
            if not _is_dir(sftp, folder):  # a concurrent writer may have made it first
                raise

    def _prune(self, sftp: paramiko.SFTPClient, folder: str) -> None:
        """Remove ``folder`` and its parents while they are empty; the login folder itself stays."""
        while folder not in ("", "."):
            try:
                sftp.rmdir(folder)
            except OSError as e:
                if self._transient(e):
                    raise
                return  # not empty, or already gone
            folder = posixpath.dirname(folder)

    def _discard(self, temp: str) -> None:
        """Best effort: a leftover is removed by the next run (list_keys shows it), so do not wait for retries."""
        with contextlib.suppress(Exception):
            _remove(self._client(), temp)

    def _call(self, what: str, fn: Callable[[paramiko.SFTPClient], T]) -> T:
        try:
            return retry.call(lambda: fn(self._client()), transient=self._transient)
        except DestinationError:
            raise
        except Exception as e:
            error = self._fail(what, e)
        raise error  # outside the handler: no __context__ either

    def _fail(self, what: str, e: BaseException) -> DestinationError:
        """A message that says what to fix; SFTP and socket errors carry server text, never our credentials."""
        where = f"{self._name}: {what} at {self.describe()}"
        if isinstance(e, DestinationError):
            return e
        if isinstance(e, PermissionError):
            return DestinationError(
                f"{where}: permission denied; the user {self._block.username} needs write access to the folder"
            )
        if self._transient(e):
            return DestinationError(f"{where}: connection failed and retries ran out ({_reason(e)})", transient=True)
        return DestinationError(f"{where}: {_reason(e)}")  # the server's answer (e.g. no such file): it would repeat

    def _transient(self, e: BaseException) -> bool:
        if isinstance(e, DestinationError):
            return False
        if isinstance(e, socket.gaierror):
            return e.errno == socket.EAI_AGAIN
        if isinstance(e, EOFError | TimeoutError | ConnectionError | paramiko.ssh_exception.NoValidConnectionsError):
            return True
        if isinstance(e, paramiko.ssh_exception.IncompatiblePeer):
            return False  # no algorithm in common: the same answer every time
        if isinstance(e, paramiko.SSHException):
            return True  # "Server connection dropped", a lost banner; auth and host key errors are converted first
        # An SFTP failure status on a live connection is the server's answer; on a dead one, the connection's.
        return isinstance(e, OSError) and e.errno is None and not self._alive()

    def _alive(self) -> bool:
        ssh_transport = self._ssh.get_transport() if self._ssh is not None else None
        return ssh_transport is not None and ssh_transport.is_active()

    def _client(self) -> paramiko.SFTPClient:
        with self._lock:
            if self._sftp is None or not self._alive():
                self._reconnect()
            assert self._sftp is not None
            return self._sftp

    def _connected(self) -> paramiko.SSHClient:
        self._client()
        assert self._ssh is not None
        return self._ssh

    def _reconnect(self) -> None:
        if self._ssh is not None:
            self._ssh.close()
        self._ssh = self._sftp = None
        ssh = paramiko.SSHClient()
        self._known_hosts.install(ssh)
        block, host = self._block, host_keys.known_hosts_name(self._block)
        try:
            ssh.connect(
                block.host,
                port=block.port,
                username=block.username,
                password=self._password,
                pkey=self._pkey,
                look_for_keys=False,
                allow_agent=False,
                timeout=CONNECT_TIMEOUT,
                banner_timeout=CONNECT_TIMEOUT,
                auth_timeout=CONNECT_TIMEOUT,
                channel_timeout=CONNECT_TIMEOUT,
                transport_factory=_fast_cipher_transport,
            )
        except host_keys.UnknownHostKeyError as e:
            ssh.close()
            offered = host_keys.fingerprint(e.key)
            raise DestinationError(
                f"{self._name}: the host key of {host} ({offered}) is not in knownHosts; if this is the "
                f"right server, add its key line (ssh-keyscan -p {block.port} {block.host}) to spec.sftp.knownHosts"
            ) from None
        except paramiko.BadHostKeyException as e:
            ssh.close()
            offered, expected = host_keys.fingerprint(e.key), host_keys.fingerprint(e.expected_key)
            raise DestinationError(
                f"{self._name}: the host key of {host} ({offered}) does not match knownHosts "
                f"({expected}): the server's key changed, or something else answers there; "
                "update spec.sftp.knownHosts only if you know the change is genuine"
            ) from None
        except paramiko.BadAuthenticationType as e:
            ssh.close()
            raise DestinationError(
                f"{self._name}: {host} does not accept this kind of login for user {block.username} "
                f"(it allows: {', '.join(e.allowed_types) or 'nothing'}); use a password or privateKey accordingly"
            ) from None
        except paramiko.AuthenticationException:
            ssh.close()
            raise DestinationError(
                f"{self._name}: {host} refused the login of user {block.username}: check the username and the "
                "password or privateKey in the credentials Secret"
            ) from None
        except BaseException:
            ssh.close()
            raise
        ssh_transport = ssh.get_transport()
        assert ssh_transport is not None
        if self._known_hosts.is_revoked(ssh_transport.get_remote_server_key()):
            ssh.close()
            raise DestinationError(f"{self._name}: the host key of {host} is marked @revoked in knownHosts")
        try:
            sftp = ssh.open_sftp()
        except Exception:
            # Logged in, then the SFTP session was refused: what sshd does when the account's folder (or chroot)
            # is missing or has the wrong owner, or SFTP is not enabled for it. Retrying would not help.
            ssh.close()
            raise DestinationError(
                f"{self._name}: {host} accepted the login of {block.username} but refused an SFTP session; the "
                "account's home folder on the server is probably missing or unusable, or SFTP is not enabled for it"
            ) from None
        _set_timeout(sftp)
        self._ssh, self._sftp = ssh, sftp


class _PipelinedWriter:
    """Writes without waiting for each reply (as paramiko's put does), then reads every reply before the rename.

    paramiko drops the replies to pipelined writes that it has not read by close(), failures included, so a
    full disk would leave a hole in the file instead of an error; ``finish`` reads them all and raises.
    """

    def __init__(self, handle: paramiko.SFTPFile, fail: Callable[[BaseException], DestinationError]) -> None:
        self._handle = handle
        self._fail = fail
        self.size = 0

    def write(self, data: bytes | memoryview, /) -> int:
        try:
            self._handle.write(data)
        except Exception as e:
            raise self._fail(e) from None
        self.size += len(data)
        return len(data)

    def finish(self) -> None:
        handle: Any = self._handle  # the reply queue is paramiko's own: no public way to wait for it
        try:
            handle.flush()
            pending: deque[Any] = handle._reqs
            while pending:
                handle.sftp._read_response(pending.popleft())  # raises on a failure status
            handle.close()
        except Exception as e:
            raise self._fail(e) from None


def _fast_cipher_transport(
    sock: Any,
    /,
    *,
    gss_kex: bool = False,  # in the factory protocol of older paramiko releases; paramiko 4 dropped GSS-API
    gss_deleg_creds: bool = False,
    disabled_algorithms: Mapping[str, Iterable[str]] | None = None,
) -> paramiko.Transport:
    """What SSHClient.connect makes by default, with AES-GCM preferred."""
    transport = paramiko.Transport(sock, disabled_algorithms=disabled_algorithms)
    options = transport.get_security_options()
    fast = [c for c in PREFERRED_CIPHERS if c in options.ciphers]
    options.ciphers = fast + [c for c in options.ciphers if c not in fast]
    return transport


def _set_timeout(sftp: paramiko.SFTPClient) -> None:
    """Without a timeout, a server that stops answering would hang a request forever instead of failing it."""
    channel = sftp.get_channel()
    if channel is not None:
        channel.settimeout(IO_TIMEOUT)


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


_FOLDER_RACES = 3


def _temp_name(path: str) -> str:
    folder, base = posixpath.split(path)
    return posixpath.join(folder, f".{base}{TEMP_MARKER}{secrets.token_hex(6)}")


def _read(sftp: paramiko.SFTPClient, path: str) -> bytes:
    with sftp.open(path, "rb") as f:
        f.prefetch()
        return f.read()


def _size(sftp: paramiko.SFTPClient, path: str) -> int | None:
    try:
        return sftp.stat(path).st_size
    except FileNotFoundError:
        return None


def _is_file(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        return stat.S_ISREG(sftp.stat(path).st_mode or 0)
    except FileNotFoundError:
        return False


def _is_dir(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        return stat.S_ISDIR(sftp.stat(path).st_mode or 0)
    except FileNotFoundError:
        return False


def _remove(sftp: paramiko.SFTPClient, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        sftp.remove(path)
