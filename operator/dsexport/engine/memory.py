"""The memory budget, and what the engine plans from it.

A user sets one number, the most memory the exporter process may use (``memoryBudget``; a pod's memory limit is
set from it). What the process holds besides the interpreter and its libraries is data in flight: a decoded batch,
a row group or JSON slice being encoded, a few of each waiting between the threads, and the buffers of the upload.
Each of those is planned here in bytes, from what is left of the budget once the process has started, so that
the peak stays under the budget whatever the source's shape: a row group of millions of rows is read in batches
of a few MiB, rows of several KiB make batches of fewer rows, and so on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dsexport.errors import ConfigError

MiB: Final = 1 << 20
DEFAULT_BUDGET: Final = 400 * MiB
# The interpreter and its libraries (pyarrow, polars, the stores' clients) once an export has started: measured
# at 100-130 MiB. What is left of the budget is the working memory the data in flight is planned from.
BASELINE: Final = 128 * MiB
# Below this, what is left after the interpreter and its libraries is too little to plan with.
MIN_BUDGET: Final = 256 * MiB
# The planned pieces are fractions of the working memory (the budget less ``BASELINE``): the
# batches in flight (a decoded batch on each side of the read-ahead, the batches of the row group being
# assembled), the encoders' inputs and outputs, and the upload's buffers all fit with room for Arrow's and the
# allocator's slack, which the benchmark shapes measured at up to about a third of the peak.
_BATCH_SHARE: Final = 16
_ROW_GROUP_SHARE: Final = 12
_SLICE_SHARE: Final = 64
# A row is decoded, encoded and buffered on its way (and its text held whole, for NDJSON): a few times its size.
_LARGEST_ROW_SHARE: Final = 6


@dataclass(frozen=True)
class Plan:
    """Sizes in bytes for the data the engine holds at once."""

    budget: int
    working: int  # the budget less the interpreter's and libraries' share (``BASELINE``)
    batch_bytes: int  # a decoded record batch
    row_group_bytes: int  # the decoded rows of one Parquet row group the writer assembles
    slice_bytes: int  # the decoded rows of one NDJSON slice an encoder serializes
    largest_row: int  # a row (a line of text) larger than this cannot be held a few times over: refused

    @classmethod
    def of(cls, budget: int) -> Plan:
        """The plan for ``budget``: a function of the budget alone, not of the process's size at the moment, so
        that the same budget always cuts the same batches and row groups (the same bytes), whoever calls."""
        if budget < MIN_BUDGET:
            raise ConfigError(
                f"memoryBudget {budget // MiB} MiB is too small: the exporter needs at least {MIN_BUDGET // MiB} MiB"
            )
        working = budget - BASELINE
        return cls(
            budget=budget,
            working=working,
            batch_bytes=_clamp(working // _BATCH_SHARE, 1 * MiB, 32 * MiB),
            row_group_bytes=_clamp(working // _ROW_GROUP_SHARE, 4 * MiB, 64 * MiB),
            slice_bytes=_clamp(working // _SLICE_SHARE, 1 * MiB, 16 * MiB),
            largest_row=working // _LARGEST_ROW_SHARE,
        )

    def rows(self, *, row_bytes: float, most: int, share: int | None = None) -> int:
        """How many rows of ``row_bytes`` bytes each fit in a batch (or ``share`` bytes), from 1 to ``most``."""
        room = self.batch_bytes if share is None else share
        return max(1, min(most, int(room // max(row_bytes, 1.0))))


def resident_bytes() -> int | None:
    """The process's resident set size now (Linux), None where it cannot be read."""
    try:
        return int(Path("/proc/self/statm").read_text(encoding="ascii").split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))
