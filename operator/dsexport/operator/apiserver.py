"""A small JSON client for the Kubernetes API server: the operator's and the exporter pod's only way to it.

Not the official client: importing it costs about 45 MiB of generated models, which an operator that sends plain
JSON to a dozen paths never uses (kopf has its own aiohttp connection for watches). The connection is found
the way client-go finds it: the pod's service account (its token file read again as the kubelet rotates it), else
a kubeconfig (``--kubeconfig``, ``$KUBECONFIG`` or ``~/.kube/config``) with a token or a client certificate. A
kubeconfig that needs an exec plugin or an auth provider is refused with a message saying so, never half-used.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import urllib3
import yaml

SERVICE_ACCOUNT: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_SECONDS: Final = 60.0
"""How long a service account token read from its file is used: the kubelet replaces it well before it expires."""
DEFAULT_TIMEOUT: Final = 30.0


def user_agent() -> str:
    """``dsexport/VERSION``: how the API server's audit log and metrics tell this client's requests apart."""
    try:
        return f"dsexport/{metadata.version('dsexport')}"
    except metadata.PackageNotFoundError:
        return "dsexport"


class ApiError(Exception):
    """The API server refused a request (``status`` is its HTTP status), or gave a reply that is not JSON."""

    def __init__(self, *, status: int, reason: str, message: str = "", causes: tuple[str, ...] = ()) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.causes = causes  # the reasons in the Status's details, e.g. NamespaceTerminating
        super().__init__(f"HTTP {status} {reason}" + (f": {message}" if message else ""))

    @classmethod
    def of(cls, response: urllib3.BaseHTTPResponse) -> ApiError:
        """The error a refusal stands for, with the server's own explanation (a Status object's message and
        reason, which name no secret)."""
        status: Any = None
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            status = json.loads(response.data)
        if not isinstance(status, dict):
            return cls(status=response.status, reason=response.reason or "")
        message, reason = status.get("message"), status.get("reason")
        details = status.get("details")
        listed = details.get("causes") if isinstance(details, dict) else None
        causes = [c.get("reason") for c in listed or [] if isinstance(c, dict)]
        return cls(
            status=response.status,
            reason=reason if isinstance(reason, str) and reason else response.reason or "",
            message=message if isinstance(message, str) else "",
            causes=tuple(c for c in causes if isinstance(c, str)),
        )


class ConfigError(Exception):
    """No usable connection: not in a pod and no kubeconfig, or one this client cannot use."""


class ApiServer:
    """One connection pool to the API server, safe to share between threads."""

    def __init__(
        self,
        *,
        server: str,
        context: ssl.SSLContext,
        token: Callable[[], str | None] = lambda: None,
        headers: Mapping[str, str] | None = None,
        retries: bool = True,
        pool_size: int = 10,
    ) -> None:
        self.server = server.rstrip("/")
        self._token = token
        self._headers = dict(headers or {})
        self._agent = user_agent()
        # urllib3's own retries only for connections that were never established (a request may not be sent
        # twice: a repeated POST would create two Jobs); the election turns even those off to keep its deadline.
        retry = urllib3.Retry(connect=3, read=0, status=0, other=0, redirect=0) if retries else False
        self._pool = urllib3.PoolManager(num_pools=2, maxsize=pool_size, ssl_context=context, retries=retry)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Sequence[tuple[str, str]] = (),
        content_type: str = "application/json",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> dict[str, Any]:
        """Send one request and return its reply, a JSON object; any other status than 2xx raises ``ApiError``."""
        headers = {"Accept": "application/json", "User-Agent": self._agent, **self._headers}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        response = self._pool.request(
            method,
            self.server + path + (f"?{urlencode(list(query))}" if query else ""),
            body=data,
            headers=headers,
            timeout=timeout,
        )
        if not 200 <= response.status <= 299:
            raise ApiError.of(response)
        if not response.data:
            return {}
        try:
            found = json.loads(response.data)
        except ValueError:
            raise ApiError(status=response.status, reason="InvalidReply", message="the reply is not JSON") from None
        if not isinstance(found, dict):
            raise ApiError(status=response.status, reason="InvalidReply", message="the reply is not a JSON object")
        return found

    def get(self, path: str, *, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any] | None:
        """The object at ``path``, None when there is none."""
        try:
            return self.request("GET", path, timeout=timeout)
        except ApiError as e:
            if e.status == 404:
                return None
            raise


class _TokenFile:
    """A service account token, read again from its file at most every ``TOKEN_REREAD_SECONDS``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._token: str | None = None
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> str | None:
        with self._lock:
            if time.monotonic() - self._read_at > TOKEN_REREAD_SECONDS:
                self._token = self._path.read_text().strip() or None
                self._read_at = time.monotonic()
            return self._token


def in_pod() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (SERVICE_ACCOUNT / "token").is_file()


