"""What the s3 backend does beyond the transport contract, against SeaweedFS: multipart streaming versus a single
put, SSE, listings of more than one page, the messages a user gets for broken settings, and a whole export from
an s3:// source to S3. The contract itself (round trips, create-only, retries, ...) is test_transport.py's."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from click.testing import CliRunner
from tests.destinations.conftest import Connect
from tests.destinations.contract import (
    Outcome,
    copied_from_the_store,
    count_retries,
    export_from_the_store,
    fail_inside_open_write,
    refused,
    refused_once,
    write,
)
from tests.helpers import flow_yaml
from tests.servers import SECRET_NAME, Target, seaweed

from dsexport.cli import main
from dsexport.destinations import DestinationError, StoredObject, s3

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.parametrize("target", ["s3"], indirect=True)


@pytest.fixture
def raw(target: Target) -> Iterator[S3Client]:
    """A plain boto3 client, to look at the bucket without the code under test."""
    assert target.secret is not None
    client = boto3.client(
        "s3",
        endpoint_url=target.block["endpoint"],
        region_name=target.block["region"],
        aws_access_key_id=target.secret["accessKeyId"],
        aws_secret_access_key=target.secret["secretAccessKey"],
        config=Config(s3={"addressing_style": "path"}),
    )
    yield client
    client.close()


def calls(transport: s3.S3Transport, operation: str) -> list[str]:
    """Records every ``operation`` request the transport sends (botocore's event hooks; ``*``: every request, by
    operation name). ``before-send`` fires once per HTTP attempt, botocore's own retries included."""
    seen: list[str] = []
    event = "before-send.s3" if operation == "*" else f"before-send.s3.{operation}"
    transport._s3.meta.events.register(event, lambda event_name, **_: seen.append(event_name.rsplit(".", 1)[-1]))
    return seen


def test_large_file_streams_as_a_multipart_upload(transport: s3.S3Transport, raw: S3Client, folder: str) -> None:
    data = os.urandom(2 * s3.PART_SIZE + 12345)
    parts = calls(transport, "UploadPart")
    key = f"{folder}/ds/exportTime=202612010000/part-00000.parquet"
    write(transport, key, data)
    assert len(parts) == 3
    assert raw.get_object(Bucket=seaweed.BUCKET, Key=key)["Body"].read() == data


def _stored(target: Target, key: str, size: int, *, identity: str | None = None) -> StoredObject:
    assert target.secret is not None
    who = identity or target.secret["accessKeyId"]
    return StoredObject("s3", target.block["endpoint"], seaweed.BUCKET, key, size, who)


