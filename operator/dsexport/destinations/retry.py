"""One retry policy for every backend, so "transient" means the same bounded wait whatever the store.

Transient failures (5xx, throttling, connection resets, timeouts) are retried with exponential backoff and full
jitter, bounded both in attempts and in total time; everything else is raised at once, because retrying bad
credentials or a missing bucket only delays the message the user needs. The bounds can be tightened through the
environment (tests stop a server mid-run and want the failure in seconds, not a minute).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_random_exponential

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
