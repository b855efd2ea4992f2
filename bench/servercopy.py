"""A copy inside the store: exporting about 1 GiB of Parquet from an S3 bucket to the same S3 store (SeaweedFS).

``.venv/bin/python -m bench.servercopy`` uploads the source once (bench.data's events, as a few large objects of
identical content under different names) to a SeaweedFS started for the run, then times three in-process
``dsexport run``s of it into fresh folders of the same bucket, interleaved: the copy inside the store (the source
under the destination's endpoint and identity: CopyObject, no data byte through the exporter); the byte copy
streamed through the exporter (the same server under another name, so the exporter cannot tell it is the same
store); and the re-encoding path (``byteCopy: false``). For each it reports the time and the bytes that passed
between the exporter and the store, counted by a TCP relay in front of SeaweedFS that both the source and the
destination go through (system call counters such as /proc/self/io do not see sockets). Target, from issue 12:
under 1 MiB through the exporter for the copy inside the store.
``--write-docs`` rewrites the ``servercopy`` section of docs/benchmarks.md; ``--quick`` is a smoke test.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.config import Config
from tests.helpers import flow_yaml
from tests.servers import SECRET_NAME, Target, seaweed

from bench.baselines import FIRST_AT, run_dsexport
from bench.data import MIB, data_folder, events_source, parquet_paths
from bench.measure import load_average
from bench.report import DOCS_NAME, code_fingerprint, command, machine_facts, md_table, write_section

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MAX_THROUGH_MIB = 1.0


@dataclass
class Contestant:
    key: str
    label: str
    same_store: bool
    byte_copy: bool
    walls: list[float] = field(default_factory=list)
    through: list[int] = field(default_factory=list)  # bytes read and written by the process, per run
    vias: set[str] = field(default_factory=set)


class Relay:
    """A TCP relay on a free loopback port to ``upstream``, counting the bytes it carries both ways: what the
    exporter sends to and receives from the store, requests, replies and data alike. Bytes pass unchanged, so
    request signatures (which cover the Host header) stay valid for the relay's address."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.carried = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.upstream)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(1 << 16):
                with self._lock:
                    self.carried += len(chunk)
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()


def source_objects(data: Path, *, rows: int, copies: int) -> tuple[Path, int]:
    """One Parquet file of ``rows`` events (bench.data's), to upload ``copies`` times: few large objects with
    pyarrow's default row groups (1 Mi rows), as a lake compacted into large files has. The row groups set the
    footer's size, which is what a copy inside the store reads: 64 Ki-row groups give 155 KB of footer per
    4,000,000 rows, read twice per run."""
    events = events_source(data, rows=rows, rows_per_file=100_000)
    path = data / f"servercopy-{rows}-default-row-groups.parquet"
    if not path.exists():
        table = pa.concat_tables(pq.read_table(p) for p in parquet_paths(events))
        pq.write_table(table, path, compression="snappy")
    return path, copies


def upload(client: S3Client, path: Path, copies: int, prefix: str) -> int:
    body = path.read_bytes()
    for i in range(copies):
        client.put_object(Bucket=seaweed.BUCKET, Key=f"{prefix}/events-{i:03d}.parquet", Body=body)
    return len(body) * copies


def flow(work: Path, target: Target, c: Contestant, rep: int) -> Path:
    """The run's flow: source and destination both through the relay (``target`` points at it); the streamed
    byte copy names the relay ``localhost`` in the source, so the exporter cannot tell it is the same store."""
    host = target.block["endpoint"].removeprefix("http://")
    if not c.same_store:
        host = host.replace("127.0.0.1", "localhost")
    folder = work / f"{c.key}-{rep}"
    folder.mkdir(parents=True, exist_ok=True)
    assert target.secret is not None
    return flow_yaml(
        folder,
        source=f"s3://{seaweed.BUCKET}/lake/events?endpoint_override={host}&scheme=http&region=us-east-1",
        source_secret=SECRET_NAME,
        destination=target.destination_spec(),
        secrets={SECRET_NAME: target.secret},
        folder=f"out/{c.key}-{rep}",
        byte_copy=c.byte_copy,
    )


def measure(
    work: Path, target: Target, relay: Relay, contestants: list[Contestant], reps: int, client: S3Client
) -> None:
    for rep in range(reps):
        order = contestants[rep % len(contestants) :] + contestants[: rep % len(contestants)]
        for c in order:
            path = flow(work, target, c, rep)
            before, started = relay.carried, time.perf_counter()
            run_dsexport(path, FIRST_AT)
            c.walls.append(time.perf_counter() - started)
            c.through.append(relay.carried - before)
            manifest_key = next(
                o["Key"]
                for o in client.list_objects_v2(Bucket=seaweed.BUCKET, Prefix=f"out/{c.key}-{rep}/")["Contents"]
                if o["Key"].endswith("_manifest.json")
            )
            body = client.get_object(Bucket=seaweed.BUCKET, Key=manifest_key)["Body"].read()
            c.vias |= {f["via"] for f in json.loads(body)["files"]}


