"""A stand-in kubelet for the test cluster: one Node whose pods run as local processes.

The test control plane has no kubelet and no container runtime, so without this nothing would ever run the pods
that the real Job and CronJob controllers create. The agent registers a Ready node, binds pending pods to it,
runs their containers with the host's interpreter and reports status the way the kubelet does, so tests can
drive the operator end to end. docs/node-agent.md explains how mount paths map to local folders, and its limits.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

Obj = dict[str, Any]
"""A Kubernetes object as the API server's JSON: the agent reads and writes raw objects, not the client's models."""
T = TypeVar("T")

POD_IP = "127.0.0.1"  # every pod and the node itself live on loopback
DEFAULT_SCHEDULER = "default-scheduler"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
WATCH_SECONDS = 2  # a watch returns at least this often, which bounds how long stop() waits
RESYNC_SECONDS = 10.0  # a full list this often retries whatever a failed API call left undone
REQUEST_TIMEOUT = 10.0
MAX_GRACE_SECONDS = 3.0  # terminationGracePeriodSeconds is capped so a deleted pod never stalls a test for long
MESSAGE_LIMIT = 4096  # bytes of a termination message, as the kubelet keeps
LOG_TAIL_LINES, LOG_TAIL_BYTES = 80, 2048  # the kubelet's FallbackToLogsOnError tail
TERMINAL = ("Succeeded", "Failed")
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
HOST_ENV = ("HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # looked up now: the forked child must only call it
_PR_SET_PDEATHSIG = 1
DEADLINE = ("DeadlineExceeded", "Pod was active on the node longer than the specified deadline")
RESTARTED = ("NodeAgentRestarted", "the node agent that ran this pod stopped, and its processes with it")


class PodFailure(Exception):  # noqa: N818 - it is the pod's failure, not the agent's error
    """Why a pod cannot run; reason and message go into its status as the kubelet would word them."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


class MissingReference(PodFailure):
    """A Secret, ConfigMap or key the pod needs does not exist (yet): worth waiting for, unlike other failures."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    """A MicroTime: the API server insists on exactly six fractional digits, which isoformat() omits at zero."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_REFERENCE = re.compile(r"\$(?:\$|\(([^)]*)\))")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(VAR)`` as Kubernetes does: ``$$`` escapes a dollar, an unknown reference stays as written."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        return "$" if name is None else env.get(name, match.group(0))

    return _REFERENCE.sub(one, text)


def mount_variable(path: str) -> str:
    """The variable naming where a container path lives: ``/etc/dsexport`` -> DSEXPORT_MOUNT_ETC_DSEXPORT."""
    return "DSEXPORT_MOUNT_" + re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_").upper()


class PathMap:
    """Where the paths a container expects (mountPath, terminationMessagePath) are on this machine.

    A process sees the host's file system, not the container's, so every occurrence of such a path in its command,
    args, env values and workingDir is rewritten, and each one is also published as an environment variable.
    """

    def __init__(self, paths: Mapping[str, Path]) -> None:
        self.paths = {path.rstrip("/"): local for path, local in paths.items() if path.rstrip("/")}
        longest_first = sorted(self.paths, key=len, reverse=True)
        # A path matches only as a whole path: not inside a longer name (/data in /srv/data or /data2).
        alternatives = "|".join(re.escape(path) for path in longest_first)
        self._pattern = re.compile(rf"(?<![\w.-])(?:{alternatives})(?![\w.-])") if self.paths else None

    def rewrite(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda match: str(self.paths[match.group(0)]), text)

    def env(self) -> dict[str, str]:
        variables = {mount_variable(path): str(local) for path, local in self.paths.items()}
        variables["DSEXPORT_MOUNTS"] = json.dumps({path: str(local) for path, local in self.paths.items()})
        return variables


def _die_with_runner() -> None:
    """In the forked child: SIGKILL it if the thread that forked it (its pod's runner) dies, so a killed test
    run leaves no pod processes behind."""
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _host_env() -> dict[str, str]:
    """The host variables a process needs to run at all; the rest comes from the pod spec, as in a container.

    PATH starts with this interpreter's folder, so ``python`` and the project's console scripts are the venv's.
    """
    env = {name: os.environ[name] for name in HOST_ENV if name in os.environ}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
    return env


