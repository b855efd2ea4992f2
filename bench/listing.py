"""The incremental no-op over a large date-partitioned source, with and without a declared partitioning.

``.venv/bin/python -m bench.listing`` times a whole in-process ``dsexport run`` that finds nothing new, once with
``source.partitioning: {key: date, format: "%Y-%m-%d"}`` (target: under 3 s) and once without it (the baseline:
everything is listed), on two stores in the same run: 1,000,000 files in 1,000 ``date=YYYY-MM-DD`` partitions on
a local folder, and 100,000 objects in 1,000 partitions on SeaweedFS (the tests' S3 server, tests/servers/seaweed.py,
on loopback) read through an ``s3://`` source URI. ``--store local`` or ``--store s3`` runs one of them;
``--quick`` is a smoke test on small sizes (10,000 files in 100 partitions, 2,000 objects in 20); ``--files`` and
``--partitions`` pick other sizes for the stores run; ``--write-docs`` rewrites the listing section of
docs/benchmarks.md (it needs both stores: the section holds both tables).

Both sources are generated once under ``--cache`` (default /tmp/dsexport-bench-listing) and reused while their
marker says they have the wanted shape. Only the last partition holds (tiny) Parquet files; the others are empty,
as a no-op never opens them.

*Local folder*: 1,000,000 files take a few minutes and about 1 GB of inodes and directory blocks. Every file's
modification time lies inside its partition's day, which is what the declaration promises.

*SeaweedFS*: ``weed mini`` keeps its data folder in ``--cache``/seaweedfs, so the objects outlive the server and are
reused by the next run (a fresh server on new ports serves them). They are uploaded with boto3 from a pool of
threads, one client each (100,000 objects: about two minutes on 2 cores). The store stamps each object with its
upload time, so every object was written minutes before the watermark: the S3 flow's lookback is 0s instead of
15m (a 15m window would make every listed object a candidate not yet exported; the lookback moves the horizon,
not what is listed). SeaweedFS's own metrics (``SeaweedFS_s3_request_total``, by request type) count the
requests each run sends, and a few direct listings of the source's root (pyarrow and boto3, with and without a
delimiter) show what one listing costs.

A no-op needs a committed watermark. A real backfill of the whole source would take most of an hour locally and
is not what is measured, so the backfill runs on a *seed* source holding the last partition's files (local: hard
links, same relative paths and modification times; S3: a copy of the last partition under a sibling prefix,
uploaded after the source): the manifest it commits is what a backfill of the whole source would leave as the
watermark, since the destination never records the source's URI. The timed runs then read the same destination
(a local folder) through the full source. Both variants share that destination and run interleaved, the first of
each repetition alternating, after one untimed warm-up each.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import io
import json
import logging
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import boto3
import botocore.exceptions
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml
from botocore.config import Config
from examples import sample
from tests.servers import SECRET_NAME, ProcessServer, free_port, seaweed

from bench import baselines as b
from bench.data import START
from bench.measure import load_average
from bench.report import DOCS_NAME, code_fingerprint, command, machine_facts, md_table, write_section
from dsexport import api
from dsexport.engine.sources import Source

TARGET_SECONDS = 3.0
LAST_DAY = dt.date(2026, 11, 30)  # the local source's newest partition; the bench's runs are at 2026-12-01
PARTITIONING = {"key": "date", "format": "%Y-%m-%d"}
MARKER = "_bench.json"  # '_'-prefixed: dsexport skips it
DAY_NS = 86_400 * 1_000_000_000
STORES = ("local", "s3")
SIZES = {"local": (1_000_000, 1_000), "s3": (100_000, 1_000)}  # files, partitions
QUICK_SIZES = {"local": (10_000, 100), "s3": (2_000, 20)}
LOOKBACK = {"local": "15m", "s3": "0s"}  # see the module's docstring for the store's 0s
S3_PREFIX = "bench-listing"
S3_PAGE = 1_000  # keys per ListObjectsV2 page (S3's and pyarrow's default)
UPLOAD_THREADS = 8
PROBE_REPS = 3

Log = Callable[[str], None]
Requests = dict[str, int]  # S3 requests by type (LIST, GET, PUT, ...), as SeaweedFS's metrics name them


@dataclass(frozen=True)
class Shape:
    files: int
    partitions: int

    @property
    def per_partition(self) -> int:
        return self.files // self.partitions

    @property
    def name(self) -> str:
        return f"date-{self.partitions}x{self.per_partition}"

    def day(self, index: int, last: dt.date = LAST_DAY) -> dt.date:
        """Partition ``index`` (0: the oldest) ends on ``last``."""
        return last - dt.timedelta(days=self.partitions - 1 - index)


@dataclass
class Timings:
    label: str
    walls: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.walls)

    @property
    def median(self) -> float:
        return statistics.median(self.walls)


@dataclass(frozen=True)
class Prepared:
    """A generated source and its seed, ready for flows."""

    source: str  # a local path or an s3:// URI
    seed: str
    last_day: dt.date
    generated_s: float | None  # how long generating took, when known
    generated_at: str | None  # when it was generated (UTC, ISO)
    reused: bool
    secret: dict[str, str] | None = None  # the source Secret's stringData (S3)


# ------------------------------------------------------------------------------------------ local source


def _folder(day: dt.date) -> str:
    return f"date={day.isoformat()}"


def _mtime_ns(day: dt.date, i: int, per_partition: int) -> int:
    """File ``i`` of a day's ``per_partition``, spread evenly inside that UTC day."""
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * 1_000_000_000
    return start + (2 * i + 1) * DAY_NS // (2 * per_partition)