def render(contestants: list[Contestant], *, size: int, objects: int, load: str, argv: Sequence[str]) -> str:
    server = contestants[0]
    target_met = max(server.through) < MAX_THROUGH_MIB * MIB
    reencode = next(c for c in contestants if not c.byte_copy)
    rows = [
        [
            c.label,
            ", ".join(sorted(c.vias)),
            f"{statistics.median(c.walls):.2f}",
            " ".join(f"{w:.2f}" for w in c.walls),
            f"{statistics.median(c.through) / MIB:.2f}",
            " ".join(f"{b / MIB:.2f}" for b in c.through),
        ]
        for c in contestants
    ]
    return "\n".join(
        [
            "## Copy inside the store (S3)",
            "",
            f"{size / (1 << 30):.2f} GiB of Parquet in {objects} objects, exported from a SeaweedFS bucket to the "
            "same SeaweedFS, in-process runs interleaved; bytes through the exporter are those a TCP relay in "
            "front of SeaweedFS carried both ways during the run (source and destination go through it). Target: "
            "under "
            f"{MAX_THROUGH_MIB:.0f} MiB through the exporter for the copy inside the store: "
            f"{'met' if target_met else 'MISSED'}. The copy inside the store took "
            f"{statistics.median(server.walls) / statistics.median(reencode.walls):.3f} of the re-encoding path's "
            "time (medians).",
            "",
            *md_table(["run", "parts made by", "median s", "all runs s", "median MiB through", "all runs MiB"], rows),
            "",
            "What passes through the exporter in the copy inside the store is metadata: the listing, each "
            "object's footer (read once to plan the copy and once by the dataset), the copy requests and the "
            "manifest. The streamed byte copy and the re-encoding path read every byte and write it again.",
            "",
            f"Load average at the start: {load}. Code measured: the `dsexport` package's Python files with "
            f"SHA-256 prefix `{code_fingerprint()}`. Machine: "
            + "; ".join(f"{k} {v}" for k, v in machine_facts()[:5])
            + ".",
            "",
            "```sh",
            command("bench.servercopy", argv),
            "```",
        ]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.servercopy", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rows", type=int, default=4_000_000, help="rows per source object (default 4,000,000)")
    p.add_argument("--objects", type=int, default=6, help="source objects, same content (default 6: about 1 GiB)")
    p.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    p.add_argument("--quick", action="store_true", help="smoke test: 400,000 rows, 2 objects, 1 repetition")
    p.add_argument("--data-dir", type=Path, help="generated data (default: a temporary folder)")
    p.add_argument("--write-docs", action="store_true", help=f"rewrite the servercopy section of {DOCS_NAME}")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.objects, args.reps = 400_000, 2, 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {message}", flush=True)

    contestants = [
        Contestant("server", "copy inside the store", same_store=True, byte_copy=True),
        Contestant("stream", "byte copy through the exporter", same_store=False, byte_copy=True),
        Contestant("encode", "re-encoding (byteCopy: false)", same_store=True, byte_copy=False),
    ]
    with data_folder(args.data_dir) as data, tempfile.TemporaryDirectory(prefix="dsexport-servercopy-") as tmp:
        path, copies = source_objects(data, rows=args.rows, copies=args.objects)
        target = seaweed.launch(Path(tmp) / "seaweed")
        try:
            assert target.secret is not None
            client = boto3.client(
                "s3",
                endpoint_url=target.block["endpoint"],
                region_name=seaweed.REGION,
                aws_access_key_id=target.secret["accessKeyId"],
                aws_secret_access_key=target.secret["secretAccessKey"],
                config=Config(s3={"addressing_style": "path"}),
            )
            size = upload(client, path, copies, "lake/events")
            log(f"uploaded {copies} objects, {size / MIB:,.0f} MiB")
            address = urlsplit(target.block["endpoint"])
            assert address.hostname is not None and address.port is not None
            relay = Relay((address.hostname, address.port))
            relayed = dataclasses.replace(target, block={**target.block, "endpoint": f"http://127.0.0.1:{relay.port}"})
            load = load_average()
            try:
                measure(Path(tmp) / "work", relayed, relay, contestants, args.reps, client)
            finally:
                relay.close()
                client.close()
        finally:
            assert target.server is not None
            target.server.stop()
    given = list(argv) if argv is not None else sys.argv[1:]
    text = render(contestants, size=size, objects=copies, load=load, argv=[a for a in given if a != "--write-docs"])
    print(text)
    if args.write_docs:
        log(f"wrote {write_section('servercopy', text)}")
    server = contestants[0]
    return 0 if max(server.through) < MAX_THROUGH_MIB * MIB and server.vias == {"server-copy"} else 1


if __name__ == "__main__":
    raise SystemExit(main())
