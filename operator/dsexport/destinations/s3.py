"""Amazon S3 and S3-compatible stores, through boto3.

A part streams as a multipart upload that is completed only when its block exits cleanly and aborted otherwise,
because a reader must never see half a file; the manifest is a conditional put (``If-None-Match: *``), because of
two writers of one slot exactly one may commit. Parts upload a few at a time, because one request waiting on the
store would otherwise leave the connection idle.

Retries are ``retry.call``'s, not botocore's, so "transient" has one bound on every backend; a store that stays
away past it is reported as transient (the run may succeed later), anything else at once and as permanent, with a
message that says what to fix. botocore's text can echo what was sent, so it never reaches a message unscrubbed.
"""

from __future__ import annotations

import base64
import contextlib
import functools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import botocore.exceptions as boto_errors
from botocore.config import Config

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
    scrub,
)
from dsexport.destinations.buffer import PartBuffer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import (
        CompletedPartTypeDef,
        CopySourceTypeDef,
        ListObjectsV2OutputTypeDef,
        ObjectIdentifierTypeDef,
    )

T = TypeVar("T")

# Parts are buffered in memory: 8 MiB keeps memory small while staying above S3's 5 MiB minimum part size.
PART_SIZE = 8 << 20
# Parts uploading at once (boto3's upload_file uses 10): one part's request waits on the store while the next is
# sent, which a single sequential upload leaves idle. Memory is bounded by (PARTS_IN_FLIGHT + 1) * PART_SIZE.
PARTS_IN_FLIGHT = 4
CONNECT_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 60
DELETE_BATCH = 1000  # DeleteObjects' limit
# CopyObject copies up to 5 GiB in one request; a larger object is copied in ranges of COPY_PART_SIZE
# (UploadPartCopy), at most 10,000 of them: 5 TiB, S3's largest object.
MAX_SINGLE_COPY = 5 << 30
COPY_PART_SIZE = 1 << 30
PERMISSIONS = "s3:PutObject, s3:GetObject, s3:ListBucket, s3:DeleteObject and s3:AbortMultipartUpload"

_THROTTLED = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestLimitExceeded"})
_CREDENTIALS_REFUSED = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired"}
)
_WRONG_REGION = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed", "301"})
_EXISTS = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_NOT_FOUND = frozenset({"NoSuchKey", "404"})


def connect(name: str, block: api.S3, credentials: Mapping[str, str]) -> Transport:
    return S3Transport(name, block, credentials)


