"""Fleet figures for /metrics that live in the database (devices, queue, results, webhook outbox).

They are read in one store.read at scrape time (appliance.web.metrics) and kept here as a snapshot, which
this collector turns into metric families; so a scrape always shows the database as it is now, and no
background task has to keep gauges in step.
"""

from __future__ import annotations

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from appliance.store.timefmt import from_text, now

RENEWAL_STATES = ("scheduled", "pending", "sent", "done", "failed", "not_renewable")


class FleetCollector:
    def __init__(self) -> None:
        self.snapshot: dict | None = None
        self.lock = trio.Lock()
        self.results: dict[str, int] = {}
        self.results_rowid = 0

    def add_results(self, counts: dict[str, int], last_rowid: int) -> None:
        """Results counted after `results_rowid` up to `last_rowid` (fleet.results_since)."""
        for status, count in counts.items():
            self.results[status] = self.results.get(status, 0) + count
        self.results_rowid = last_rowid

    def update(self, snapshot: dict) -> None:
        self.snapshot = snapshot

    def describe(self):
        return []  # families depend on the snapshot; the registry must not call collect() at register time

    def collect(self):
        snap = self.snapshot
        if snap is None:
            return
        devices = GaugeMetricFamily("mdm_devices", "Devices by state: known (authenticated at least once), "
                                    "enrolled (sent TokenUpdate), active (enrolled and not checked out).",
                                    labels=["state"])
        for state in ("known", "enrolled", "active"):
            devices.add_metric([state], snap[f"devices_{state}"])
        yield devices
        yield GaugeMetricFamily("mdm_queue_depth", "Commands pending delivery (queue rows).",
                                value=snap["queue_depth"])
        yield GaugeMetricFamily("mdm_queue_oldest_pending_seconds", "Age of the oldest pending queue row "
                                "(0 when the queue is empty).", value=_age(snap["queue_oldest"]))
        results = CounterMetricFamily("mdm_command_results", "Final command statuses stored: the device's "
                                      "(Acknowledged, Error, CommandFormatError) or Expired (taken off the "
                                      "queue at its expiry).", labels=["status"])
        for status in ("Acknowledged", "Error", "CommandFormatError", "Expired"):
            results.add_metric([status], self.results.get(status, 0))
        yield results
        yield GaugeMetricFamily("mdm_devices_stuck", "Devices with a pending command NotNow'd more than "
                                "[queue] not_now_threshold times (listed by GET /v1/queue/stuck).",
                                value=snap["devices_stuck"])
        yield GaugeMetricFamily("mdm_webhook_outbox_depth", "Webhook events not yet delivered.",
                                value=snap["outbox_depth"])
        yield GaugeMetricFamily("mdm_webhook_outbox_oldest_seconds", "Age of the oldest undelivered webhook "
                                "event (0 when none).", value=_age(snap["outbox_oldest"]))
        declarations = GaugeMetricFamily(
            "mdm_ddm_declarations", "Active enrollments a DDM declaration reaches, by the state of their latest "
            "status: applied, invalid, inactive, pending (an older ServerToken or not yet judged), not_reported.",
            labels=["declaration", "state"])
        for entry in snap.get("ddm_declarations", ()):
            for state in ("applied", "invalid", "inactive", "pending", "not_reported"):
                declarations.add_metric([entry["identifier"], state], entry[state])
        yield declarations
        yield GaugeMetricFamily("mdm_ddm_notifications_waiting", "Enrollments marked for the DDM notifier (their "
                                "declarations may have changed) and not yet dealt with.", value=snap.get("ddm_dirty", 0))
        renewals = GaugeMetricFamily("mdm_identity_renewals", "Active devices by the renewal state of their "
                                     "identity certificate (scheduled, pending, sent, done, failed, "
                                     "not_renewable).", labels=["state"])
        for state in RENEWAL_STATES:
            renewals.add_metric([state], snap["renewals"].get(state, 0))
        yield renewals
        yield GaugeMetricFamily("mdm_identity_certificates_expiring", "Active devices whose identity certificate "
                                "expires within 14 days (none of them renewed yet).",
                                value=snap["identities_expiring"])


def _age(text: str | None) -> float:
    moment = from_text(text)
    return max(0.0, (now() - moment).total_seconds()) if moment else 0.0
