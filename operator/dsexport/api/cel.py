"""Local evaluation of the CRDs' CEL rules, so local mode rejects exactly what the API server rejects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import cel
from pydantic import BaseModel
from pydantic_core import PydanticCustomError


@cache
def _program(expression: str) -> Any:
    return cel.compile(expression)


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
