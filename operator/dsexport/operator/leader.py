"""Leader election on a Lease (coordination.k8s.io/v1), so that of several operator replicas exactly one acts.

Two replicas that both reconciled would create every Job twice (each sees the ``run-now`` annotation before the
other removes it) and race each other's status writes. So a replica runs kopf only while it holds the Lease
``dsexport-operator``; the others wait as standbys and take over once the holder stops renewing it.

The protocol is the one client-go uses, kept small:

- The holder renews ``spec.renewTime`` every ``renew_period`` (5 s); the Lease is valid for
  ``leaseDurationSeconds`` (15 s) after it.
- A standby reads the Lease every 2 to 5 s (jittered, so that standbys do not race in step, and sooner when the
  Lease is about to expire) and takes it only when it is missing, released (no holder) or expired
  (``renewTime + leaseDurationSeconds < now``). Every write carries the resourceVersion read, so of two standbys
  that see the same expired Lease exactly one wins; the other gets 409 Conflict and stays a standby.
- A holder that cannot renew for ``renew_deadline`` (10 s: the API server unreachable) or finds the Lease held by
  someone else has lost: ``on_lost`` is called at once (the operator stops kopf), and if the process still runs
  when the Lease would expire, ``on_expired`` (the operator exits the process) - the standby may then act, and two
  replicas must never act at once.
- A holder that stops cleanly releases the Lease (no holder), so a standby takes over at its next read instead
  of after the expiry.

The identity is the pod name plus a random suffix: a restarted container is a new contender, never mistaken for
the holder its previous process was. Expiry compares the holder's clock (``renewTime``) with the reader's, so the
nodes' clocks must agree to well within ``leaseDurationSeconds - renew_period`` (NTP does).

No kopf here: ``decide`` is a pure function of the Lease's spec, the time and the identity, unit-tested on its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from dsexport.operator import apiserver
from dsexport.operator.apiserver import ApiError, ApiServer

log = logging.getLogger(__name__)

LEASE_NAME: Final = "dsexport-operator"
POD_NAME_ENV: Final = "DSEXPORT_POD_NAME"
POD_NAMESPACE_ENV: Final = "DSEXPORT_POD_NAMESPACE"
SERVICE_ACCOUNT_NAMESPACE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

_CONFLICT: Final = 409
_EXPIRY_MARGIN: Final = 0.1
"""Seconds past a Lease's expiry at which a standby reads it again (expired means strictly after the expiry)."""


class LeadershipLostError(RuntimeError):
    """This replica stopped acting because it lost the Lease; the process should exit non-zero and restart as a
    standby."""


@dataclasses.dataclass(frozen=True)
class Timings:
    """The election's clock, in seconds. ``renew_deadline`` < ``lease_duration`` leaves the holder the difference
    to stop acting before a standby may take over."""

    lease_duration: int = 15
    renew_period: float = 5.0
    renew_deadline: float = 10.0
    retry_min: float = 2.0
    retry_max: float = 5.0
    retry_after_failure: float = 1.0
    request_timeout: float = 3.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_period < self.renew_deadline < self.lease_duration:
            raise ValueError("the timings need 0 < renew_period < renew_deadline < lease_duration")
        if not 0 < self.retry_min <= self.retry_max:
            raise ValueError("the timings need 0 < retry_min <= retry_max")


class Decision(enum.Enum):
    """What a contender does with the Lease it read."""

    ACQUIRE = "acquire"
    """Missing, released or expired: take it (create it, or write it at the resourceVersion read)."""
    RENEW = "renew"
    """Held by this identity: write a new renewTime."""
    WAIT = "wait"
    """Held by another identity and not expired: stay a standby."""


