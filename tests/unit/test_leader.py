"""The Lease decision: who may act, from the Lease's spec, the reader's clock and its identity (no API server)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from tests.servers import wait_until

from dsexport.operator import leader
from dsexport.operator.apiserver import ApiError
from dsexport.operator.leader import Decision, decide, expires_at, standby_delay

ME = "dsexport-operator-7d9f-abcde_0a1b2c3d"
OTHER = "dsexport-operator-7d9f-fghij_4e5f6a7b"
T0 = dt.datetime(2026, 5, 1, 10, 0, 0, 123456, tzinfo=dt.UTC)


def _spec(holder: str | None = OTHER, *, renewed: dt.datetime | None = T0, duration: Any = 15) -> dict[str, Any]:
    """A Lease's spec as the API server returns it (MicroTime strings, camelCase)."""
    spec: dict[str, Any] = {"holderIdentity": holder, "leaseDurationSeconds": duration, "leaseTransitions": 2}
    if renewed is not None:
        spec["renewTime"] = spec["acquireTime"] = leader.format_time(renewed)
    return spec


def test_a_missing_lease_is_acquired() -> None:
    assert decide(spec=None, now=T0, identity=ME) is Decision.ACQUIRE


@pytest.mark.parametrize("holder", [None, ""])
def test_a_released_lease_is_acquired_at_once(holder: str | None) -> None:
    """A clean shutdown clears the holder: the standby need not wait for the expiry."""
    assert decide(spec=_spec(holder), now=T0, identity=ME) is Decision.ACQUIRE


def test_a_live_lease_of_another_replica_is_waited_for() -> None:
    for seconds in (0, 1, 14.999999):
        assert decide(spec=_spec(), now=T0 + dt.timedelta(seconds=seconds), identity=ME) is Decision.WAIT


def test_an_expired_lease_of_another_replica_is_taken() -> None:
    assert decide(spec=_spec(), now=T0 + dt.timedelta(seconds=15, microseconds=1), identity=ME) is Decision.ACQUIRE
    assert decide(spec=_spec(), now=T0 + dt.timedelta(hours=3), identity=ME) is Decision.ACQUIRE


def test_expiry_is_strictly_after_renew_time_plus_duration() -> None:
    """At the very microsecond the Lease ends it is still the holder's: expired means renewTime + duration < now."""
    edge = T0 + dt.timedelta(seconds=15)
    assert expires_at(_spec()) == edge
    assert decide(spec=_spec(), now=edge, identity=ME) is Decision.WAIT
    assert decide(spec=_spec(), now=edge + dt.timedelta(microseconds=1), identity=ME) is Decision.ACQUIRE


def test_the_lease_duration_comes_from_the_lease() -> None:
    spec = _spec(duration=60)
    assert decide(spec=spec, now=T0 + dt.timedelta(seconds=59), identity=ME) is Decision.WAIT
    assert decide(spec=spec, now=T0 + dt.timedelta(seconds=61), identity=ME) is Decision.ACQUIRE


@pytest.mark.parametrize("duration", [None, "15", True])
def test_a_lease_without_a_usable_duration_gets_ours(duration: Any) -> None:
    """The cautious reading: our own duration, never zero (which would let anyone take a live Lease)."""
    spec = _spec(duration=duration)
    assert decide(spec=spec, now=T0 + dt.timedelta(seconds=10), identity=ME) is Decision.WAIT
    assert decide(spec=spec, now=T0 + dt.timedelta(seconds=16), identity=ME) is Decision.ACQUIRE


def test_my_own_lease_is_renewed_even_when_it_looks_expired() -> None:
    """Nobody took it (the write is conditional on the resourceVersion read), so it is still mine to renew."""
    assert decide(spec=_spec(ME), now=T0, identity=ME) is Decision.RENEW
    assert decide(spec=_spec(ME), now=T0 + dt.timedelta(minutes=5), identity=ME) is Decision.RENEW


def test_a_previous_process_of_the_same_pod_is_another_identity() -> None:
    """The random suffix: a restarted container waits for the Lease its previous process held."""
    previous = leader.default_identity()
    current = leader.default_identity()
    assert previous != current
    assert decide(spec=_spec(previous), now=T0 + dt.timedelta(seconds=5), identity=current) is Decision.WAIT


def test_a_held_lease_without_any_time_is_taken() -> None:
    """Nothing says when it was held, so nothing says it is still held."""
    assert decide(spec=_spec(renewed=None), now=T0, identity=ME) is Decision.ACQUIRE
    assert decide(spec={**_spec(), "renewTime": "not a time", "acquireTime": None}, now=T0, identity=ME) is (
        Decision.ACQUIRE
    )