def test_a_large_object_is_copied_inside_the_store_in_ranges(
    transport: s3.S3Transport, raw: S3Client, target: Target, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above CopyObject's limit (5 GiB; here made 1 MiB) the copy is a multipart upload of copied ranges."""
    monkeypatch.setattr(s3, "MAX_SINGLE_COPY", 1 << 20)
    monkeypatch.setattr(s3, "COPY_PART_SIZE", 5 << 20)
    data = os.urandom(12 << 20)
    raw.put_object(Bucket=seaweed.BUCKET, Key=f"{folder}/src.bin", Body=data)
    ranges, whole = calls(transport, "UploadPartCopy"), calls(transport, "CopyObject")
    done = transport.server_copy(_stored(target, f"{folder}/src.bin", len(data)), f"{folder}/dst.bin")
    assert done is not None and done.bytes == len(data)
    assert (len(ranges), whole) == (3, [])
    assert raw.get_object(Bucket=seaweed.BUCKET, Key=f"{folder}/dst.bin")["Body"].read() == data


def test_a_copy_inside_the_store_is_left_to_the_stream_when_it_cannot_be_made(
    transport: s3.S3Transport, target: Target, folder: str
) -> None:
    """Another identity or endpoint: not tried (the destination's identity may not read the source); a source
    the store does not have: None too, and the stream that follows reports it as the source's problem."""
    assert transport.server_copy(_stored(target, f"{folder}/x", 1, identity="someone-else"), f"{folder}/y") is None
    elsewhere = dataclasses.replace(_stored(target, f"{folder}/x", 1), endpoint="http://127.0.0.2:1")
    assert transport.server_copy(elsewhere, f"{folder}/y") is None
    sent = calls(transport, "CopyObject")
    assert transport.server_copy(_stored(target, f"{folder}/missing", 1), f"{folder}/y") is None
    assert sent == ["CopyObject"]  # tried once: a missing source is not worth a retry
    assert not transport.exists(f"{folder}/y")


def test_small_file_is_a_single_put(transport: s3.S3Transport, folder: str) -> None:
    puts, parts = calls(transport, "PutObject"), calls(transport, "UploadPart")
    write(transport, f"{folder}/small.json", b'{"a": 1}\n')
    write(transport, f"{folder}/empty.json", b"")
    assert (len(puts), len(parts)) == (2, 0)
    assert transport.get(f"{folder}/small.json") == b'{"a": 1}\n'


@pytest.mark.parametrize("size", [100, s3.PART_SIZE + 1000], ids=["buffered", "one-part-uploaded"])
def test_error_inside_open_write_leaves_no_pending_upload(
    transport: s3.S3Transport, raw: S3Client, folder: str, size: int
) -> None:
    """An unfinished multipart upload is invisible but billed until aborted: a failed write must abort it."""
    fail_inside_open_write(transport, f"{folder}/part-00000.parquet", size)
    assert raw.list_multipart_uploads(Bucket=seaweed.BUCKET, Prefix=folder).get("Uploads", []) == []


def test_a_part_refused_mid_upload_fails_the_write_and_aborts_it(
    transport: s3.S3Transport, raw: S3Client, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts upload in parallel: one refused while others are in flight fails the whole write, leaving nothing."""
    upload_part = transport._s3.upload_part

    def refuse_the_third(**kwargs: Any) -> Any:
        if kwargs["PartNumber"] == 3:
            error = {
                "Error": {"Code": "AccessDenied", "Message": "denied"},
                "ResponseMetadata": {"HTTPStatusCode": 403},
            }
            raise ClientError(error, "UploadPart")  # type: ignore[arg-type]
        return upload_part(**kwargs)

    monkeypatch.setattr(transport._s3, "upload_part", refuse_the_third)
    key = f"{folder}/part-00000.parquet"
    with pytest.raises(DestinationError, match="permission denied"):
        write(transport, key, os.urandom(6 * s3.PART_SIZE))
    assert transport.get(key) is None
    assert raw.list_multipart_uploads(Bucket=seaweed.BUCKET, Prefix=folder).get("Uploads", []) == []


def test_listings_page_through_more_than_one_response(transport: s3.S3Transport, folder: str) -> None:
    keys = sorted(f"{folder}/p{i:04d}/x" for i in range(1_001))  # ListObjectsV2 answers 1000 at most
    transport.delete(keys)  # deleting 1001 keys is two DeleteObjects requests, for missing keys too
    for key in keys:
        transport.put(key, b"")
    assert len(transport.list_prefixes(folder)) == 1_001
    assert list(transport.list_keys(folder)) == keys
    transport.delete(keys)
    assert list(transport.list_keys(folder)) == []


def test_every_write_asks_for_server_side_encryption(connect: Connect, raw: S3Client, folder: str) -> None:
    transport = connect(serverSideEncryption="AES256")
    transport.put(f"{folder}/small", b"1")
    write(transport, f"{folder}/large", os.urandom(s3.PART_SIZE + 1))
    for key in ("small", "large"):
        assert raw.head_object(Bucket=seaweed.BUCKET, Key=f"{folder}/{key}")["ServerSideEncryption"] == "AES256"


def test_wrong_credentials_are_refused_at_once(
    connect: Connect, target: Target, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert target.wrong_secret is not None and target.secret is not None
    transport = connect(target.wrong_secret)
    assert isinstance(transport, s3.S3Transport)
    secrets = (target.wrong_secret["secretAccessKey"], target.secret["secretAccessKey"])
    failures = count_retries(monkeypatch)
    sent = calls(transport, "*")
    for operation in (
        lambda: transport.list_prefixes(folder),
        lambda: transport.get(f"{folder}/x"),
        lambda: transport.put(f"{folder}/x", b"1", create_only=True),
        lambda: write(transport, f"{folder}/large", os.urandom(s3.PART_SIZE + 1)),
    ):
        before = len(sent)
        message = str(refused_once(failures, operation, *secrets))  # not retried
        assert len(sent) - before == 1, sent[before:]  # botocore's own retries are off: one request on the wire
        assert "credentials refused" in message and "check the Secret's accessKeyId/secretAccessKey" in message


def test_half_a_key_pair_is_refused_before_any_request(connect: Connect, target: Target) -> None:
    assert target.secret is not None
    half = {"accessKeyId": target.secret["accessKeyId"]}
    message = refused(lambda: connect(half))
    assert "needs both accessKeyId and secretAccessKey" in message


def test_missing_bucket_fails_fast(connect: Connect, target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    transport = connect(**target.missing_block)
    failures = count_retries(monkeypatch)
    for operation in (lambda: transport.list_prefixes(""), lambda: transport.put("x", b"1")):
        message = str(refused_once(failures, operation))
        assert f"bucket {seaweed.MISSING_BUCKET} does not exist" in message


def test_s3_source_exports_to_s3_with_the_cli(
    target: Target, transport: s3.S3Transport, tmp_path: Path, folder: str
) -> None:
    assert target.secret is not None
    host = target.block["endpoint"].removeprefix("http://")
    flow = flow_yaml(
        tmp_path,
        source=f"s3://{seaweed.BUCKET}/{folder}/lake/events?endpoint_override={host}&scheme=http&region=us-east-1",
        source_secret=SECRET_NAME,
        destination=target.destination_spec(),
        secrets={SECRET_NAME: target.secret},
        folder=f"{folder}/out",
        max_records=2_000,
    )

    def run(at: dt.datetime) -> Outcome:
        result = CliRunner().invoke(main, ["run", "-f", str(flow), "--at", at.isoformat(), "-o", "json"])
        assert result.exit_code == 0, result.output
        [summary] = json.loads(result.stdout)["results"]
        return summary["outcome"], summary["records"], summary["files"], summary.get("message", "")

    export_from_the_store(transport, folder, tmp_path, seed=5, run=run)


@pytest.mark.parametrize(
    ("same_store", "via"),
    [(True, "server-copy"), (False, "copy")],
    ids=["same-store-and-identity", "another-endpoint"],
)
def test_s3_source_files_are_copied_byte_for_byte(
    target: Target, transport: s3.S3Transport, tmp_path: Path, folder: str, same_store: bool, via: str
) -> None:
    """From an object-store source the byte copy makes the parts the source objects, byte for byte: inside the
    store when the source is in the destination's store under its identity (no byte through the exporter), else
    streamed through it (here: the same server under another name, which the exporter cannot tell is the same)."""
    assert target.secret is not None
    host = target.block["endpoint"].removeprefix("http://")
    if not same_store:
        host = host.replace("127.0.0.1", "localhost")
    copies = copied_from_the_store(
        transport,
        tmp_path,
        folder,
        source=f"s3://{seaweed.BUCKET}/{folder}/lake/events?endpoint_override={host}&scheme=http&region=us-east-1",
        source_secret=SECRET_NAME,
        destination=target.destination_spec(),
        secrets={SECRET_NAME: target.secret},
        via=via,
    )
    for entry, data in copies if via == "server-copy" else []:
        # SeaweedFS computes no SHA-256; its entity tag of a single-part object is the MD5.
        assert entry["sha256"] in (None, hashlib.sha256(data).hexdigest())
        assert entry["etag"] == hashlib.md5(data).hexdigest()
