"""Time-partitioned sources: what a partition folder's name says about when its files were written.

A Dataset that declares ``source.partitioning`` promises that a file in a partition folder was written during
that partition's time range (a ``date=2026-12-01`` folder: during that UTC day), and landed at most ``lateness``
after the range ends. An incremental run of strategy files only exports files modified after its horizon
(``maxModified - lookback``), so a partition whose range plus lateness ends at or before the horizon cannot hold
a file the run would export, and its whole subtree need not be listed.

Everything here is pure: names in, decisions out. The walk over a store is :mod:`dsexport.engine.sources`'s.
A folder whose name does not parse (another layout, a bad date, ``__HIVE_DEFAULT_PARTITION__``) carries no
promise and is never pruned: the walk lists it fully, so an undeclared layout costs time, never data.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from urllib.parse import unquote

from dsexport import api
from dsexport.errors import ConfigError

# The fields a partition can name, coarse to fine: a declared format names a prefix of them (the API's CEL rules).
FIELDS = ("Y", "m", "d", "H", "M", "S")
_DEFAULTS = (1, 1, 1, 0, 0, 0)  # what a field no folder names stands for in a range's start
_TOKEN = re.compile(r"%(.?)|([^%]+)")  # a directive (empty for a lone % at the end), or literal text
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NS = 1_000_000_000
_STEPS = {
    "d": dt.timedelta(days=1),
    "H": dt.timedelta(hours=1),
    "M": dt.timedelta(minutes=1),
    "S": dt.timedelta(seconds=1),
}


@dataclass(frozen=True)
class Level:
    """One folder level of the layout: the pattern of its names and the fields it adds, in group order."""

    pattern: re.Pattern[str]
    fields: tuple[str, ...]

    def parse(self, name: str) -> tuple[int, ...] | None:
        """The level's field values in ``name``, or None when the name is not one of this level's folders.

        Hive writers percent-encode some characters of partition values (``:`` as ``%3A``), so an encoded name
        is also tried decoded.
        """
        found = self.pattern.fullmatch(name)
        if found is None and "%" in name:
            found = self.pattern.fullmatch(unquote(name))
        if found is None:
            return None
        return tuple(int(v) for v in found.groups())


@dataclass(frozen=True)
class Partition:
    """A partition folder's place in time: the values of the first ``len(values)`` of :data:`FIELDS`.

    Its range starts at the earliest time with those values and ends (exclusive) at the start of the next
    partition of the same level: ``2026-12-01`` covers that whole UTC day, ``2026/12`` that whole month.
    """

    values: tuple[int, ...] = ()

    def start(self) -> dt.datetime:
        """The first instant of the range; ValueError for values that name no time (month 13, 30 February)."""
        year, month, day, hour, minute, second = self.values + _DEFAULTS[len(self.values) :]
        return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)

    def end(self) -> dt.datetime:
        """The first instant after the range; OverflowError past year 9999."""
        start = self.start()
        finest = FIELDS[len(self.values) - 1]
        if finest in ("Y", "m"):
            months = start.month - 1 + (12 if finest == "Y" else 1)
            year = start.year + months // 12
            if year > dt.MAXYEAR:
                raise OverflowError("partition ends after year 9999")
            return start.replace(year=year, month=months % 12 + 1)
        return start + _STEPS[finest]


def _ns(when: dt.datetime) -> int:
    """Exact nanoseconds since the epoch (no float rounding near partition boundaries)."""
    return (when - _EPOCH) // dt.timedelta(microseconds=1) * 1_000


@dataclass(frozen=True)
class Layout:
    """A declared partitioning, compiled: one :class:`Level` per folder level, and the lateness allowed."""

    levels: tuple[Level, ...]
    lateness_ns: int

    @classmethod
    def of(cls, spec: api.Partitioning) -> Layout:
        template = f"{spec.key}={spec.format}" if spec.key else spec.format
        levels = tuple(_level(part, spec.format) for part in template.split("/"))
        named = tuple(f for level in levels for f in level.fields)
        if named != FIELDS[: len(named)] or not named:
            raise ConfigError(f"partitioning format {spec.format!r} is not a time prefix (%Y, then %m, %d, ...)")
        return cls(levels=levels, lateness_ns=api.parse_duration_seconds(spec.lateness) * _NS)

    @property
    def depth(self) -> int:
        return len(self.levels)

    def child(self, parent: Partition, depth: int, name: str) -> Partition | None:
        """The partition a folder named ``name`` at ``depth`` (0: directly under the source root) stands for, or
        None when the name does not parse as one, or names no valid time: such a folder is listed fully."""
        values = self.levels[depth].parse(name)
        if values is None:
            return None
        child = Partition(parent.values + values)
        try:
            child.start()
        except ValueError:
            return None
        return child

    def may_hold_newer(self, partition: Partition, horizon_ns: int) -> bool:
        """Whether files in ``partition`` can be modified after ``horizon_ns``: written before its range ends,
        they land at most ``lateness`` later. A range that ends beyond what dates can say is always kept."""
        try:
            end_ns = _ns(partition.end())
        except OverflowError:
            return True
        return end_ns + self.lateness_ns > horizon_ns


def _level(template: str, declared: str) -> Level:
    """A level's name pattern: literals as they are, %Y four digits, the other fields one or two digits (month=1,
    as writers that partition by integer columns name folders), but two next to another field, where only the
    width separates them (``%Y%m%d``)."""
    tokens = [(m.group(1), m.group(2)) for m in _TOKEN.finditer(template)]
    pattern, fields = [], []
    for i, (directive, literal) in enumerate(tokens):
        if literal is not None:
            pattern.append(re.escape(literal))
        elif directive == "%":
            pattern.append("%")
        elif directive == "":
            raise ConfigError(f"partitioning format {declared!r} ends with a lone %")
        elif directive in FIELDS:
            adjacent = any(0 <= j < len(tokens) and tokens[j][0] not in (None, "%") for j in (i - 1, i + 1))
            width = "{4}" if directive == "Y" else "{2}" if adjacent else "{1,2}"
            pattern.append(f"([0-9]{width})")
            fields.append(directive)
        else:
            raise ConfigError(f"partitioning format {declared!r}: unknown directive %{directive}")
    return Level(pattern=re.compile("".join(pattern)), fields=tuple(fields))
