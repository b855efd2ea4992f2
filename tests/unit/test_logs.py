"""Log configuration: the format and level the environment asks for (DSEXPORT_LOG_FORMAT, DSEXPORT_LOG_LEVEL)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from dsexport import logs

FIELDS = {"fields": {"phase": "write", "records": 3}}


@pytest.fixture(autouse=True)
def restore() -> Iterator[None]:
    logger = logging.getLogger("dsexport")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:], logger.propagate = handlers, propagate
    logger.setLevel(level)


def emit(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name in (logs.FORMAT_ENV, logs.LEVEL_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = io.StringIO()
    logs.configure(stream=out)
    log = logging.getLogger("dsexport.engine.test")
    log.info("info line", extra=FIELDS)
    log.warning("warning line", extra=FIELDS)
    return out.getvalue()


def test_json_lines_carry_the_fields_at_the_top_level(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [json.loads(line) for line in emit(monkeypatch, DSEXPORT_LOG_FORMAT="json").splitlines()]
    assert [(line["level"], line["message"]) for line in lines] == [("info", "info line"), ("warning", "warning line")]
    assert lines[0]["phase"] == "write" and lines[0]["records"] == 3


def test_the_level_can_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    out = emit(monkeypatch, DSEXPORT_LOG_FORMAT="json", DSEXPORT_LOG_LEVEL="warning")
    assert [json.loads(line)["level"] for line in out.splitlines()] == ["warning"]


def test_text_is_quiet_below_warning_and_appends_the_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    out = emit(monkeypatch)
    assert "info line" not in out
    assert out.rstrip().endswith("WARNING dsexport.engine.test: warning line [phase=write records=3]")
