"""Log setup shared by the daemon and its engine workers: text or JSON lines on stderr
(journald and docker collect them), optionally also appended to a file. It is on the
ground floor, beside errors.py, so that the engine imports nothing of observability/.

JSON lines carry ``ts``, ``level``, ``logger``, ``msg``, ``pid`` and every field passed in
``extra={"fields": {...}}`` at the top level (the access log uses this). Only the standard
library is used here: engine workers import this module too.
"""

from __future__ import annotations

import datetime as dt
import logging
import logging.handlers
import sys
from typing import Any, TextIO

import orjson

FORMATS = ("auto", "json", "text")


def resolve_format(fmt: str, stream: TextIO | None = None) -> str:
    """``auto`` is text on a terminal and JSON otherwise (a pipe, journald, a file)."""
    if fmt != "auto":
        return fmt
    stream = stream if stream is not None else sys.stderr
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def _timestamp(record: logging.LogRecord) -> str:
    when = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.static = static or {}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        out.update(self.static)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """``time LEVEL logger[tag]: message key=value ...`` for people at a terminal."""

    def __init__(self, tag: str = "") -> None:
        super().__init__()
        self.tag = f"[{tag}]" if tag else ""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}{self.tag}: "
        line += record.getMessage()
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line += "".join(f" {k}={_text_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    if value is None:
        return "-"
    text = str(value)
    return orjson.dumps(text).decode() if (" " in text or not text) else text


def setup_logging(
    level: str = "info",
    fmt: str = "auto",
    file: str | None = None,
    *,
    static: dict[str, Any] | None = None,
    tag: str = "",
) -> str:
    """Configure the root logger; returns the resolved format (``json`` or ``text``).
    ``static`` fields go into every JSON line (a worker adds its model); ``tag`` is the
    text-mode equivalent."""
    resolved = resolve_format(fmt)
    formatter: logging.Formatter = (
        JsonFormatter(static) if resolved == "json" else TextFormatter(tag)
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file:
        # Reopened by itself when logrotate moves the file away, and on SIGHUP.
        handlers.append(logging.handlers.WatchedFileHandler(file, encoding="utf-8"))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.captureWarnings(True)  # Python warnings become log lines in the same format
    # Uvicorn's own loggers propagate here (it is started with log_config=None).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # httpx logs every request's URL at INFO: a remote engine's internal URLs stay out of
    # the logs (Mullama logs its own lines about replicas, by index).
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return resolved


def reopen_log_files() -> None:
    """Close and reopen the log file (after a rotation by copy or move)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                handler.close()
                handler.stream = handler._open()
            finally:
                handler.release()
