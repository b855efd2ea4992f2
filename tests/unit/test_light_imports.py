"""The operator and the kubectl plugin never load the exporter's heavy libraries: they cost the operator ~90 MiB
of resident memory (its budget is 250 MiB at 1,000 flows) and the plugin a second of start-up."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = (
    "pyarrow",
    "polars",
    "boto3",
    "paramiko",
    "google.cloud.storage",
    "azure.storage.blob",
    "dsexport.engine.exporter",
    # the CEL package's interactive shell: its compiled evaluator is all the models need
    "cel.cli",
    "prompt_toolkit",
)


@pytest.mark.parametrize(
    "modules",
    [
        "dsexport.cli.commands, dsexport.operator.main, dsexport.operator.handlers",
        "dsexport.cli.kubectl",
        "dsexport.operator.report",
    ],
)
def test_importing_does_not_load_the_exporter(modules: str) -> None:
    code = f"import sys, {modules}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


def test_the_operator_and_the_pods_report_run_without_the_official_kubernetes_client() -> None:
    """``dsexport operator`` hides the client from kopf (about 45 MiB); nothing of ours may need it there."""
    code = (
        "import sys; sys.modules['kubernetes'] = None; "
        "import dsexport.cli.commands, dsexport.operator.main, dsexport.operator.handlers, dsexport.operator.report; "
        "print(sorted(m for m, v in sys.modules.items() if m.startswith('kubernetes') and v is not None))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_the_engine_still_exports_its_names_lazily() -> None:
    from dsexport import engine  # noqa: PLC0415 - the lazy attributes are the subject

    assert engine.export_dataset.__module__ == "dsexport.engine.exporter"
    with pytest.raises(AttributeError):
        _ = engine.no_such_name


def test_models_still_check_their_cel_rules_without_the_shell() -> None:
    from dsexport.api import cel  # noqa: PLC0415 - the subject

    assert cel._program("self.a > 1").execute({"self": {"a": 2}}) is True
    assert cel._program("self.a > 1").execute({"self": {"a": 0}}) is False


def test_cel_loads_once_when_threads_validate_at_once_and_the_package_can_still_be_imported() -> None:
    """Its initialisation panics when run twice (it installs a logger): the operator validates from many threads."""
    code = """
import threading
from dsexport.api import cel
start = threading.Barrier(16)
def first() -> None:
    start.wait()
    assert cel._program("self.a > 1").execute({"self": {"a": 2}}) is True
threads = [threading.Thread(target=first) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
import cel as package  # the whole package afterwards: it finds the module already loaded
assert package.compile("1 + 1 == 2").execute({}) is True
print("ok")
"""
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert ran.stdout.strip() == "ok" and "Panic" not in ran.stderr, ran.stderr[-2000:]
