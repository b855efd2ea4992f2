"""The operator at scale: N flows applied at once, how long until all are Ready, memory, API requests, idle writes.

Run ``.venv/bin/python -m bench.operator`` from the repository root (``make bench-operator``; ``--write-docs``
rewrites the "Operator at scale" section at the end of docs/benchmarks.md).

A real control plane (etcd, kube-apiserver, kube-controller-manager from tests/cluster, no node: CronJobs are
created but no Job runs) starts in a temporary folder, with the API server's audit log on so every request can be
put down to the client that made it. One namespace gets a Secret, a Destination (S3 at an endpoint that need not
exist, ``healthCheck.interval: "0"``, and the status of a check that passed, so no check Job is started: without a
node it would stay pending and fail at its deadline after 300 s, and the operator would then write that verdict into
every flow; ``--pending-check`` leaves it unchecked) and N flows, each one Dataset and one DatasetExport on a daily
schedule twelve hours away (no CronJob fires during the run).
``dsexport operator`` runs as a subprocess, as a user runs it next to ``make cluster``.

Each scenario measures:

- **seconds to all Ready**: from the first create until a watch has shown every DatasetExport with
  ``Ready=True`` (a watch, so the measuring takes little of the API server's CPU). *operator-first*: the
  operator is running and ready, then the 2N objects are created from a pool of threads as fast as the API
  server takes them; *objects-first*: the 2N objects exist, then the operator
  starts (its clock starts with the process, imports included).
- **peak RSS** of the operator process and its children, sampled every 0.2 s for the whole scenario.
- **API requests per flow**: ``apiserver_request_total`` from the API server's own /metrics, before the operator
  starts and once the cluster is quiet again after all flows are Ready, minus the requests the benchmark itself
  made (it counts them), divided by N. That metric has no label for the client, so it includes what the
  controller manager does with the operator's objects; the audit log splits it by client.
- **writes once idle**: after a settle (no write but lease renewals carried out for 10 s), write requests (POST,
  PUT, PATCH, APPLY, DELETE) over ``--idle-seconds``, per minute and by resource; the benchmark makes none
  meanwhile. Counted: writes the API server carried out (2xx), lease renewals (the API server's identity lease,
  the operator's leader election Lease) excepted; refused writes (such as the API server's own attempt, every
  10 s, to publish a loopback address as the ``kubernetes`` endpoints) are shown apart. The target also requires
  that the operator made no write request at all but its Lease renewals (audit log). The operator's clock looks
  at every flow every 60 s, so the idle window should be at least two minutes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import http.client
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final

import psutil
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families
from tests.cluster.control_plane import ControlPlane, binaries
from tests.servers import ProcessServer, ServerError, free_port, log_tail, wait_until
from tests.servers.operator import operator_argv

from bench import report
from dsexport.api import GROUP, VERSION

REPO: Final = Path(__file__).resolve().parent.parent
CRD_DIR: Final = REPO / "crds"
USER_AGENT: Final = "dsexport-bench"  # every request the benchmark makes carries it (the audit log tells them apart)
ADMIN: Final = "dsexport-test-admin"  # the admin client certificate's user: the operator's and the benchmark's
FLOWS: Final = "datasetexports"
# The metric names verbs the HTTP way (create POST, update PUT, server-side apply APPLY); so do the tables here.
WRITE_VERBS: Final = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})
AUDIT_VERBS: Final = {"create": "POST", "update": "PUT"}  # the others are the same words in lowercase
ORDERS: Final = ("operator-first", "objects-first")
SAMPLE_SECONDS: Final = 0.2
QUIET_SECONDS: Final = 10.0
MIB: Final = 1 << 20

# Targets from the issue.
MAX_READY_SECONDS: Final = 60.0
MAX_RSS_MIB: Final = 250.0
MAX_IDLE_WRITES: Final = 0

SECTION_TITLE: Final = "## Operator at scale"

# Every request once, when it completed (a watch: when it ended), with who made it; no bodies.
AUDIT_POLICY: Final = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [{"level": "Metadata"}],
}

NON_RESOURCE: Final = "(non-resource)"
Key = tuple[str, str, str]  # verb (the metric's: APPLY, LIST, WATCH...), resource[/subresource], code


# ------------------------------------------------------------------------------------------ the cluster


@dataclass
class AuditedControlPlane(ControlPlane):
    """tests/cluster's control plane, its API server writing an audit log (Metadata level) to ``audit_log``."""

    @property
    def audit_log(self) -> Path:
        return self.root / "logs" / "audit.log"

    def _server(self, name: str, args: list[str], ready: Callable[[], bool]) -> ProcessServer:
        if name == "kube-apiserver":
            policy = self.root / "audit-policy.yaml"
            policy.write_text(yaml.safe_dump(AUDIT_POLICY))
            args = [
                *args,
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-maxsize=0",  # one file, never rotated
            ]
        return super()._server(name, args, ready)


def _metrics_text(cp: ControlPlane) -> str:
    """The API server's /metrics, read with the admin client certificate as tests/cluster/control_plane.py does."""
    ctx = ssl.create_default_context(cafile=str(cp.pki / "ca.crt"))
    ctx.load_cert_chain(str(cp.pki / "admin.crt"), str(cp.pki / "admin.key"))
    conn = http.client.HTTPSConnection(cp.address, cp.api_port, context=ctx, timeout=30)
    try:
        conn.request("GET", "/metrics", headers={"User-Agent": USER_AGENT})
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"GET /metrics of the API server: HTTP {resp.status}: {text[:300]}")
    return text


