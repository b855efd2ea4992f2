"""Azure Blob Storage (azure-storage-blob): keys are block blob names in one container.

A file is staged as blocks and appears only when its block list is committed, on a clean exit, because a reader
must never see half a file; after an error nothing is committed, and the staged blocks expire on their own (they
are invisible meanwhile, so there are no leftovers to list or delete). A create-only put is a conditional upload
(``If-None-Match: *``), because of two writers of one slot exactly one may commit.

The SDK's own retries are off so that the one policy of ``retry.call`` bounds every wait; a service that stays
away past it is reported as transient, refusals (keys, SAS permissions, the container) as permanent. Messages never
quote the SDK's exception text as is: a transport error's text can carry the request URL, and with a SAS token
that URL holds the signature.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.paging import ItemPaged
from azure.storage.blob import BlobBlock, BlobClient, BlobPrefix, ContainerClient

from dsexport import api
from dsexport.destinations import retry
from dsexport.destinations.base import (
    AlreadyExistsError,
    DestinationError,
    Transport,
    Writable,
    folder_prefix,
    join,
    scrub,
)
from dsexport.destinations.buffer import PartBuffer

T = TypeVar("T")

BLOCK_SIZE = 8 << 20  # bytes held in memory per open file; a block is retried whole, from that copy
CONNECT_TIMEOUT = 20
READ_TIMEOUT = 120
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})  # incl. ServerBusy (503) and OperationTimedOut (500)
# Valid credentials, missing a permission; other 401/403 codes (AuthenticationFailed, AuthorizationFailure) mean
# a wrong key or signature, an expired SAS token or the account's network rules.
PERMISSION_CODES = frozenset(
    {"AuthorizationPermissionMismatch", "AuthorizationResourceTypeMismatch", "AuthorizationServiceMismatch"}
)

# The SDK logs every request and response at INFO; keep that (and its URLs) out of the exporter's log.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)


def connect(name: str, block: api.AzureBlob, credentials: Mapping[str, str]) -> AzureBlobTransport:
    """Check the credentials and the container now, before any data is read."""
    transport = AzureBlobTransport(name, block, credentials)
    transport.check()
    return transport


class AzureBlobTransport(Transport):
    def __init__(self, name: str, block: api.AzureBlob, credentials: Mapping[str, str]) -> None:
        self._name = name
        self._secrets = [v for v in credentials.values() if v]
        options: dict[str, Any] = {
            "retry_total": 0,
            "connection_timeout": CONNECT_TIMEOUT,
            "read_timeout": READ_TIMEOUT,
        }
        connection_string = credentials.get("connectionString")
        sas_token = credentials.get("sasToken")
        if not connection_string and not sas_token:
            raise DestinationError(f"{name}: the credentials Secret needs a connectionString or a sasToken")
        if not connection_string and not block.account_url:
            raise DestinationError(f"{name}: a sasToken needs spec.azureBlob.accountUrl")
        try:
            if connection_string:
                self._container = ContainerClient.from_connection_string(connection_string, block.container, **options)
            else:
                credential = str(sas_token).lstrip("?")
                self._container = ContainerClient(block.account_url, block.container, credential=credential, **options)
            return
        except ValueError:
            pass  # the SDK's text may quote what it could not parse: raise ours, outside the handler
        raise DestinationError(
            f"{name}: the connectionString or accountUrl is not valid; copy the connection string from the "
            "storage account's access keys (DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...)"
        )

    def describe(self) -> str:
        # Not the client's url: with a SAS token that carries the signature.
        return f"azureBlob://{self._container.account_name}/{self._container.container_name}"

    def check(self) -> None:
        """One listing request: it needs the container to exist and the list permission that exports use."""
        self._call("listing the container", lambda: list(next(self._list(results_per_page=1).by_page(), [])))

    # ------------------------------------------------------------------------------------------------ writes

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[Writable]:
        writer = _BlockWriter(self, self._blob(key), key)
        yield writer
        writer.commit()

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        blob = self._blob(key)
        attempts = 0

        def attempt() -> None:
            nonlocal attempts
            attempts += 1
            try:
                blob.upload_blob(data, length=len(data), overwrite=not create_only)
                return
            except (ResourceExistsError, ResourceModifiedError):  # 409 BlobAlreadyExists, or 412
                pass
            # A retry after a reply lost on the way back finds its own earlier upload.
            if attempts > 1 and _download(blob) == data:
                return
            raise AlreadyExistsError(f"{self._name}: {key} already exists in {self.describe()}")

        self._call(f"writing {key}", attempt)

    # ------------------------------------------------------------------------------------------------- reads

    def get(self, key: str) -> bytes | None:
        blob = self._blob(key)

        def attempt() -> bytes | None:
            try:
                return _download(blob)
            except ResourceNotFoundError as e:
                if _code(e) == "ContainerNotFound":
                    raise
                return None

        return self._call(f"reading {key}", attempt)

    def exists(self, key: str) -> bool:
        return self._call(f"looking up {key}", self._blob(key).exists)

    def list_prefixes(self, prefix: str) -> list[str]:
        start = folder_prefix(prefix)

        def attempt() -> list[str]:
            items = self._container.walk_blobs(name_starts_with=start, delimiter="/")
            return sorted(i.name[len(start) :].rstrip("/") for i in items if isinstance(i, BlobPrefix))

        return self._call(f"listing {prefix or 'the container'}", attempt)

    def list_keys(self, prefix: str) -> Iterator[str]:
        start = folder_prefix(prefix)
        yield from self._call(f"listing {prefix or 'the container'}", lambda: sorted(self._list(start)))

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            blob = self._blob(key)
            self._call(f"deleting {key}", functools.partial(_delete, blob))

    def close(self) -> None:
        self._container.close()

    # -------------------------------------------------------------------------------------------- internals

    def _blob(self, key: str) -> BlobClient:
        return self._container.get_blob_client(join(key))

    def _list(self, start: str = "", results_per_page: int | None = None) -> ItemPaged[str]:
        return self._container.list_blob_names(name_starts_with=start or None, results_per_page=results_per_page)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return retry.call(fn, transient=_transient)
        except DestinationError:
            raise
        except Exception as e:
            error = self._fail(what, e)
        # Raised outside the handler, so not even the hidden __context__ keeps the SDK's error (and its URL).
        raise error

    def _fail(self, what: str, e: BaseException) -> DestinationError:
        where = f"{self._name}: {what} in {self.describe()}"
        code = _code(e)
        status = getattr(e, "status_code", None)
        if isinstance(e, ResourceNotFoundError) and code == "ContainerNotFound":
            return DestinationError(
                f"{where}: the container {self._container.container_name} does not exist in storage account "
                f"{self._container.account_name}; create it, or fix spec.azureBlob.container"
            )
        if code in PERMISSION_CODES:
            return DestinationError(
                f"{where}: the credentials are valid but not allowed to do this ({code}); a SAS token needs the "
                "read, add, create, write, delete and list permissions (sp=racwdl) on the container"
            )
        if isinstance(e, ClientAuthenticationError) or status in (401, 403):
            return DestinationError(
                f"{where}: the storage account refused the credentials ({code or status}); check the "
                "connectionString or sasToken in the credentials Secret (a SAS token may have expired), and that "
                "the account's network rules let this client in"
            )
        if _transient(e):
            return DestinationError(
                f"{where}: the storage service did not answer, retries ran out ({self._scrub(e)})", transient=True
            )
        reason = " ".join(str(part) for part in (status, getattr(e, "reason", None), code) if part)
        return DestinationError(f"{where}: {reason or type(e).__name__}")

    def _scrub(self, e: BaseException) -> str:
        """The error's text without query strings (a SAS signature, even one not in the Secret as such: the SDK
        may quote it re-encoded) or any credential value."""
        return scrub(re.sub(r"\?[^\s'\")]*", "", str(e)), secrets=self._secrets)[:300]


class _BlockWriter:
    """Buffers one block, stages it (retried whole from the buffer), and commits the block list at the end."""

    def __init__(self, transport: AzureBlobTransport, blob: BlobClient, key: str) -> None:
        self._transport = transport
        self._blob = blob
        self._key = key
        self._prefix = uuid.uuid4().hex  # another writer's blocks for the same name never collide with ours
        self._blocks: list[BlobBlock] = []
        self._buffer = PartBuffer()

    def write(self, data: bytes | memoryview, /) -> int:
        self._buffer.append(data)
        if len(self._buffer) >= BLOCK_SIZE:
            buffer = self._buffer.take()
            full = len(buffer) - len(buffer) % BLOCK_SIZE
            for start in range(0, full, BLOCK_SIZE):
                self._stage(buffer if len(buffer) == BLOCK_SIZE else buffer[start : start + BLOCK_SIZE])
            if full < len(buffer):
                self._buffer.append(buffer[full:])
        return len(data)

    def commit(self) -> None:
        what = f"writing {self._key}"
        data = self._buffer.take()
        if not self._blocks:  # a small file: one upload, as atomic as a commit
            self._transport._call(what, lambda: self._blob.upload_blob(data, length=len(data), overwrite=True))
            return
        if data:
            self._stage(data)
        self._transport._call(what, lambda: self._blob.commit_block_list(self._blocks))

    def _stage(self, data: bytes) -> None:
        block_id = f"{self._prefix}-{len(self._blocks):06d}"  # ids of one blob must all have the same length
        self._transport._call(f"writing {self._key}", lambda: self._blob.stage_block(block_id, data, length=len(data)))
        self._blocks.append(BlobBlock(block_id=block_id))


def _transient(e: BaseException) -> bool:
    if isinstance(e, ServiceRequestError | ServiceResponseError | IncompleteReadError | ConnectionError | TimeoutError):
        return True
    return isinstance(e, HttpResponseError) and e.status_code in TRANSIENT_STATUS


def _code(e: BaseException) -> str:
    """The storage error code (e.g. ContainerNotFound), which the SDK sets on its exceptions."""
    code = getattr(e, "error_code", None)
    return str(getattr(code, "value", code) or "")  # a StorageErrorCode, or the plain text of a newer code


def _download(blob: BlobClient) -> bytes:
    return blob.download_blob().readall()


def _delete(blob: BlobClient) -> None:
    with contextlib.suppress(ResourceNotFoundError):
        blob.delete_blob()