def _tiny_parquet() -> bytes:
    buffer = io.BytesIO()
    pq.write_table(sample.events(10, seed=1, start=START), buffer)
    return buffer.getvalue()


def _write_partition(folder: Path, day: dt.date, per_partition: int, content: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for i in range(per_partition):
        fd = os.open(folder / f"part-{i:05d}.parquet", flags, 0o644)
        try:
            if content:
                os.write(fd, content)
            mtime = _mtime_ns(day, i, per_partition)
            os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def local_source(cache: Path, shape: Shape, log: Log) -> Prepared:
    """The full source and its seed (the last partition, hard-linked), generated unless cached."""
    root, seed = cache / shape.name, cache / f"{shape.name}-seed"
    spec = {"files": shape.files, "partitions": shape.partitions, "last": LAST_DAY.isoformat(), "version": 1}
    marker = root / MARKER
    if marker.exists() and seed.is_dir():
        found = json.loads(marker.read_text())
        if {k: found.get(k) for k in spec} == spec:
            seconds = found.get("generatedSeconds")
            return Prepared(str(root), str(seed), LAST_DAY, seconds, found.get("generatedAt"), reused=True)
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(seed, ignore_errors=True)
    started = time.perf_counter()
    content = _tiny_parquet()
    for index in range(shape.partitions):
        day = shape.day(index)
        last = index == shape.partitions - 1
        _write_partition(root / _folder(day), day, shape.per_partition, content if last else b"")
        if index % 100 == 99:
            log(f"  {index + 1:,} of {shape.partitions:,} partitions ({time.perf_counter() - started:.0f} s)")
    last_folder = _folder(LAST_DAY)
    (seed / last_folder).mkdir(parents=True)
    for path in (root / last_folder).iterdir():
        (seed / last_folder / path.name).hardlink_to(path)
    seconds = time.perf_counter() - started
    marker.write_text(json.dumps({**spec, "generatedSeconds": round(seconds, 1), "generatedAt": _now()}))
    log(f"  generated in {seconds:.0f} s")
    return Prepared(str(root), str(seed), LAST_DAY, seconds, _now(), reused=False)


# ------------------------------------------------------------------------------------------ SeaweedFS


class Seaweed:
    """The tests' SeaweedFS, its data folder kept in ``workdir`` across runs, with its Prometheus metrics on.

    ``seaweed.launch`` starts it with the tests' flags; it is then restarted once with ``-metricsPort`` added
    (same ports, same data), because the metrics are what counts the requests a run sends: pyarrow's S3 client
    offers no hook. ``close`` stops the process this bench started, by its process group.
    """

    def __init__(self, workdir: Path) -> None:
        target = seaweed.launch(workdir)
        assert target.server is not None and target.secret is not None
        target.server.stop()
        self.metrics_port = free_port()
        argv = [*target.server.argv, f"-metricsPort={self.metrics_port}"]
        self.server: ProcessServer = dataclasses.replace(target.server, argv=argv, proc=None)
        self.server.start()
        self.endpoint = str(target.block["endpoint"])
        self.bucket = str(target.block["bucket"])
        self.secret = dict(target.secret)
        self.version = self._version()

    def close(self) -> None:
        self.server.stop()

    def _version(self) -> str:
        done = subprocess.run([str(seaweed.WEED), "version"], capture_output=True, text=True, check=False)
        found = re.search(r"version\s+\S+\s+([0-9][\w.]*)", done.stdout)
        return found.group(1) if found else "?"

    def client(self) -> Any:
        """A boto3 S3 client of its own session (creating clients from the default session is not thread-safe)."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=seaweed.REGION,
            aws_access_key_id=self.secret["accessKeyId"],
            aws_secret_access_key=self.secret["secretAccessKey"],
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 5}),
        )

    def uri(self, prefix: str) -> str:
        """The ``s3://`` source URI of ``prefix``, written as tests/destinations/test_s3_partitioned_source.py does."""
        host = self.endpoint.removeprefix("http://")
        return f"s3://{self.bucket}/{prefix}?endpoint_override={host}&scheme=http&region={seaweed.REGION}"

    def requests(self) -> Requests:
        """S3 requests served so far, by type (every status code), once the count has settled: SeaweedFS counts
        a request just after answering it, so a reading taken as a run returns may miss its last request. Only
        the bench talks to this server, so two readings 0.1 s apart that agree are final."""
        counts = self._scrape()
        for _ in range(50):
            time.sleep(0.1)
            again = self._scrape()
            if again == counts:
                break
            counts = again
        return counts

    def _scrape(self) -> Requests:
        """``SeaweedFS_s3_request_total`` from the metrics endpoint, summed by request type."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        counts: Counter[str] = Counter()
        for line in text.splitlines():
            if line.startswith("SeaweedFS_s3_request_total{"):
                labels, value = line.rsplit(" ", 1)
                kind = dict(re.findall(r'(\w+)="([^"]*)"', labels)).get("type", "?")
                counts[kind] += int(float(value))
        return dict(counts)

    def upload(self, objects: Sequence[tuple[str, bytes]], log: Log) -> None:
        """PUT every (key, body), from UPLOAD_THREADS threads with a client each, logging the progress."""
        clients = [self.client() for _ in range(UPLOAD_THREADS)]
        done = [0] * UPLOAD_THREADS

        def work(n: int) -> None:
            client = clients[n]
            for key, body in objects[n::UPLOAD_THREADS]:
                client.put_object(Bucket=self.bucket, Key=key, Body=body)
                done[n] += 1

        started = time.perf_counter()
        with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            futures = [pool.submit(work, n) for n in range(UPLOAD_THREADS)]
            while wait(futures, timeout=15).not_done:
                seconds = time.perf_counter() - started
                log(f"  {sum(done):,} of {len(objects):,} objects ({seconds:.0f} s, {sum(done) / seconds:,.0f}/s)")
            for future in futures:
                future.result()
        for client in clients:
            client.close()

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; how many there were."""
        client = self.client()
        deleted = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
                deleted += len(keys)
        client.close()
        return deleted


def s3_source(store: Seaweed, shape: Shape, log: Log) -> Prepared:
    """The source's objects and its seed in SeaweedFS, uploaded unless a marker object says they are there.

    Each generation gets prefixes of its own (``bench-listing/SHAPE/GENERATION/lake`` and ``.../seed``), so the
    folders that SeaweedFS keeps for a while after their objects are deleted (see tests/servers/seaweed.py) never
    show in a listing of the source. The last partition is the UTC day an hour before the upload starts, so that
    the watermark (the seed's upload, minutes later) lies within that day plus the 1h lateness, and past the day
    before's: exactly one partition is kept by pruning (unless the upload starts just before 01:00 and ends after).
    """
    base = f"{S3_PREFIX}/{shape.name}"
    marker = f"{base}/{MARKER}"
    spec = {"files": shape.files, "partitions": shape.partitions, "version": 1}
    client = store.client()
    try:
        found = json.loads(client.get_object(Bucket=store.bucket, Key=marker)["Body"].read())
    except botocore.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
            raise
        found = {}
    finally:
        client.close()
    if {k: found.get(k) for k in spec} == spec:
        gen = found["generation"]
        return Prepared(
            store.uri(f"{base}/{gen}/lake"),
            store.uri(f"{base}/{gen}/seed"),
            dt.date.fromisoformat(found["last"]),
            found["generatedSeconds"],
            found["generatedAt"],
            reused=True,
            secret=store.secret,
        )
    if stale := store.delete_prefix(f"{base}/"):
        log(f"  deleted {stale:,} objects of an earlier or unfinished generation")
    now = dt.datetime.now(dt.UTC)
    gen, last = now.strftime("%Y%m%dT%H%M%S"), (now - dt.timedelta(hours=1)).date()
    lake, seed = f"{base}/{gen}/lake", f"{base}/{gen}/seed"
    content = _tiny_parquet()
    objects = [
        (f"{lake}/{_folder(shape.day(index, last))}/part-{i:05d}.parquet", b"")
        for index in range(shape.partitions - 1)
        for i in range(shape.per_partition)
    ]
    last_objects = [f"{_folder(last)}/part-{i:05d}.parquet" for i in range(shape.per_partition)]
    objects += [(f"{lake}/{name}", content) for name in last_objects]
    started = time.perf_counter()
    store.upload(objects, log)
    store.upload([(f"{seed}/{name}", content) for name in last_objects], log)  # after the source: the newest
    seconds = time.perf_counter() - started
    rate = (len(objects) + len(last_objects)) / seconds
    log(f"  uploaded {len(objects) + len(last_objects):,} objects in {seconds:.0f} s ({rate:,.0f}/s)")
    when = f"{now:%Y-%m-%d %H:%M} UTC"
    record = {**spec, "generation": gen, "last": last.isoformat(), "generatedSeconds": round(seconds, 1)}
    client = store.client()
    client.put_object(Bucket=store.bucket, Key=marker, Body=json.dumps({**record, "generatedAt": when}).encode())
    client.close()
    return Prepared(store.uri(lake), store.uri(seed), last, seconds, when, reused=False, secret=store.secret)


# --------------------------------------------------------------------------------------------------- runs


def flow(
    folder: Path,
    *,
    source: str,
    dest: Path,
    partitioning: dict[str, str] | None,
    lookback: str,
    secret: dict[str, str] | None,
) -> Path:
    """bench.baselines' flow (the tests' flow) with this source, its Secret, its partitioning and lookback, and a
    shared destination."""
    path = b.flow_file(folder, source=folder, fmt="parquet", compression="snappy")
    docs = list(yaml.safe_load_all(path.read_text()))
    dataset = docs[0]["spec"]
    dataset["source"]["uri"] = source
    dataset["incremental"]["lookback"] = lookback
    if partitioning is not None:
        dataset["source"]["partitioning"] = partitioning
    if secret is not None:
        dataset["source"]["credentialsSecretRef"] = {"name": SECRET_NAME}
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET_NAME}, "stringData": secret})
    docs[1]["spec"]["filesystem"]["path"] = str(dest)
    path.write_text(yaml.safe_dump_all(docs))
    return path