def _requests(text: str) -> Iterable[Any]:
    for family in text_string_to_metric_families(text):
        if family.name == "apiserver_request":  # the parser drops the counter's _total
            yield from (s for s in family.samples if s.name == "apiserver_request_total")


def scrape(cp: ControlPlane, own: Own) -> collections.Counter[Key]:
    """apiserver_request_total by verb, resource[/subresource] and code (summed over the other labels)."""
    text = _metrics_text(cp)
    own.add("GET", NON_RESOURCE, 200)  # this scrape: in the next one, not in this one
    found: collections.Counter[Key] = collections.Counter()
    for s in _requests(text):
        resource = s.labels.get("resource", "") + (f"/{sub}" if (sub := s.labels.get("subresource")) else "")
        found[(s.labels.get("verb", ""), resource or NON_RESOURCE, s.labels.get("code", ""))] += int(s.value)
    return found


def request_labels(cp: ControlPlane) -> list[str]:
    """The label names apiserver_request_total has (to say whether it can tell clients apart)."""
    sample = next(iter(_requests(_metrics_text(cp))), None)
    return sorted(sample.labels) if sample is not None else []


def writes(counts: Mapping[Key, int], *, leases: bool = False, refused: bool = False) -> int:
    """Write requests in ``counts`` that the API server carried out (2xx), or (``refused``) turned down; lease
    renewals only with ``leases`` (whatever their code), else none."""
    return sum(
        n
        for (verb, res, code), n in counts.items()
        if verb in WRITE_VERBS and res.startswith("leases") == leases and (leases or code.startswith("2") != refused)
    )


def minus(after: Mapping[Key, int], before: Mapping[Key, int]) -> collections.Counter[Key]:
    out: collections.Counter[Key] = collections.Counter()
    for key in set(after) | set(before):
        if n := after.get(key, 0) - before.get(key, 0):
            out[key] = n
    return out


class Own:
    """The requests the benchmark itself made, keyed like the metric, so they can be taken out of it."""

    def __init__(self) -> None:
        self.counts: collections.Counter[Key] = collections.Counter()
        self.lock = threading.Lock()

    def add(self, verb: str, resource: str, code: int | str) -> None:
        with self.lock:
            self.counts[(verb, resource, str(code))] += 1

    def snapshot(self) -> collections.Counter[Key]:
        with self.lock:
            return collections.Counter(self.counts)


def api_client(kubeconfig: Path, pool: int) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = pool
    api = client.ApiClient(cfg)
    api.user_agent = USER_AGENT
    return api


def install_crds(api: client.ApiClient) -> list[str]:
    """Every CRD in crds/, waited for until Established (as tests/k8s/conftest.py does)."""
    ext = client.ApiextensionsV1Api(api)
    names = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        ext.create_custom_resource_definition(body)
        names.append(body["metadata"]["name"])

    def established(name: str) -> bool:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    for name in names:
        wait_until(lambda n=name: established(n), timeout=60, what=f"CRD {name} Established")  # type: ignore[misc]
    return names


def create_namespace(api: client.ApiClient, name: str) -> None:
    """The namespace, returned once its default service account exists (as tests/k8s/conftest.py waits)."""
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})

    def has_default_sa() -> bool:
        return any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items)

    wait_until(has_default_sa, timeout=60, what=f"the default service account of {name}")


def create_destination(api: client.ApiClient, namespace: str, *, checked: bool) -> None:
    """A Secret and an S3 Destination whose endpoint nothing listens on. ``checked``: with the status of a check
    that succeeded, as if an earlier check had passed, so the operator starts no check Job; otherwise it starts
    one, which stays pending without a node and fails at its deadline (300 s), and the operator then writes the
    verdict into every flow's status: a burst of N writes that has nothing to do with idling."""
    client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        {"metadata": {"name": "store-creds"}, "stringData": {"accessKeyId": "bench", "secretAccessKey": "bench"}},
    )
    custom = client.CustomObjectsApi(api)
    created = custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "destinations",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Destination",
            "metadata": {"name": "store"},
            "spec": {
                "type": "s3",
                # nothing listens there: no Job runs without a node, and the only check is the one on creation
                "s3": {
                    "bucket": "exports",
                    "region": "us-east-1",
                    "endpoint": "http://127.0.0.1:9",
                    "forcePathStyle": True,
                },
                "credentialsSecretRef": {"name": "store-creds"},
                "folder": "bench",
                "healthCheck": {"interval": "0"},
            },
        },
    )
    if not checked:
        return
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    generation = created["metadata"]["generation"]
    status = {
        "checkedGeneration": generation,
        "lastCheckTime": now,
        "conditions": [
            {
                "type": "Available",
                "status": "True",
                "reason": "CheckSucceeded",
                "message": "set by the benchmark: no check Job runs without a node",
                "lastTransitionTime": now,
                "observedGeneration": generation,
            }
        ],
    }
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "destinations", "store", {"status": status})


