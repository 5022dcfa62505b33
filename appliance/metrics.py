"""Prometheus metrics, in a registry of their own per running appliance (tests run several servers in one
process; the global default registry would mix them). Each area adds its metrics here."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from appliance.fleet_metrics import FleetCollector

CONNECTION_ERROR_REASONS = ("tls_handshake", "internal")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "mdm_http_requests_total", "HTTP requests by endpoint and status.", ["endpoint", "status"], registry=r
        )
        self.http_duration = Histogram(
            "mdm_http_request_duration_seconds", "HTTP request duration by endpoint.", ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )
        self.scep_issued = Counter(
            "mdm_scep_certificates_issued_total", "Device identity certificates issued by the SCEP CA.",
            ["message_type"], registry=r,
        )
        self.scep_requests = Counter(
            "mdm_scep_requests_total", "SCEP PKIOperation requests by message type and outcome.",
            ["message_type", "outcome"], registry=r,
        )
        # Devices, queue, results, webhook outbox: read from the database at scrape time (web/metrics.py).
        self.fleet = FleetCollector()
        r.register(self.fleet)
        self.webhook_deliveries = Counter(
            "mdm_webhook_deliveries_total", "Webhook delivery attempts by outcome (delivered, failed).",
            ["outcome"], registry=r,
        )
        self.mdm_checkins = Counter(
            "mdm_checkins_total", "Check-in messages by MessageType and answer status.",
            ["message_type", "status"], registry=r,
        )
        self.mdm_reports = Counter(
            "mdm_reports_total", "Command endpoint reports by Status and outcome "
            "(idle, stored, duplicate, not_now, unknown).", ["status", "outcome"], registry=r,
        )
        self.mdm_commands_sent = Counter("mdm_commands_sent_total", "Commands handed to devices.", registry=r)
        self.mdm_refused = Counter(
            "mdm_device_requests_refused_total", "Device requests refused before any change, by HTTP status.",
            ["status"], registry=r,
        )
        self.device_identity = Counter(
            "mdm_device_identity_total", "Device request identification by source (signature, tls, proxy, "
            "none) and outcome (ok or the IdentityError class).", ["source", "outcome"], registry=r,
        )
        self.ddm_requests = Counter(
            "mdm_ddm_requests_total", "DeclarativeManagement check-ins answered, by Endpoint (tokens, "
            "declaration-items, declaration, status) and status.", ["endpoint", "status"], registry=r,
        )
        self.ddm_notifications = Counter(
            "mdm_ddm_notifications_total", "DeclarativeManagement commands queued or brought up to date because "
            "an enrollment's declarations changed (or on request).", registry=r,
        )
        # Guessing limits (identity.guesses): every wrong secret, and what the limits turned away.
        self.failed_authentications = Counter(
            "mdm_failed_authentications_total", "Wrong secrets presented, by secret (api_key, "
            "enrollment_secret, scep_challenge).", ["secret"], registry=r,
        )
        self.guess_limit_refusals = Counter(
            "mdm_guess_limit_refusals_total", "Requests refused (429, or SCEP FAILURE) because their client "
            "sent too many wrong secrets within the window, by secret.", ["secret"], registry=r,
        )
        self.connection_errors = Counter(
            "mdm_connection_errors_total", "Connections closed on an error, by reason: tls_handshake (the "
            "client failed or stalled the TLS handshake), internal (an error while serving it; logged).",
            ["reason"], registry=r,
        )
        self.up_since = Gauge("mdm_start_time_seconds", "When this process started (UNIX time).", registry=r)
        # Group commit at work: write jobs (device requests, API calls) per COMMIT (one fsync each).
        self.store = StoreCollector()
        r.register(self.store)
        # Retention (appliance/service/retention.py) and the database's size and rows.
        self.retention_pruned = Counter(
            "mdm_retention_pruned_rows_total", "Rows deleted by the retention worker for being older than their "
            "[retention] age, by kind (results, command_bodies, stray_reports, inventory_history, "
            "ddm_status_history).", ["kind"], registry=r,
        )
        self.retention_released = Counter(
            "mdm_database_released_bytes_total", "Free space given back to the file system by incremental "
            "vacuum.", registry=r,
        )
        self.retention_last_pass = Gauge(
            "mdm_retention_last_pass_timestamp_seconds", "When the retention worker last finished a pass "
            "(UNIX time; 0: not yet).", registry=r,
        )
        self.retention_pass_seconds = Gauge(
            "mdm_retention_last_pass_seconds", "How long the last retention pass took, pauses included.", registry=r,
        )
        self.database = DatabaseCollector()
        r.register(self.database)
        # APNs (appliance/push/scheduler.py)
        self.pushes = Counter(
            "mdm_pushes_total", "APNs pushes by result (ok, unregistered, rejected, certificate, throttled, "
            "failed).", ["result"], registry=r,
        )
        self.push_cert_days_left = Gauge(
            "mdm_push_certificate_days_left", "Days until the push certificate expires (negative: expired; "
            "NaN: none imported).", registry=r,
        )
        self.push_cert_not_after = Gauge(
            "mdm_push_certificate_not_after_seconds", "Push certificate expiry (UNIX time; 0: none).", registry=r,
        )
        self.enrollments_by_push_result = Gauge(
            "mdm_enrollments_by_last_push_result", "Active enrollments by the result of their last push.",
            ["result"], registry=r,
        )
        self.enrollments_by_push_reason = Gauge(
            "mdm_enrollments_by_last_push_reason", "Active enrollments whose last push failed, by result and "
            "reason (APNs' reason, e.g. BadDeviceToken, or ours, e.g. ConnectionFailed).", ["result", "reason"],
            registry=r,
        )
        # The appliance's own certificates (appliance/own_certificates.py).
        self.ca_days_left = Gauge(
            "mdm_ca_certificate_days_left", "Days until the appliance CA expires (warned about within 365).",
            registry=r,
        )
        self.tls_days_left = Gauge(
            "mdm_tls_certificate_days_left", "Days until the TLS certificate the listeners serve expires "
            "(NaN without TLS; a generated one is renewed [renewal] renew_before ahead).", registry=r,
        )
        # Identity renewal (appliance/service/renewal.py); devices by renewal state are read at scrape time.
        self.renewal_attempts = Counter(
            "mdm_identity_renewal_attempts_total", "Identity renewal attempts by outcome (queued: an "
            "InstallProfile with the enrollment profile was queued; failed: it could not be built; given_up: "
            "the certificate expired before it was renewed).", ["outcome"], registry=r,
        )
        self.push_status = Gauge(
            "mdm_push_status", "Push health as in /healthz: 0 ok, 1 warning (certificate expires within 30 "
            "days, or none imported), 2 error (expired, APNs rejects the certificate, or pushes have been "
            "failing longer than [apns] unhealthy_after).", registry=r,
        )
        self.push_failing_seconds = Gauge(
            "mdm_push_failing_seconds", "How long pushes have been failing (APNs unreachable, TLS refused, "
            "403, 5xx, timeouts); 0 while they get through.", registry=r,
        )

        # Apple Business Manager and Automated Device Enrollment (appliance/service/abm.py, service/ade.py)
        self.abm_requests = Counter(
            "mdm_abm_requests_total", "DEP API requests by ABM server, endpoint and HTTP status (0: no answer).",
            ["server", "endpoint", "status"], registry=r,
        )
        self.abm_device_records = Counter(
            "mdm_abm_device_records_total", "Device records read from fetch and sync, by ABM server, phase "
            "(fetch, sync) and what they did (added, modified, deleted, unchanged).", ["server", "phase", "op"],
            registry=r,
        )
        self.abm_assignments = Counter(
            "mdm_abm_assignments_total", "Profile assignments per device by ABM server and result (SUCCESS, "
            "FAILED, THROTTLED, NOT_ACCESSIBLE, or unavailable when the call itself failed).",
            ["server", "result"], registry=r,
        )
        self.abm_echoed_cursors = Counter(
            "mdm_abm_echoed_cursors_total", "Answers that gave back the cursor sent with more_to_follow true "
            "(the round stopped instead of looping).", ["server"], registry=r,
        )
        self.abm_devices = Gauge(
            "mdm_abm_devices", "ABM devices by server and assignment state (pending, assigned, failed, throttled, "
            "not_accessible, unassigned, removed).", ["server", "state"], registry=r,
        )
        self.abm_token_days_left = Gauge(
            "mdm_abm_token_days_left", "Days until the ABM server token expires (negative: expired).", ["server"],
            registry=r,
        )
        self.abm_last_sync = Gauge(
            "mdm_abm_last_sync_timestamp_seconds", "When the last fetch or sync round completed (UNIX time).",
            ["server"], registry=r,
        )
        self.ade_requests = Counter(
            "mdm_ade_profile_requests_total", "Machine info requests at the ADE endpoint by outcome (served, "
            "unsigned, bad_signature, untrusted, malformed, unknown_device, not_ready).", ["outcome"], registry=r,
        )
        self.ade_configured = Counter(
            "mdm_ade_devices_configured_total", "ADE devices released from Setup Assistant (DeviceConfigured "
            "acknowledged).", registry=r,
        )

        # Known label values start at 0, so every series the dashboards ask about exists from the first
        # scrape (rate() and alerts need a series before the first event, not after it).
        for result in ("ok", "unregistered", "rejected", "certificate", "throttled", "failed"):
            self.pushes.labels(result)
        for message_type in ("PKCS_REQ", "RENEWAL_REQ", "PKCS12"):
            self.scep_issued.labels(message_type)
        for outcome in ("delivered", "failed"):
            self.webhook_deliveries.labels(outcome)
        for outcome in ("queued", "failed", "given_up"):
            self.renewal_attempts.labels(outcome)
        for secret in ("api_key", "enrollment_secret", "scep_challenge"):
            self.failed_authentications.labels(secret)
            self.guess_limit_refusals.labels(secret)
        for reason in CONNECTION_ERROR_REASONS:
            self.connection_errors.labels(reason)

    def count_connection_error(self, reason: str) -> None:
        # Bounded label: anything unforeseen is "internal".
        self.connection_errors.labels(reason if reason in CONNECTION_ERROR_REASONS else "internal").inc()
        for kind in ("results", "command_bodies", "stray_reports", "inventory_history", "ddm_status_history"):
            self.retention_pruned.labels(kind)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StoreCollector:
    """Counters kept by the store thread (appliance.store.db.Store), read at scrape time."""

    def __init__(self) -> None:
        self.store = None  # set once the store is open (supervisor)

    def describe(self):
        return []

    def collect(self):
        if self.store is None:
            return
        yield CounterMetricFamily("mdm_store_write_jobs", "Write jobs committed by the store thread.",
                                  value=self.store.writes)
        yield CounterMetricFamily("mdm_store_commits", "Write transactions committed (one fsync each with "
                                  "synchronous=FULL); write jobs per commit shows group commit at work.",
                                  value=self.store.commits)
        refused = CounterMetricFamily("mdm_store_faults", "Store jobs (a request's read or write) refused "
                                      "for a storage fault, answered 503: disk_full, io_error, read_only, "
                                      "corrupt, out_of_memory, busy (locked elsewhere), queue_timeout.",
                                      labels=["reason"])
        for reason, count in self.store.refused.items():
            refused.add_metric([reason], count)
        yield refused
        yield GaugeMetricFamily("mdm_store_status", "Database health as in /healthz: 0 ok, 2 error (a storage "
                                "fault since the last commit that worked).",
                                value=0 if self.store.fault is None else 2)


class DatabaseCollector:
    """The database's size and rows per table. File sizes are read at scrape time (a stat); free space and
    row counts come from the figures the retention worker keeps (`source.stats`, refreshed every few
    minutes on a connection of its own), so a scrape never counts a million rows."""

    def __init__(self) -> None:
        self.source = None  # the retention worker, once started (supervisor)

    def describe(self):
        return []

    def collect(self):
        stats = None if self.source is None else self.source.stats
        if stats is None:
            return
        path = stats["path"]
        yield GaugeMetricFamily("mdm_database_size_bytes", "Size of the database file (without its WAL).",
                                value=_file_size(path))
        yield GaugeMetricFamily("mdm_database_wal_bytes", "Size of the database's write-ahead log.",
                                value=_file_size(f"{path}-wal"))
        yield GaugeMetricFamily("mdm_database_free_bytes", "Free pages inside the database file (reused for new "
                                "rows; given back by incremental vacuum).", value=stats["free_bytes"])
        rows = GaugeMetricFamily("mdm_database_rows", "Rows per table, counted every few minutes and after "
                                 "each retention pass.", labels=["table"])
        for table, count in sorted(stats["rows"].items()):
            rows.add_metric([table], count)
        yield rows
        yield GaugeMetricFamily("mdm_database_rows_counted_timestamp_seconds", "When mdm_database_rows and "
                                "mdm_database_free_bytes were read (UNIX time).", value=stats["counted_at"])


def _file_size(path: str) -> float:
    try:
        return float(os.stat(path).st_size)
    except OSError:
        return 0.0
