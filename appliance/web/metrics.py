"""GET /metrics: Prometheus text. Needs the API key like the admin API (Prometheus sends it with
`authorization: {credentials: KEY}` or basic_auth), because it is served on every listener, the
device-facing one included, and fleet size and queue figures are nobody else's business."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from quart import Blueprint, Response

from appliance.service.renewal import EXPIRY_WARNING
from appliance.store import ddm, fleet, outbox, queue
from appliance.store import renewal as renewal_store
from appliance.store.faults import StoreUnavailable
from appliance.store.timefmt import now, to_text
from appliance.web.app import runtime
from appliance.web.auth import require_api_key

blueprint = Blueprint("metrics", __name__)

RESULTS_STEP = 10_000  # results counted per store job (~10 ms here): device requests go in between


def _snapshot(conn, ca_subject: str, expiry_warning: str, not_now_threshold: int) -> dict:
    snap = fleet.snapshot(conn)
    snap["devices_stuck"] = queue.stuck_count(conn, not_now_threshold)
    box = outbox.stats(conn)
    snap["outbox_depth"] = box["depth"]
    snap["outbox_oldest"] = box["oldest_created_at"]
    snap["ddm_declarations"] = ddm.status_summary(conn)
    snap["ddm_dirty"] = ddm.dirty_count(conn)
    snap["renewals"] = renewal_store.state_counts(conn, ca_subject)
    snap["identities_expiring"], _ = renewal_store.expiring(conn, expiry_warning, limit=0)
    return snap


@blueprint.get("/metrics")
@require_api_key
async def metrics():
    rt = runtime()
    collector = rt.metrics.fleet
    # One scrape at a time: each adds the results stored since the previous one to the running counts.
    async with collector.lock:
        try:
            done = False
            while not done:
                counts, last, done = await rt.store.read(fleet.results_since, collector.results_rowid, RESULTS_STEP)
                collector.add_results(counts, last)
            collector.update(await rt.store.read(_snapshot, rt.ca.certificate.subject.rfc4514_string(),
                                                 to_text(now() + EXPIRY_WARNING),
                                                 rt.config.queue.not_now_threshold))
        except StoreUnavailable:
            pass  # the database figures stay those of the last scrape; mdm_store_status says why
        body = rt.metrics.render()
    return Response(body, status=200, content_type=CONTENT_TYPE_LATEST)