def flow_names(n: int) -> list[str]:
    width = len(str(max(n - 1, 0)))
    return [f"flow-{i:0{width}d}" for i in range(n)]


def daily_time(now: dt.datetime) -> str:
    """Twelve hours from now: no CronJob slot falls inside the run (the controller would then create N Jobs)."""
    return (now + dt.timedelta(hours=12)).strftime("%H:%M")


def create_flow(custom: Any, namespace: str, name: str, *, at: str, start: str, own: Own) -> None:
    """One Dataset and one DatasetExport that exports it, daily."""
    dataset = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {"source": {"uri": f"s3://lake/events/{name}"}, "incremental": {"strategy": "files"}},
    }
    flow = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DatasetExport",
        "metadata": {"name": name},
        "spec": {
            "destinationRef": {"name": "store"},
            "datasets": [{"name": name}],
            "schedule": {"frequency": "daily", "time": at, "startDate": start},
        },
    }
    for plural, body in (("datasets", dataset), (FLOWS, flow)):
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
        except ApiException as e:
            own.add("POST", plural, e.status)
            raise
        own.add("POST", plural, 201)


def apply_flows(api: client.ApiClient, namespace: str, names: Sequence[str], *, threads: int, own: Own) -> float:
    """Create every flow from a pool of threads; returns the seconds it took to issue them all."""
    custom = client.CustomObjectsApi(api)
    now = dt.datetime.now(dt.UTC)
    at, start = daily_time(now), now.strftime("%Y-%m-%d")
    began = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="create")
    try:
        for future in [pool.submit(create_flow, custom, namespace, n, at=at, start=start, own=own) for n in names]:
            future.result()
    finally:
        pool.shutdown(cancel_futures=True)  # on an error or Ctrl-C, the creates not started yet are dropped
    return time.monotonic() - began


def ready(flow: Mapping[str, Any]) -> bool:
    conditions = (flow.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def wait_all_ready(
    api: client.ApiClient,
    namespace: str,
    names: Sequence[str],
    *,
    since: float,
    timeout: float,
    own: Own,
    alive: Callable[[], None],
) -> dict[str, float]:
    """Watch the flows until every one in ``names`` is Ready=True; the seconds since ``since`` at which each one
    was first seen Ready. A watch, not a list every half second: re-listing 1,000 objects would take the API
    server's CPU from the operator being measured. Raises TimeoutError after ``timeout``."""
    custom = client.CustomObjectsApi(api)
    wanted = set(names)
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout

    def note(item: Mapping[str, Any]) -> None:
        name = item["metadata"]["name"]
        if name in wanted and name not in seen and ready(item):
            seen[name] = time.monotonic() - since

    version: str | None = None
    while len(seen) < len(wanted):
        alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout:.0f} s, {len(seen)} of {len(wanted)} flows are Ready")
        if version is None:
            found = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, FLOWS)
            own.add("LIST", FLOWS, 200)
            for item in found.get("items", []):
                note(item)
            version = found["metadata"]["resourceVersion"]
            continue
        own.add("WATCH", FLOWS, 200)
        stream = watch.Watch().stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            FLOWS,
            resource_version=version,
            timeout_seconds=5,
            allow_watch_bookmarks=True,
        )
        try:
            for event in stream:
                item = event["object"]
                version = item["metadata"]["resourceVersion"]
                if event["type"] in ("ADDED", "MODIFIED"):
                    note(item)
                if len(seen) == len(wanted):
                    break
        except ApiException as e:
            if e.status != 410:
                raise
            version = None  # expired: list again
    return seen


# ------------------------------------------------------------------------------------------ the operator


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def operator_server(workdir: Path, kubeconfig: Path, log: Path) -> ProcessServer:
    """``dsexport operator`` as tests/k8s/test_operator.py starts it; ready when /readyz answers 200."""
    port = free_port()
    return ProcessServer(
        name="dsexport-operator",
        argv=operator_argv(kubeconfig=kubeconfig, image="dsexport:dev", metrics_port=port),
        log=log,
        ready=lambda: _get(port, "/readyz") == 200,
        cwd=workdir,
        start_timeout=180.0,
    )


class Sampler(threading.Thread):
    """The RSS (with children) and CPU seconds of a server's process, every ``interval`` seconds, from the moment it
    is spawned until stopped."""

    def __init__(self, server: ProcessServer, interval: float = SAMPLE_SECONDS) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.server = server
        self.process: psutil.Process | None = None
        self.interval = interval
        self.samples: list[tuple[float, int, float]] = []  # (monotonic, RSS bytes, CPU seconds)
        self.halt = threading.Event()

    def sample(self) -> None:
        if self.process is None:
            if self.server.proc is None:
                return  # not spawned yet
            self.process = psutil.Process(self.server.proc.pid)
        try:
            processes = [self.process, *self.process.children(recursive=True)]
        except psutil.Error:
            return
        rss, cpu = 0, 0.0
        for p in processes:
            with contextlib.suppress(psutil.Error):
                rss += p.memory_info().rss
                times = p.cpu_times()
                cpu += times.user + times.system
        self.samples.append((time.monotonic(), rss, cpu))

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)

    def peak(self, start: float = 0.0, end: float = float("inf")) -> float:
        """Peak RSS in MiB between two monotonic times."""
        return max((rss for t, rss, _ in self.samples if start <= t <= end), default=0) / MIB

    def cpu(self, start: float, end: float) -> float:
        """CPU seconds used between two monotonic times."""
        inside = [c for t, _, c in self.samples if start <= t <= end]
        return inside[-1] - inside[0] if len(inside) > 1 else 0.0