class ListingLog(logging.Handler):
    """The engine's ``list`` log line: how many folders a pruned listing read and how many partitions it skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, Any] = {}

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields.get("phase") == "list":
            self.fields = dict(fields)


@dataclass
class Probe:
    """One direct listing of the source's root, repeated: its entries, S3 requests and times."""

    label: str
    entries: int = 0
    requests: Requests = field(default_factory=dict)
    timings: Timings = field(default_factory=lambda: Timings(""))


@dataclass
class Result:
    store: str  # "local" or "s3"
    shape: Shape
    prepared: Prepared
    lookback: str
    pruned: Timings
    full: Timings
    processes: list[Timings]
    backfill_s: float
    backfill_records: int
    listing: dict[str, Any]
    load: str
    requests: dict[str, list[Requests]] = field(default_factory=dict)  # per variant, per timed run
    probes: list[Probe] = field(default_factory=list)
    server: str = ""


def _diff(before: Requests, after: Requests) -> Requests:
    return {k: n - before.get(k, 0) for k, n in sorted(after.items()) if n != before.get(k, 0)}


def measure(
    store: str,
    shape: Shape,
    prepared: Prepared,
    work: Path,
    reps: int,
    baseline_reps: int,
    log: Log,
    counter: Callable[[], Requests] | None = None,
) -> Result:
    shutil.rmtree(work, ignore_errors=True)
    listing_log = logging.getLogger("dsexport.engine.sources")
    handler = ListingLog()
    level = listing_log.level
    try:
        dest = work / "dest"
        lookback = LOOKBACK[store]

        def make(name: str, source: str, partitioning: dict[str, str] | None) -> Path:
            return flow(
                work / name,
                source=source,
                dest=dest,
                partitioning=partitioning,
                lookback=lookback,
                secret=prepared.secret,
            )

        load = load_average()
        t0 = time.perf_counter()
        backfill = b.run_dsexport(make("seed", prepared.seed, None), b.FIRST_AT)
        backfill_s = time.perf_counter() - t0
        log(f"backfill of the seed: {backfill.records:,} rows in {backfill_s:.1f} s")
        flows = {"pruned": make("pruned", prepared.source, PARTITIONING), "full": make("full", prepared.source, None)}
        timings = {"pruned": Timings("with `partitioning` (pruned)"), "full": Timings("without (baseline)")}
        requests: dict[str, list[Requests]] = {"pruned": [], "full": []}
        listing_log.addHandler(handler)
        listing_log.setLevel(logging.INFO)
        for name in ("pruned", "full"):  # warm-up, untimed
            b.run_dsexport(flows[name], b.LATER_AT, expect=b.NO_NEW_DATA)
        for rep in range(max(reps, baseline_reps)):
            order = ["pruned", "full"] if rep % 2 == 0 else ["full", "pruned"]
            for name in order:
                if len(timings[name].walls) >= (reps if name == "pruned" else baseline_reps):
                    continue
                before = counter() if counter else {}
                t0 = time.perf_counter()
                b.run_dsexport(flows[name], b.LATER_AT, expect=b.NO_NEW_DATA)
                timings[name].walls.append(time.perf_counter() - t0)
                if counter:
                    requests[name].append(_diff(before, counter()))
                sent = f" ({_requests_text(requests[name][-1])})" if counter else ""
                log(f"  {name}: {timings[name].walls[-1]:.3f} s{sent}")
        cli = Timings("with `partitioning`, `dsexport run` CLI subprocess")
        imports = Timings("`python -c 'import dsexport.cli'` (for reference)")
        for _ in range(3):
            t0 = time.perf_counter()
            done = subprocess.run(b.cli(flows["pruned"], b.LATER_AT), capture_output=True, text=True, check=True)
            cli.walls.append(time.perf_counter() - t0)
            if b.cli_result(done.stdout).outcome != b.NO_NEW_DATA:
                raise RuntimeError(f"CLI no-op run exported something: {done.stdout}")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import dsexport.cli"], check=True)
            imports.walls.append(time.perf_counter() - t0)
        log(f"  CLI: {' '.join(f'{w:.3f}' for w in cli.walls)} s")
        return Result(
            store,
            shape,
            prepared,
            lookback,
            timings["pruned"],
            timings["full"],
            [cli, imports],
            backfill_s,
            backfill.records,
            handler.fields,
            load,
            requests if counter else {},
        )
    finally:
        listing_log.removeHandler(handler)
        listing_log.setLevel(level)
        shutil.rmtree(work, ignore_errors=True)


