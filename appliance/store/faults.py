"""Storage faults: the SQLite errors that mean "the database cannot take this now", not "this request is wrong".

Disk full, an I/O error, a file turned read-only, a lock held by another process, a store thread that does
not get to a job in time: the caller gets StoreUnavailable (HTTP 503 with Retry-After) and nothing of its
request is stored. The store keeps the last fault for /healthz, STATUS= and /metrics until a commit works.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime

from appliance.store.timefmt import to_text

# SQLite primary result codes (sqlite.org/rescode.html); an extended code carries its primary in the low byte.
_BY_CODE = {
    5: "busy",            # SQLITE_BUSY
    6: "busy",            # SQLITE_LOCKED
    7: "out_of_memory",   # SQLITE_NOMEM
    8: "read_only",       # SQLITE_READONLY: e.g. the file system was remounted read-only after errors
    10: "io_error",       # SQLITE_IOERR
    11: "corrupt",        # SQLITE_CORRUPT
    13: "disk_full",      # SQLITE_FULL
    14: "io_error",       # SQLITE_CANTOPEN: the WAL or shared-memory file could not be opened
    15: "busy",           # SQLITE_PROTOCOL: a WAL lock race, transient
    26: "corrupt",        # SQLITE_NOTADB
}

# reason: (what happened, what to do, Retry-After seconds). A lock or a slow moment passes by itself within
# seconds; the others wait for the operator, so clients are asked to come back less often.
_REASONS = {
    "disk_full": ("the disk holding the database is full", "free space on the disk of data_dir", 30),
    "io_error": ("the database file cannot be written or read (I/O error)", "check the disk (dmesg)", 30),
    "read_only": ("the database file has become read-only",
                  "the file system may have been remounted read-only after errors; check dmesg", 30),
    "corrupt": ("the database file is damaged", "stop the service and restore a backup", 30),
    "out_of_memory": ("SQLite ran out of memory", "check the machine's memory", 30),
    "busy": ("the database is locked by another process",
             "a CLI command or another program holds a lock on the database", 5),
    "queue_timeout": ("the database did not get to the request in time",
                      "the disk is slow or hung, or one request is very large", 5),
}
REASONS = tuple(_REASONS)


class StoreUnavailable(Exception):
    """The database could not do the job for a reason of its own; the job changed nothing."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        self.cause, self.hint, self.retry_after = _REASONS[reason]
        super().__init__(f"{self.cause} ({detail})" if detail else self.cause)

    def again(self) -> StoreUnavailable:
        """The same fault for another job (each caller raises its own exception object)."""
        return StoreUnavailable(self.reason, self.detail)


def unavailable(exc: BaseException | None) -> StoreUnavailable | None:
    """The StoreUnavailable an exception means, or None when it is a job's own error (a constraint, a bug)."""
    if exc is None or isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        reason = _BY_CODE.get(code & 0xFF) if isinstance(code, int) else None
        if reason is not None:
            fault = StoreUnavailable(reason, str(exc))
            fault.__cause__ = exc
            return fault
    return None


@dataclass(frozen=True)
class Fault:
    """The store's current fault: what, since when (UNIX time); cleared by the next commit that works."""

    reason: str
    detail: str
    since: float

    def health(self) -> dict:
        cause, hint, retry_after = _REASONS[self.reason]
        return {"fault": self.reason, "message": cause, "detail": self.detail, "hint": hint,
                "since": to_text(datetime.fromtimestamp(self.since, UTC)), "retry_after_seconds": retry_after}

    def phrase(self) -> str:
        cause, hint, _ = _REASONS[self.reason]
        since = datetime.fromtimestamp(self.since, UTC).strftime("%H:%M:%S UTC")
        return f"ERROR: {cause} since {since}, requests answered 503 ({hint})"
