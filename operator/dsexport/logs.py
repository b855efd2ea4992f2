"""Log lines for people (a terminal) or for machines (``kubectl logs``, a log collector), from the same calls.

The engine logs one line per phase through the standard ``logging`` module, with its facts (dataset,
exportTime, counts) in ``extra={"fields": {...}}``. ``DSEXPORT_LOG_FORMAT=json`` (what the exporter pod sets)
writes each record as one JSON object with those fields at the top level; the default text format appends them
as ``key=value``. Only names and counts are ever passed as fields: credentials never reach a log record.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import Any, TextIO

FORMAT_ENV = "DSEXPORT_LOG_FORMAT"
LEVEL_ENV = "DSEXPORT_LOG_LEVEL"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items() if k != "message")
        line = super().format(record)
        return f"{line} [{extra}]" if extra else line


def configure(*, verbose: bool = False, stream: TextIO | None = None) -> None:
    """Route the ``dsexport`` loggers to ``stream`` (stderr), in the format the environment asks for.

    JSON logs default to INFO (a pod's log is its record of what happened); text logs default to WARNING, since
    the command's own summary already tells a person what happened, unless ``verbose``.
    """
    as_json = os.environ.get(FORMAT_ENV, "text").lower() == "json"
    default = "INFO" if as_json or verbose else "WARNING"
    level = os.environ.get(LEVEL_ENV, default).upper()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    logger = logging.getLogger("dsexport")
    logger.handlers[:] = [handler]
    logger.setLevel(level if level in logging.getLevelNamesMapping() else default)
    logger.propagate = False