def _repository(image: str) -> str:
    """``registry:5000/dsexport:1.2@sha256:...`` -> ``registry:5000/dsexport``; Docker Hub's ``python`` is spelt
    short, as the Kubernetes docs and most manifests spell it."""
    repository = re.sub(r":[^/:]*$", "", image.split("@", 1)[0])
    return repository.removeprefix("docker.io/").removeprefix("library/")


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_bytes().splitlines()[-LOG_TAIL_LINES:]
    except FileNotFoundError:
        return ""
    return b"\n".join(lines)[-LOG_TAIL_BYTES:].decode(errors="replace")


def _key(pod: Obj) -> str:
    return f"{pod['metadata'].get('namespace')}/{pod['metadata'].get('name')}"


class NodeAgent:
    """Plays the kubelet (and the scheduler) of a single node for the test cluster.

    A background thread watches every pod: pending ones get bound here, bound ones get a ``_PodRun`` that runs
    their processes, deleted ones get their processes stopped and are then force-deleted, as the kubelet does
    once containers are gone. A second thread keeps the Node Ready and its Lease renewed.
    """

    def __init__(
        self,
        api: client.ApiClient,
        workdir: Path,
        node_name: str = "dsexport-test-node",
        *,
        entrypoints: Mapping[str, Sequence[str]] | None = None,
        heartbeat_seconds: float = 10.0,
        config_wait: float = 5.0,
    ) -> None:
        """``entrypoints`` maps an image (or its repository, without tag) to the argv of its ENTRYPOINT, for
        containers that give only ``args``. ``config_wait`` is how long a missing Secret or ConfigMap may take to
        appear before the pod fails (the kubelet would wait forever; a test wants to see why instead)."""
        self.api = api
        self.core = client.CoreV1Api(api)
        self.workdir = workdir
        self.node_name = node_name
        self.entrypoints = {image: list(argv) for image, argv in (entrypoints or {}).items()}
        self.heartbeat_seconds = heartbeat_seconds
        self.config_wait = config_wait
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._runs: dict[str, _PodRun] = {}  # by pod uid; only the pod thread touches it while running
        self._deleted: set[str] = set()
        self._node_uid = ""
        self._ready_since = ""
        self._kubelet_version = ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Register the node (it is Ready when this returns), then watch pods and heartbeat in the background."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self._ready_since = _now()
        self._kubelet_version = self.call(client.VersionApi(self.api).get_code)["gitVersion"]
        self._heartbeat()
        for name, target in (("heartbeat", self._heartbeat_loop), ("pods", self._pod_loop)):
            thread = threading.Thread(target=target, name=f"node-agent {name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop watching, then SIGKILL every process a pod started. Pods and the Node stay as they are on the server
        (an agent started later fails the pods left Running)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=WATCH_SECONDS + REQUEST_TIMEOUT)
        self._threads.clear()
        runs = list(self._runs.values())
        for run in runs:
            run.abort()
        for run in runs:
            run.thread.join(timeout=REQUEST_TIMEOUT)

    def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
        """Call the API with raw JSON in and out, bypassing the client's models (and their bug deserialising a
        Binding), with a timeout so a stuck server cannot hang the agent."""
        response = method(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        body: Obj = json.loads(response.data or b"{}")
        return body

    # --- the node -----------------------------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                self._heartbeat()
            except Exception:
                log.exception("node %s: heartbeat failed; retrying", self.node_name)

    def _heartbeat(self) -> None:
        if not self._node_uid:
            self._node_uid = self._register()
        try:
            self.call(
                self.core.patch_node_status, self.node_name, {"status": self._node_status()}, _content_type=STRATEGIC
            )
        except ApiException as e:
            if e.status == 404:
                self._node_uid = ""  # someone deleted the node: register it again next time
            raise
        self._renew_lease()

    def _register(self) -> str:
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": ARCH,
            "dsexport.io/node-agent": "true",
        }
        try:
            node = self.call(self.core.create_node, {"metadata": {"name": self.node_name, "labels": labels}})
        except ApiException as e:
            if e.status != 409:
                raise
            node = self.call(self.core.read_node, self.node_name)
        uid: str = node["metadata"]["uid"]
        return uid

    def _node_status(self) -> Obj:
        now = _now()
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
        resources = {"cpu": str(os.cpu_count() or 1), "memory": f"{memory}Ki", "pods": "110"}
        pressures = (
            ("MemoryPressure", "KubeletHasSufficientMemory"),
            ("DiskPressure", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "KubeletHasSufficientPID"),
        )
        conditions = [
            {"type": kind, "status": "False", "reason": reason, "message": "the node agent does not check"}
            for kind, reason in pressures
        ]
        conditions.append(
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "node agent running"}
        )
        for condition in conditions:
            condition.update(lastHeartbeatTime=now, lastTransitionTime=self._ready_since)
        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": POD_IP}, {"type": "Hostname", "address": self.node_name}],
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": "dsexport test node agent",
                "containerRuntimeVersion": "dsexport-node-agent://0",
                "kubeletVersion": self._kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": ARCH,
            },
        }

    def _renew_lease(self) -> None:
        leases = client.CoordinationV1Api(self.api)
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": _micro_now()}
        try:
            self.call(
                leases.patch_namespaced_lease, self.node_name, LEASE_NAMESPACE, {"spec": spec}, _content_type=MERGE
            )
        except ApiException as e:
            if e.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self._node_uid}
            metadata = {"name": self.node_name, "ownerReferences": [owner]}
            self.call(leases.create_namespaced_lease, LEASE_NAMESPACE, {"metadata": metadata, "spec": spec})

    # --- pods ---------------------------------------------------------------------------------------------------

    def _pod_loop(self) -> None:
        version, listed_at = "", 0.0
        while not self._stop.is_set():
            try:
                if not version or time.monotonic() - listed_at > RESYNC_SECONDS:
                    version, listed_at = self._resync(), time.monotonic()
                version = self._watch(version)
            except Exception:
                log.exception("node %s: pod watch failed; listing again", self.node_name)
                version = ""
                self._stop.wait(1.0)  # do not hammer a server that just failed

    def _resync(self) -> str:
        pods = self.call(self.core.list_pod_for_all_namespaces)
        for pod in pods["items"]:
            self._handle("SYNC", pod)
        for uid in set(self._runs) - {pod["metadata"]["uid"] for pod in pods["items"]}:
            self._forget(uid)
        version: str = pods["metadata"]["resourceVersion"]
        return version

    def _watch(self, version: str) -> str:
        """Follow pod events from ``version`` for a couple of seconds; "" asks for a new list (410 Gone)."""
        response = self.core.list_pod_for_all_namespaces(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=WATCH_SECONDS + REQUEST_TIMEOUT,
        )
        try:
            for line in iter_resp_lines(response):
                event = json.loads(line)
                if event["type"] == "ERROR":
                    return ""
                version = event["object"]["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    self._handle(event["type"], event["object"])
        finally:
            response.close()
            response.release_conn()
        return version

    def _handle(self, event: str, pod: Obj) -> None:
        """Reconcile one pod; whatever goes wrong with it is logged, and never stops the agent."""
        try:
            self._reconcile(event, pod)
        except ApiException as e:
            log.warning("pod %s: API call failed (%s %s); retried at the next resync", _key(pod), e.status, e.reason)
        except Exception as e:
            log.exception("pod %s: the node agent cannot run it", _key(pod))
            if pod["spec"].get("nodeName") == self.node_name and pod.get("status", {}).get("phase") not in TERMINAL:
                self.patch_status(pod, {"phase": "Failed", "reason": "NodeAgentError", "message": repr(e)})

    def _reconcile(self, event: str, pod: Obj) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        if event == "DELETED":
            self._forget(uid)
            return
        if not spec.get("nodeName"):
            if spec.get("schedulerName", DEFAULT_SCHEDULER) == DEFAULT_SCHEDULER and not meta.get("deletionTimestamp"):
                self._bind(pod)
            return
        if spec["nodeName"] != self.node_name:
            return
        run = self._runs.get(uid)
        if meta.get("deletionTimestamp"):
            if (run is None or not run.delete()) and uid not in self._deleted:
                self.force_delete(pod)
            return
        if run is None and pod.get("status", {}).get("phase") not in TERMINAL:
            self._runs[uid] = run = _PodRun(self, pod)
            run.thread.start()

    def _forget(self, uid: str) -> None:
        """The pod is gone from the server: kill what it still runs, without reporting to a pod that is no more."""
        run = self._runs.pop(uid, None)
        if run is not None:
            run.abort()
        self._deleted.discard(uid)

    def _bind(self, pod: Obj) -> None:
        meta = pod["metadata"]
        target = {"apiVersion": "v1", "kind": "Node", "name": self.node_name}
        binding = {"metadata": {"name": meta["name"], "uid": meta["uid"]}, "target": target}
        try:
            self.call(self.core.create_namespaced_binding, meta["namespace"], binding)
        except ApiException as e:
            if e.status != 409:  # 409: bound already
                raise

    def force_delete(self, pod: Obj) -> None:
        """Delete with grace 0, as the kubelet does once a deleted pod's containers are gone; the uid precondition
        keeps a pod recreated under the same name safe."""
        meta = pod["metadata"]
        options = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        try:
            self.call(self.core.delete_namespaced_pod, meta["name"], meta["namespace"], body=options)
            self._deleted.add(meta["uid"])
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("pod %s: delete failed (%s %s); retried at the next resync", _key(pod), e.status, e.reason)

    def patch_status(self, pod: Obj, status: Obj) -> None:
        """Patch a pod's status; the uid in the patch makes it fail on a recreated pod of the same name."""
        meta = pod["metadata"]
        body = {"metadata": {"uid": meta["uid"]}, "status": status}
        try:
            self.call(
                self.core.patch_namespaced_pod_status, meta["name"], meta["namespace"], body, _content_type=STRATEGIC
            )
        except ApiException as e:
            log.warning("pod %s: status update failed (%s): %s", _key(pod), e.status, e.body)


class _Process:
    """One container's process, leader of its own process group.

    The leader is reaped only after its group has been killed, so a signal can never reach a reused pid, and
    helpers the container left behind die with it as they would with their container.
    """

    def __init__(
        self, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path, on_exit: Callable[[], None]
    ) -> None:
        with log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_runner,  # noqa: PLW1509 - a single libc call, no lock taken
            )
        self.pid = self.popen.pid
        self.started_at, self.finished_at = _now(), ""
        self.exit_code: int | None = None
        self.exited = threading.Event()
        self._lock = threading.Lock()
        self._on_exit = on_exit
        threading.Thread(target=self._reap, name=f"node-agent reap {self.pid}", daemon=True).start()

    def _reap(self) -> None:
        os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)  # exited, but its pid stays ours until reaped
        with self._lock:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            code = self.popen.wait()
            self.exit_code = 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a container runtime
            self.finished_at = _now()
        self.exited.set()
        self._on_exit()

    def signal(self, sig: signal.Signals) -> None:
        with self._lock:
            if self.exit_code is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, sig)


