"""`make demo`: incremental export in under a minute, on the embedded local default (examples/local/flow.yaml).

Generates experience events, exports them (a full backfill), appends a batch, exports again (only the new
files), then shows the destination tree and a manifest.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

from examples import sample

FLOW = "examples/local/flow.yaml"
OUT = Path("demo-output")
LAKE = OUT / "lake" / "experience_events"
START = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)


def step(title: str) -> None:
    print(f"\n\033[1m==> {title}\033[0m", flush=True)


def dsexport(*args: str) -> None:
    cmd = [sys.executable, "-m", "dsexport.cli", *args]
    print("$ dsexport " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            print(f"  {path.relative_to(root)}  ({path.stat().st_size:,} bytes)")


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    step("Generate 200,000 experience events (nested structs, lists, maps, timestamps) in 4 Parquet files")
    next_id = sample.write_files(LAKE, files=4, rows_per_file=50_000, seed=1, start=START)
    dsexport("validate", "-f", FLOW)
    dsexport("schedule", "-f", FLOW, "--count", "3", "--after", "2026-12-01T00:00:00Z")

    step("First export: a full backfill into the 2026-12-01 09:30 slot")
    dsexport("run", "-f", FLOW, "--at", "2026-12-01T10:00:00Z")

    step("Append 2 files (100,000 new events), export the next day: only the new files go out")
    sample.write_files(LAKE, files=2, rows_per_file=50_000, seed=99, start=START, id_offset=next_id)
    dsexport("run", "-f", FLOW, "--at", "2026-12-02T10:00:00Z")

    step("Run the same slot again: nothing is exported twice")
    dsexport("run", "-f", FLOW, "--export", "marketing-daily", "--at", "2026-12-02T11:00:00Z")

    step("The destinations")
    tree(OUT / "exports")
    tree(OUT / "exports-json")
    manifest_path = sorted((OUT / "exports").rglob("_manifest.json"))[-1]
    manifest = json.loads(manifest_path.read_text())
    manifest["state"]["recent"] = f"<{len(manifest['state']['recent'])} files>"
    manifest["schema"]["arrow"] = "<base64 Arrow schema>"
    manifest["schema"]["fields"] = [*manifest["schema"]["fields"][:3], "..."]
    step(f"{manifest_path}")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
