"""The s3 backend against SeaweedFS: multipart streaming, create-only puts, listings, SSE, the messages a user
gets for broken settings, retries across an outage, and a whole export from an s3:// source to S3."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config
from click.testing import CliRunner
from tests.helpers import START, assert_only_committed_files, committed, flow_yaml, read_committed_ids, source_ids
from tests.servers import SECRET_NAME, ProcessServer, Target, seaweed, wait_until

from dsexport import resources, sample
from dsexport.cli import main
from dsexport.destinations import AlreadyExistsError, DestinationError, open_transport, s3

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

NAME = "Destination/marketing-s3"
MiB = 1 << 20


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    target = seaweed.launch(tmp_path_factory.mktemp("seaweed"))
    yield target
    assert target.server is not None
    target.server.stop()


@pytest.fixture
def server(target: Target) -> Iterator[ProcessServer]:
    """The server, running again after the test whatever the test did to it."""
    assert target.server is not None
    yield target.server
    target.server.start()


@pytest.fixture
def connect(target: Target) -> Iterator[Callable[..., s3.S3Transport]]:
    """Opens transports to the server (the target's settings, or these) and closes them after the test."""
    opened: list[s3.S3Transport] = []

    def open_(secret: dict[str, str] | None = None, **block: Any) -> s3.S3Transport:
        destination = resources.Destination.model_validate(
            {
                "metadata": {"name": "marketing-s3"},
                "spec": {"type": "s3", "s3": {**target.block, **block}, "credentialsSecretRef": {"name": "creds"}},
            }
        )
        credentials = target.secret if secret is None else secret
        assert credentials is not None
        transport = open_transport(destination, credentials)
        assert isinstance(transport, s3.S3Transport)
        opened.append(transport)
        return transport

    yield open_
    for transport in opened:
        transport.close()


@pytest.fixture
def transport(connect: Callable[..., s3.S3Transport]) -> s3.S3Transport:
    return connect()


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


@pytest.fixture
def folder() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def refused(fn: Callable[[], object], *secrets: str) -> str:
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


def calls(transport: s3.S3Transport, operation: str) -> list[str]:
    """Records every ``operation`` request the transport sends (botocore's event hooks)."""
    seen: list[str] = []
    transport._s3.meta.events.register(f"before-call.s3.{operation}", lambda **_: seen.append(operation))
    return seen


def write(transport: s3.S3Transport, key: str, data: bytes) -> None:
    """As the write-behind sink does: 1 MiB memoryviews."""
    with transport.open_write(key) as out:
        view = memoryview(data)
        for start in range(0, len(data), MiB):
            out.write(view[start : start + MiB])


def test_large_file_streams_as_a_multipart_upload(transport: s3.S3Transport, raw: S3Client, folder: str) -> None:
    data = os.urandom(2 * s3.PART_SIZE + 12345)
    parts = calls(transport, "UploadPart")
    key = f"{folder}/ds/exportTime=202612010000/part-00000.parquet"
    write(transport, key, data)
    assert len(parts) == 3
    assert transport.get(key) == data
    assert raw.get_object(Bucket=seaweed.BUCKET, Key=key)["Body"].read() == data


def test_small_file_is_a_single_put(transport: s3.S3Transport, folder: str) -> None:
    puts, parts = calls(transport, "PutObject"), calls(transport, "UploadPart")
    write(transport, f"{folder}/small.json", b'{"a": 1}\n')
    write(transport, f"{folder}/empty.json", b"")
    assert (len(puts), len(parts)) == (2, 0)
    assert transport.get(f"{folder}/small.json") == b'{"a": 1}\n'
    assert transport.get(f"{folder}/empty.json") == b""


@pytest.mark.parametrize("size", [100, s3.PART_SIZE + 1000], ids=["buffered", "one-part-uploaded"])
def test_error_inside_open_write_leaves_no_object_and_no_upload(
    transport: s3.S3Transport, raw: S3Client, folder: str, size: int
) -> None:
    key = f"{folder}/part-00000.parquet"
    with pytest.raises(RuntimeError, match="encoder failed"), transport.open_write(key) as out:
        out.write(os.urandom(size))
        raise RuntimeError("encoder failed")
    assert not transport.exists(key)
    assert transport.get(key) is None
    assert raw.list_multipart_uploads(Bucket=seaweed.BUCKET, Prefix=folder).get("Uploads", []) == []


def test_put_create_only_refuses_the_second_writer(transport: s3.S3Transport, folder: str) -> None:
    key = f"{folder}/_manifest.json"
    transport.put(key, b"first", create_only=True)
    with pytest.raises(AlreadyExistsError) as info:
        transport.put(key, b"second", create_only=True)
    assert str(info.value).startswith(f"{NAME}: ")
    assert transport.get(key) == b"first"
    transport.put(key, b"third")  # a plain put replaces
    assert transport.get(key) == b"third"


def test_create_only_put_whose_response_was_lost_still_succeeds(
    transport: s3.S3Transport, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt lands but its answer is lost; the retry finds our own bytes, which is no conflict."""
    put_object = transport._s3.put_object
    lost: list[bool] = []

    def answer_lost(**kwargs: Any) -> Any:
        response = put_object(**kwargs)
        if not lost:
            lost.append(True)
            raise botocore.exceptions.ConnectionClosedError(endpoint_url=transport._s3.meta.endpoint_url)
        return response

    monkeypatch.setattr(transport._s3, "put_object", answer_lost)
    transport.put(f"{folder}/_manifest.json", b"ours", create_only=True)
    assert lost and transport.get(f"{folder}/_manifest.json") == b"ours"
    with pytest.raises(AlreadyExistsError):  # a second writer still loses
        transport.put(f"{folder}/_manifest.json", b"theirs", create_only=True)


def test_list_and_delete(transport: s3.S3Transport, folder: str) -> None:
    keys = [f"{folder}/a/1", f"{folder}/b/2", f"{folder}/b/c/3", f"{folder}/b/.4.tmp-0123"]
    for key in keys:
        transport.put(key, key.encode())
    assert transport.list_prefixes(folder) == ["a", "b"]
    assert transport.list_prefixes(f"{folder}/b") == ["c"]
    assert transport.list_prefixes(f"{folder}/nothing") == []
    assert folder in transport.list_prefixes("")
    assert list(transport.list_keys(f"{folder}/b")) == sorted(keys[1:])
    assert list(transport.list_keys(f"{folder}/b/c/")) == [keys[2]]
    assert list(transport.list_keys(f"{folder}/b/c/3")) == []  # a folder, not a name prefix
    transport.delete([f"{folder}/a/1", f"{folder}/b/c/3", f"{folder}/never-there"])
    transport.delete([])
    assert list(transport.list_keys(folder)) == sorted([keys[1], keys[3]])
    # SeaweedFS keeps listing an emptied folder until its background cleanup runs (S3 itself lists none).
    assert "b" in transport.list_prefixes(folder)
    assert transport.exists(keys[1]) and not transport.exists(f"{folder}/a/1") and not transport.exists(folder)


def test_listings_page_through_more_than_one_response(transport: s3.S3Transport, folder: str) -> None:
    keys = sorted(f"{folder}/p{i:04d}/x" for i in range(1_001))  # ListObjectsV2 answers 1000 at most
    transport.delete(keys)  # deleting 1001 keys is two DeleteObjects requests, for missing keys too
    for key in keys:
        transport.put(key, b"")
    assert len(transport.list_prefixes(folder)) == 1_001
    assert list(transport.list_keys(folder)) == keys
    transport.delete(keys)
    assert list(transport.list_keys(folder)) == []


def test_every_write_asks_for_server_side_encryption(
    connect: Callable[..., s3.S3Transport], raw: S3Client, folder: str
) -> None:
    transport = connect(serverSideEncryption="AES256")
    transport.put(f"{folder}/small", b"1")
    write(transport, f"{folder}/large", os.urandom(s3.PART_SIZE + 1))
    for key in ("small", "large"):
        assert raw.head_object(Bucket=seaweed.BUCKET, Key=f"{folder}/{key}")["ServerSideEncryption"] == "AES256"


def test_wrong_credentials_are_refused_at_once(
    connect: Callable[..., s3.S3Transport], target: Target, folder: str
) -> None:
    assert target.wrong_secret is not None and target.secret is not None
    transport = connect(target.wrong_secret)
    secrets = (target.wrong_secret["secretAccessKey"], target.secret["secretAccessKey"])
    started = time.monotonic()
    for operation in (
        lambda: transport.list_prefixes(folder),
        lambda: transport.get(f"{folder}/x"),
        lambda: transport.put(f"{folder}/x", b"1", create_only=True),
        lambda: write(transport, f"{folder}/large", os.urandom(s3.PART_SIZE + 1)),
    ):
        message = refused(operation, *secrets)
        assert "credentials refused" in message and "check the Secret's accessKeyId/secretAccessKey" in message
    assert time.monotonic() - started < 10  # not retried


def test_half_a_key_pair_is_refused_before_any_request(connect: Callable[..., s3.S3Transport], target: Target) -> None:
    assert target.secret is not None
    half = {"accessKeyId": target.secret["accessKeyId"]}
    message = refused(lambda: connect(half))
    assert "needs both accessKeyId and secretAccessKey" in message


def test_missing_bucket_fails_fast(connect: Callable[..., s3.S3Transport], target: Target) -> None:
    transport = connect(**target.missing_block)
    started = time.monotonic()
    for operation in (lambda: transport.list_prefixes(""), lambda: transport.put("x", b"1")):
        message = refused(operation)
        assert f"bucket {seaweed.MISSING_BUCKET} does not exist" in message
    assert time.monotonic() - started < 10


def test_unreachable_store_is_retried(
    transport: s3.S3Transport, server: ProcessServer, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server goes away between two writes and comes back while the second one is being retried."""
    monkeypatch.setenv("DSEXPORT_RETRY_ATTEMPTS", "30")
    transport.put(f"{folder}/before", b"1")  # leaves a pooled connection that the restart breaks
    failures: list[BaseException] = []
    transient = s3._transient

    def counting(e: BaseException) -> bool:
        failures.append(e)
        return transient(e)

    monkeypatch.setattr(s3, "_transient", counting)
    server.stop()
    errors: list[BaseException] = []
    data = os.urandom(s3.PART_SIZE + 1000)

    def upload() -> None:
        try:
            write(transport, f"{folder}/after", data)
        except BaseException as e:
            errors.append(e)

    # The write runs on a thread and the server restarts on this one: a server dies with the thread that
    # started it (PR_SET_PDEATHSIG), so it must not be a short-lived one.
    thread = threading.Thread(target=upload)
    thread.start()
    wait_until(lambda: len(failures) >= 2, timeout=30, what="the client to retry")
    server.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors == []
    assert transport.get(f"{folder}/after") == data
    assert transport.get(f"{folder}/before") == b"1"  # the data survived the restart


def test_store_gone_for_good_fails_within_the_deadline(
    transport: s3.S3Transport, server: ProcessServer, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSEXPORT_RETRY_DEADLINE", "2")
    monkeypatch.setenv("DSEXPORT_RETRY_ATTEMPTS", "100")
    server.stop()
    started = time.monotonic()
    message = refused(lambda: transport.put(f"{folder}/x", b"1"))
    assert time.monotonic() - started < 15
    assert "did not answer, retries ran out" in message


def test_s3_source_exports_to_s3_with_the_cli(
    target: Target, transport: s3.S3Transport, tmp_path: Path, folder: str
) -> None:
    assert target.secret is not None
    lake = tmp_path / "lake"
    next_id = sample.write_files(lake, files=3, rows_per_file=1_500, seed=5, start=START)

    def upload_lake() -> None:
        for f in sorted(lake.glob("*.parquet")):
            if not transport.exists(f"{folder}/lake/events/{f.name}"):
                transport.put(f"{folder}/lake/events/{f.name}", f.read_bytes())

    upload_lake()
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

    def run(at: dt.datetime) -> dict[str, Any]:
        result = CliRunner().invoke(main, ["run", "-f", str(flow), "--at", at.isoformat(), "-o", "json"])
        assert result.exit_code == 0, result.output
        [summary] = json.loads(result.stdout)["results"]
        return dict(summary)

    at = dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)
    first = run(at)
    assert (first["outcome"], first["records"], first["files"]) == ("exported", 4_500, 3)
    assert run(at + dt.timedelta(hours=3))["outcome"] == "no-new-data"
    sample.write_files(lake, files=1, rows_per_file=700, seed=6, start=START + dt.timedelta(days=1), id_offset=next_id)
    upload_lake()
    third = run(at + dt.timedelta(hours=6))
    assert (third["outcome"], third["records"]) == ("exported", 700)

    assert [m["records"] for m in committed(transport, folder=f"{folder}/out")] == [4_500, 700]
    assert sorted(read_committed_ids(transport, folder=f"{folder}/out")) == sorted(source_ids(lake))
    assert_only_committed_files(transport, folder=f"{folder}/out")
