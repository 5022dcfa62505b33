"""One line per event, `key=value` fields.

Under journald (JOURNAL_STREAM set) we print no timestamp of our own: the journal stamps every line.
"""

from __future__ import annotations

import logging
import os
import sys
import time

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n\t'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class KeyValueFormatter(logging.Formatter):
    def __init__(self, timestamps: bool) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.timestamps:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            parts.append(f"ts={stamp}.{int(record.msecs):03d}Z")
        parts.append(f"level={record.levelname.lower()}")
        parts.append(f"logger={record.name}")
        parts.append(f"event={_quote(record.getMessage())}")
        for key, value in getattr(record, "fields", {}).items():
            if value is not None:
                parts.append(f"{key}={_quote(value)}")
        line = " ".join(parts)
        if record.exc_info:
            # The traceback stays on following lines so the cause of a crash is never lost.
            line += "\n" + self.formatException(record.exc_info)
        return line


class EventLogger:
    """`log.info("push_sent", enrollment_id=..., apns_id=...)` -> one key=value line."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, event: str, exc_info: bool, fields: dict) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, exc_info=exc_info, extra={"fields": fields}, stacklevel=3)

    def debug(self, event: str, **fields) -> None:
        self._log(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields) -> None:
        self._log(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields) -> None:
        self._log(logging.WARNING, event, False, fields)

    def error(self, event: str, **fields) -> None:
        self._log(logging.ERROR, event, False, fields)

    def exception(self, event: str, **fields) -> None:
        self._log(logging.ERROR, event, True, fields)

    def is_enabled(self, level: str) -> bool:
        return self._logger.isEnabledFor(_LEVELS[level])


def get_logger(name: str) -> EventLogger:
    return EventLogger(logging.getLogger(f"appliance.{name}" if not name.startswith("appliance") else name))


def setup_logging(level: str = "info", stream=None) -> None:
    """Configure the root of our loggers once per process (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter(timestamps="JOURNAL_STREAM" not in os.environ))
    root = logging.getLogger("appliance")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    root.propagate = False
    # hypercorn's own loggers: keep its errors, in our format.
    for name in ("hypercorn.error",):
        other = logging.getLogger(name)
        other.handlers[:] = [handler]
        other.setLevel(logging.WARNING)
        other.propagate = False
