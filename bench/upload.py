"""Upload throughput per destination: dsexport's ``Transport.open_write`` against the SDK's own upload of a file.

Run ``.venv/bin/python -m bench.upload`` from the repository root (``make bench-upload``; ``--write-docs`` rewrites
the upload section of docs/benchmarks.md).
Each destination's real test server (tests/servers) starts once, on loopback, in a temporary folder; one file of
random bytes (export parts are compressed, so incompressible is the honest case) is uploaded by both sides,
interleaved, after one untimed warm-up each. A timed upload is only the transfer and its commit: clients and
transports exist and hold warm connections before the clock starts, and ``os.sync()`` runs before each one so
nobody pays for the previous upload's dirty pages. Each contestant's warm-up upload is read back through the
transport and compared (size and SHA-256) outside the timing, so a fast but wrong upload cannot pass.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import hashlib
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import boto3
import paramiko
from azure.storage.blob import ContainerClient
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from google.cloud import storage  # type: ignore[import-untyped]
from tests.servers import Target, azurite, fakegcs, seaweed, sshd

from bench import report
from dsexport.destinations import Transport, filesystem, gcs, s3
from dsexport.destinations import azure as azure_blob
from dsexport.engine.sink import CHUNK

DESTINATIONS = ("s3", "gcs", "sftp", "azureBlob", "filesystem")
MAX_RATIO = 1.2  # the target: dsexport at most 1.2x the plain client upload
MIB = 1 << 20

Upload = Callable[[Path, str], None]


@dataclass
class Baseline:
    """The SDK's usual one-call upload of a local file, what releases its client afterwards, and diagnostics.

    A diagnostic is the same SDK call changed in one respect to upload the way dsexport does (e.g. its chunk
    size): not a target, it shows how much of a gap that one difference explains.
    """

    label: str
    upload: Upload
    close: Callable[[], None] = lambda: None
    diagnostics: dict[str, Upload] = field(default_factory=dict)


@dataclass
class Result:
    """Every timed run of one destination, by contestant: ``baseline``, ``dsexport`` and diagnostic labels."""

    destination: str
    baseline: str
    mib: float
    times: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)  # this process's CPU seconds (all threads) per run

    def best(self, who: str = "dsexport") -> float:
        return min(self.times[who])

    def median(self, who: str = "dsexport") -> float:
        return statistics.median(self.times[who])

    def cpu_median(self, who: str = "dsexport") -> float:
        return statistics.median(self.cpu[who])

    @property
    def ratio(self) -> float:
        return self.best() / self.best("baseline")

    @property
    def median_ratio(self) -> float:
        return self.median() / self.median("baseline")

    @property
    def passed(self) -> bool:
        return self.ratio <= MAX_RATIO

    @property
    def diagnostics(self) -> list[str]:
        return [who for who in self.times if who not in ("baseline", "dsexport")]


def s3_baseline(target: Target) -> Baseline:
    """boto3's managed transfer with its default TransferConfig (8 MiB parts, up to 10 threads)."""
    block, secret = target.block, target.secret or {}
    client = boto3.client(
        "s3",
        endpoint_url=block["endpoint"],
        region_name=block["region"],
        aws_access_key_id=secret["accessKeyId"],
        aws_secret_access_key=secret["secretAccessKey"],
        config=Config(s3={"addressing_style": "path"}),
    )
    sequential = TransferConfig(max_concurrency=1)

    return Baseline(
        "boto3 upload_file",
        lambda path, key: client.upload_file(str(path), block["bucket"], key),
        client.close,
        {
            "upload_file, max_concurrency=1 (parts one after another)": lambda path, key: client.upload_file(
                str(path), block["bucket"], key, Config=sequential
            )
        },
    )