def handler_runs(path: Path) -> collections.Counter[str]:
    """How often each handler and timer finished, from kopf's "Handler 'X' succeeded." lines."""
    runs: collections.Counter[str] = collections.Counter()
    with contextlib.suppress(FileNotFoundError), path.open(errors="replace") as lines:
        for line in lines:
            for kind in ("Handler", "Timer"):
                if line.startswith(f"{kind} '") and "' succeeded" in line:
                    runs[line.split("'")[1].removeprefix("_Handlers.")] += 1
    return runs


def log_summary(path: Path, top: int = 12) -> list[str]:
    """The operator log's most frequent lines, digits masked (kopf's plain format has no level or object)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ["(no operator log)"]
    shapes = collections.Counter("".join("#" if ch.isdigit() else ch for ch in line)[:160] for line in lines)
    out = [f"{len(lines):,} lines; the most frequent (digits masked):"]
    return out + [f"  {n:7,d}  {m}" for m, n in shapes.most_common(top)]


# ------------------------------------------------------------------------------------------ the audit log


@dataclass(frozen=True)
class Audited:
    at: float  # when the request was received, seconds since the epoch
    client: str
    verb: str  # as the metric names it, but server-side apply is a PATCH here
    resource: str
    code: str


def _client(event: Mapping[str, Any]) -> str:
    user = (event.get("user") or {}).get("username", "")
    agent = str(event.get("userAgent") or "")
    if agent == USER_AGENT:
        return "benchmark"
    if user == ADMIN:
        if agent.startswith("kopf/"):
            return "operator: kopf"
        if agent.startswith("dsexport/"):
            return "operator: handlers"
        return f"admin ({agent or 'no user agent'})"
    if user == "system:kube-controller-manager":
        return "controller-manager: " + agent.rsplit("/", 1)[-1]
    return user or "anonymous"


def _epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_audit(path: Path) -> list[Audited]:
    found: list[Audited] = []
    with path.open(errors="replace") as lines:
        for line in lines:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the stop
            ref = event.get("objectRef") or {}
            resource = ref.get("resource") or event.get("requestURI", "?").split("?")[0]
            if sub := ref.get("subresource"):
                resource += f"/{sub}"
            found.append(
                Audited(
                    at=_epoch(event["requestReceivedTimestamp"]),
                    client=_client(event),
                    verb=AUDIT_VERBS.get(verb := str(event.get("verb", "?")), verb.upper()),
                    resource=resource,
                    code=str((event.get("responseStatus") or {}).get("code", "")),
                )
            )
    return found


def audit_between(records: Iterable[Audited], start: float, end: float) -> list[Audited]:
    return [r for r in records if start <= r.at < end]


# ------------------------------------------------------------------------------------------ one scenario


@dataclass
class Scenario:
    order: str
    flows: int
    seconds_ready: float = float("nan")  # first create (operator-first) or operator start (objects-first) -> all Ready
    seconds_issue: float = float("nan")  # issuing the 2N creates
    seconds_operator_ready: float = float("nan")  # operator start -> /readyz 200
    seconds_settle: float = float("nan")  # all Ready -> quiet
    settled: bool = False
    ready_at: list[float] = field(default_factory=list)  # each flow's seconds to Ready, sorted
    peak_rss: float = 0.0
    rss_phases: dict[str, float] = field(default_factory=dict)
    cpu_phases: dict[str, float] = field(default_factory=dict)
    requests: collections.Counter[Key] = field(default_factory=collections.Counter)  # metric, benchmark's taken out
    own: collections.Counter[Key] = field(default_factory=collections.Counter)
    by_client: collections.Counter[tuple[str, str, str]] = field(default_factory=collections.Counter)  # audit
    idle_seconds: float = 0.0
    idle: collections.Counter[Key] = field(default_factory=collections.Counter)
    idle_by_client: collections.Counter[tuple[str, str, str, str]] = field(default_factory=collections.Counter)
    idle_operator: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)  # all verbs
    log: list[str] = field(default_factory=list)
    handlers: collections.Counter[str] = field(default_factory=collections.Counter)  # runs over the scenario
    labels: list[str] = field(default_factory=list)  # apiserver_request_total's
    code: str = ""  # the dsexport package's fingerprint when the operator started
    error: str | None = None

    def per_flow(self, n: float) -> float:
        return n / self.flows

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def operator_requests(self) -> int:
        return sum(n for (who, _, _), n in self.by_client.items() if who.startswith("operator"))

    @property
    def idle_writes(self) -> int:
        return writes(self.idle, leases=False)

    @property
    def idle_refused(self) -> int:
        return writes(self.idle, refused=True)

    @property
    def idle_lease_writes(self) -> int:
        return writes(self.idle, leases=True)

    @property
    def idle_operator_writes(self) -> int:
        """Write requests the operator made while idle, carried out or not (audit log), but the renewals of its
        leader election Lease (which a standby replica watches to take over: a write every few seconds is how
        leader election works, as the API server's own identity lease does)."""
        return sum(
            n
            for (who, _, res, _), n in self.idle_by_client.items()
            if who.startswith("operator") and not res.startswith("leases")
        )

    def per_minute(self, n: int) -> float:
        return n * 60.0 / self.idle_seconds if self.idle_seconds else float("nan")

    def verdicts(self) -> dict[str, bool | None]:
        return {
            "ready": self.seconds_ready < MAX_READY_SECONDS,
            "rss": self.peak_rss < MAX_RSS_MIB,
            "idle": (
                self.idle_writes <= MAX_IDLE_WRITES and self.idle_operator_writes <= MAX_IDLE_WRITES
                if self.idle_seconds
                else None
            ),
        }


def settle(cp: ControlPlane, own: Own, *, quiet: float, timeout: float) -> tuple[bool, float]:
    """Wait until the API server carries out no write but lease renewals for ``quiet`` seconds (refused writes, such
    as the API server's own endpoint updates this loopback control plane turns down every 10 s, do not count);
    returns (quiet?, seconds)."""
    began = time.monotonic()
    last_count, last_change = writes(scrape(cp, own), leases=False), time.monotonic()
    while time.monotonic() - began < timeout:
        time.sleep(1.0)  # the polling interval
        count = writes(scrape(cp, own), leases=False)
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        elif time.monotonic() - last_change >= quiet:
            return True, time.monotonic() - began
    return False, time.monotonic() - began


def run_scenario(
    args: argparse.Namespace, order: str, idle_seconds: float, folder: Path, log: Callable[[str], None]
) -> Scenario:
    result = Scenario(order=order, flows=args.flows)
    names = flow_names(args.flows)
    cp = AuditedControlPlane(root=folder / "cluster", bin=binaries())
    operator: ProcessServer | None = None
    sampler: Sampler | None = None
    own = Own()
    marks: dict[str, tuple[float, float]] = {}  # phase boundary: (monotonic, epoch)

    def mark(name: str) -> float:
        marks[name] = (time.monotonic(), time.time())
        return marks[name][0]

    def alive() -> None:
        if operator is None or operator.proc is None or operator.proc.poll() is not None:
            raise ServerError(f"the operator exited; log {folder / 'operator.log'}")

    try:
        log(f"[{order}] starting the control plane in {cp.root}")
        cp.start()
        result.labels = request_labels(cp)
        api = api_client(cp.kubeconfig, args.threads)
        install_crds(api)
        namespace = "bench"
        create_namespace(api, namespace)
        create_destination(api, namespace, checked=not args.pending_check)
        if order == "objects-first":
            log(f"[{order}] creating {args.flows} Datasets and {args.flows} DatasetExports with {args.threads} threads")
            result.seconds_issue = apply_flows(api, namespace, names, threads=args.threads, own=own)
        # Quiet before the operator starts, so every request after this is its or its objects'.
        settle(cp, own, quiet=2.0, timeout=60.0)
        before, own_before = scrape(cp, own), own.snapshot()
        operator = operator_server(folder, cp.kubeconfig, folder / "operator.log")
        log(f"[{order}] starting the operator (log {operator.log})")
        sampler = Sampler(operator)
        sampler.start()
        result.code = report.code_fingerprint()  # what the operator imports now (others may be editing it)
        started = mark("operator start")
        operator.start()
        result.seconds_operator_ready = mark("operator ready") - started
        log(f"[{order}] operator ready after {result.seconds_operator_ready:.1f} s")
        if order == "operator-first":
            log(f"[{order}] creating {args.flows} Datasets and {args.flows} DatasetExports with {args.threads} threads")
            t0 = mark("apply")
            result.seconds_issue = apply_flows(api, namespace, names, threads=args.threads, own=own)
            log(f"[{order}] {2 * args.flows} creates issued in {result.seconds_issue:.1f} s")
        else:
            t0 = started
            marks["apply"] = marks["operator start"]
        ready_at = wait_all_ready(api, namespace, names, since=t0, timeout=args.timeout, own=own, alive=alive)
        t_ready = mark("all ready")
        result.seconds_ready = t_ready - t0
        result.ready_at = sorted(ready_at.values())
        log(f"[{order}] all {args.flows} flows Ready after {result.seconds_ready:.1f} s")
        result.settled, result.seconds_settle = settle(cp, own, quiet=QUIET_SECONDS, timeout=args.settle_timeout)
        mark("settled")
        log(
            f"[{order}] {'quiet' if result.settled else 'NOT quiet'} after {result.seconds_settle:.0f} s "
            "(no write but lease renewals for 10 s)"
        )
        after, own_after = scrape(cp, own), own.snapshot()
        # The benchmark's own creates, lists and /metrics scrapes between the two scrapes (it counted them; the
        # scrape that read ``before`` is counted in ``after`` and in own_before, the last one the other way round).
        result.own = minus(own_after, own_before)
        result.requests = minus(minus(after, before), result.own)
        if idle_seconds > 0:
            log(f"[{order}] idle for {idle_seconds:.0f} s: counting writes")
            idle_before, own_before = scrape(cp, own), own.snapshot()
            i0 = mark("idle")
            deadline = i0 + idle_seconds
            while (left := deadline - time.monotonic()) > 0:
                alive()
                time.sleep(min(left, 1.0))  # the deliberate idle window
            result.idle_seconds = mark("idle end") - i0
            idle_after = scrape(cp, own)
            result.idle = minus(minus(idle_after, idle_before), minus(own.snapshot(), own_before))
            log(
                f"[{order}] idle {result.idle_seconds:.0f} s: {result.idle_writes} write(s) carried out, "
                f"{result.idle_refused} refused, {result.idle_lease_writes} lease renewal(s)"
            )
        mark("end")
        sampler.stop()
        sampler.sample()
        result.peak_rss = sampler.peak()
        phases = [("startup", "operator start", "operator ready"), ("apply", "apply", "all ready")]
        phases += [("settle", "all ready", "settled"), ("idle", "idle", "idle end")]
        for label, a, b in phases:
            if a in marks and b in marks:
                result.rss_phases[label] = sampler.peak(marks[a][0], marks[b][0])
                result.cpu_phases[label] = sampler.cpu(marks[a][0], marks[b][0])
    except (ServerError, TimeoutError, ApiException, RuntimeError) as e:
        result.error = f"{type(e).__name__}: {e}"
        log(f"[{order}] FAILED: {result.error}")
        if sampler is not None:
            result.peak_rss = sampler.peak()
        if operator is not None:
            print(f"--- operator log tail ({operator.log}):\n{log_tail(operator.log, 60)}", file=sys.stderr)
        print(f"--- control plane:\n{cp.logs()}", file=sys.stderr)
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if operator is not None:
            operator.stop()  # SIGTERM to its process group, SIGKILL after 10 s
        cp.stop()
    if cp.audit_log.exists():
        audit_windows(result, read_audit(cp.audit_log), marks)
    if operator is not None:
        result.log = log_summary(operator.log)
        result.handlers = handler_runs(operator.log)
    return result


def audit_windows(result: Scenario, records: list[Audited], marks: Mapping[str, tuple[float, float]]) -> None:
    """Split the audit log by client: from the operator's start to quiet, and the idle window."""
    if "operator start" in marks and "settled" in marks:
        for r in audit_between(records, marks["operator start"][1], marks["settled"][1]):
            result.by_client[(r.client, r.verb, r.resource)] += 1
    if "idle" in marks and "idle end" in marks:
        for r in audit_between(records, marks["idle"][1], marks["idle end"][1]):
            if r.verb in WRITE_VERBS:
                result.idle_by_client[(r.client, r.verb, r.resource, r.code)] += 1
            if r.client.startswith("operator"):
                result.idle_operator[(r.verb, r.resource)] += 1


# ------------------------------------------------------------------------------------------ the tables


def _f(x: float, digits: int = 1) -> str:
    return "-" if x != x else f"{x:,.{digits}f}"  # NaN: not measured


def _verdict(passed: bool | None) -> str:
    return "-" if passed is None else ("PASS" if passed else "FAIL")


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def summary_rows(results: Sequence[Scenario]) -> tuple[list[str], list[list[str]]]:
    header = [
        "scenario",
        "flows",
        "s to all Ready (p50 / p90 flow)",
        "then s until quiet",
        "peak RSS MiB",
        "API requests / flow (operator alone)",
        "idle writes / min (refused; lease renewals)",
        "Ready < 60 s",
        "RSS < 250 MiB",
        "0 idle writes",
    ]
    body = []
    for r in results:
        v = r.verdicts()
        body.append(
            [
                r.order + (f" (failed: {r.error})" if r.error else ""),
                f"{r.flows:,}",
                f"{_f(r.seconds_ready)} ({_f(_quantile(r.ready_at, 0.5))} / {_f(_quantile(r.ready_at, 0.9))})",
                _f(r.seconds_settle, 0) + ("" if r.settled or r.seconds_settle != r.seconds_settle else " (not quiet)"),
                f"{r.peak_rss:.0f}",
                f"{r.per_flow(r.total_requests):.1f} ({r.per_flow(r.operator_requests):.1f})",
                (
                    f"{_f(r.per_minute(r.idle_writes), 2)} ({_f(r.per_minute(r.idle_refused), 1)}; "
                    f"{_f(r.per_minute(r.idle_lease_writes), 1)})"
                    if r.idle_seconds
                    else "-"
                ),
                _verdict(v["ready"]),
                _verdict(v["rss"]),
                _verdict(v["idle"]),
            ]
        )
    return header, body


def verb_rows(r: Scenario) -> tuple[list[str], list[list[str]]]:
    """Requests per flow by verb: all clients but the benchmark (metric), and the operator alone (audit log)."""
    metric: collections.Counter[str] = collections.Counter()
    for (verb, _, _), n in r.requests.items():
        metric["PATCH" if verb == "APPLY" else verb] += n  # the audit log counts server-side apply as PATCH
    applies = sum(n for (verb, _, _), n in r.requests.items() if verb == "APPLY")
    audit: collections.Counter[str] = collections.Counter()
    for (who, verb, _), n in r.by_client.items():
        if who.startswith("operator"):
            audit[verb] += n
    header = ["verb", "requests (all clients)", "per flow", "operator's per flow"]
    body = [
        [
            verb + (f" (incl. {applies:,} APPLY)" if verb == "PATCH" and applies else ""),
            f"{metric[verb]:,}",
            f"{r.per_flow(metric[verb]):.2f}",
            f"{r.per_flow(audit[verb]):.2f}",
        ]
        for verb in sorted(set(metric) | set(audit), key=lambda v: -metric[v])
    ]
    body.append(
        [
            "all",
            f"{r.total_requests:,}",
            f"{r.per_flow(r.total_requests):.2f}",
            f"{r.per_flow(r.operator_requests):.2f}",
        ]
    )
    return header, body


def resource_rows(r: Scenario, top: int = 20) -> tuple[list[str], list[list[str]]]:
    """The audit log's (client, verb, resource) with the most requests per flow."""
    header = ["client", "verb", "resource", "requests", "per flow"]
    rows = [(n, who, verb, res) for (who, verb, res), n in r.by_client.items() if who != "benchmark"]
    body = [[who, verb, res, f"{n:,}", f"{r.per_flow(n):.2f}"] for n, who, verb, res in sorted(rows, reverse=True)]
    return header, body[:top]


def idle_rows(r: Scenario) -> tuple[list[str], list[list[str]]]:
    """Idle writes by resource (metric; lease renewals included, marked), with who made them (audit log)."""
    who: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for (client_, verb, res, code), n in sorted(r.idle_by_client.items()):
        who[(res, code)].append(f"{client_} {verb} {n}")
    header = ["resource", "verb", "code", "writes", "per min", "counted", "by (audit log)"]
    body = [
        [
            res,
            verb,
            code,
            f"{n}",
            f"{r.per_minute(n):.2f}",
            "no (lease renewal)" if res.startswith("leases") else ("yes" if code.startswith("2") else "no (refused)"),
            "; ".join(who.get((res, code), [])),
        ]
        for (verb, res, code), n in sorted(r.idle.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        if verb in WRITE_VERBS
    ]
    return header, body


def text(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    cells = [list(header), *map(list, body)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(header))).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def handlers_line(r: Scenario) -> str:
    runs = ", ".join(f"{name} {r.per_flow(n):.2f}" for name, n in r.handlers.most_common())
    return f"handler runs per flow over the whole scenario (operator log): {runs or '-'}"


def idle_line(r: Scenario) -> str:
    """The operator's requests while idle (its timers' reads), per minute, from the audit log."""
    total = sum(r.idle_operator.values())
    top = ", ".join(f"{verb} {res} {r.per_minute(n):.1f}" for (verb, res), n in r.idle_operator.most_common(8))
    return f"the operator's requests while idle: {r.per_minute(total):.1f} / min" + (f" ({top})" if top else "")


def phases_line(r: Scenario) -> str:
    parts = [f"{k} {r.rss_phases[k]:.0f} MiB / {r.cpu_phases.get(k, 0.0):.1f} CPU s" for k in r.rss_phases]
    return "operator peak RSS / CPU by phase: " + "; ".join(parts)


def timing_line(r: Scenario) -> str:
    return (
        f"operator start to /readyz {_f(r.seconds_operator_ready)} s; {2 * r.flows:,} creates issued in "
        f"{_f(r.seconds_issue)} s; first / median / last flow Ready at {_f(_quantile(r.ready_at, 0.0))} / "
        f"{_f(statistics.median(r.ready_at) if r.ready_at else float('nan'))} / {_f(_quantile(r.ready_at, 1.0))} s; "
        f"quiet {_f(r.seconds_settle, 0)} s after all Ready{'' if r.settled else ' (NOT reached: timed out)'}"
    )


def print_report(results: Sequence[Scenario]) -> None:
    print()
    print(text(*summary_rows(results)))
    labels = next((r.labels for r in results if r.labels), [])
    print(f"\napiserver_request_total labels: {', '.join(labels)}")
    for r in results:
        print(f"\n== {r.order}: {timing_line(r)}")
        print(phases_line(r))
        print("\nrequests by verb, from before the operator started until quiet after all Ready, benchmark's taken out")
        print(text(*verb_rows(r)))
        print("\nwho made them (audit log), top 20")
        print(text(*resource_rows(r)))
        if r.idle_seconds:
            print(f"\nwrites while idle ({r.idle_seconds:.0f} s)")
            header, body = idle_rows(r)
            print(text(header, body) if body else "(none)")
            print(idle_line(r))
        print(handlers_line(r))
        print("\noperator log: " + "\n".join(r.log))


# ------------------------------------------------------------------------------------------ the docs


def code_measured(results: Sequence[Scenario]) -> str:
    """The fingerprint each scenario's operator started with; several when the code changed during the run."""
    codes = {r.code for r in results if r.code}
    if len(codes) <= 1:
        return f"`{next(iter(codes), report.code_fingerprint())}`"
    return "; ".join(f"`{r.code}` ({r.order})" for r in results) + " (**the code changed during the run**)"


def render_section(results: Sequence[Scenario], argv: Sequence[str], seconds: float) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    version = subprocess_version()
    parts = [
        SECTION_TITLE,
        "",
        f"Generated by `python -m bench.operator` on {when} in {seconds / 60:.1f} min ({os.cpu_count()} cores, "
        f"shared by the control plane ({version}), the operator and the benchmark's clients); re-run the command "
        "below to refresh this section rather than editing it. Code measured: the `dsexport` package's Python files "
        f"with SHA-256 prefix {code_measured(results)}.",
        "",
        "```sh",
        report.command("bench.operator", [a for a in argv if a != "--keep"]),
        "```",
        "",
        *report.md_table(*summary_rows(results)),
        "",
        "**What the numbers mean.** A real control plane (etcd, kube-apiserver, kube-controller-manager; no node, so "
        "no Job runs) and `dsexport operator` as a subprocess; one namespace with a Secret, an S3 Destination "
        '(`healthCheck.interval: "0"`, its status that of a check that passed, so no check Job is started) and N '
        "flows, each one Dataset and one daily DatasetExport (its slot twelve hours away). *operator-first*: "
        "the operator is running and ready, then the 2N objects are created from a pool of threads; the time runs "
        "from the first create until a watch has shown every DatasetExport `Ready=True`. *objects-first*: "
        "the objects exist and the time runs from the operator's start. *Peak RSS*: the operator process, sampled "
        "every 0.2 s. *API requests / flow*: `apiserver_request_total` from before the operator starts until the "
        "cluster is quiet again (no write carried out but lease renewals for 10 s), minus the benchmark's own "
        "creates, lists "
        "and scrapes, over N; the metric has no client label, so it includes what the controller manager does with "
        "the operator's objects; in brackets the operator's own requests, from the API server's audit log (which "
        "counts server-side apply as PATCH). *Idle writes*: writes of any client that the API server carried out "
        "over the idle window once quiet (the operator's clock looks at every flow every 60 s); in brackets the "
        "refused ones and the lease renewals (the API server's and the operator's leader election Lease), neither "
        "counted; the target also needs the operator to have made no other write request at all.",
    ]
    for r in results:
        parts += ["", f"**{r.order}.** {timing_line(r)}. {phases_line(r)}. {handlers_line(r)}.", ""]
        parts += ["*Requests by verb* (all clients but the benchmark; the operator's from the audit log)", ""]
        parts += report.md_table(*verb_rows(r))
        parts += ["", "*Who made them* (audit log, the 20 largest)", ""]
        parts += report.md_table(*resource_rows(r))
        if r.idle_seconds:
            header, body = idle_rows(r)
            parts += ["", f"*Writes while idle* ({r.idle_seconds:.0f} s)", ""]
            parts += report.md_table(header, body) if body else ["None."]
            line = idle_line(r)
            parts += ["", line[0].upper() + line[1:] + "."]
    return "\n".join(parts)


def subprocess_version() -> str:
    try:
        out = subprocess.run(
            [str(binaries() / "kube-apiserver"), "--version"], capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return "Kubernetes ?"
    return out.stdout.strip()


# ------------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.operator", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument(
        "--flows", type=int, default=1000, help="flows (one Dataset and one DatasetExport each; default 1000)"
    )
    p.add_argument("--idle-seconds", type=float, default=120.0, help="idle window for counting writes (default 120)")
    p.add_argument(
        "--order",
        choices=[*ORDERS, "both"],
        default="both",
        help="operator-first (objects applied to a running operator), objects-first (the operator starts with them "
        "there), or both, each on a fresh control plane (default); the idle window is measured in the first",
    )
    p.add_argument("--threads", type=int, default=16, help="threads creating the objects (default 16)")
    p.add_argument("--timeout", type=float, default=900.0, help="deadline for all flows to be Ready (default 900 s)")
    p.add_argument(
        "--settle-timeout",
        type=float,
        default=900.0,
        help="deadline for the cluster to be quiet after all are Ready, before the idle window (default 900 s)",
    )
    p.add_argument(
        "--pending-check",
        action="store_true",
        help="leave the Destination unchecked: the operator starts a check Job that stays pending (no node) and fails "
        "after 300 s (default: the Destination has a succeeded check's status, so no check Job runs)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, audit log)")
    p.add_argument("--write-docs", action="store_true", help=f"rewrite the operator section of {report.DOCS_NAME}")
    args = p.parse_args(argv)
    if args.flows < 1 or args.threads < 1 or args.idle_seconds < 0:
        p.error("--flows and --threads must be at least 1, --idle-seconds at least 0")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so the finally blocks stop what was started."""
    raise KeyboardInterrupt


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    begin = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - begin:5.0f}s] {message}", flush=True)

    orders = list(ORDERS) if args.order == "both" else [args.order]
    folder = Path(tempfile.mkdtemp(prefix="dsexport-operator-bench-"))
    results: list[Scenario] = []
    try:
        for i, order in enumerate(orders):
            work = folder / order
            work.mkdir()
            results.append(run_scenario(args, order, args.idle_seconds if i == 0 else 0.0, work, log))
    finally:
        failed = any(r.error for r in results) or len(results) < len(orders)
        if args.keep or failed:
            print(f"kept {folder} (logs, audit log)", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    seconds = time.perf_counter() - begin
    print_report(results)
    print(f"\n{seconds / 60:.1f} min")
    if args.write_docs:
        if any(r.error for r in results):
            print("not writing the docs: a scenario failed", file=sys.stderr)
            return 1
        print(f"wrote {report.write_section('operator', render_section(results, argv, seconds))}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("interrupted; what it started is stopped", file=sys.stderr)
        sys.exit(130)
