"""Destination health: exercise exactly the operations an export needs, on a probe object, and say which fail.

An export needs to write a file, write a small object only if it is absent (the manifest), read it back, list
and delete (cleanup of leftovers). Checking each separately tells a user *what* to fix (write allowed but not
delete, say) instead of a run failing half way. The operator uses the same function for Destination health.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from dsexport import api
from dsexport.destinations import AlreadyExistsError, DestinationError, Transport, join, open_transport

PROBE_FOLDER = ".dsexport-check"


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    detail: str
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Report:
    destination: str
    location: str
    steps: list[Step]

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def as_json(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "location": self.location,
            "ok": self.ok,
            "steps": [s.as_json() for s in self.steps],
        }

    def compact_json(self, limit: int = 4096) -> str:
        """The report within ``limit`` bytes (a termination message): step details are shortened until it fits."""
        doc = self.as_json()
        for width in (1000, 400, 160, 60, 0):
            for step in doc["steps"]:
                step["detail"] = step["detail"][:width]
            text = json.dumps(doc, separators=(",", ":"))
            if len(text.encode()) <= limit:
                return text
        return json.dumps({"destination": self.destination, "location": "", "ok": self.ok, "steps": []})


def _timed(name: str, fn: Callable[[], str]) -> Step:
    started = time.monotonic()
    try:
        detail = fn()
    except DestinationError as e:
        return Step(name, False, str(e), time.monotonic() - started)
    except Exception as e:  # a health check reports every failure instead of crashing
        return Step(name, False, f"{type(e).__name__}: {e}", time.monotonic() - started)
    return Step(name, True, detail, time.monotonic() - started)


def check_destination(destination: api.Destination, credentials: Mapping[str, str]) -> Report:
    """Connect, write, create-only, read back, list, delete a probe under ``FOLDER/.dsexport-check/``."""
    name = f"Destination/{destination.metadata.name}"
    transport: Transport | None = None

    def connect() -> str:
        nonlocal transport
        transport = open_transport(destination, credentials)
        return transport.describe()

    steps = [_timed("connect", connect)]
    if transport is None:
        return Report(name, "", steps)
    t: Transport = transport
    folder = join(destination.spec.folder, PROBE_FOLDER, uuid.uuid4().hex)
    data_key, marker_key = join(folder, "probe.bin"), join(folder, "_probe.json")
    payload = uuid.uuid4().bytes * 4096  # 64 KiB: more than one network packet, less than a multipart chunk

    def write() -> str:
        with t.open_write(data_key) as out:
            out.write(payload)
        return f"wrote {len(payload):,} bytes to {data_key}"

    def create_only() -> str:
        t.put(marker_key, b"{}", create_only=True)
        try:
            t.put(marker_key, b"{}", create_only=True)
        except AlreadyExistsError:
            return "a second create-only write was refused, as the commit protocol needs"
        raise DestinationError(f"{name}: a create-only write replaced an existing object; commits are not safe here")

    def read_back() -> str:
        if t.get(data_key) != payload:
            raise DestinationError(f"{name}: the probe read back differs from what was written")
        return "read back identical"

    def listing() -> str:
        found = set(t.list_keys(folder))
        if not {data_key, marker_key} <= found:
            raise DestinationError(f"{name}: listing {folder} did not show the probe objects")
        return f"listed {len(found)} object(s)"

    def delete() -> str:
        t.delete([data_key, marker_key])
        if t.exists(data_key) or t.exists(marker_key):
            raise DestinationError(f"{name}: the probe objects are still there after delete")
        return "deleted"

    try:
        for step_name, fn in [
            ("write", write),
            ("create-only", create_only),
            ("read", read_back),
            ("list", listing),
            ("delete", delete),
        ]:
            steps.append(_timed(step_name, fn))
    finally:
        t.close()
    return Report(name, t.describe(), steps)
