"""Google Cloud Storage (or an emulator), through google-cloud-storage.

A part streams as a resumable upload that is finalized only when its block exits cleanly and cancelled otherwise,
because a reader must never see half a file; the manifest is written with ``if_generation_match=0``, because of
two writers of one slot exactly one may commit.

Requests are retried by ``retry.call``, with the SDK's own retries off, so "transient" has one bound on every
backend. The chunks of a resumable upload are the exception: only the SDK knows how to resume its session, so it
retries them itself, with our policy's backoff and deadline. Either way, a store (or token endpoint) that stays
away past the bound is reported as transient, so the run is retried later; refusals are permanent.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import google.auth.exceptions as auth_errors
import requests
from google.api_core import exceptions as api_errors
from google.auth.credentials import Credentials
from google.cloud import storage  # type: ignore[import-untyped]
from google.cloud.storage.exceptions import InvalidResponse
from google.cloud.storage.retry import DEFAULT_RETRY
from google.oauth2 import service_account

from dsexport import api
from dsexport.destinations import retry
from dsexport.destinations.base import (
    AlreadyExistsError,
    DestinationError,
    ServerCopy,
    StoredObject,
    Transport,
    Writable,
    folder_prefix,
    join,
)

T = TypeVar("T")

# Resumable uploads send whole chunks (a multiple of 256 KiB) and buffer one in memory.
CHUNK_SIZE = 8 << 20
TIMEOUT = (10, 60)  # connect, read (seconds)
SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
PERMISSIONS = "storage.objects.create, storage.objects.get, storage.objects.list and storage.objects.delete"

_NETWORK = (ConnectionError, requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
_SDK_ERRORS = (
    api_errors.GoogleAPIError,
    InvalidResponse,
    auth_errors.GoogleAuthError,
    requests.RequestException,
    *_NETWORK,
)


def connect(name: str, block: api.Gcs, credentials: Mapping[str, str]) -> Transport:
    return GcsTransport(name, block, credentials)


def _api_error(error: BaseException) -> BaseException:
    """Resumable-upload failures arrive as raw responses; give them the API's exception classes."""
    if isinstance(error, InvalidResponse):
        converted: BaseException = api_errors.from_http_response(error.response)  # type: ignore[no-untyped-call]
        return converted
    return error


def _transient(error: BaseException) -> bool:
    """5xx, 408, 429 and network failures; the same request may well succeed a moment later."""
    error = _api_error(error)
    if isinstance(error, api_errors.GoogleAPICallError):
        return error.code in (408, 429) or (error.code or 0) >= 500
    if isinstance(error, auth_errors.TransportError) and error.args and isinstance(error.args[0], BaseException):
        return _transient(error.args[0])  # fetching a token failed: transient if what it met is
    return isinstance(error, _NETWORK)


def _service_account(raw: str, *, name: str) -> Credentials:
    """Credentials from the Secret's serviceAccountJson; errors describe the problem, never the content."""
    try:
        info = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DestinationError(
            f"{name}: the Secret's serviceAccountJson is not valid JSON ({e.msg} at line {e.lineno} column "
            f"{e.colno}); it must hold a service account's whole JSON key file"
        ) from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise DestinationError(
            f'{name}: the Secret\'s serviceAccountJson is not a service account key (no "type": "service_account")'
        )
    try:
        creds: Credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=SCOPES
        )
    except (ValueError, auth_errors.GoogleAuthError):
        raise DestinationError(
            f"{name}: the Secret's serviceAccountJson is not a usable service account key: it needs client_email, "
            "private_key (a PEM key) and token_uri"
        ) from None
    return creds


