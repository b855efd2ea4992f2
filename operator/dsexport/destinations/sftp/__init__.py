"""SFTP destinations (paramiko), in three parts because each has its own reason to change: the transport (the
commit protocol's primitives over SFTP), host keys (whom to trust) and private keys (what users paste).

The dispatcher imports ``connect`` from here, tests ``SftpTransport``; the parts are internal.
"""

from dsexport.destinations.sftp.transport import SftpTransport, connect

__all__ = ["SftpTransport", "connect"]
