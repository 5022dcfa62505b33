"""The figures of the console's overview page, read in one go: fleet, queue, recent failures, outbox."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

from appliance.store import fleet, outbox
from appliance.store import push as push_store
from appliance.store.timefmt import now, to_text

RECENT_FAILURES = 10


def overview(conn: sqlite3.Connection) -> dict:
    since = to_text(now() - timedelta(hours=24))
    figures = fleet.snapshot(conn)
    figures["devices_seen_24h"] = conn.execute(
        "SELECT count(*) FROM enrollments WHERE id = device_id AND last_seen_at >= ?", (since,)).fetchone()[0]
    figures["recent_failures"] = [dict(row) for row in conn.execute(
        "SELECT r.enrollment_id, r.command_uuid, c.request_type, r.status, r.error_chain, r.received_at "
        "FROM results r LEFT JOIN commands c ON c.uuid = r.command_uuid "
        "WHERE r.status != 'Acknowledged' ORDER BY r.received_at DESC LIMIT ?", (RECENT_FAILURES,))]
    figures["push_failures"] = sorted(
        ((result, reason, count) for (result, reason), count in push_store.push_reason_summary(conn).items()),
        key=lambda entry: -entry[2])
    figures["outbox"] = outbox.stats(conn)
    return figures