def parse_time(value: object) -> dt.datetime | None:
    """A Lease's MicroTime (RFC 3339, e.g. ``2026-05-01T10:00:00.123456Z``) as an aware datetime; None when absent
    or not a time (such a field says nothing of when the Lease was held)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def format_time(value: dt.datetime) -> str:
    """A MicroTime as the API server writes it: UTC, six fractional digits, ``Z``."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def expires_at(spec: Mapping[str, Any], *, default_duration: int = 15) -> dt.datetime | None:
    """When the Lease stops being valid: its renewTime (else acquireTime) plus leaseDurationSeconds (our own duration
    when it has none, the cautious choice); None when it carries no time at all (then it cannot be live)."""
    since = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
    if since is None:
        return None
    duration = spec.get("leaseDurationSeconds")
    seconds = duration if isinstance(duration, int) and not isinstance(duration, bool) else default_duration
    return since + dt.timedelta(seconds=seconds)


def decide(*, spec: Mapping[str, Any] | None, now: dt.datetime, identity: str, default_duration: int = 15) -> Decision:
    """Acquire, renew or wait, from the Lease's spec (None: no Lease), the reader's clock and its identity.

    A Lease held by this identity is renewed even if it looks expired: nobody else took it (the write is
    conditional on the resourceVersion read, so a take-over in between makes it fail). A Lease held by another
    identity is taken only strictly after its expiry.
    """
    if spec is None:
        return Decision.ACQUIRE
    holder = spec.get("holderIdentity")
    if not holder:
        return Decision.ACQUIRE
    if holder == identity:
        return Decision.RENEW
    expiry = expires_at(spec, default_duration=default_duration)
    if expiry is None or expiry < now:
        return Decision.ACQUIRE
    return Decision.WAIT


def standby_delay(*, spec: Mapping[str, Any] | None, now: dt.datetime, jitter: float) -> float:
    """Seconds until a standby reads the Lease again: ``jitter`` (drawn from the retry range), or just after the
    Lease's expiry when that comes sooner, so a dead holder is replaced without waiting out a whole retry."""
    if not spec or not spec.get("holderIdentity"):
        return jitter
    expiry = expires_at(spec)
    if expiry is None:
        return jitter
    return min(jitter, max((expiry - now).total_seconds(), 0.0) + _EXPIRY_MARGIN)


def default_identity() -> str:
    """The pod name (``DSEXPORT_POD_NAME``, from the downward API, else the host name, which is the pod name in a
    pod) plus a random suffix, unique to this process."""
    name = os.environ.get(POD_NAME_ENV) or socket.gethostname() or "dsexport-operator"
    return f"{name}_{secrets.token_hex(4)}"


def default_namespace() -> str:
    """The pod's namespace: ``DSEXPORT_POD_NAMESPACE``, else the service account's namespace file, else
    ``default`` (an operator run outside a pod)."""
    from_env = os.environ.get(POD_NAMESPACE_ENV, "").strip()
    if from_env:
        return from_env
    with contextlib.suppress(OSError):
        from_file = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        if from_file:
            return from_file
    return "default"


def connect(kubeconfig: str | None) -> ApiServer:
    """A connection of the election's own, found the way the operator finds its connection (``kubeconfig``, else
    the pod's service account, else the user's kubeconfig). Its own so that urllib3 does not retry: the renew
    loop retries, and must not sit in hidden retries past its deadline."""
    return apiserver.connect(kubeconfig, retries=False)


