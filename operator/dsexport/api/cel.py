"""Local evaluation of the CRDs' CEL rules, so local mode rejects exactly what the API server rejects."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticCustomError

_LOADING = threading.Lock()


@cache
def _engine() -> ModuleType:
    """The package's compiled CEL module alone.

    ``import cel`` also imports the package's interactive shell (typer, rich, prompt_toolkit, pygments): 13 MiB
    of every process that validates a model, the operator's included, for a REPL nobody here runs. The compiled
    module needs none of it; the package as a whole is the fallback should its layout ever change.

    Loaded once per process, under a lock and registered as ``cel.cel`` (where the package's own import finds it):
    its initialisation installs a logger and panics when run twice, which threads validating at once (``cache``
    does not serialise first calls) or a later ``import cel`` would otherwise do.
    """
    with _LOADING:
        loaded = sys.modules.get("cel.cel")
        if loaded is not None:
            return loaded
        spec = importlib.util.find_spec("cel")  # finds the package without running its __init__
        folders = list(spec.submodule_search_locations or []) if spec else []
        for binary in (b for folder in folders for b in sorted(Path(folder).glob("cel.*.so"))):
            loader = importlib.machinery.ExtensionFileLoader("cel.cel", str(binary))
            module = importlib.util.module_from_spec(importlib.util.spec_from_loader("cel.cel", loader))  # type: ignore[arg-type]
            loader.exec_module(module)
            sys.modules["cel.cel"] = module
            return module
        return importlib.import_module("cel")  # pragma: no cover - only if the wheel's layout changes


@cache
def _program(expression: str) -> Any:
    return _engine().compile(expression)


def check(model: BaseModel, rules: Sequence[Mapping[str, str]]) -> None:
    """Raise a validation error carrying the rule's own message for the first rule that does not hold.

    ``self`` is the object as the API server would see it: by alias, without unset optional fields, so that
    ``has(self.x)`` means the same thing in both places.
    """
    if not rules:
        return
    document = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    for rule in rules:
        if _program(rule["rule"]).execute({"self": document}) is not True:
            raise PydanticCustomError("cel_rule", rule["message"])
