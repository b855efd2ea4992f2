"""The Transport contract, once for every destination: a local folder, S3, GCS, SFTP and Azure Blob.

The commit protocol relies on these primitives behaving the same whatever the store: a file that is either whole
or absent, a create-only put that exactly one writer wins, listings that show temporary leftovers, and retries
that ride out a store going away but give up within the deadline when it stays away. The operator decides from a
failure's ``transient`` flag whether to retry the run later or to report and wait for a change, so every backend
must set it the same way: transient when the store did not answer, permanent when credentials, the bucket or the
folder must change first. What a backend does beyond the contract (multipart uploads, host keys, SAS tokens, ...)
is tested in its own file.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable

import pytest
from tests.destinations.conftest import Connect
from tests.destinations.contract import (
    CHUNK,
    NAME,
    OPERATIONS,
    WRITES,
    Operation,
    count_retries,
    fail_inside_open_write,
    lose_first_reply,
    refusal,
    refused,
    write,
)
from tests.servers import ProcessServer, Target, wait_until

from dsexport.destinations import AlreadyExistsError, DestinationError, Transport

# How a remote backend says that the store stayed away through every retry.
GONE = {
    "s3": "did not answer, retries ran out",
    "gcs": "did not answer, retries ran out",
    "azureBlob": "did not answer, retries ran out",
    "sftp": "connection failed and retries ran out",
}


def test_large_file_reads_back_identical_and_leaves_no_temporary(transport: Transport, folder: str) -> None:
    """Larger than two chunks, so every remote backend streams it in pieces and joins them at the end."""
    data = os.urandom(2 * CHUNK + 12345)
    key = f"{folder}/ds/exportTime=202612010000/part-00000.parquet"
    write(transport, key, data)
    assert transport.get(key) == data
    assert transport.exists(key)
    assert list(transport.list_keys(folder)) == [key]


def test_small_and_empty_files_round_trip(transport: Transport, folder: str) -> None:
    write(transport, f"{folder}/small.json", b'{"a": 1}\n')
    write(transport, f"{folder}/empty.json", b"")
    assert transport.get(f"{folder}/small.json") == b'{"a": 1}\n'
    assert transport.get(f"{folder}/empty.json") == b""


@pytest.mark.parametrize("size", [100, CHUNK + 1000], ids=["buffered", "one-chunk-sent"])
def test_error_inside_open_write_leaves_nothing_visible(transport: Transport, folder: str, size: int) -> None:
    """A part writer that fails mid-file must leave no object, and no temporary name either."""
    key = f"{folder}/part-00000.parquet"
    fail_inside_open_write(transport, key, size)
    assert not transport.exists(key)
    assert transport.get(key) is None
    assert list(transport.list_keys(folder)) == []


def test_put_create_only_refuses_the_second_writer(target: Target, transport: Transport, folder: str) -> None:
    """The manifest is put create-only: of two runs committing the same slot, exactly one wins."""
    key = f"{folder}/_manifest.json"
    transport.put(key, b"first", create_only=True)
    with pytest.raises(AlreadyExistsError) as info:
        transport.put(key, b"second", create_only=True)
    assert str(info.value).startswith(f"{NAME}: ")
    assert transport.get(key) == b"first"
    assert list(transport.list_keys(folder)) == [key]  # the refused writer's temporary, if any, is gone
    transport.put(key, b"third")  # a plain put replaces
    assert transport.get(key) == b"third"
    transport.put(key, b"")
    assert transport.get(key) == b""
    assert transport.get(f"{folder}/missing") is None


def test_create_only_put_whose_response_was_lost_still_succeeds(
    transport: Transport, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt lands but its answer is lost; the retry finds our own bytes, which is no conflict."""
    lost = lose_first_reply(transport, monkeypatch)
    transport.put(f"{folder}/_manifest.json", b"ours", create_only=True)
    assert lost and transport.get(f"{folder}/_manifest.json") == b"ours"
    with pytest.raises(AlreadyExistsError):  # a second writer still loses
        transport.put(f"{folder}/_manifest.json", b"theirs", create_only=True)


def test_list_and_delete(target: Target, transport: Transport, folder: str) -> None:
    keys = [f"{folder}/a/1", f"{folder}/b/2", f"{folder}/b/c/3", f"{folder}/b/.4.tmp-0123"]
    for key in keys:
        transport.put(key, key.encode())
    assert transport.list_prefixes(folder) == ["a", "b"]
    assert transport.list_prefixes(f"{folder}/b") == ["c"]
    assert transport.list_prefixes(f"{folder}/nothing") == []
    assert folder in transport.list_prefixes("")
    # No order is promised (a local folder lists in directory order): compare sorted.
    assert sorted(transport.list_keys(folder)) == sorted(keys)
    assert sorted(transport.list_keys(f"{folder}/b")) == sorted(keys[1:])
    assert list(transport.list_keys(f"{folder}/b/c/")) == [keys[2]]
    assert list(transport.list_keys(f"{folder}/b/c/3")) == []  # a folder, not a name prefix
    transport.delete([f"{folder}/a/1", f"{folder}/b/c/3", f"{folder}/never-there"])
    transport.delete([])
    assert sorted(transport.list_keys(folder)) == sorted([keys[1], keys[3]])
    prefixes = transport.list_prefixes(folder)
    # Emptied folders go, as on an object store; SeaweedFS lists them until its background cleanup runs.
    assert prefixes == ["b"] or (target.type == "s3" and "b" in prefixes), prefixes
    assert transport.get(f"{folder}/a/1") is None
    assert transport.exists(keys[1]) and not transport.exists(f"{folder}/a/1") and not transport.exists(folder)