@dataclass
class _Container:
    spec: Obj
    init: bool
    process: _Process | None = None
    waiting: tuple[str, str] | None = None  # reason and message of a container that could not start
    exit: Obj | None = None  # its state.terminated, once it has ended

    @property
    def name(self) -> str:
        name: str = self.spec["name"]
        return name

    @property
    def succeeded(self) -> bool:
        return self.exit is not None and self.exit["exitCode"] == 0


class _PodRun:
    """One pod on the node: volumes, then init containers one by one, then the containers; each step reported.

    Runs in its own thread, which also forks the processes (they die with it: PR_SET_PDEATHSIG is per thread).
    """

    def __init__(self, agent: NodeAgent, pod: Obj) -> None:
        self.agent, self.pod = agent, pod
        meta, spec = pod["metadata"], pod["spec"]
        self.name: str = meta["name"]
        self.namespace: str = meta["namespace"]
        self.uid: str = meta["uid"]
        self.dir: Path = agent.workdir / "pods" / self.uid
        self.containers = [_Container(c, init=True) for c in spec.get("initContainers") or []]
        self.containers += [_Container(c, init=False) for c in spec["containers"]]
        self.grace = min(float(spec.get("terminationGracePeriodSeconds", 30)), MAX_GRACE_SECONDS)
        active = spec.get("activeDeadlineSeconds")
        self.deadline = time.monotonic() + active if active else None
        self.start_time = pod.get("status", {}).get("startTime") or _now()
        self.volumes: dict[str, Path] = {}
        self.reason: tuple[str, str] | None = None  # why the pod as a whole failed
        self.deleting = self.aborted = self.done = False
        self.wake = threading.Event()  # a process exited, or a delete / abort / deadline needs attention
        self.thread = threading.Thread(target=self._run, name=f"node-agent pod {_key(pod)}", daemon=True)
        self._transitions: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def delete(self) -> bool:
        """Stop the pod's processes (gracefully) and then delete it; False if the run is over already."""
        with self._lock:
            if self.done:
                return False
            self.deleting = True
        self.wake.set()
        return True

    def abort(self) -> None:
        """SIGKILL everything now and report nothing: the agent stops, or the pod is gone."""
        self.aborted = True
        self.wake.set()

    def _run(self) -> None:
        try:
            if self.pod.get("status", {}).get("phase") == "Running":
                self.reason = RESTARTED  # its processes died with the agent that started them
            else:
                self._run_containers()
        except PodFailure as e:
            self.reason = (e.reason, e.message)
        except Exception as e:
            log.exception("pod %s: the node agent failed running it", _key(self.pod))
            self.reason = ("NodeAgentError", repr(e))
        finally:
            self._kill_all()
            self._report(final=True)
            with self._lock:
                self.done = True
                deleting = self.deleting
            if deleting and not self.aborted:
                self.agent.force_delete(self.pod)

    def _run_containers(self) -> None:
        self._report()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._retrying(self._mount_volumes)
        for container in self.containers:
            if container.init and not self._run_stage([container]):
                return
        self._run_stage([c for c in self.containers if not c.init])

    def _should_stop(self) -> bool:
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = DEADLINE
        return self.aborted or self.deleting or self.reason is not None

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """Retry while a Secret or ConfigMap is missing: they are often created just after the pod that needs them
        (the kubelet waits for ever; this fails after ``config_wait`` so that a test sees why)."""
        deadline = time.monotonic() + self.agent.config_wait
        while True:
            try:
                return attempt()
            except MissingReference:
                self.wake.clear()
                left = deadline - time.monotonic()
                if self._should_stop() or left <= 0:
                    raise
                self.wake.wait(min(left, 0.25))

    def _run_stage(self, stage: list[_Container]) -> bool:
        """Start the containers of one stage together and wait for all; True if all of them exited 0."""
        for container in stage:
            if self._should_stop():
                return False
            self._launch(container)
        self._report()
        self._wait(stage)
        self._report()
        return all(c.succeeded for c in stage)

    def _launch(self, container: _Container) -> None:
        try:
            argv, env, cwd = self._retrying(lambda: self._plan(container))
        except PodFailure as e:
            container.waiting = (e.reason, e.message)
            raise
        try:
            container.process = _Process(argv, env, cwd, self.dir / f"{container.name}.log", self.wake.set)
        except OSError as e:  # the executable is missing, say
            now = _now()
            container.exit = {"exitCode": 128, "reason": "StartError", "message": str(e), "startedAt": now}
            container.exit["finishedAt"] = now

    def _wait(self, stage: list[_Container]) -> None:
        """Until the stage's processes are gone: SIGTERM them when the pod is deleted or past its deadline, and
        SIGKILL them after the (capped) grace period; report whenever one exits."""
        processes = [c.process for c in stage if c.process is not None]
        kill_at: float | None = None
        killed = False
        running = len(processes)
        while True:
            self.wake.clear()
            alive = [p for p in processes if p.exit_code is None]
            if not alive:
                return
            if len(alive) != running:
                self._report()
                running = len(alive)
            now = time.monotonic()
            if not killed and (self.aborted or (kill_at is not None and now >= kill_at)):
                for process in alive:
                    process.signal(signal.SIGKILL)
                killed = True
            elif kill_at is None and self._should_stop():
                for process in alive:
                    process.signal(signal.SIGTERM)
                kill_at = now + self.grace
                continue  # the grace period may be 0
            wake_at = None if killed else kill_at if kill_at is not None else self.deadline
            self.wake.wait(None if wake_at is None else max(wake_at - now, 0.0))

    def _kill_all(self) -> None:
        """Nothing a pod started may outlive its run."""
        alive = [c.process for c in self.containers if c.process is not None and c.process.exit_code is None]
        for process in alive:
            process.signal(signal.SIGKILL)
        for process in alive:
            process.exited.wait(REQUEST_TIMEOUT)

    # --- what a container gets ----------------------------------------------------------------------------------

    def _plan(self, container: _Container) -> tuple[list[str], dict[str, str], Path]:
        """The argv, environment and working directory of a container, with its paths mapped to local ones."""
        spec = container.spec
        spec_env = self._env(spec)
        message_file = self.dir / "termination" / container.name
        message_file.parent.mkdir(parents=True, exist_ok=True)
        message_file.write_bytes(b"")
        paths = self._mounts(spec, spec_env)
        paths[spec.get("terminationMessagePath") or "/dev/termination-log"] = message_file
        path_map = PathMap(paths)
        argv = self._argv(spec, spec_env, path_map)
        env = {
            **_host_env(),
            "HOSTNAME": self.name,
            "DSEXPORT_NODE_AGENT": "1",
            "DSEXPORT_TERMINATION_MESSAGE_PATH": str(message_file),
            **path_map.env(),
            **{name: path_map.rewrite(value) for name, value in spec_env.items()},
        }
        working_dir = Path(path_map.rewrite(spec["workingDir"])) if spec.get("workingDir") else self.dir
        return argv, env, working_dir if working_dir.is_dir() else self.dir

    def _argv(self, spec: Obj, env: Mapping[str, str], paths: PathMap) -> list[str]:
        """command + args, expanded and mapped; the image's ENTRYPOINT (from ``entrypoints``) if there is no command.

        The program itself is a host path when it exists here (``sys.executable`` under a folder that happens to
        start like a mountPath, say): only one that does not is mapped, such as a script in a volume.
        """
        command = [expand(arg, env) for arg in spec.get("command") or []]
        args = [paths.rewrite(expand(arg, env)) for arg in spec.get("args") or []]
        if not command:
            image = spec.get("image", "")
            entrypoint = self.agent.entrypoints.get(image) or self.agent.entrypoints.get(_repository(image))
            if entrypoint is None:
                raise PodFailure(
                    "CreateContainerError",
                    f"container {spec['name']} has no command and image {image!r} no known entrypoint",
                )
            return [*entrypoint, *args]  # host configuration: taken as it is
        program, *rest = command
        program = program if Path(program).exists() else paths.rewrite(program)
        return [program, *(paths.rewrite(arg) for arg in rest), *args]

    def _env(self, spec: Obj) -> dict[str, str]:
        """envFrom, then env (later names win, values may refer to earlier ones), in the kubelet's order."""
        env: dict[str, str] = {}
        for source in spec.get("envFrom") or []:
            kind, ref = (
                ("configmap", source["configMapRef"]) if "configMapRef" in source else ("secret", source["secretRef"])
            )
            data = self._data(kind, ref, "CreateContainerConfigError") or {}
            env.update({source.get("prefix", "") + key: value.decode() for key, value in data.items()})
        for var in spec.get("env") or []:
            value = self._value_from(var["valueFrom"]) if "valueFrom" in var else expand(var.get("value", ""), env)
            if value is not None:
                env[var["name"]] = value
        return env

    def _value_from(self, source: Obj) -> str | None:
        reason = "CreateContainerConfigError"
        if "fieldRef" in source:
            return self._field(source["fieldRef"]["fieldPath"], reason)
        for field, kind, title in (("secretKeyRef", "secret", "Secret"), ("configMapKeyRef", "configmap", "ConfigMap")):
            if ref := source.get(field):
                data = self._data(kind, ref, reason)
                if data is not None and ref["key"] in data:
                    return data[ref["key"]].decode()
                if data is None or ref.get("optional"):
                    return None
                raise MissingReference(
                    reason, f"couldn't find key {ref['key']} in {title} {self.namespace}/{ref['name']}"
                )
        raise PodFailure(reason, f"env valueFrom {sorted(source)} is not supported by the node agent")

    def _data(self, kind: str, ref: Obj, reason: str) -> dict[str, bytes] | None:
        """A Secret's or ConfigMap's data, decoded; None if it is missing and optional."""
        name = ref.get("name", "")
        read = (
            self.agent.core.read_namespaced_secret if kind == "secret" else self.agent.core.read_namespaced_config_map
        )
        try:
            obj = self.agent.call(read, name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            if ref.get("optional"):
                return None
            raise MissingReference(reason, f'{kind} "{name}" not found') from None
        if kind == "secret":
            return {key: base64.b64decode(value) for key, value in (obj.get("data") or {}).items()}
        data = {key: value.encode() for key, value in (obj.get("data") or {}).items()}
        return data | {key: base64.b64decode(value) for key, value in (obj.get("binaryData") or {}).items()}

    def _field(self, path: str, reason: str) -> str:
        """A downward API fieldRef."""
        meta = self.pod["metadata"]
        if match := re.fullmatch(r"metadata\.(labels|annotations)\['(.*)'\]", path):
            value: str = (meta.get(match[1]) or {}).get(match[2], "")
            return value
        if path in ("metadata.labels", "metadata.annotations"):
            values = meta.get(path.split(".")[1]) or {}
            return "\n".join(f"{key}={json.dumps(value)}" for key, value in sorted(values.items()))
        fields: dict[str, str] = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "metadata.uid": self.uid,
            "spec.nodeName": self.agent.node_name,
            "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName", ""),
            "status.podIP": POD_IP,
            "status.podIPs": POD_IP,
            "status.hostIP": POD_IP,
            "status.hostIPs": POD_IP,
        }
        if path not in fields:
            raise PodFailure(reason, f"fieldRef {path} is not supported by the node agent")
        return fields[path]

    def _mounts(self, spec: Obj, env: Mapping[str, str]) -> dict[str, Path]:
        mounts: dict[str, Path] = {}
        for mount in spec.get("volumeMounts") or []:
            local = self.volumes[mount["name"]]
            if sub := mount.get("subPath") or expand(mount.get("subPathExpr", ""), env):
                local /= sub
                if not local.exists():
                    local.mkdir(parents=True)  # as the kubelet creates a missing subPath
            mounts[mount["mountPath"]] = local
        return mounts

    def _mount_volumes(self) -> None:
        for volume in self.pod["spec"].get("volumes") or []:
            self.volumes[volume["name"]] = self._volume(volume)

    def _volume(self, volume: Obj) -> Path:
        """Materialise one volume under ``pods/<uid>/volumes/<name>`` (a hostPath is used where it is)."""
        if "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            return path
        name: str = volume["name"]
        folder = self.dir / "volumes" / name
        folder.mkdir(parents=True, exist_ok=True)
        if "emptyDir" in volume:
            return folder
        if "projected" in volume:
            sources, default_mode = volume["projected"].get("sources") or [], volume["projected"].get("defaultMode")
        elif "secret" in volume:
            secret = volume["secret"]
            sources, default_mode = (
                [{"secret": {**secret, "name": secret.get("secretName")}}],
                secret.get("defaultMode"),
            )
        elif "configMap" in volume or "downwardAPI" in volume:
            kind = "configMap" if "configMap" in volume else "downwardAPI"
            sources, default_mode = [{kind: volume[kind]}], volume[kind].get("defaultMode")
        else:
            kinds = sorted(set(volume) - {"name"})
            raise PodFailure("FailedMount", f'volume "{name}": {kinds} volumes are not supported by the node agent')
        for source in sources:
            for relative, content, mode in self._files(name, source):
                target = folder / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
                target.chmod(mode if mode is not None else default_mode if default_mode is not None else 0o644)
        return folder

    def _files(self, volume: str, source: Obj) -> list[tuple[str, bytes, int | None]]:
        """(path, content, mode) of each file one volume source projects."""
        reason = "FailedMount"
        if "configMap" in source or "secret" in source:
            kind, ref = ("configmap", source["configMap"]) if "configMap" in source else ("secret", source["secret"])
            data = self._data(kind, ref, reason)
            if data is None:
                return []
            items = ref.get("items") or [{"key": key, "path": key} for key in data]
            missing = [item["key"] for item in items if item["key"] not in data]
            if missing and not ref.get("optional"):
                raise MissingReference(reason, f'volume "{volume}": {kind} "{ref["name"]}" has no key {missing[0]!r}')
            return [(item["path"], data[item["key"]], item.get("mode")) for item in items if item["key"] in data]
        if "downwardAPI" in source:
            items = source["downwardAPI"].get("items") or []
            if any("fieldRef" not in item for item in items):
                raise PodFailure(reason, f'volume "{volume}": only fieldRef downward API items are supported')
            return [(i["path"], self._field(i["fieldRef"]["fieldPath"], reason).encode(), i.get("mode")) for i in items]
        if "serviceAccountToken" in source:
            return [(source["serviceAccountToken"]["path"], self._token(source["serviceAccountToken"]).encode(), None)]
        raise PodFailure(reason, f'volume "{volume}": projected source {sorted(source)} is not supported')

    def _token(self, source: Obj) -> str:
        """A real token from the TokenRequest API, bound to this pod, as the kubelet mounts it."""
        spec: Obj = {
            "expirationSeconds": source.get("expirationSeconds", 3607),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
        }
        if source.get("audience"):
            spec["audiences"] = [source["audience"]]
        account = self.pod["spec"].get("serviceAccountName") or "default"
        request = self.agent.call(
            self.agent.core.create_namespaced_service_account_token, account, self.namespace, {"spec": spec}
        )
        token: str = request["status"]["token"]
        return token

    # --- status -------------------------------------------------------------------------------------------------

    def _report(self, *, final: bool = False) -> None:
        if self.aborted:
            return  # the agent is stopping or the pod is gone: nobody to tell
        for container in self.containers:
            process = container.process
            if process is not None and process.exit_code is not None and container.exit is None:
                container.exit = self._terminated(container, process)
        self.agent.patch_status(self.pod, self._status(final))

    def _terminated(self, container: _Container, process: _Process) -> Obj:
        """state.terminated, with the message the process wrote (or its log tail, if its policy asks for it)."""
        message_file = self.dir / "termination" / container.name
        message = message_file.read_bytes()[:MESSAGE_LIMIT].decode(errors="replace") if message_file.exists() else ""
        fallback = container.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        if not message and fallback and process.exit_code != 0:
            message = _log_tail(self.dir / f"{container.name}.log")
        state: Obj = {
            "exitCode": process.exit_code,
            "reason": "Completed" if process.exit_code == 0 else "Error",
            "startedAt": process.started_at,
            "finishedAt": process.finished_at,
            "containerID": f"nodeagent://{process.pid}",
        }
        if message:
            state["message"] = message
        return state

    def _phase(self, final: bool) -> str:
        inits = [c for c in self.containers if c.init]
        mains = [c for c in self.containers if not c.init]
        if self.reason is not None or any(c.exit is not None and not c.succeeded for c in inits):
            return "Failed"
        if all(c.exit is not None for c in mains):
            return "Succeeded" if all(c.succeeded for c in mains) else "Failed"
        if final:
            return "Failed"  # stopped before every container could run
        return "Running" if any(c.process is not None or c.exit is not None for c in mains) else "Pending"

    def _status(self, final: bool) -> Obj:
        phase = self._phase(final)
        mains = [c for c in self.containers if not c.init]
        initialized = all(c.succeeded for c in self.containers if c.init)
        ready = phase == "Running" and all(c.process is not None and c.exit is None for c in mains)
        not_ready = "PodCompleted" if phase in TERMINAL else "ContainersNotReady"
        status: Obj = {
            "phase": phase,
            "conditions": [
                self._condition("PodScheduled", ok=True),
                self._condition("Initialized", ok=initialized, reason="ContainersNotInitialized"),
                self._condition("ContainersReady", ok=ready, reason=not_ready),
                self._condition("Ready", ok=ready, reason=not_ready),
            ],
            "hostIP": POD_IP,
            "hostIPs": [{"ip": POD_IP}],
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": self.start_time,
            "containerStatuses": [self._container_status(c) for c in mains],
        }
        if len(mains) < len(self.containers):
            status["initContainerStatuses"] = [self._container_status(c) for c in self.containers if c.init]
        if self.reason is not None:
            status["reason"], status["message"] = self.reason
        return status

    def _condition(self, kind: str, *, ok: bool, reason: str = "") -> Obj:
        status = "True" if ok else "False"
        if self._transitions.get(kind, ("", ""))[0] != status:
            self._transitions[kind] = (status, _now())
        # reason None removes an earlier reason from the server's copy (strategic merge keeps unnamed fields)
        return {
            "type": kind,
            "status": status,
            "reason": None if ok else reason,
            "lastProbeTime": None,
            "lastTransitionTime": self._transitions[kind][1],
        }

    def _container_status(self, container: _Container) -> Obj:
        process = container.process
        running = process is not None and container.exit is None
        state: Obj
        if container.exit is not None:
            state = {"terminated": container.exit}
        elif process is not None:
            state = {"running": {"startedAt": process.started_at}}
        else:
            waiting = "PodInitializing" if any(c.init for c in self.containers) and not container.init else ""
            reason, message = container.waiting or (waiting or "ContainerCreating", "")
            state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        status: Obj = {
            "name": container.name,
            "image": container.spec.get("image", ""),
            "imageID": "",
            "ready": (running and not container.init) or (container.init and container.succeeded),
            "started": running,
            "restartCount": 0,
            "state": state,
        }
        if process is not None:
            status["containerID"] = f"nodeagent://{process.pid}"
        return status
