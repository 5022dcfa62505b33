"""Admin API for pushes (NanoMDM-compatible): the push certificate and on-demand pushes.

PUT /v1/pushcert       body: PEM certificate + PEM private key in one body; ?force=1 allows a topic change
GET /v1/pushcert       -> {"topic", "not_after"} (NanoMDM's keys), plus days_left, state, sha256, imported_at
GET|POST /v1/push/<id,id,...>  -> {"status": {id: {"push_result": apns-id} | {"push_error": "..."}}}
                          an id may be group:NAME (its members, each with its own entry)
                          200 all pushed, 207 some failed, 500 none pushed (NanoMDM's meaning)
"""

from __future__ import annotations

from quart import Blueprint, jsonify, request

from appliance.push import pushcert
from appliance.push.pushcert import PushCertError
from appliance.service.commands import answer_code, group_errors
from appliance.store import groups
from appliance.store import push as push_store
from appliance.web.app import runtime
from appliance.web.auth import require_api_key
from appliance.web.errors import api_error

blueprint = Blueprint("push_api", __name__)

MAX_IDS = 10_000


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")



@blueprint.put("/v1/pushcert")
@require_api_key
async def put_pushcert():
    rt = runtime()
    body = await request.get_data()
    if not body:
        return api_error(400, "empty_body", "empty body: send the PEM certificate and PEM private key in one body")
    try:
        cert = pushcert.validate(pushcert.load_pem(body))
    except PushCertError as e:
        return api_error(400, "invalid_push_certificate", str(e))
    force = _truthy(request.args.get("force"))

    def store(conn) -> str:
        push_store.store_certificate(
            conn, topic=cert.topic, certificate_pem=cert.cert_pem, key_pem=cert.key_pem,
            sha256=cert.fingerprint, not_before=cert.not_before, not_after=cert.not_after, force=force)
        return push_store.current_certificate(conn).imported_at

    try:
        imported_at = await rt.store.write(store)
    except push_store.TopicChanged as e:
        return api_error(409, "topic_changed", pushcert.topic_change_message(e.old, e.new))
    if rt.push is not None:
        await rt.push.reload_certificate()  # reconnect to APNs with it now, not at the next poll
    return jsonify(pushcert.describe(cert, imported_at))


@blueprint.get("/v1/pushcert")
@require_api_key
async def get_pushcert():
    stored = await runtime().store.read(push_store.current_certificate)
    if stored is None:
        return api_error(404, "no_push_certificate", "no push certificate imported yet")
    try:
        cert = pushcert.load_pem(stored.certificate, stored.private_key)
    except PushCertError as e:
        return api_error(500, "push_certificate_unusable", f"stored push certificate: {e}")
    return jsonify(pushcert.describe(cert, stored.imported_at))


@blueprint.route("/v1/push/<path:ids>", methods=["GET", "POST"])
@require_api_key
async def push(ids: str):
    rt = runtime()
    named = [i for i in dict.fromkeys(ids.split(",")) if i]
    if not named:
        return api_error(400, "no_ids", "name at least one enrollment id: /v1/push/ID1,ID2")
    # group:NAME stands for the group's members now.
    enrollment_ids, snapshots, unknown = await rt.store.read(groups.expand, named)
    if len(enrollment_ids) > MAX_IDS:
        return api_error(400, "too_many_ids", f"at most {MAX_IDS} ids per request")
    if rt.push is None:
        return api_error(503, "push_unavailable", "the push service is not running")
    outcomes = await rt.push.push_now(enrollment_ids) if enrollment_ids else {}
    status, failed = {}, 0
    for entry, why in group_errors(unknown, snapshots).items():
        status[entry] = {"push_error": why}
        failed += 1
    for eid in enrollment_ids:
        outcome = outcomes[eid]
        if outcome.ok:
            status[eid] = {"push_result": outcome.apns_id}
        else:
            status[eid] = {"push_error": outcome.error}
            failed += 1
    return jsonify({"status": status}), answer_code(len(status), failed)