class GcsTransport(Transport):
    def __init__(self, name: str, block: api.Gcs, credentials: Mapping[str, str]) -> None:
        self.name = name
        self._block = block
        self._from_secret = "serviceAccountJson" in credentials
        creds = _service_account(credentials["serviceAccountJson"], name=name) if self._from_secret else None
        try:
            self._client = storage.Client(
                project=getattr(creds, "project_id", None),
                credentials=creds,
                client_options={"api_endpoint": block.endpoint} if block.endpoint else None,
                # An emulator without a Secret is reached anonymously; without an endpoint this has no effect.
                use_auth_w_custom_endpoint=creds is not None,
            )
        except (auth_errors.DefaultCredentialsError, OSError):
            raise DestinationError(
                f"{name}: no Google credentials found; set credentialsSecretRef to a Secret with serviceAccountJson, "
                "or give the pod Workload Identity"
            ) from None
        self._bucket = self._client.bucket(block.bucket)
        policy = retry.RetryPolicy.from_env()
        self._media_retry = DEFAULT_RETRY.with_timeout(policy.deadline_seconds).with_delay(
            initial=policy.base_seconds, maximum=policy.max_wait_seconds
        )

    def describe(self) -> str:
        return f"gs://{self._block.bucket}"

    def _url(self, key: str) -> str:
        return f"gs://{join(self._block.bucket, key)}"

    def _call(self, what: str, fn: Callable[[], T], *, retried: bool = True) -> T:
        """``fn()``, under the retry policy unless ``retried`` is off; SDK errors become a DestinationError."""
        try:
            return retry.call(fn, transient=_transient) if retried else fn()
        except _SDK_ERRORS as e:
            raise self._error(what, e) from None

    def _error(self, what: str, error: BaseException) -> DestinationError:
        where = f"{self.name}: {what}"
        store = f" at {self._block.endpoint}" if self._block.endpoint else ""
        if isinstance(error, api_errors.RetryError) and error.cause is not None:
            error = error.cause  # the SDK's own retries (of resumable upload chunks) ran out: judge what it last met
        error = _api_error(error)
        fix = "check the Secret's serviceAccountJson" if self._from_secret else "check the pod's Google credentials"
        if isinstance(error, api_errors.PreconditionFailed):
            return AlreadyExistsError(f"{where}: the object already exists")
        if isinstance(error, api_errors.Unauthorized | auth_errors.RefreshError):
            return DestinationError(f"{where}: credentials refused by the store{store}; {fix}")
        if isinstance(error, api_errors.Forbidden):
            return DestinationError(
                f"{where}: permission denied: the service account needs {PERMISSIONS} on bucket "
                f"{self._block.bucket} (e.g. roles/storage.objectUser)"
            )
        if isinstance(error, api_errors.NotFound):
            return DestinationError(
                f"{where}: bucket {self._block.bucket} does not exist{store}; check spec.gcs.bucket"
            )
        if isinstance(error, auth_errors.TransportError):  # the token endpoint did not answer
            return DestinationError(
                f"{where}: could not get an access token, retries ran out ({error})", transient=True
            )
        if _transient(error):
            return DestinationError(
                f"{where}: the store{store} did not answer, retries ran out ({error})", transient=True
            )
        if isinstance(error, api_errors.GoogleAPICallError):
            return DestinationError(f"{where} failed: HTTP {error.code} {error.message}")
        return DestinationError(f"{where} failed: {type(error).__name__}: {error}")

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[Writable]:
        what = f"write {self._url(key)}"
        upload = self._bucket.blob(key).open("wb", chunk_size=CHUNK_SIZE, retry=self._media_retry, timeout=TIMEOUT)
        try:
            yield _Writer(self, what, upload)
            self._call(what, upload.close, retried=False)  # sends the last chunk, which finalizes the object
        except BaseException:
            # Cancelling is a courtesy (an unfinished session is never visible and expires on its own), but it
            # also closes the writer, which would otherwise retry the upload when it is garbage-collected.
            with contextlib.suppress(*_SDK_ERRORS):
                upload.terminate()
            raise

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        what = f"write {self._url(key)}"
        blob = self._bucket.blob(key)
        send = functools.partial(
            blob.upload_from_string, data, if_generation_match=0 if create_only else None, retry=None, timeout=TIMEOUT
        )
        if not create_only:
            self._call(what, send)
            return
        retry.create_only_put(send, retried=lambda fn: self._call(what, fn), read_back=lambda: self.get(key), data=data)

    def get(self, key: str) -> bytes | None:
        def once() -> bytes | None:
            try:
                data: bytes = self._bucket.blob(key).download_as_bytes(retry=None, timeout=TIMEOUT)
            except api_errors.NotFound:
                return None
            return data

        return self._call(f"read {self._url(key)}", once)

    def exists(self, key: str) -> bool:
        return bool(
            self._call(f"read {self._url(key)}", lambda: self._bucket.blob(key).exists(retry=None, timeout=TIMEOUT))
        )

    def _list(self, prefix: str, *, delimiter: str | None = None) -> tuple[list[str], set[str]]:
        """Names and sub-folders under the folder ``prefix``; a transient failure restarts the whole listing, so
        no page is seen twice."""
        folder = folder_prefix(prefix)

        def once() -> tuple[list[str], set[str]]:
            listing = self._client.list_blobs(
                self._bucket, prefix=folder, delimiter=delimiter, retry=None, timeout=TIMEOUT
            )
            names = [blob.name for blob in listing]  # reading every page also fills listing.prefixes
            return names, set(listing.prefixes)

        return self._call(f"list {self._url(folder)}", once)

    def list_prefixes(self, prefix: str) -> list[str]:
        _, folders = self._list(prefix, delimiter="/")
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in folders)

    def list_keys(self, prefix: str) -> Iterator[str]:
        names, _ = self._list(prefix)
        yield from names

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._call(f"delete {self._url(key)}", functools.partial(self._delete, key))

    def _delete(self, key: str) -> None:
        with contextlib.suppress(api_errors.NotFound):  # a previous cleanup got there first
            self._bucket.delete_blob(key, retry=None, timeout=TIMEOUT)

    def _same_store(self, source: StoredObject) -> bool:
        """Whether this client can copy ``source`` inside the store: the same endpoint (or both Google's own), and
        the same identity: gs:// sources are read by the pod's own (``identity`` None), so this destination must
        use it too, not a Secret's service account, which may not read the source."""
        here = (self._block.endpoint or "").rstrip("/").lower() or None
        there = (source.endpoint or "").rstrip("/").lower() or None
        return source.scheme == "gs" and here == there and source.identity is None and not self._from_secret

    def server_copy(self, source: StoredObject, key: str) -> ServerCopy | None:
        """A rewrite (``objects.rewrite``): the store copies the object, in as many calls as it takes for large
        ones or across locations and storage classes; the target appears only when the last call completes."""
        if not self._same_store(source):
            return None
        target = self._bucket.blob(key)
        origin = self._client.bucket(source.bucket).blob(source.key)

        def rewrite() -> None:
            token = None
            while True:
                token, _, _ = target.rewrite(origin, token=token, retry=None, timeout=TIMEOUT)
                if token is None:
                    return

        try:
            retry.call(rewrite, transient=_transient)
        except _SDK_ERRORS as e:
            if _transient(e):
                raise self._error(f"copy gs://{source.bucket}/{source.key} to {self._url(key)}", e) from None
            # Not readable by this identity, gone, or a store without the operation: the byte stream reads it
            # the way the source is configured, and reports whatever is really wrong.
            return None
        if target.size is None or target.etag is None:
            raise DestinationError(f"{self.name}: copy to {self._url(key)}: the store's reply has no size or etag")
        # The store computes MD5 and CRC32C, not SHA-256.
        return ServerCopy(bytes=int(target.size), etag=str(target.etag), sha256=None)

    def close(self) -> None:
        self._client.close()


class _Writer:
    """The upload as a Writable whose failures are DestinationErrors naming the destination."""

    def __init__(self, transport: GcsTransport, what: str, upload: Any) -> None:
        self._transport = transport
        self._what = what
        self._upload = upload

    def write(self, data: bytes | memoryview, /) -> int:
        return int(self._transport._call(self._what, lambda: self._upload.write(data), retried=False))