def test_renew_time_falls_back_to_acquire_time() -> None:
    spec = {**_spec(), "renewTime": None}
    assert decide(spec=spec, now=T0 + dt.timedelta(seconds=10), identity=ME) is Decision.WAIT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-05-01T10:00:00.123456Z", T0),
        ("2026-05-01T10:00:00.123456+00:00", T0),
        ("2026-05-01T12:00:00.123456+02:00", T0),
        ("2026-05-01T10:00:00Z", T0.replace(microsecond=0)),
        ("2026-05-01T10:00:00.123456", None),  # no zone: not an instant
        ("yesterday", None),
        (None, None),
        (12, None),
    ],
)
def test_lease_times_parse(text: object, expected: dt.datetime | None) -> None:
    assert leader.parse_time(text) == expected


def test_times_are_written_as_the_api_server_writes_micro_time() -> None:
    assert leader.format_time(T0) == "2026-05-01T10:00:00.123456Z"
    assert leader.format_time(T0.replace(microsecond=0)) == "2026-05-01T10:00:00.000000Z"
    assert leader.format_time(T0.astimezone(dt.timezone(dt.timedelta(hours=-5)))) == "2026-05-01T10:00:00.123456Z"


def test_a_standby_reads_again_just_after_the_expiry_when_that_comes_sooner() -> None:
    assert standby_delay(spec=_spec(), now=T0 + dt.timedelta(seconds=13), jitter=4.0) == pytest.approx(2.1)
    assert standby_delay(spec=_spec(), now=T0 + dt.timedelta(seconds=5), jitter=4.0) == 4.0
    assert standby_delay(spec=_spec(), now=T0 + dt.timedelta(seconds=20), jitter=4.0) == pytest.approx(0.1)
    assert standby_delay(spec=None, now=T0, jitter=3.0) == 3.0
    assert standby_delay(spec=_spec(None), now=T0, jitter=3.0) == 3.0


def test_the_timings_leave_the_holder_time_to_stop_before_a_standby_may_act() -> None:
    timings = leader.Timings()
    assert (timings.lease_duration, timings.renew_period) == (15, 5.0)
    assert timings.renew_period < timings.renew_deadline < timings.lease_duration
    assert (timings.retry_min, timings.retry_max) == (2.0, 5.0)
    with pytest.raises(ValueError, match="renew_deadline"):
        leader.Timings(renew_deadline=20.0)


