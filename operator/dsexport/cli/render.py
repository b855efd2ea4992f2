"""How ``dsexport run`` looks on a terminal: a progress bar while it runs, a summary table when it is done."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from dsexport.api import loader
from dsexport.engine.result import DatasetResult, Outcome

if TYPE_CHECKING:
    from dsexport.engine.exporter import ExportRequest


def run_with_progress(bundle: loader.Bundle, plan: list[ExportRequest], console: Console) -> list[DatasetResult]:
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} rows"),
    )
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("starting", total=None)

        def on_start(request: ExportRequest) -> None:
            progress.update(task, description=f"{request.dataset_export}/{request.dataset.metadata.name}", completed=0)

        from dsexport.cli import local  # noqa: PLC0415 - the exporter: pyarrow, polars, every store's client

        return local.run(bundle, plan, on_start=on_start, on_records=lambda n: progress.advance(task, n))


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


_STYLE = {
    Outcome.exported: "green",
    Outcome.failed: "bold red",
    Outcome.no_new_data: "cyan",
    Outcome.already_committed: "cyan",
    Outcome.superseded: "cyan",
    Outcome.suspended: "yellow",
}


def summary(results: list[DatasetResult]) -> Table:
    table = Table(title="dsexport run", title_justify="left")
    for col, justify in [
        ("Export", "left"),
        ("Dataset", "left"),
        ("Outcome", "left"),
        ("exportTime", "left"),
        ("Records", "right"),
        ("Files", "right"),
        ("Bytes", "right"),
        ("Watermark", "left"),
        ("Note", "left"),
    ]:
        table.add_column(col, justify=justify, no_wrap=col != "Note")  # type: ignore[arg-type]
    for r in results:
        wm = r.watermark.to if r.watermark else None
        table.add_row(
            r.dataset_export,
            r.dataset,
            f"[{_STYLE[r.outcome]}]{r.outcome.value}[/]",
            r.export_time or "-",
            f"{r.records:,}",
            str(r.files),
            _human_bytes(r.bytes),
            _short(wm),
            r.message if r.outcome != Outcome.failed else "see below",
        )
    return table


def _short(value: object) -> str:
    """Watermarks to the second: nanoseconds matter to the state, not to a reader of the summary."""
    if value is None:
        return "-"
    text = str(value)
    if len(text) > 20 and text[4] == "-" and text[10] == "T":
        return text[:19] + "Z"
    return text