def _requests_text(sent: Requests) -> str:
    return ", ".join(f"{n:,} {kind}" for kind, n in sent.items()) or "none"


def probe_listings(store: Seaweed, prepared: Prepared, log: Log) -> list[Probe]:
    """List the source's root directly, PROBE_REPS times each: pyarrow's S3FileSystem as dsexport opens it (one
    delimited listing, then the recursive one dsexport uses without pruning), and boto3's paginator with and
    without a delimiter, the same listings without pyarrow."""
    source = Source(api.Source.model_validate({"uri": prepared.source, "format": "parquet"}), prepared.secret)
    prefix = source.root.split("/", 1)[1] + "/"
    client = store.client()

    def arrow(recursive: bool) -> Callable[[], int]:
        return lambda: len(source.fs.get_file_info(pafs.FileSelector(source.root, recursive=recursive)))

    def boto(delimiter: bool) -> Callable[[], int]:
        def pages() -> Iterator[dict[str, Any]]:
            extra = {"Delimiter": "/"} if delimiter else {}
            return iter(client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=prefix, **extra))

        return lambda: sum(len(p.get("CommonPrefixes", [])) + len(p.get("Contents", [])) for p in pages())

    calls = [
        ("pyarrow `get_file_info(FileSelector(root))` (one level: delimited)", arrow(False)),
        ("boto3 `list_objects_v2` paginated, `Delimiter='/'`", boto(True)),
        ("pyarrow `get_file_info(FileSelector(root, recursive=True))`", arrow(True)),
        ("boto3 `list_objects_v2` paginated, no delimiter", boto(False)),
    ]
    probes = []
    try:
        for label, call in calls:
            probe = Probe(label)
            for _ in range(PROBE_REPS):
                before = store.requests()
                t0 = time.perf_counter()
                probe.entries = call()
                probe.timings.walls.append(time.perf_counter() - t0)
                probe.requests = _diff(before, store.requests())
            log(f"  {label}: {probe.entries:,} entries, {_requests_text(probe.requests)}, {probe.timings.median:.3f} s")
            probes.append(probe)
    finally:
        client.close()
    return probes


