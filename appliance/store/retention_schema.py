"""Command expiry and retention: the queue's expiry time, and the time indexes that let expiry and pruning
find what is due in small batches instead of scanning whole tables (each index covers one kind of row
the retention worker deletes by age)."""

NAME = "retention"

MIGRATIONS = [
    """
    -- When a pending command is taken off this queue as Expired (NULL: never). Rows queued before this
    -- migration keep NULL.
    ALTER TABLE queue ADD COLUMN expires_at TEXT;
    CREATE INDEX queue_expires ON queue (expires_at) WHERE expires_at IS NOT NULL;

    CREATE INDEX results_received_at ON results (received_at);
    CREATE INDEX stray_reports_received_at ON stray_reports (received_at);
    CREATE INDEX commands_created_at ON commands (created_at);
    CREATE INDEX ddm_status_reports_received_at ON ddm_status_reports (received_at);
    CREATE INDEX ddm_status_errors_received_at ON ddm_status_errors (received_at);
    """,
]