def _code(error: boto_errors.ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def _transient(error: BaseException) -> bool:
    """5xx, throttling and network failures; the same request may well succeed a moment later."""
    if isinstance(error, boto_errors.ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or status == 429 or _code(error) in _THROTTLED
    return isinstance(error, boto_errors.HTTPClientError | boto_errors.ConnectionError)


class S3Transport(Transport):
    def __init__(self, name: str, block: api.S3, credentials: Mapping[str, str]) -> None:
        self.name = name
        self.bucket = block.bucket
        self._block = block
        self._secret_values = [v for v in credentials.values() if v]
        self._from_secret = bool(credentials)
        self._access_key_id = credentials.get("accessKeyId") or None
        if self._from_secret and not (credentials.get("accessKeyId") and credentials.get("secretAccessKey")):
            raise DestinationError(f"{name}: the Secret needs both accessKeyId and secretAccessKey")
        session = boto3.session.Session(
            aws_access_key_id=credentials.get("accessKeyId"),
            aws_secret_access_key=credentials.get("secretAccessKey"),
            aws_session_token=credentials.get("sessionToken"),
            region_name=block.region or None,
        )
        config = Config(
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            retries={"total_max_attempts": 1},  # retry.call owns retries, so there is one bound
            s3={"addressing_style": "path" if block.force_path_style else "auto"},
        )
        try:
            self._s3: S3Client = session.client("s3", endpoint_url=block.endpoint or None, config=config)
        except ValueError:
            raise DestinationError(
                f"{name}: spec.s3.endpoint {block.endpoint!r} is not a URL (e.g. https://s3.example.com)"
            ) from None
        self._sse: dict[str, Any] = {}
        if block.server_side_encryption:
            self._sse["ServerSideEncryption"] = block.server_side_encryption
        if block.kms_key_id:
            self._sse["SSEKMSKeyId"] = block.kms_key_id

    def describe(self) -> str:
        return f"s3://{self.bucket}"

    def _url(self, key: str) -> str:
        return f"s3://{join(self.bucket, key)}"

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` under the retry policy; SDK errors become a DestinationError (``from None``: the SDK's
        exception carries the raw response, which may echo an access key id)."""
        try:
            return retry.call(fn, transient=_transient)
        except (boto_errors.ClientError, boto_errors.BotoCoreError) as e:
            raise self._error(what, e) from None

    def _error(self, what: str, error: Exception) -> DestinationError:
        where = f"{self.name}: {what}"
        store = f" at {self._block.endpoint}" if self._block.endpoint else ""
        if isinstance(error, boto_errors.NoCredentialsError):
            return DestinationError(
                f"{where}: no AWS credentials found; set credentialsSecretRef to a Secret with accessKeyId and "
                "secretAccessKey, or give the pod an IAM role"
            )
        if _transient(error):
            return DestinationError(
                self._scrub(f"{where}: the store{store} did not answer, retries ran out ({error})"), transient=True
            )
        if not isinstance(error, boto_errors.ClientError):
            return DestinationError(self._scrub(f"{where} failed: {error}"))  # e.g. a parameter botocore refuses
        code = _code(error)
        if code in _EXISTS:
            return AlreadyExistsError(f"{where}: the object already exists")
        if code in _CREDENTIALS_REFUSED:
            fix = (
                "check the Secret's accessKeyId/secretAccessKey (and sessionToken)"
                if self._from_secret
                else "check the pod's AWS credentials (IAM role, AWS_* variables)"
            )
            return DestinationError(f"{where}: credentials refused by the store{store} ({code}); {fix}")
        if code == "NoSuchBucket":
            return DestinationError(
                f"{where}: bucket {self.bucket} does not exist{store}; check spec.s3.bucket (and region, endpoint)"
            )
        if code in ("AccessDenied", "AllAccessDisabled", "403"):
            kms = " and kms:GenerateDataKey/kms:Decrypt on the KMS key" if self._block.kms_key_id else ""
            return DestinationError(
                f"{where}: permission denied ({code}): the credentials need {PERMISSIONS} on bucket "
                f"{self.bucket}{kms}; if they have them, check the Secret's accessKeyId/secretAccessKey"
            )
        if code in _WRONG_REGION:
            return DestinationError(
                f"{where}: bucket {self.bucket} is not in region {self._block.region or 'us-east-1'}; "
                "set spec.s3.region to the bucket's region"
            )
        message = error.response.get("Error", {}).get("Message", "")
        return DestinationError(self._scrub(f"{where} failed: {code} {message}".rstrip()))

    def _scrub(self, text: str) -> str:
        return scrub(text, secrets=self._secret_values)

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[Writable]:
        upload = _Upload(self, key)
        try:
            yield upload
            upload.complete()
        except BaseException:
            upload.abort()
            raise

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        what = f"write {self._url(key)}"
        condition: dict[str, Any] = {"IfNoneMatch": "*"} if create_only else {}
        send = functools.partial(self._s3.put_object, Bucket=self.bucket, Key=key, Body=data, **condition, **self._sse)
        if not create_only:
            self._call(what, send)
            return
        retry.create_only_put(send, retried=lambda fn: self._call(what, fn), read_back=lambda: self.get(key), data=data)

    def get(self, key: str) -> bytes | None:
        def once() -> bytes | None:
            try:
                return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except boto_errors.ClientError as e:
                if _code(e) in _NOT_FOUND:
                    return None
                raise

        return self._call(f"read {self._url(key)}", once)

    def exists(self, key: str) -> bool:
        # A HEAD response has no body, so a missing bucket looks like a missing key here; listings, which the
        # commit protocol runs first, name it.
        def once() -> bool:
            try:
                self._s3.head_object(Bucket=self.bucket, Key=key)
            except boto_errors.ClientError as e:
                if _code(e) in _NOT_FOUND:
                    return False
                raise
            return True

        return self._call(f"read {self._url(key)}", once)

    def _list(self, prefix: str, **kwargs: Any) -> list[ListObjectsV2OutputTypeDef]:
        """Every page of a listing of the folder ``prefix``; a transient failure restarts the listing, so no page
        is seen twice."""
        paginator = self._s3.get_paginator("list_objects_v2")
        folder = folder_prefix(prefix)
        return self._call(
            f"list {self._url(folder)}",
            lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=folder, **kwargs)),
        )

    def list_prefixes(self, prefix: str) -> list[str]:
        return sorted(
            p["Prefix"].rstrip("/").rsplit("/", 1)[-1]
            for page in self._list(prefix, Delimiter="/")
            for p in page.get("CommonPrefixes", [])
        )

    def list_keys(self, prefix: str) -> Iterator[str]:
        for page in self._list(prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"]

    def delete(self, keys: Iterable[str]) -> None:
        pending = list(keys)
        for start in range(0, len(pending), DELETE_BATCH):
            objects: list[ObjectIdentifierTypeDef] = [{"Key": k} for k in pending[start : start + DELETE_BATCH]]
            delete = functools.partial(
                self._s3.delete_objects, Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
            )
            # Missing keys are no error in S3; what is reported is a key the credentials may not delete.
            for failure in self._call(f"delete in {self.describe()}", delete).get("Errors", []):
                error = boto_errors.ClientError({"Error": failure}, "DeleteObjects")
                raise self._error(f"delete {self._url(failure.get('Key', ''))}", error)

    def _same_store(self, source: StoredObject) -> bool:
        """Whether this client can copy ``source`` inside the store: the same endpoint (or both AWS's own) and
        the same identity (the same access key id, or both the pod's ambient credentials)."""
        here = (self._block.endpoint or "").rstrip("/").lower() or None
        there = (source.endpoint or "").rstrip("/").lower() or None
        return source.scheme == "s3" and here == there and source.identity == self._access_key_id

    def server_copy(self, source: StoredObject, key: str) -> ServerCopy | None:
        if not self._same_store(source):
            return None
        what = f"copy s3://{source.bucket}/{source.key} to {self._url(key)}"
        try:
            return retry.call(lambda: self._copy(source, key), transient=_transient)
        except boto_errors.ClientError as e:
            if _transient(e):
                raise self._error(what, e) from None
            # Not readable with these credentials, gone, or a store without the operation: the byte stream
            # reads it the way the source is configured, and reports whatever is really wrong.
            return None
        except boto_errors.BotoCoreError as e:
            raise self._error(what, e) from None

    def _copy(self, source: StoredObject, key: str) -> ServerCopy:
        origin: CopySourceTypeDef = {"Bucket": source.bucket, "Key": source.key}
        if source.size <= MAX_SINGLE_COPY:
            reply = self._s3.copy_object(
                Bucket=self.bucket, Key=key, CopySource=origin, ChecksumAlgorithm="SHA256", **self._sse
            )
            checksum = reply.get("CopyObjectResult", {}).get("ChecksumSHA256")
        else:
            self._copy_in_ranges(origin, source.size, key)
            checksum = None  # a multipart object's checksum is one of its parts' checksums, not the file's
        head = self._s3.head_object(Bucket=self.bucket, Key=key)
        sha256 = base64.b64decode(checksum).hex() if checksum else None
        return ServerCopy(bytes=int(head["ContentLength"]), etag=head["ETag"].strip('"'), sha256=sha256)

    def _copy_in_ranges(self, origin: CopySourceTypeDef, size: int, key: str) -> None:
        upload_id = self._s3.create_multipart_upload(Bucket=self.bucket, Key=key, **self._sse)["UploadId"]
        try:
            parts: list[CompletedPartTypeDef] = []
            for number, start in enumerate(range(0, size, COPY_PART_SIZE), start=1):
                reply = self._s3.upload_part_copy(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=origin,
                    CopySourceRange=f"bytes={start}-{min(start + COPY_PART_SIZE, size) - 1}",
                )
                parts.append({"ETag": reply["CopyPartResult"]["ETag"], "PartNumber": number})
            self._s3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with contextlib.suppress(boto_errors.ClientError, boto_errors.BotoCoreError):
                self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    def close(self) -> None:
        self._s3.close()


class _Upload:
    """One object being written: small ones become a single put, larger ones a multipart upload of PART_SIZE parts,
    up to PARTS_IN_FLIGHT of them uploading at once on a pool of this upload's own.

    Writes arrive on the write-behind thread; ``complete`` and ``abort`` come after it has finished. A part that
    failed (after its retries) raises from the next ``write`` or from ``complete``.
    """

    def __init__(self, transport: S3Transport, key: str) -> None:
        self._t = transport
        self._key = key
        self._what = f"write {transport._url(key)}"
        self._buffer = PartBuffer()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self._next_number = 1
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: deque[Future[CompletedPartTypeDef]] = deque()

    def write(self, data: bytes | memoryview, /) -> int:
        self._buffer.append(data)
        if len(self._buffer) >= PART_SIZE:
            self._send_part()
        return len(data)

    def _send_part(self) -> None:
        t, key = self._t, self._key
        if self._upload_id is None:
            self._upload_id = t._call(
                self._what,
                lambda: t._s3.create_multipart_upload(Bucket=t.bucket, Key=key, **t._sse)["UploadId"],
            )
            self._pool = ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="dsexport-s3-part")
        assert self._pool is not None
        upload_id, number, body = self._upload_id, self._next_number, self._buffer.take()
        self._next_number += 1
        while len(self._in_flight) >= PARTS_IN_FLIGHT:
            self._parts.append(self._in_flight.popleft().result())  # back-pressure; raises a failed part's error
        self._in_flight.append(self._pool.submit(self._upload_part, upload_id, number, body))

    def _upload_part(self, upload_id: str, number: int, body: bytes) -> CompletedPartTypeDef:
        t, key = self._t, self._key
        etag = t._call(
            self._what,
            lambda: t._s3.upload_part(Bucket=t.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)[
                "ETag"
            ],
        )
        return {"ETag": etag, "PartNumber": number}

    def _stop_pool(self) -> None:
        """Wait for every part still uploading, so none lands after a complete or an abort."""
        pool, self._pool = self._pool, None
        if pool is not None:
            wait(self._in_flight)
            pool.shutdown()

    def complete(self) -> None:
        t, key = self._t, self._key
        if self._upload_id is None:
            body = self._buffer.take()
            t._call(self._what, lambda: t._s3.put_object(Bucket=t.bucket, Key=key, Body=body, **t._sse))
            return
        if self._buffer:
            self._send_part()
        while self._in_flight:
            self._parts.append(self._in_flight.popleft().result())
        self._stop_pool()
        upload_id, parts = self._upload_id, self._parts
        t._call(
            self._what,
            lambda: t._s3.complete_multipart_upload(
                Bucket=t.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            ),
        )

    def abort(self) -> None:
        """Drop the uploaded parts. Failing that, the upload stays invisible and a lifecycle rule
        (AbortIncompleteMultipartUpload) reaps it; the error that got us here is the one worth reporting."""
        for future in self._in_flight:
            future.cancel()
        self._stop_pool()
        self._in_flight.clear()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        t = self._t
        with contextlib.suppress(DestinationError):
            t._call(
                self._what,
                lambda: t._s3.abort_multipart_upload(Bucket=t.bucket, Key=self._key, UploadId=upload_id),
            )