class LeaderElector:
    """One contender for the Lease ``namespace/name``.

    ``acquire`` blocks until this process holds the Lease, ``start_renewing`` keeps it in a daemon thread,
    ``release`` stops renewing and gives it up. Not reusable: once lost or released, make a new one (with a new
    identity) - in practice, a new process.
    """

    def __init__(
        self,
        server: ApiServer,
        *,
        namespace: str,
        identity: str,
        name: str = LEASE_NAME,
        timings: Timings | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timings = timings or Timings()
        self._server = server
        self._clock = clock
        self._leader = threading.Event()
        self._lost = threading.Event()
        self._stopping = threading.Event()
        self._renewed_at = 0.0  # time.monotonic() when the last successful write was sent
        self._thread: threading.Thread | None = None
        self._seen: dict[str, Any] | None = None  # the Lease's spec as last read
        self._last_holder: object = None

    def _path(self, name: str = "") -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases" + (f"/{name}" if name else "")

    def _read(self) -> dict[str, Any] | None:
        """The Lease without its managedFields (the API server keeps them when a write has none), None if absent."""
        lease = self._server.get(self._path(self.name), timeout=self.timings.request_timeout)
        if lease is None:
            return None
        metadata = {k: v for k, v in (lease.get("metadata") or {}).items() if k != "managedFields"}
        return {**lease, "metadata": metadata}

    def _replace(self, lease: Mapping[str, Any]) -> None:
        """Write ``lease`` back, conditional on the resourceVersion it carries (409 if someone wrote in between)."""
        self._server.request("PUT", self._path(self.name), body=dict(lease), timeout=self.timings.request_timeout)

    @property
    def is_leader(self) -> bool:
        """Holds the Lease now (False from the moment it is lost or released)."""
        return self._leader.is_set()

    @property
    def lost(self) -> bool:
        """The Lease was lost while held (not released)."""
        return self._lost.is_set()

    def try_acquire_or_renew(self, *, renew_only: bool = False) -> bool:
        """One round: read the Lease, decide, write. True when this identity holds it afterwards.

        False when another identity holds a live Lease or won the race (409), and with ``renew_only`` (the holder's
        renewal) also when the Lease would have to be acquired anew: one that is gone, released or another's was
        not held without a break, so the holder has lost it even if it could take it again. Other API errors
        (unreachable, timed out, forbidden) raise: the caller decides how long it can go on without an answer.
        """
        started = time.monotonic()
        timeout = self.timings.request_timeout
        lease = self._read()
        now = self._clock()
        spec: dict[str, Any] | None = None if lease is None else dict(lease.get("spec") or {})
        decision = decide(spec=spec, now=now, identity=self.identity, default_duration=self.timings.lease_duration)
        self._seen = spec
        if decision is Decision.WAIT or (renew_only and decision is not Decision.RENEW):
            if not renew_only:
                self._note_holder(spec)
            return False
        stamp = format_time(now)
        new_spec = {
            **(spec or {}),
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.timings.lease_duration,
            "renewTime": stamp,
        }
        if decision is Decision.ACQUIRE:
            new_spec["acquireTime"] = stamp
            new_spec["leaseTransitions"] = int((spec or {}).get("leaseTransitions") or 0) + (1 if spec else 0)
        try:
            if lease is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.name,
                        "namespace": self.namespace,
                        "labels": {"app.kubernetes.io/name": "dsexport", "app.kubernetes.io/component": "operator"},
                    },
                    "spec": new_spec,
                }
                self._server.request("POST", self._path(), body=body, timeout=timeout)
            else:
                self._replace({**lease, "spec": new_spec})
        except ApiError as e:
            # A contender that loses the race lets the winner have it; a holder reads again before it gives up
            # (the write in between may have been anyone's, e.g. a label).
            if e.status == _CONFLICT and not renew_only:
                log.info("another replica wrote Lease %s/%s first", self.namespace, self.name)
                return False
            raise
        self._renewed_at = started
        if decision is Decision.ACQUIRE:
            log.info("acquired Lease %s/%s as %s", self.namespace, self.name, self.identity)
        return True

    def acquire(self, *, cancel: threading.Event | None = None) -> bool:
        """Block until this process holds the Lease (True) or ``cancel`` is set (False), reading it every 2 to 5 s.

        API errors are logged and retried: a standby waits out an unreachable API server like a held Lease.
        """
        cancel = cancel or threading.Event()
        log.info("waiting to lead: Lease %s/%s, identity %s", self.namespace, self.name, self.identity)
        while not cancel.is_set():
            self._seen = None
            try:
                if self.try_acquire_or_renew():
                    self._leader.set()
                    return True
            except Exception as e:  # any failure to talk to the API server: retry later
                log.warning("could not read or write Lease %s/%s: %s", self.namespace, self.name, _short(e))
            jitter = random.uniform(self.timings.retry_min, self.timings.retry_max)  # noqa: S311 - not a secret
            cancel.wait(standby_delay(spec=self._seen, now=self._clock(), jitter=jitter))
        return False

    def start_renewing(self, *, on_lost: Callable[[], None], on_expired: Callable[[], None]) -> None:
        """Renew the Lease every ``renew_period`` in a daemon thread, until ``release``.

        When it is lost - taken by another identity, or not renewed for ``renew_deadline`` - ``on_lost`` is called
        (stop acting now) and, unless the process has exited by then, ``on_expired`` when the Lease as last renewed
        expires (at once when it is already someone else's): the moment a standby may act.
        """
        if not self.is_leader:
            raise RuntimeError("start_renewing needs the Lease: call acquire first")
        self._thread = threading.Thread(
            target=self._renew_loop,
            kwargs={"on_lost": on_lost, "on_expired": on_expired},
            name="dsexport-lease",
            daemon=True,
        )
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and, if this identity still holds the Lease, release it (no holder), so that a standby
        takes over at its next read rather than after the expiry. Errors are logged: the Lease then expires."""
        self._stopping.set()
        if self._lost.is_set():
            return  # not ours to touch any more
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.timings.request_timeout * 3)  # at most one read and one write under way
        if self._lost.is_set():
            return
        self._leader.clear()
        # Read even when acquire() did not return True: a signal may have ended it just after its write succeeded.
        try:
            lease = self._read()
            spec = dict((lease or {}).get("spec") or {})
            if lease is None or spec.get("holderIdentity") != self.identity:
                return
            spec.update(holderIdentity=None, renewTime=format_time(self._clock()))
            self._replace({**lease, "spec": spec})
            log.info("released Lease %s/%s", self.namespace, self.name)
        except Exception as e:  # best effort: the Lease expires anyway
            log.warning("could not release Lease %s/%s (it expires by itself): %s", self.namespace, self.name, e)

    def _renew_loop(self, *, on_lost: Callable[[], None], on_expired: Callable[[], None]) -> None:
        wait = self.timings.renew_period
        while not self._stopping.wait(wait):
            try:
                held: bool | None = self.try_acquire_or_renew(renew_only=True)
            except Exception as e:  # unreachable, timed out, refused: retry until the deadline
                log.warning("could not renew Lease %s/%s: %s", self.namespace, self.name, _short(e))
                held = None
            if self._stopping.is_set():
                return
            if held:
                wait = self.timings.renew_period
                continue
            if held is False:
                holder = (self._seen or {}).get("holderIdentity")
                self._lose(
                    f"the Lease is no longer this replica's: its holder is {holder or 'nobody'}",
                    expiry=time.monotonic(),
                    on_lost=on_lost,
                    on_expired=on_expired,
                )
                return
            left = self._renewed_at + self.timings.renew_deadline - time.monotonic()
            if left <= 0:
                self._lose(
                    f"the Lease was not renewed for {self.timings.renew_deadline:.0f} s",
                    expiry=self._renewed_at + self.timings.lease_duration,
                    on_lost=on_lost,
                    on_expired=on_expired,
                )
                return
            wait = min(self.timings.retry_after_failure, left)

    def _lose(self, why: str, *, expiry: float, on_lost: Callable[[], None], on_expired: Callable[[], None]) -> None:
        """Stop acting now; force it at ``expiry`` (monotonic) if the process is still there."""
        self._leader.clear()
        self._lost.set()
        log.error("lost the leadership (%s): stopping", why)
        try:
            on_lost()
        except Exception:
            log.exception("stopping after the lost leadership failed")
        # Not cancelled by release(): after a loss nothing may outlive the Lease, not even a slow shutdown.
        left = expiry - time.monotonic()
        if left > 0:
            time.sleep(left)
            log.error("the Lease has expired and this process still runs: exiting")
        else:
            log.error("another replica may act already: exiting now")
        on_expired()

    def _note_holder(self, spec: Mapping[str, Any] | None) -> None:
        """Log who leads when that changes (not at every read)."""
        holder = (spec or {}).get("holderIdentity")
        if holder != self._last_holder:
            self._last_holder = holder
            if holder:
                log.info("standing by: Lease %s/%s is held by %s", self.namespace, self.name, holder)


def _short(error: Exception) -> str:
    """One line for the log: an API error's status and reason, not its body."""
    if isinstance(error, ApiError):
        return f"{error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"
