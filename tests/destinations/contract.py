"""Helpers of the transport tests, shared by the contract (test_transport.py) and the backend files.

Kept apart from conftest.py so that test modules can import them by name; fixtures live in conftest.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.exceptions
import paramiko
import pytest
import requests
from azure.core.exceptions import ServiceResponseError
from azure.storage.blob import BlobClient
from click.testing import CliRunner
from examples import sample
from google.cloud import storage  # type: ignore[import-untyped]
from tests.helpers import START, assert_only_committed_files, committed, flow_yaml, read_committed_ids, source_ids

from dsexport.cli import main
from dsexport.destinations import DestinationError, Transport, retry
from dsexport.destinations.azure import AzureBlobTransport
from dsexport.destinations.gcs import GcsTransport
from dsexport.destinations.s3 import S3Transport
from dsexport.destinations.sftp import SftpTransport

NAME = "Destination/under-test"
"""The Destination every ``connect``-ed transport belongs to: each message it raises must start with it."""
MiB = 1 << 20
CHUNK = 8 * MiB
"""What every remote backend sends at once (an S3 part, a GCS chunk, an Azure block): larger files are streamed."""


def write(transport: Transport, key: str, data: bytes) -> None:
    """Writes ``data`` as the write-behind sink does: 1 MiB memoryviews, never the whole buffer at once."""
    with transport.open_write(key) as out:
        view = memoryview(data)
        for start in range(0, len(data), MiB):
            out.write(view[start : start + MiB])


def fail_inside_open_write(transport: Transport, key: str, size: int) -> None:
    """An encoder that dies after writing ``size`` bytes: the error must come out of open_write unchanged."""
    with pytest.raises(RuntimeError, match="encoder failed"), transport.open_write(key) as out:
        out.write(b"x" * size)
        raise RuntimeError("encoder failed")


def refusal(fn: Callable[[], object], *secrets: str) -> DestinationError:
    """The DestinationError ``fn()`` raises; no secret in it nor in any exception it chains, even hidden.

    Users paste these messages into tickets, so a secret must not hide even in ``__context__``, and the message
    must say which Destination failed.
    """
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
    assert str(info.value).startswith(f"{NAME}: ")
    return info.value


def refused(fn: Callable[[], object], *secrets: str) -> str:
    """The message of ``refusal(fn, *secrets)``."""
    return str(refusal(fn, *secrets))


def count_retries(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """Every failure a backend hands to ``retry.call`` from now on, as judged: proof that retrying happens.

    All four remote backends retry through ``retry.call``, so this one hook observes each of them.
    """
    failures: list[BaseException] = []
    call = retry.call

    def counting(fn: Callable[[], Any], *, transient: Callable[[BaseException], bool], **kwargs: Any) -> Any:
        def judged(e: BaseException) -> bool:
            failures.append(e)
            return transient(e)

        return call(fn, transient=judged, **kwargs)

    monkeypatch.setattr(retry, "call", counting)
    return failures


def refused_once(failures: list[BaseException], fn: Callable[[], object], *secrets: str) -> DestinationError:
    """``refusal(fn, *secrets)``, after exactly one attempt: ``failures`` (from ``count_retries``) grew by one, so
    ``retry.call`` judged the failure once and did not try again. Elapsed time cannot say this: the whole retry
    budget of a quick refusal fits in a few seconds."""
    before = len(failures)
    error = refusal(fn, *secrets)
    assert len(failures) - before == 1, f"{len(failures) - before} attempts: a permanent refusal must be sent once"
    assert not error.transient, error
    return error


Operation = Callable[[Transport, str], object]
"""One use of a transport on the test's folder."""

WRITES: dict[str, Operation] = {
    "put": lambda t, folder: t.put(f"{folder}/x", b"1"),
    "create-only put": lambda t, folder: t.put(f"{folder}/_manifest.json", b"1", create_only=True),
    "small open_write": lambda t, folder: write(t, f"{folder}/small", b"small"),
    "large open_write": lambda t, folder: write(t, f"{folder}/large", b"x" * (CHUNK + 1000)),  # a chunk sent early
}
OPERATIONS: dict[str, Operation] = {
    **WRITES,
    "get": lambda t, folder: t.get(f"{folder}/x"),
    "exists": lambda t, folder: t.exists(f"{folder}/x"),
    "list_keys": lambda t, folder: list(t.list_keys(folder)),
    "list_prefixes": lambda t, folder: t.list_prefixes(folder),
    "delete": lambda t, folder: t.delete([f"{folder}/x"]),
}
"""Every operation the commit protocol uses, each once."""