# ------------------------------------------------------------------------------------------------- report


def _pages(entries: int) -> int:
    return max(1, math.ceil(entries / S3_PAGE))


def _row(t: Timings) -> list[str]:
    return [t.label, f"{t.best:.3f}", f"{t.median:.3f}", " ".join(f"{w:.3f}" for w in t.walls)]


def _generation(p: Prepared, objects: str) -> str:
    took = f"{p.generated_s:,.0f} s" if p.generated_s is not None else "a time not recorded"
    when = f" on {p.generated_at}" if p.generated_at else ""
    if p.reused and p.generated_s is None:
        return "reused from the cache (its generation time was not recorded)"
    if p.reused:
        return f"reused from the cache (generated{when} in {took})"
    return f"generated by this run in {took} ({objects})"


def render_store(r: Result) -> list[str]:
    shape = r.shape
    met = r.pruned.median < TARGET_SECONDS
    folders = r.listing.get("foldersListed", "?")
    pruned = r.listing.get("partitionsPruned", "?")
    rows = [_row(t) for t in (r.pruned, r.full, *r.processes)]
    if r.store == "local":
        title, what, unit = "Local folder", "", "files"
        where = "on a local folder"
    else:
        title, what, unit = (
            "SeaweedFS (S3)",
            f"SeaweedFS {r.server} `weed mini` on loopback, an `s3://` URI, ",
            "objects",
        )
        where = "on SeaweedFS"
    lines = [
        f"### {title}",
        "",
        f"**Incremental no-op over {shape.files:,} source {unit} in {shape.partitions:,} date partitions {where}** "
        f"({what}`date=YYYY-MM-DD/`, {shape.per_partition:,} {unit} each; lookback {r.lookback}; partitioning "
        f'`{{key: date, format: "%Y-%m-%d"}}`, lateness 1h; a local destination): in-process runs (load YAML, '
        "read the destination's state, list, select), seconds. Target: median under "
        f"{TARGET_SECONDS:.0f} s with pruning: {'met' if met else 'MISSED'}. Without pruning the median is "
        f"{r.full.median / r.pruned.median:,.0f} times longer.",
        "",
        *md_table(["run", "best s", "median s", "all runs s"], rows),
        "",
    ]
    listed = (
        f"With pruning a run listed {folders} folders (the source root and the last partition) and skipped "
        f"{pruned} partitions unlisted (the `list` log line); without it, one recursive listing returned all "
        f"{shape.files:,} {unit}. The CLI row is the same pruned no-op in a fresh `dsexport run` process, start-up "
        "and imports included."
    )
    if r.store == "local":
        return [*lines, listed, ""]
    root_pages, part_pages, all_pages = _pages(shape.partitions), _pages(shape.per_partition), _pages(shape.files)
    body = []
    for name, t in (("pruned", r.pruned), ("full", r.full)):
        runs = r.requests.get(name, [])
        lists = sorted({s.get("LIST", 0) for s in runs})
        others = sorted({sum(n for k, n in s.items() if k != "LIST") for s in runs})
        expected = root_pages + part_pages if name == "pruned" else all_pages
        body.append([t.label, "/".join(map(str, lists)), str(expected), "/".join(map(str, others))])
    lines += [
        listed,
        "",
        "*S3 requests per timed run*, counted by SeaweedFS itself (`SeaweedFS_s3_request_total` from its metrics "
        "endpoint, read before and after each run; a/b: the runs differed). Expected: one "
        f"ListObjectsV2 page per {S3_PAGE:,} keys, i.e. with pruning {root_pages} delimited page(s) for the root's "
        f"{shape.partitions:,} partition prefixes and {part_pages} for the last partition's {shape.per_partition:,} "
        f"objects, without it {all_pages} pages for all {shape.files:,}.",
        "",
        *md_table(["run", "LIST requests", "expected", "other requests"], body),
        "",
    ]
    probe_rows = [
        [
            p.label,
            f"{p.entries:,}",
            _requests_text(p.requests),
            f"{p.timings.median:.3f}",
            " ".join(f"{w:.3f}" for w in p.timings.walls),
        ]
        for p in r.probes
    ]
    if probe_rows:
        lines += [
            f"*One listing of the source's root*, outside dsexport ({PROBE_REPS} times each; pyarrow through the "
            "S3FileSystem dsexport opens for this URI). A delimited listing returns the partition prefixes, not "
            "their objects:",
            "",
            *md_table(["listing", "entries", "S3 requests", "median s", "all runs s"], probe_rows),
            "",
        ]
    return lines


