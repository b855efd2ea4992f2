"""One retry policy for every backend, so "transient" means the same bounded wait whatever the store.

Transient failures (5xx, throttling, connection resets, timeouts) are retried with exponential backoff and full
jitter, bounded both in attempts and in total time; everything else is raised at once, because retrying bad
credentials or a missing bucket only delays the message the user needs. A backend that gives up after the retries
raises its DestinationError with ``transient=True``, so the operator retries the run later rather than waiting for
a spec change. The bounds can be tightened through the environment (tests stop a server mid-run and want the
failure in seconds, not a minute).

Retrying a write whose reply was lost sends it twice; ``create_only_put`` is what keeps that from turning a
create-only write of ours into a conflict with ourselves.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_random_exponential

from dsexport.errors import AlreadyExistsError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    base_seconds: float = 0.25
    max_wait_seconds: float = 8.0
    deadline_seconds: float = 60.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """``DSEXPORT_RETRY_ATTEMPTS`` and ``DSEXPORT_RETRY_DEADLINE`` (seconds) override the defaults."""
        default = cls()
        return cls(
            attempts=int(os.environ.get("DSEXPORT_RETRY_ATTEMPTS", default.attempts)),
            deadline_seconds=float(os.environ.get("DSEXPORT_RETRY_DEADLINE", default.deadline_seconds)),
        )


def call(fn: Callable[[], T], *, transient: Callable[[BaseException], bool], policy: RetryPolicy | None = None) -> T:
    """``fn()``, retried while it raises an exception ``transient`` accepts; the last exception is re-raised."""
    policy = policy or RetryPolicy.from_env()
    retrying = Retrying(
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.deadline_seconds),
        wait=wait_random_exponential(multiplier=policy.base_seconds, max=policy.max_wait_seconds),
        retry=retry_if_exception(transient),
        reraise=True,
    )
    return retrying(fn)


def create_only_put(
    send: Callable[[], object],
    *,
    retried: Callable[[Callable[[], object]], object],
    read_back: Callable[[], bytes | None],
    data: bytes,
) -> None:
    """Send a conditional (create-only) write of ``data`` through ``retried``, the backend's retrying call, which
    raises AlreadyExistsError when the store refuses it.

    An attempt that landed but lost its response makes the retry find the object: if it holds our bytes, this
    write is what created it. Only a refusal met by a retry is checked (``read_back`` reads the object): on the
    first attempt the object was there before us, whatever it holds.

    For stores whose conditional write is one request that raises on conflict (S3, GCS); where the conflict is
    found inside the attempt (Azure's and SFTP's), the backend checks there.
    """
    attempts = 0

    def attempt() -> object:
        nonlocal attempts
        attempts += 1
        return send()

    try:
        retried(attempt)
    except AlreadyExistsError:
        if attempts > 1 and read_back() == data:
            return
        raise