def gcs_baseline(target: Target) -> Baseline:
    """google-cloud-storage's upload_from_filename: a resumable upload in 100 MiB chunks for a file this size."""
    client = storage.Client(client_options={"api_endpoint": target.block["endpoint"]}, use_auth_w_custom_endpoint=False)
    bucket = client.bucket(target.block["bucket"])
    return Baseline(
        "blob.upload_from_filename",
        lambda path, key: bucket.blob(key).upload_from_filename(str(path)),
        client.close,
        {
            f"upload_from_filename, {gcs.CHUNK_SIZE // MIB} MiB chunks (dsexport's chunk size)": lambda path, key: (
                bucket.blob(key, chunk_size=gcs.CHUNK_SIZE).upload_from_filename(str(path))
            )
        },
    )


def sftp_baseline(target: Target) -> Baseline:
    """paramiko's SFTPClient.put (pipelined 32 KiB writes) on a default paramiko SSHClient connection."""
    block = target.block
    ssh = paramiko.SSHClient()
    name, key_type, key_text = block["knownHosts"].split()
    ssh.get_host_keys().add(name, key_type, paramiko.PKey.from_type_string(key_type, base64.b64decode(key_text)))
    ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
    ssh.connect(
        block["host"],
        port=block["port"],
        username=block["username"],
        password=(target.secret or {})["password"],
        look_for_keys=False,
        allow_agent=False,
    )
    sftp = ssh.open_sftp()
    return Baseline("paramiko SFTPClient.put", lambda path, key: _discard(sftp.put(str(path), key)), ssh.close)


def azure_baseline(target: Target) -> Baseline:
    """azure-storage-blob's upload_blob of an open file, SDK defaults (4 MiB blocks, max_concurrency=1)."""
    container = ContainerClient.from_connection_string(
        (target.secret or {})["connectionString"], target.block["container"]
    )

    def upload(path: Path, key: str) -> None:
        with path.open("rb") as f:
            container.get_blob_client(key).upload_blob(f, overwrite=True)

    return Baseline("BlobClient.upload_blob", upload, container.close)


