"""Giving pruned space back: incremental vacuum after the whole deletion (a) or after each deletion job (b).

Usage: PYTHONPATH=. .venv/bin/python tests/perf/bench_vacuum.py [--results 400000] [--budget 120]

Seeds a WAL database in auto_vacuum=INCREMENTAL mode with the results and commands tables shaped like ours
(results ~1.2 KB, command bodies ~0.3 KB, interleaved in time as a fleet writes them), then deletes the
oldest three quarters of the results in 500-row write jobs (appliance.store.retention.prune_older) and gives
the pages back 256 per write job (appliance.store.vacuum.release):
  (a) every deletion job first, then the vacuum jobs (the worker before this change); stops after --budget
      seconds of vacuuming and extrapolates;
  (b) after each deletion job, vacuum jobs until the free list is empty.
Prints the time per vacuum job against the free list's length, and the wall time of each way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from appliance.store import retention, vacuum

BATCH, STEP = 500, 256
RULE = retention.AgeRule("results", "results", "received_at")

SCHEMA = """
CREATE TABLE commands (uuid TEXT PRIMARY KEY, request_type TEXT NOT NULL, body BLOB NOT NULL,
                       created_at TEXT NOT NULL);
CREATE TABLE results (enrollment_id TEXT NOT NULL, command_uuid TEXT NOT NULL, status TEXT NOT NULL,
                      raw BLOB NOT NULL, error_chain TEXT, queued_at TEXT, received_at TEXT NOT NULL,
                      PRIMARY KEY (enrollment_id, command_uuid));
CREATE INDEX results_command ON results (command_uuid);
CREATE INDEX results_received ON results (enrollment_id, received_at);
CREATE INDEX results_received_at ON results (received_at);
"""


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def seed(path: Path, count: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.executescript(SCHEMA)
    raw, body = os.urandom(1200), os.urandom(300)
    conn.execute("BEGIN")
    for i in range(count):
        stamp = f"2026-{1 + i * 12 // count:02d}-{i:09d}"
        uuid = f"cmd-{i:09d}"
        conn.execute("INSERT INTO commands VALUES (?, 'DeviceInformation', ?, ?)", (uuid, body, stamp))
        conn.execute("INSERT INTO results VALUES (?, ?, 'Acknowledged', ?, NULL, ?, ?)",
                     (f"dev-{i % 5000:05d}", uuid, raw, stamp, stamp))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def job(conn: sqlite3.Connection, fn, *args):
    """One write job as the store runs it: a transaction, timed with its commit."""
    took = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    value = fn(conn, *args)
    conn.execute("COMMIT")
    return value, time.perf_counter() - took


def release_all(conn, steps, deadline=None) -> None:
    while (free := vacuum.free_pages(conn)) > 0:
        if deadline is not None and time.perf_counter() > deadline:
            return
        _, seconds = job(conn, vacuum.release, min(free, STEP))
        steps.append((free, seconds))


def run(path: Path, cutoff: str, per_job: bool, budget: float) -> dict:
    conn = connect(path)
    deletes, steps = [], []
    started = time.perf_counter()
    while True:
        deleted, seconds = job(conn, retention.prune_older, RULE, cutoff, BATCH)
        deletes.append(seconds)
        if per_job:
            release_all(conn, steps)
        if deleted < BATCH:
            break
    deleting = time.perf_counter() - started
    left = vacuum.free_pages(conn)
    release_all(conn, steps, None if per_job else time.perf_counter() + budget)
    wall = time.perf_counter() - started
    remaining = vacuum.free_pages(conn)
    conn.close()
    return {"deletes": deletes, "steps": steps, "deleting": deleting, "free_after_delete": left,
            "wall": wall, "remaining": remaining}


def ms(values) -> str:
    values = sorted(values)
    if not values:
        return "-"
    p50 = statistics.median(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return f"p50 {p50 * 1000:.1f} / p99 {p99 * 1000:.1f} / max {values[-1] * 1000:.1f} ms (n={len(values)})"


def report(name: str, out: dict) -> None:
    print(f"\n({name})")
    print(f"  deletion jobs: {ms(out['deletes'])}")
    print(f"  free pages when deleting ended: {out['free_after_delete']:,}")
    print(f"  vacuum jobs: {ms([s for _, s in out['steps']])}")
    steps = out["steps"]
    if steps:
        buckets: dict[int, list[float]] = {}
        for free, seconds in steps:
            buckets.setdefault(free.bit_length(), []).append(seconds / min(free, STEP))
        for bits, per_page in sorted(buckets.items()):
            print(f"    free list {2 ** (bits - 1):>7,}-{2 ** bits - 1:>7,} pages: "
                  f"{statistics.median(per_page) * 1e6:7.1f} us per page given back (n={len(per_page)})")
    pages = sum(min(free, STEP) for free, _ in steps)
    print(f"  wall time: {out['wall']:.1f} s (deleting {out['deleting']:.1f} s); pages given back {pages:,}, "
          f"left {out['remaining']:,}")
    if out["remaining"]:
        rate = pages / sum(s for _, s in steps)
        print(f"  at that rate the remaining {out['remaining']:,} pages take ≥ {out['remaining'] / rate:.0f} s more"
              f" (and each step gets slower while the free list is longer)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=int, default=400_000)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds of vacuuming in (a)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        base = Path(tmp) / "base.db"
        took = time.perf_counter()
        seed(base, args.results)
        size = os.stat(base).st_size
        print(f"seeded {args.results:,} results and commands: {size / 1e6:.0f} MB in "
              f"{time.perf_counter() - took:.0f} s; load average {os.getloadavg()[0]:.1f}")
        cutoff = "2026-10"  # the oldest nine months of twelve
        for name, per_job in (("b) after each deletion job", True), ("a) after all deletion jobs", False)):
            path = Path(tmp) / "run.db"
            shutil.copy(base, path)
            out = run(path, cutoff, per_job, args.budget)
            report(name, out)
            print(f"  file {os.stat(path).st_size / 1e6:.0f} MB; load average {os.getloadavg()[0]:.1f}")
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