def test_the_lease_namespace_is_the_pods(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv(leader.POD_NAMESPACE_ENV, "dsexport-system")
    assert leader.default_namespace() == "dsexport-system"
    monkeypatch.delenv(leader.POD_NAMESPACE_ENV)
    account = tmp_path / "namespace"
    account.write_text("from-the-account\n")
    monkeypatch.setattr(leader, "SERVICE_ACCOUNT_NAMESPACE", account)
    assert leader.default_namespace() == "from-the-account"
    monkeypatch.setattr(leader, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "missing")
    assert leader.default_namespace() == "default"


def test_the_identity_is_the_pod_name_and_a_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(leader.POD_NAME_ENV, "dsexport-6c9b-x2k4q")
    name, _, suffix = leader.default_identity().rpartition("_")
    assert name == "dsexport-6c9b-x2k4q"
    assert len(suffix) == 8


# ------------------------------------------------------------------ the elector against a fake Lease API (no server)


class FakeLeases:
    """One namespace's Leases as the API server keeps them: resourceVersions, 404, 409 on a stale write."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.unreachable = False
        self.before_write: Any = None  # called before a write is applied: another writer in between

    def _check(self) -> None:
        if self.unreachable:
            raise ConnectionRefusedError("the API server does not answer")

    def get(self, path: str, **_: Any) -> dict[str, Any] | None:
        self._check()
        name = path.rpartition("/")[2]
        return json.loads(json.dumps(self.leases[name])) if name in self.leases else None

    def request(self, method: str, path: str, *, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        assert path.startswith("/apis/coordination.k8s.io/v1/namespaces/ns/leases")
        if method == "POST":
            self.create(body)
        else:
            assert method == "PUT" and path.endswith(f"/{body['metadata']['name']}")
            self.replace(body["metadata"]["name"], body)
        return body

    def _store(self, body: dict[str, Any]) -> None:
        self.version += 1
        body = json.loads(json.dumps(body))
        body["metadata"]["resourceVersion"] = str(self.version)
        body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
        self.leases[body["metadata"]["name"]] = body

    def create(self, body: dict[str, Any]) -> None:
        self._check()
        if self.before_write is not None:
            self.before_write()
        if body["metadata"]["name"] in self.leases:
            raise ApiError(status=409, reason="AlreadyExists")
        self._store(body)

    def replace(self, name: str, body: dict[str, Any]) -> None:
        self._check()
        if self.before_write is not None:
            self.before_write()
        if body["metadata"].get("resourceVersion") != self.leases[name]["metadata"]["resourceVersion"]:
            raise ApiError(status=409, reason="Conflict")
        self._store(body)

    def spec(self) -> dict[str, Any]:
        return dict(self.leases[leader.LEASE_NAME]["spec"])


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


FAST = leader.Timings(
    lease_duration=1, renew_period=0.05, renew_deadline=0.3, retry_after_failure=0.02, request_timeout=0.1
)


@pytest.fixture
def leases() -> FakeLeases:
    return FakeLeases()


def _elector(
    leases: FakeLeases, identity: str, clock: Clock, timings: leader.Timings | None = None
) -> leader.LeaderElector:
    server: Any = leases  # answers the few requests the election sends
    return leader.LeaderElector(server, namespace="ns", identity=identity, clock=clock, timings=timings)


def test_the_first_contender_creates_the_lease_and_the_second_waits_for_its_expiry(leases: FakeLeases) -> None:
    clock = Clock()
    a, b = _elector(leases, ME, clock), _elector(leases, OTHER, clock)
    assert a.try_acquire_or_renew()
    assert leases.spec()["holderIdentity"] == ME
    assert leases.spec()["leaseTransitions"] == 0
    assert not b.try_acquire_or_renew()
    clock.now = T0 + dt.timedelta(seconds=10)
    assert a.try_acquire_or_renew(renew_only=True)  # renewed: valid until T0 + 25 s
    clock.now = T0 + dt.timedelta(seconds=24)
    assert not b.try_acquire_or_renew()
    clock.now = T0 + dt.timedelta(seconds=26)
    assert b.try_acquire_or_renew()
    assert (leases.spec()["holderIdentity"], leases.spec()["leaseTransitions"]) == (OTHER, 1)
    assert not a.try_acquire_or_renew(renew_only=True)  # a's renewal finds b: a has lost it


def test_of_two_contenders_for_an_expired_lease_one_wins(leases: FakeLeases) -> None:
    clock = Clock()
    a, b = _elector(leases, ME, clock), _elector(leases, OTHER, clock)
    assert a.try_acquire_or_renew()
    clock.now = T0 + dt.timedelta(minutes=1)
    third = _elector(leases, "third_00000000", clock)

    def third_wins() -> None:
        leases.before_write = None
        assert third.try_acquire_or_renew()

    leases.before_write = third_wins
    assert not b.try_acquire_or_renew()  # third wrote between b's read and b's write: 409
    assert leases.spec()["holderIdentity"] == "third_00000000"


def test_a_holder_does_not_give_up_on_a_conflict_before_reading_again(leases: FakeLeases) -> None:
    clock = Clock()
    a = _elector(leases, ME, clock)
    assert a.try_acquire_or_renew()

    def relabel() -> None:
        leases.before_write = None
        leases._store(leases.leases[leader.LEASE_NAME])

    leases.before_write = relabel
    with pytest.raises(ApiError):
        a.try_acquire_or_renew(renew_only=True)
    assert a.try_acquire_or_renew(renew_only=True)


def test_a_released_lease_is_taken_at_once(leases: FakeLeases) -> None:
    clock = Clock()
    a, b = _elector(leases, ME, clock), _elector(leases, OTHER, clock)
    assert a.acquire()
    a.release()
    assert not a.is_leader and not a.lost
    assert "holderIdentity" not in leases.spec()
    assert b.try_acquire_or_renew()  # no clock advance: no waiting for the expiry


def test_a_holder_that_cannot_renew_stops_then_is_forced_out_at_the_expiry(leases: FakeLeases) -> None:
    elector = _elector(leases, ME, Clock(), FAST)
    assert elector.acquire()
    lost, expired = threading.Event(), threading.Event()
    order: list[str] = []

    def on_lost() -> None:
        order.append("lost")
        lost.set()

    def on_expired() -> None:
        order.append("expired")
        expired.set()

    elector.start_renewing(on_lost=on_lost, on_expired=on_expired)
    leases.unreachable = True
    assert lost.wait(timeout=5)
    assert not elector.is_leader and elector.lost
    assert expired.wait(timeout=5)
    assert order == ["lost", "expired"]
    elector.release()  # after a loss: leaves the Lease alone
    leases.unreachable = False
    assert leases.spec()["holderIdentity"] == ME


def test_a_holder_whose_lease_was_taken_is_forced_out_at_once(leases: FakeLeases) -> None:
    elector = _elector(leases, ME, Clock(), FAST)
    assert elector.acquire()
    expired = threading.Event()
    elector.start_renewing(on_lost=lambda: None, on_expired=expired.set)
    leases.leases[leader.LEASE_NAME]["spec"]["holderIdentity"] = "intruder"
    assert expired.wait(timeout=5)
    assert elector.lost
    assert leases.spec()["holderIdentity"] == "intruder"


def test_a_holder_keeps_renewing_until_released(leases: FakeLeases) -> None:
    clock = Clock()
    elector = _elector(leases, ME, clock, FAST)
    assert elector.acquire()
    lost = threading.Event()
    elector.start_renewing(on_lost=lost.set, on_expired=lost.set)
    first = leases.version
    clock.now = T0 + dt.timedelta(seconds=1)
    wait_until(lambda: leases.version >= first + 3, timeout=5, what="three renewals")
    assert leases.spec()["renewTime"].startswith("2026-05-01T10:00:01")
    elector.release()
    assert not lost.is_set()
    assert "holderIdentity" not in leases.spec()


def test_a_standby_gives_up_waiting_when_cancelled(leases: FakeLeases) -> None:
    clock = Clock()
    assert _elector(leases, OTHER, clock).try_acquire_or_renew()
    cancel = threading.Event()
    result: list[bool] = []
    standby = _elector(leases, ME, clock)
    thread = threading.Thread(target=lambda: result.append(standby.acquire(cancel=cancel)))
    thread.start()
    wait_until(lambda: standby._seen is not None, timeout=5, what="the standby's first read")
    cancel.set()
    thread.join(timeout=5)
    assert result == [False]
    assert not standby.is_leader


# ------------------------------------------------------------------------------ the wiring in ``dsexport operator``


class FakeElector:
    """Stands in for LeaderElector in ``main.run``: it gets the Lease at once and, once renewing, loses it."""

    namespace = "ns"
    name = leader.LEASE_NAME

    def __init__(self) -> None:
        self.is_leader = False
        self.lost = False
        self.released = False

    def acquire(self) -> bool:
        self.is_leader = True
        return True

    def start_renewing(self, *, on_lost: Any, on_expired: Any) -> None:
        def lose() -> None:
            self.is_leader = False
            self.lost = True
            on_lost()  # from another thread, as the renewal thread calls it

        threading.Thread(target=lose).start()

    def release(self) -> None:
        self.released = True


@pytest.fixture
def operator_main(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """``main.run`` with kopf, the handlers and the Lease API replaced; kopf "runs" until its stop flag is set."""
    from dsexport.operator import main  # noqa: PLC0415 - loads kopf: only these tests need it

    world = SimpleNamespace(runs=[], electors=[])

    def fake_run(*, loop: asyncio.AbstractEventLoop, stop_flag: asyncio.Event, ready_flag: Any, **_: Any) -> None:
        ready_flag.set()
        loop.run_until_complete(asyncio.wait_for(stop_flag.wait(), timeout=10))
        world.runs.append("stopped by the flag")

    def make_elector(*_: Any, **__: Any) -> FakeElector:
        elector = FakeElector()
        world.electors.append(elector)
        return elector

    monkeypatch.setattr("dsexport.operator.handlers.build", lambda _options: object())
    monkeypatch.setattr("dsexport.operator.leader.connect", lambda _kubeconfig: None)
    monkeypatch.setattr("dsexport.operator.leader.LeaderElector", make_elector)
    monkeypatch.setattr("kopf.run", fake_run)
    monkeypatch.setattr("kopf.configure", lambda **_: None)
    monkeypatch.setenv("DSEXPORT_LOG_LEVEL", "WARNING")

    def run() -> None:
        main.run(kubeconfig=None, namespaces=(), image="x", image_pull_policy="Never", metrics_address="127.0.0.1:0")

    world.run = run
    return world


def test_a_lost_lease_stops_kopf_through_its_stop_flag_and_fails_the_command(operator_main: SimpleNamespace) -> None:
    with pytest.raises(leader.LeadershipLostError):
        operator_main.run()
    assert operator_main.runs == ["stopped by the flag"]
    [elector] = operator_main.electors
    assert elector.released  # which leaves a lost Lease alone (LeaderElector.release)


def test_sigterm_while_standing_by_ends_the_wait_cleanly(
    operator_main: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    def signalled(_self: FakeElector) -> bool:
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal should have ended the wait")

    monkeypatch.setattr(FakeElector, "acquire", signalled)
    previous = signal.getsignal(signal.SIGTERM)
    operator_main.run()  # returns: exit status 0
    assert operator_main.runs == []  # kopf never started
    assert operator_main.electors[0].released
    assert signal.getsignal(signal.SIGTERM) is previous