def filesystem_baseline(target: Target) -> Baseline:
    """shutil.copyfile (sendfile) then fsync: the least a durable copy does, without a temporary name."""
    root = Path(target.block["path"])

    def upload(path: Path, key: str) -> None:
        shutil.copyfile(path, root / key)
        fd = os.open(root / key, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def synced_every(path: Path, key: str) -> None:
        """1 MiB chunks, waiting for an fdatasync every SYNC_EVERY bytes, then fsync: no temporary name."""
        with path.open("rb", buffering=0) as f, (root / key).open("wb") as out:
            unsynced = 0
            while chunk := f.read(CHUNK):
                unsynced += out.write(chunk)
                if unsynced >= filesystem.SYNC_EVERY:
                    out.flush()
                    os.fdatasync(out.fileno())
                    unsynced = 0
            out.flush()
            os.fsync(out.fileno())

    every = filesystem.SYNC_EVERY // MIB
    return Baseline(
        "shutil.copyfile + fsync",
        upload,
        diagnostics={f"1 MiB writes, fdatasync every {every} MiB, fsync": synced_every},
    )


def _discard(_: object) -> None:
    """put() returns the remote file's attributes; the benchmark needs nothing from them."""


def filesystem_target(workdir: Path) -> Target:
    """A folder on the same local disk as the source file (no server to start)."""
    root = workdir / "root"
    root.mkdir(parents=True)
    return Target(
        type="filesystem", block={"path": str(root)}, secret=None, wrong_secret=None, missing_block={}, server=None
    )


def launcher(destination: str) -> Callable[[Path], Target]:
    """The test server module's launch for ``destination``'s store."""
    if destination == "filesystem":
        return filesystem_target
    return {"s3": seaweed.launch, "gcs": fakegcs.launch, "sftp": sshd.launch, "azureBlob": azurite.launch}[destination]


BASELINES: dict[str, Callable[[Target], Baseline]] = {
    "s3": s3_baseline,
    "gcs": gcs_baseline,
    "sftp": sftp_baseline,
    "azureBlob": azure_baseline,
    "filesystem": filesystem_baseline,
}


# ------------------------------------------------------------------------------------------------ measuring


def dsexport_upload(transport: Transport) -> Upload:
    """What the exporter does per part: 1 MiB chunks into ``open_write``, committed when the block exits."""

    def upload(path: Path, key: str) -> None:
        with path.open("rb", buffering=0) as f, transport.open_write(key) as out:
            while chunk := f.read(CHUNK):
                out.write(chunk)

    return upload


def make_source(folder: Path, size_mib: int) -> tuple[Path, str]:
    """A file of random bytes and its SHA-256; it stays in the page cache, so both sides read it from memory."""
    path = folder / "part.bin"
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(size_mib):
            block = os.urandom(MIB)
            digest.update(block)
            f.write(block)
    return path, digest.hexdigest()


def timed(upload: Upload, path: Path, key: str) -> tuple[float, float]:
    """Wall-clock and client CPU seconds of one upload; the CPU time tells client work from waiting on the server."""
    os.sync()  # the previous upload's dirty pages are written back now, not during this one
    cpu, start = time.process_time(), time.perf_counter()
    upload(path, key)
    return time.perf_counter() - start, time.process_time() - cpu


def verify(transport: Transport, key: str, size: int, sha256: str, who: str) -> None:
    """Read the object back through the transport and compare size and hash with the source file."""
    data = transport.get(key)
    if data is None or len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        got = "nothing" if data is None else f"{len(data):,} bytes"
        raise RuntimeError(f"{who}: read back {got}, not the {size:,} bytes uploaded (or their hash differs)")


def bench_destination(
    destination: str, source: Path, sha256: str, repeat: int, workdir: Path, log: Callable[[str], None]
) -> Result:
    """Start the server, warm every contestant up and verify its upload, then time them in turn, ``repeat`` times."""
    with contextlib.ExitStack() as stack:
        log(f"{destination}: starting the server")
        target = launcher(destination)(workdir)
        if target.server is not None:
            stack.callback(target.server.stop)
        transport = target.transport()
        stack.callback(transport.close)
        baseline = BASELINES[destination](target)
        stack.callback(baseline.close)
        contestants = {"baseline": baseline.upload, "dsexport": dsexport_upload(transport), **baseline.diagnostics}
        size = source.stat().st_size
        result = Result(
            destination, baseline.label, size / MIB, {w: [] for w in contestants}, {w: [] for w in contestants}
        )

        log(f"{destination}: warm-up and read-back check")
        for n, (who, upload) in enumerate(contestants.items()):
            key = f"warmup-{n}.bin"
            upload(source, key)
            verify(transport, key, size, sha256, f"{destination} {who}")
            transport.delete([key])
        order = list(contestants.items())
        for i in range(repeat):
            # Interleaved, and the order rotates each repetition, so no one always runs right after another.
            for who, upload in order[i % len(order) :] + order[: i % len(order)]:
                key = f"run-{i}.bin"
                wall, cpu = timed(upload, source, key)
                result.times[who].append(wall)
                result.cpu[who].append(cpu)
                transport.delete([key])
            runs = (
                f"{who if who in ('baseline', 'dsexport') else 'diagnostic'} {t[-1]:.2f} s"
                for who, t in result.times.items()
            )
            log(f"{destination}: run {i + 1}/{repeat}: " + ", ".join(runs))
        return result


# ------------------------------------------------------------------------------------------------ reporting

HEADER = (
    "| destination | MiB | baseline (plain client) | baseline best / median s | dsexport best / median s "
    "| ratio best (median) | MiB/s baseline / dsexport | client CPU s baseline / dsexport | target | result |"
)


def table(results: Sequence[Result]) -> str:
    lines = [HEADER, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r.destination} | {r.mib:.0f} | {r.baseline} "
            f"| {r.best('baseline'):.2f} / {r.median('baseline'):.2f} | {r.best():.2f} / {r.median():.2f} "
            f"| {r.ratio:.2f} ({r.median_ratio:.2f}) | {r.mib / r.best('baseline'):.0f} / {r.mib / r.best():.0f} "
            f"| {r.cpu_median('baseline'):.2f} / {r.cpu_median():.2f} "
            f"| <= {MAX_RATIO} | {'PASS' if r.passed else 'FAIL'} |"
        )
    return "\n".join(lines)


