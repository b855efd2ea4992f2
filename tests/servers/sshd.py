"""OpenSSH's sshd as the real SFTP server: its own config, host key and port, never the system service.

sshd logs in only real system users, and checks passwords only against /etc/shadow, so the accounts come from
``tests/servers/install.sh`` (run once per machine by ``make test``): ``dsexport-sftp`` takes the password or
any key authorised here, ``dsexport-sftp-nodir`` takes the same credentials but its chroot folder does not exist.

The destination root of an SFTP Destination is the account's login folder (``folder`` is relative to it). Each
launch gets its own chroot under /var/lib/dsexport-sftp (a chroot must be root-owned all the way up, which rules
out /tmp), with the login folder ``/dsexport-sftp`` inside it, so runs never see each other's files. The "missing
root" case is the account whose chroot is missing: it authenticates, then sshd refuses to open its SFTP session,
which is what a partner server with a deleted or broken account folder does.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.servers import ProcessServer, ServerError, Target, free_port, port_open

SSHD = Path("/usr/sbin/sshd")
SFTP_BASE = Path("/var/lib/dsexport-sftp")
USER = "dsexport-sftp"
NODIR_USER = "dsexport-sftp-nodir"
KEY_PASSPHRASE = "correct horse battery staple"  # protects the test client key id_ed25519 (made per launch)
# Client keys made and authorised per launch, as (file name, ssh-keygen arguments): the formats users paste.
CLIENT_KEYS = {
    "id_ed25519": ["-t", "ed25519", "-N", KEY_PASSPHRASE],  # OpenSSH format, encrypted
    "id_rsa": ["-t", "rsa", "-b", "3072", "-m", "PEM", "-N", ""],  # legacy PEM "BEGIN RSA PRIVATE KEY"
    "id_ecdsa": ["-t", "ecdsa", "-b", "256", "-N", ""],
    "unauthorised": ["-t", "ed25519", "-N", ""],  # a valid key the server does not know
}
INSTALL_HINT = "run tests/servers/install.sh as root (make test does)"


@dataclass
class SshdServer(ProcessServer):
    """sshd whose stop() also ends the sessions it forked: they run in their own sessions (setsid), so stopping
    the listener's process group alone would leave established SFTP connections working."""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            super().stop()
            return
        sessions = _descendants(self.proc.pid)
        super().stop()  # first, so that no new session starts while we end the others
        for pid in sessions:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":  # still that session, not a reused pid
                    os.kill(pid, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the sshd we started), from /proc: these are ours to end."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for child in (Path(f"/proc/{pid}/task/{pid}/children").read_text()).split():
            found += [int(child), *_descendants(int(child))]
    return found


def client_key(workdir: Path, name: str) -> str:
    """The private key text of one of ``CLIENT_KEYS``, as a Secret's privateKey holds it."""
    return (workdir / "client-keys" / name).read_text()


def password() -> str:
    """The accounts' password, made at random by install.sh and readable by root only."""
    try:
        return (SFTP_BASE / "password").read_text()
    except OSError as e:
        raise ServerError(f"no SFTP test password in {SFTP_BASE} ({e.strerror}): {INSTALL_HINT}") from None


def known_hosts_line(workdir: Path, port: int, host: str = "127.0.0.1") -> str:
    public = (workdir / "ssh_host_ed25519_key.pub").read_text().split()
    return f"[{host}]:{port} {public[0]} {public[1]}"


def login_folder(workdir: Path) -> Path:
    """The account's login folder on disk (the destination root), for tests that look behind the server's back."""
    return workdir / "chroot" / USER


def launch(workdir: Path, host: str = "127.0.0.1") -> Target:
    """Start sshd on a free port of ``host`` (loopback; the node address for pods); the Target logs in as
    ``dsexport-sftp`` with its password."""
    for user in (USER, NODIR_USER):
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise ServerError(f"no system user {user}: {INSTALL_HINT}") from None
    if not SSHD.exists() or not Path("/run/sshd").is_dir():
        raise ServerError(f"{SSHD} or /run/sshd is missing: {INSTALL_HINT}")
    workdir.mkdir(parents=True, exist_ok=True)
    run = _new_run_folder()
    chroot = run / "root"
    home = chroot / USER
    for folder in (chroot, home, run / "keys"):
        folder.mkdir()
        folder.chmod(0o755)  # whatever the umask: the account must reach its folder and its keys
    shutil.chown(home, USER, USER)
    (workdir / "chroot").symlink_to(chroot)

    keys = workdir / "client-keys"
    keys.mkdir()
    _keygen(workdir / "ssh_host_ed25519_key", ["-t", "ed25519", "-N", ""])
    for name, args in CLIENT_KEYS.items():
        _keygen(keys / name, [*args, "-C", f"dsexport-test-{name}"])
    authorised = "".join((keys / f"{n}.pub").read_text() for n in CLIENT_KEYS if n != "unauthorised")
    for user in (USER, NODIR_USER):
        (run / "keys" / user).write_text(authorised)

    port = free_port()
    config = workdir / "sshd_config"
    config.write_text(
        f"""\
ListenAddress {host}
Port {port}
HostKey {workdir / "ssh_host_ed25519_key"}
PidFile none
UsePAM no
PermitRootLogin no
AllowUsers {USER} {NODIR_USER}
AuthorizedKeysFile {run / "keys"}/%u
PubkeyAuthentication yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
LogLevel VERBOSE
MaxStartups 100
Subsystem sftp internal-sftp
ChrootDirectory {chroot}
ForceCommand internal-sftp -d /%u

Match User {NODIR_USER}
    ChrootDirectory {run / "missing"}
"""
    )
    server = SshdServer(
        name="sshd",
        argv=[str(SSHD), "-D", "-e", "-f", str(config)],
        log=workdir / "sshd.log",
        ready=lambda: port_open(port, host),
        cwd=workdir,
    )
    server.start()
    block = {"host": host, "port": port, "username": USER, "knownHosts": known_hosts_line(workdir, port, host)}
    return Target(
        type="sftp",
        block=block,
        secret={"password": password()},
        wrong_secret={"password": "not-the-password-" + secrets.token_hex(4)},
        missing_block={**block, "username": NODIR_USER},
        server=server,
    )


def _keygen(path: Path, args: list[str]) -> None:
    subprocess.run(["ssh-keygen", "-q", "-f", str(path), *args], check=True, stdin=subprocess.DEVNULL)


def _new_run_folder() -> Path:
    """A root-owned folder for this launch, removed when this process exits; folders of dead runs go too."""
    for old in SFTP_BASE.glob("run-*"):
        if not _owner_alive(old):
            shutil.rmtree(old, ignore_errors=True)
    run = SFTP_BASE / f"run-{secrets.token_hex(6)}"
    run.mkdir()
    run.chmod(0o755)
    (run / "owner").write_text(str(os.getpid()))
    atexit.register(shutil.rmtree, run, ignore_errors=True)
    return run


def _owner_alive(run: Path) -> bool:
    try:
        os.kill(int((run / "owner").read_text()), 0)
    except (OSError, ValueError):
        return False
    return True