def render(results: Sequence[Result], args: Sequence[str]) -> str:
    by_store = {r.store: r for r in results}
    lines = [
        "## Partition-pruned listing",
        "",
        f"Generated by `{command('bench.listing', args)}`. Code measured: the `dsexport` package's Python files with "
        f"SHA-256 prefix `{code_fingerprint()}`. Targets (issue 12): an incremental no-op under {TARGET_SECONDS:.0f} "
        "s with pruning, over 1,000,000 files in 1,000 date partitions on a local folder and over 100,000 objects "
        "on SeaweedFS; the time without pruning is the baseline.",
        "",
    ]
    for r in results:
        lines += render_store(r)
    lines += [
        "A smoke version (a few seconds once generated): `.venv/bin/python -m bench.listing --quick` (10,000 files "
        "in 100 partitions locally, 2,000 objects in 20 on SeaweedFS); `--store local|s3` runs one store, `--files` "
        "and `--partitions` scale it.",
        "",
        "**Method.** Each source is generated once and cached; only its last partition holds (tiny, 10-row) Parquet "
        "files, the rest are empty, since a no-op never opens a file. The watermark comes from a backfill of a "
        "*seed* source holding the last partition's files under the same relative paths (not timed against the "
        "target): the destination keeps no source URI, so the commit is the one a backfill of the whole source "
        "would leave. Both variants then run against the same destination (a local folder), interleaved (the "
        "first of each repetition alternating), after one untimed warm-up each.",
        "",
    ]
    if local := by_store.get("local"):
        p = local.prepared
        lines += [
            f"*Local folder*: each file's modification time lies inside its partition's UTC day; the seed holds hard "
            f"links to the last partition's {local.shape.per_partition:,} files, same paths and times "
            f"(backfill: {local.backfill_records:,} rows in {local.backfill_s:.1f} s). The source was "
            f"{_generation(p, f'{local.shape.files:,} files')}. The dentry and inode caches are warm. Load average "
            f"at the start: {local.load}.",
            "",
        ]
    if s3 := by_store.get("s3"):
        p = s3.prepared
        n = s3.shape.files + s3.shape.per_partition
        rate = f", {n / p.generated_s:,.0f} objects/s" if p.generated_s else ""
        lines += [
            f"*SeaweedFS*: `weed mini` ({s3.server}) from tests/servers/seaweed.py, restarted with `-metricsPort` to "
            f"count requests, its data folder kept under the bench's cache so the objects are reused. The "
            f"{n:,} objects (source and seed) were "
            f"{_generation(p, f'boto3 PUTs from {UPLOAD_THREADS} threads with a client each{rate}')}: the source "
            "first, then the seed, a copy of the last partition under a sibling prefix "
            f"(backfill: {s3.backfill_records:,} rows in {s3.backfill_s:.1f} s). The store stamps every object with "
            "its upload time (S3 cannot set it), so the old partitions' objects were written long after their days "
            "(breaking the declaration, which a no-op never notices: pruning skips them, the full listing finds "
            "them at or below the watermark), and every object was written within minutes of the watermark (the "
            "seed's upload). Hence lookback 0s, not 15m: a 15m window would make every object of the full listing "
            "a candidate never exported; the lookback moves the horizon, not what is listed. The last partition "
            f"is {p.last_day}, the UTC day an hour before the upload started, so the horizon (the seed's upload, "
            "minutes later) falls within that day plus the 1h lateness and past the day before's: pruning keeps "
            f"one partition. Load average at the start: {s3.load}.",
            "",
        ]
    lines += ["Machine: " + "; ".join(f"{k} {v}" for k, v in machine_facts()[:5]) + ".", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.listing",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--store", choices=[*STORES, "both"], default="both", help="which source store (default both)")
    p.add_argument("--files", type=int, help="source files (default 1,000,000 local, 100,000 s3; --quick smaller)")
    p.add_argument("--partitions", type=int, help="date partitions (default 1,000; --quick 100 local, 20 s3)")
    p.add_argument("--reps", type=int, default=5, help="timed runs with pruning (default 5)")
    p.add_argument("--baseline-reps", type=int, default=3, help="timed runs without pruning (default 3)")
    p.add_argument("--quick", action="store_true", help="a smoke test on small sizes")
    p.add_argument("--cache", type=Path, default=Path("/tmp/dsexport-bench-listing"), help="generated sources")
    p.add_argument("--write-docs", action="store_true", help=f"rewrite the listing section of {DOCS_NAME}")
    args = p.parse_args(argv)
    args.stores = list(STORES) if args.store == "both" else [args.store]
    args.shapes = {}
    for store in args.stores:
        files, partitions = (QUICK_SIZES if args.quick else SIZES)[store]
        files, partitions = args.files or files, args.partitions or partitions
        if partitions < 1 or files < partitions or files % partitions:
            p.error(f"{store}: --files ({files:,}) must be a positive multiple of --partitions ({partitions:,})")
        args.shapes[store] = Shape(files, partitions)
    if min(args.reps, args.baseline_reps) < 1:
        p.error("--reps and --baseline-reps must be at least 1")
    if args.write_docs and args.store != "both":
        p.error("--write-docs needs both stores (--store both, the default): the section holds both tables")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so SeaweedFS is stopped by the ``finally`` that started it."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {message}", flush=True)

    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    results = []
    if "local" in args.stores:
        shape = args.shapes["local"]
        log(f"local: {shape.files:,} files in {shape.partitions:,} partitions under {cache}")
        prepared = local_source(cache, shape, log)
        work = cache / f"work-{os.getpid()}"
        results.append(measure("local", shape, prepared, work, args.reps, args.baseline_reps, log))
    if "s3" in args.stores:
        shape = args.shapes["s3"]
        log(f"s3: {shape.files:,} objects in {shape.partitions:,} partitions, SeaweedFS data in {cache / 'seaweedfs'}")
        store = Seaweed(cache / "seaweedfs")
        try:
            prepared = s3_source(store, shape, log)
            work = cache / f"work-s3-{os.getpid()}"
            result = measure("s3", shape, prepared, work, args.reps, args.baseline_reps, log, store.requests)
            log("direct listings of the source's root:")
            result.probes = probe_listings(store, prepared, log)
            result.server = store.version
            results.append(result)
        finally:
            store.close()
    given = sys.argv[1:] if argv is None else argv
    text = render(results, [a for a in given if a != "--write-docs"])
    print()
    print(text)
    if args.write_docs:
        log(f"wrote {write_section('listing', text)}")
    return 0 if all(r.pruned.median < TARGET_SECONDS for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