def lose_first_reply(transport: Transport, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Makes the first create-only upload of ``transport`` land on the store but fail as a dropped connection.

    Returns a list that gets one item once a reply was lost. Each backend needs its own request to drop: the one
    that creates the object (S3 PutObject, a GCS upload, an Azure upload, the SFTP rename of the temporary file).
    """
    owner: object
    if isinstance(transport, S3Transport):
        client = transport._s3
        owner, attr = client, "put_object"
        error: Callable[[], BaseException] = lambda: botocore.exceptions.ConnectionClosedError(  # noqa: E731
            endpoint_url=client.meta.endpoint_url
        )
    elif isinstance(transport, GcsTransport):
        owner, attr, error = storage.Blob, "upload_from_string", lambda: requests.ConnectionError("connection reset")
    elif isinstance(transport, AzureBlobTransport):
        owner, attr, error = BlobClient, "upload_blob", lambda: ServiceResponseError("connection reset by peer")
    elif isinstance(transport, SftpTransport):
        owner, attr, error = paramiko.SFTPClient, "rename", EOFError
    else:
        pytest.skip("a local folder has no reply to lose")
    original = getattr(owner, attr)
    lost: list[bool] = []

    def answer_lost(*args: Any, **kwargs: Any) -> Any:
        response = original(*args, **kwargs)
        if not lost:
            lost.append(True)
            raise error()
        return response

    monkeypatch.setattr(owner, attr, answer_lost)
    return lost


Outcome = tuple[str, int, int, str]
"""What a run reports for the one dataset: outcome, records, files, and a message to show when it is unexpected."""


def export_from_the_store(
    transport: Transport, folder: str, tmp_path: Path, *, seed: int, run: Callable[[dt.datetime], Outcome]
) -> None:
    """An export whose source lake sits in the store it exports to: backfill, nothing new, then one new file.

    The lake is uploaded to ``folder/lake/events``; ``run`` exports it to ``folder/out`` through the front end
    its test is about (the CLI, or ``local.run``). The commits must hold every source row once.
    """
    lake = tmp_path / "lake"
    next_id = sample.write_files(lake, files=3, rows_per_file=1_500, seed=seed, start=START)

    def upload() -> None:
        for f in sorted(lake.glob("*.parquet")):
            if not transport.exists(f"{folder}/lake/events/{f.name}"):
                transport.put(f"{folder}/lake/events/{f.name}", f.read_bytes())

    upload()
    at = dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)
    first = run(at)
    assert first[:3] == ("exported", 4_500, 3), first
    again = run(at + dt.timedelta(hours=3))
    assert again[0] == "no-new-data", again
    later = START + dt.timedelta(days=1)
    sample.write_files(lake, files=1, rows_per_file=700, seed=seed + 1, start=later, id_offset=next_id)
    upload()
    third = run(at + dt.timedelta(hours=6))
    assert third[:2] == ("exported", 700), third

    out = f"{folder}/out"
    assert [m["records"] for m in committed(transport, folder=out)] == [4_500, 700]
    assert sorted(read_committed_ids(transport, folder=out)) == sorted(source_ids(lake))
    assert_only_committed_files(transport, folder=out)


def copied_from_the_store(
    transport: Transport, tmp_path: Path, folder: str, *, source: str, via: str, **flow: Any
) -> list[tuple[dict[str, Any], bytes]]:
    """Two Parquet files (above the byte copy's smallest) put into the store under ``folder/lake/events``, exported
    by the CLI from ``source`` (their URI, as the test makes it) into ``folder/out`` of ``transport``: each part
    is its source file, byte for byte, made ``via`` the way expected, with its size (and, streamed, its SHA-256)
    in its manifest entry. Returns each entry with its source file's bytes, for what a store's copy records."""
    lake = tmp_path / "lake"
    sample.write_files(lake, files=2, rows_per_file=20_000, seed=11, start=START)  # above 1 MiB each: copied
    files = sorted(lake.glob("*.parquet"))
    for f in files:
        transport.put(f"{folder}/lake/events/{f.name}", f.read_bytes())
    run = flow_yaml(tmp_path, source=source, folder=f"{folder}/out", **flow)
    result = CliRunner().invoke(main, ["run", "-f", str(run), "--at", "2026-12-01T10:00:00Z", "-o", "json"])
    assert result.exit_code == 0, result.output
    [manifest] = committed(transport, folder=f"{folder}/out")
    slot = f"{folder}/out/events/exportTime={manifest['exportTime']}"
    pairs = []
    for entry, f in zip(manifest["files"], files, strict=True):
        data = f.read_bytes()
        assert (entry["via"], entry["source"], entry["bytes"]) == (via, f.name, len(data))
        assert transport.get(f"{slot}/{entry['path']}") == data
        if via == "copy":
            assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        pairs.append((entry, data))
    return pairs