def diagnostics_table(results: Sequence[Result]) -> str:
    """Diagnostic contestants next to their destination's baseline and dsexport (not targets)."""
    lines = [
        "| destination | contestant | best / median s | ratio to baseline, best (median) |",
        "|---|---|---|---|",
    ]
    for r in results:
        if not r.diagnostics:
            continue
        for who in ("baseline", "dsexport", *r.diagnostics):
            name = {"baseline": f"baseline: {r.baseline}", "dsexport": "dsexport"}.get(who, f"diagnostic: {who}")
            lines.append(
                f"| {r.destination} | {name} | {r.best(who):.2f} / {r.median(who):.2f} "
                f"| {r.best(who) / r.best('baseline'):.2f} ({r.median(who) / r.median('baseline'):.2f}) |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def explanation() -> str:
    """The paragraph under the table; the sizes come from the backends, so it stays true when they change."""
    in_flight = getattr(s3, "PARTS_IN_FLIGHT", 1)
    s3_parts = "one after another" if in_flight == 1 else f"up to {in_flight} at once"
    text = (
        "**What the numbers mean.** Seconds are the wall-clock time of one upload of the file, best and median of "
        "the interleaved repetitions; *ratio* is dsexport / baseline, so 1.10 means dsexport takes 10% longer than "
        "the SDK's own upload call. The *baseline* is that SDK's usual one-liner with its defaults, on the same "
        "endpoint and credentials: S3 `client.upload_file` (default TransferConfig: 8 MiB parts, up to 10 at once), "
        "GCS `blob.upload_from_filename` (a resumable upload in 100 MiB chunks), SFTP `SFTPClient.put` (pipelined "
        "32 KiB writes, paramiko's default cipher order), Azure `BlobClient.upload_blob(f, overwrite=True)` (4 MiB "
        "blocks staged one after another, then the block list), filesystem `shutil.copyfile` and an fsync. "
        "*dsexport* is what the exporter does per part file: 1 MiB chunks into `Transport.open_write`, commit "
        f"included (S3 {s3.PART_SIZE // MIB} MiB parts {s3_parts}, then CompleteMultipartUpload; GCS a resumable "
        f"upload in {gcs.CHUNK_SIZE // MIB} MiB chunks; SFTP pipelined writes to a temporary name over AES-GCM, "
        f"every reply checked, then a rename; Azure {azure_blob.BLOCK_SIZE // MIB} MiB blocks one after another, then "
        "the block list; filesystem a temporary file pushed to disk every "
        f"{filesystem.SYNC_EVERY // MIB} MiB, fsync, rename and an fsync of the folder). Neither side's time "
        "includes making clients or connections. *Client CPU* is the median CPU time of the benchmark process (all "
        "its threads) per upload: what the client itself costs; the rest of the wall time is spent waiting for the "
        "server or the disk. Every server runs on this machine and competes with the client for the same cores, "
        "so these numbers compare client strategies over loopback, not network throughput. A ratio below 1 means "
        "dsexport's way suits the store better than the SDK's default: fewer, larger requests, a cheaper cipher "
        "(AES-GCM against paramiko's default AES-CTR with HMAC), or simply run-to-run noise. Uploading parts in "
        "parallel, as boto3 does, hides each request's wait for the store's reply; over a real network, with "
        "latency, that matters more than over loopback. *Diagnostic* rows are the baseline changed in one respect "
        "to work the way dsexport does; they are not targets but show what that one difference costs."
    )
    return textwrap.fill(text, width=115, break_long_words=False, break_on_hyphens=False)


SDK_GCS_CHUNK_MIB = 100  # google-cloud-storage's default resumable chunk (blob._DEFAULT_CHUNKSIZE)


def gcs_cause(r: Result) -> str:
    ours, sdk = gcs.CHUNK_SIZE // MIB, SDK_GCS_CHUNK_MIB
    return (
        "The time goes into the server, not the client (the client process uses a fraction of a second of CPU "
        "either way): fake-gcs-server keeps a resumable upload in memory and, on every chunk, recomputes the MD5 "
        "and CRC32C of everything received so far, so its work grows with (size / chunk size) x size. dsexport "
        f"sends {ours} MiB chunks (`gcs.CHUNK_SIZE`), {math.ceil(r.mib / ours)} requests for {r.mib:.0f} MiB, "
        f"where upload_from_filename sends {sdk} MiB chunks, {math.ceil(r.mib / sdk)} requests; the diagnostic, "
        f"the SDK itself with {ours} MiB chunks, shows how much of the gap chunk size alone accounts for, and the "
        "ratio grows with the file size. Real GCS does not re-hash, but each chunk is still a request whose reply "
        "is awaited before the next one is sent, so larger chunks would help there too; their price is memory, "
        "about twice the chunk size per open part (the SDK's writer keeps a buffer and a copy of the chunk in "
        f"flight), so {sdk} MiB chunks would add some {2 * (sdk - ours)} MiB to the exporter's peak RSS."
    )


def s3_cause(r: Result) -> str:
    part = s3.PART_SIZE // MIB
    return (
        "boto3's upload_file sends up to 10 parts at once; dsexport's multipart upload sends its "
        f"{math.ceil(r.mib / part)} parts of {part} MiB one after another, so while one part's request waits on "
        "the store nothing else is sent. The diagnostic, upload_file with max_concurrency=1, shows what that "
        "difference alone costs; a few parts in flight in dsexport's S3 writer (4 would hold "
        f"{3 * part} MiB more memory) would close the gap. Its buffer also copies each byte at least twice in "
        "Python (appending to a bytearray, then bytes() of it), some 0.2 to 0.4 s of CPU per 256 MiB (see the "
        "client CPU column), which on 2 cores shared with the server is wall time too."
    )


def azure_cause(r: Result) -> str:
    return (
        "Both sides stage blocks one after another, so the difference is in the client (see the client CPU "
        "column): dsexport's block writer copies each byte three times in Python (appending to a bytearray, "
        "slicing it, bytes() of the slice), about 0.4 s of CPU per 256 MiB with the requests stubbed out, where "
        "the SDK reads each block from the file once. On 2 cores shared with the server that CPU is wall time; "
        "keeping the written chunks in a list and joining them once per block brings it to about 0.04 s."
    )


def filesystem_cause(r: Result) -> str:
    return (
        "Both sides are bound by the disk; what differs is when dsexport waits for it. Its part file waits for an "
        f"fdatasync every {filesystem.SYNC_EVERY // MIB} MiB (`filesystem.SYNC_EVERY`, so that in an export the "
        "final fsync has little left and the waits overlap with encoding), and while it waits it writes nothing, "
        "where copyfile writes everything into the page cache and waits once; here there is no encoding to "
        "overlap with. The diagnostic, a plain copy with the same periodic fdatasync, shows what that pattern "
        "costs. Starting the writeback without waiting for it (POSIX_FADV_DONTNEED or sync_file_range on the "
        "bytes just written) would keep the disk busy without stalling the writer."
    )


# Why a destination can miss the target, for the notes under the table.
CAUSES: dict[str, Callable[[Result], str]] = {
    "gcs": gcs_cause,
    "s3": s3_cause,
    "azureBlob": azure_cause,
    "filesystem": filesystem_cause,
}
UNEXPLAINED = (
    "No diagnostic isolates a cause for this destination: look at the median ratio and the spread of the runs; on "
    "a shared machine one slow run moves the best of a few."
)


def miss_notes(results: Sequence[Result]) -> list[str]:
    """One paragraph per missed target: the ratios, what each diagnostic costs, and the known cause."""
    notes = []
    for r in results:
        if r.passed:
            continue
        evidence = [
            f"Diagnostic {who}: {r.best(who):.2f} s, {r.best(who) / r.best('baseline'):.2f}x the baseline."
            for who in r.diagnostics
        ]
        notes.append(
            " ".join(
                [
                    f"**{r.destination} ({r.ratio:.2f}x, median {r.median_ratio:.2f}x; target {MAX_RATIO}).**",
                    *evidence,
                    CAUSES[r.destination](r) if r.destination in CAUSES else UNEXPLAINED,
                ]
            )
        )
    return notes


def render_section(results: Sequence[Result], argv: Sequence[str], seconds: float, notes: Sequence[str]) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "## Upload throughput per destination",
        "",
        f"Generated by `python -m bench.upload` on {when} in {seconds / 60:.1f} min ({os.cpu_count()} cores, shared: "
        "other work may have run meanwhile, which the interleaving spreads over both sides); re-run the command "
        "below to refresh this section rather than editing it.",
        "",
        "```sh",
        report.command("bench.upload", argv),
        "```",
        "",
        table(results),
        "",
        explanation(),
        *(["", "### Missed targets", "", "\n\n".join(notes)] if notes else []),
        *(["", "### Diagnostics", "", diagnostics] if (diagnostics := diagnostics_table(results)) else []),
    ]
    return "\n".join(parts)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.upload", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--size-mib", type=int, default=256, help="size of the uploaded file (default 256)")
    p.add_argument("--repeat", type=int, default=3, help="timed uploads per side and destination (default 3)")
    p.add_argument("--only", help=f"comma-separated destinations (default all: {','.join(DESTINATIONS)})")
    p.add_argument("--data-dir", type=Path, help="folder for the file and servers (default: a temporary folder)")
    p.add_argument("--write-docs", action="store_true", help=f"rewrite the upload section of {report.DOCS_NAME}")
    args = p.parse_args(argv)
    args.only = args.only.split(",") if args.only else list(DESTINATIONS)
    if unknown := set(args.only) - set(DESTINATIONS):
        p.error(f"unknown destinations {sorted(unknown)}; choose from {', '.join(DESTINATIONS)}")
    if args.repeat < 1 or args.size_mib < 1:
        p.error("--repeat and --size-mib must be at least 1")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so the ExitStacks stop the servers we started."""
    raise KeyboardInterrupt


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:5.0f}s] {message}", flush=True)

    results: list[Result] = []
    folder = args.data_dir or Path(tempfile.mkdtemp(prefix="dsexport-upload-bench-"))
    try:
        log(f"writing {args.size_mib} MiB of random bytes to {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        source, sha256 = make_source(folder, args.size_mib)
        for destination in args.only:
            workdir = folder / destination
            shutil.rmtree(workdir, ignore_errors=True)
            results.append(bench_destination(destination, source, sha256, args.repeat, workdir, log))
            shutil.rmtree(workdir, ignore_errors=True)
    finally:
        if args.data_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    seconds = time.perf_counter() - start
    print()
    print(table(results))
    if diagnostics := diagnostics_table(results):
        print("\n" + diagnostics)
    notes = miss_notes(results)
    for note in notes:
        print("\n" + note.replace("**", ""))
    print(f"\n{seconds / 60:.1f} min")
    if args.write_docs:
        print(f"wrote {report.write_section('upload', render_section(results, argv, seconds, notes))}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("interrupted; the servers it started are stopped", file=sys.stderr)
        sys.exit(130)