def in_cluster(*, retries: bool = True) -> ApiServer:
    """The pod's own connection: the API server where ``KUBERNETES_SERVICE_HOST``/``_PORT`` say (no cluster DNS
    needed), the service account's CA and token."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host or not (SERVICE_ACCOUNT / "token").is_file():
        raise ConfigError("not in a pod with a service account token (KUBERNETES_SERVICE_HOST or its token is missing)")
    context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
    server = f"https://{f'[{host}]' if ':' in host else host}:{port}"
    return ApiServer(server=server, context=context, token=_TokenFile(SERVICE_ACCOUNT / "token"), retries=retries)


def connect(kubeconfig: str | None = None, *, retries: bool = True) -> ApiServer:
    """``kubeconfig`` if given, else the pod's service account, else ``$KUBECONFIG`` or ``~/.kube/config``."""
    if kubeconfig is None and in_pod():
        return in_cluster(retries=retries)
    return from_kubeconfig(kubeconfig, retries=retries)


def _kubeconfig_paths(explicit: str | None) -> list[Path]:
    if explicit:
        return [Path(explicit).expanduser()]
    listed = [Path(p).expanduser() for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p.strip()]
    return listed or [Path("~/.kube/config").expanduser()]


def _named(config: Mapping[str, Any], section: str, name: str, key: str) -> dict[str, Any] | None:
    for item in config.get(section) or []:
        if isinstance(item, Mapping) and item.get("name") == name:
            found = item.get(key)
            return dict(found) if isinstance(found, Mapping) else {}
    return None


def _resolve(
    entries: list[tuple[Path, dict[str, Any]]], section: str, name: str, key: str
) -> tuple[Path, dict[str, Any]]:
    """The first file's entry of that name (kubeconfig merging: the first one wins), with the folder its relative
    paths are relative to."""
    for path, config in entries:
        found = _named(config, section, name, key)
        if found is not None:
            return path.parent, found
    raise ConfigError(f"the kubeconfig has no {key} named {name!r}")


def from_kubeconfig(kubeconfig: str | None = None, *, retries: bool = True) -> ApiServer:
    """The current context of a kubeconfig: its server, CA, and a token or a client certificate."""
    entries: list[tuple[Path, dict[str, Any]]] = []
    for path in _kubeconfig_paths(kubeconfig):
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read kubeconfig {path}: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"kubeconfig {path} is not a mapping")
        entries.append((path, loaded))
    current = next((c["current-context"] for _, c in entries if c.get("current-context")), None)
    if not current:
        raise ConfigError("the kubeconfig sets no current-context")
    _, context = _resolve(entries, "contexts", current, "context")
    cluster_dir, cluster = _resolve(entries, "clusters", str(context.get("cluster")), "cluster")
    user_dir, user = _resolve(entries, "users", str(context.get("user")), "user")
    if "exec" in user or "auth-provider" in user:
        raise ConfigError(
            "the kubeconfig's user needs an exec plugin or auth provider, which the operator does not run: "
            "give it a kubeconfig with a token or a client certificate, or run it in the cluster"
        )
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise ConfigError(f"the kubeconfig's cluster {context.get('cluster')!r} has no server")
    context_ = _ssl_context(cluster, cluster_dir)
    try:
        _client_certificate(context_, user, user_dir)
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError; bad base64 a ValueError
        raise ConfigError(f"cannot load the kubeconfig's client certificate: {type(e).__name__}") from None
    headers: dict[str, str] = {}
    if user.get("username") and user.get("password"):
        pair = f"{user['username']}:{user['password']}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    token: Callable[[], str | None] = lambda: None  # noqa: E731 - the default of no token
    if user.get("token"):
        fixed = str(user["token"])
        token = lambda: fixed  # noqa: E731
    elif user.get("tokenFile"):
        token = _TokenFile(user_dir / str(user["tokenFile"]))
    return ApiServer(server=server, context=context_, token=token, headers=headers, retries=retries)


def _ssl_context(cluster: Mapping[str, Any], folder: Path) -> ssl.SSLContext:
    if cluster.get("insecure-skip-tls-verify"):
        raise ConfigError("the kubeconfig's cluster skips TLS verification, which the operator refuses to do")
    try:
        if cluster.get("certificate-authority-data"):
            pem = base64.b64decode(cluster["certificate-authority-data"]).decode()
            return ssl.create_default_context(cadata=pem)
        if cluster.get("certificate-authority"):
            return ssl.create_default_context(cafile=str(folder / str(cluster["certificate-authority"])))
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError; bad base64 or text a ValueError
        raise ConfigError(f"cannot load the kubeconfig's certificate-authority: {type(e).__name__}: {e}") from None
    return ssl.create_default_context()


def _client_certificate(context: ssl.SSLContext, user: Mapping[str, Any], folder: Path) -> None:
    """Load the user's client certificate into ``context``; given as data, through a private temporary folder
    (``load_cert_chain`` takes only files), removed at once."""
    if user.get("client-certificate"):
        key = user.get("client-key")
        context.load_cert_chain(str(folder / str(user["client-certificate"])), str(folder / str(key)) if key else None)
    elif user.get("client-certificate-data"):
        with tempfile.TemporaryDirectory(prefix="dsexport-kubeconfig-") as tmp:
            certificate, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            certificate.write_bytes(base64.b64decode(user["client-certificate-data"]))
            key.write_bytes(base64.b64decode(user.get("client-key-data") or ""))
            context.load_cert_chain(str(certificate), str(key))