@pytest.mark.parametrize("operation", ["put", "open_write"])
def test_store_away_and_back_while_an_operation_is_retried(
    target: Target,
    transport: Transport,
    server: ProcessServer,
    folder: str,
    monkeypatch: pytest.MonkeyPatch,
    operation: str,
) -> None:
    """The server goes away between two writes and comes back while the second one is being retried."""
    if operation == "open_write" and target.type == "gcs":
        pytest.skip("the GCS SDK retries a resumable upload itself, out of retry.call's sight")
    monkeypatch.setenv("DSEXPORT_RETRY_ATTEMPTS", "30")
    transport.put(f"{folder}/before", b"1")  # leaves a pooled connection that the restart breaks
    failures = count_retries(monkeypatch)
    server.stop()
    errors: list[BaseException] = []
    key = f"{folder}/after"
    data = os.urandom(CHUNK + 1000) if operation == "open_write" else b"after"  # a chunk sent while it is away

    def operate() -> None:
        try:
            if operation == "put":
                transport.put(key, data, create_only=True)
            else:
                write(transport, key, data)
        except BaseException as e:
            errors.append(e)

    # The operation runs on a thread and the server restarts on this one: a server dies with the thread that
    # started it (PR_SET_PDEATHSIG), so it must not be a short-lived one.
    thread = threading.Thread(target=operate)
    thread.start()
    wait_until(lambda: len(failures) >= 2, timeout=30, what="the client to retry")
    server.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors == []
    assert transport.get(key) == data
    assert transport.get(f"{folder}/before") == b"1"  # the data survived the restart


def test_store_gone_for_good_fails_within_the_deadline(
    target: Target, transport: Transport, server: ProcessServer, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSEXPORT_RETRY_DEADLINE", "2")
    monkeypatch.setenv("DSEXPORT_RETRY_ATTEMPTS", "100")
    server.stop()
    failures = count_retries(monkeypatch)
    started = time.monotonic()
    message = refused(lambda: transport.put(f"{folder}/x", b"1"))
    assert time.monotonic() - started < 15  # the deadline, not the 100 attempts, ended it
    assert len(failures) >= 2, "a store that does not answer is retried"
    assert GONE[target.type] in message


def transient_flags(open_: Callable[[], Transport], folder: str, operations: dict[str, Operation]) -> dict[str, bool]:
    """``.transient`` of the DestinationError raised by connecting with ``open_``, or, when connecting succeeds (no
    request is sent yet), by each of ``operations``; every error must also pass ``refusal``'s checks."""
    return {name: transient for name, (transient, _) in refusals(open_, folder, operations, []).items()}


def refusals(
    open_: Callable[[], Transport], folder: str, operations: dict[str, Operation], failures: list[BaseException]
) -> dict[str, tuple[bool, int]]:
    """As ``transient_flags``, with the attempts each refusal took: how many failures ``retry.call`` judged
    (``failures`` from ``count_retries``) while connecting or running the operation."""

    def refuse(fn: Callable[[], object]) -> tuple[bool, int]:
        before = len(failures)
        transient = refusal(fn).transient
        return transient, len(failures) - before

    opened: list[Transport] = []
    try:
        opened.append(open_())
    except DestinationError:
        return {"connect": refuse(open_)}
    return {name: refuse(functools.partial(op, opened[0], folder)) for name, op in operations.items()}


def attempts_of_a_refusal(target: Target, operation: str) -> int:
    """The failures ``retry.call`` judges for one refused operation: one, since a permanent failure is not
    retried. None on a local folder, which has no retry policy (nothing it does is retried), nor for GCS uploads,
    whose requests the SDK sends (and would retry) itself: test_gcs.py counts those on the wire."""
    if target.type == "filesystem" or (target.type == "gcs" and operation.endswith("open_write")):
        return 0
    return 1


def test_a_store_that_does_not_answer_fails_as_transient(
    connect: Connect, server: ProcessServer, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries ran out because the store was away: the same run may well succeed later, so the operator retries."""
    monkeypatch.setenv("DSEXPORT_RETRY_DEADLINE", "1")
    monkeypatch.setenv("DSEXPORT_RETRY_ATTEMPTS", "100")
    transport = connect()  # after the environment: GCS takes its chunk retries' deadline when it connects
    transport.put(f"{folder}/x", b"1")
    server.stop()
    flags = {name: refusal(functools.partial(op, transport, folder)).transient for name, op in OPERATIONS.items()}
    assert flags == dict.fromkeys(OPERATIONS, True)
    assert all(transient_flags(connect, folder, {"get": OPERATIONS["get"]}).values())  # a new connection too


def test_refused_credentials_are_permanent(
    target: Target, connect: Connect, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retrying a wrong password or key only repeats the refusal: the Secret must change first. Each refusal is
    sent once (test_gcs.py injects GCS's, whose test server does not check credentials)."""
    if target.wrong_secret is None:
        pytest.skip(f"the {target.type} test server does not check credentials")
    wrong = target.wrong_secret
    failures = count_retries(monkeypatch)
    results = refusals(lambda: connect(wrong), folder, OPERATIONS, failures)
    assert results == {name: (False, attempts_of_a_refusal(target, name)) for name in results}, results


def test_a_missing_bucket_is_permanent(
    target: Target, connect: Connect, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bucket, container or folder that is not there will not appear by itself: spec.<type> must change first,
    so the refusal is sent once.

    Only writes must fail: a read of a missing bucket may answer "no such object", as it does for a missing key.
    """
    failures = count_retries(monkeypatch)
    results = refusals(lambda: connect(**target.missing_block), folder, WRITES, failures)
    assert results == {name: (False, attempts_of_a_refusal(target, name)) for name in results}, results
