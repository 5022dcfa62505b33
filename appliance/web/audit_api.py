"""The audit log over the admin API (GET /v1/audit), and the wrapper that audits the admin API itself:
every state-changing request under /v1 or /api (KMFDDM's DDM routes) that succeeded is recorded as actor
"api key", right after its change
committed (the console records its own actions as "user NAME", in the same transaction as the change)."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify, request

from appliance.logs import get_logger
from appliance.store import audit
from appliance.web.app import runtime
from appliance.web.auth import require_api_key
from appliance.web.errors import ApiError

blueprint = Blueprint("audit_api", __name__)
log = get_logger("audit")

DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
API_ACTOR = "api key"

# (method, route) -> action name; an API route not named here is recorded as "METHOD /route".
ACTIONS = {
    ("PUT", "/v1/enqueue/<ids>"): "command.send",
    ("POST", "/v1/commands"): "command.send",
    ("DELETE", "/v1/commands/<command_uuid>"): "command.cancel",
    ("DELETE", "/v1/devices/<enrollment_id>/queue"): "queue.clear",
    ("DELETE", "/v1/devices/<enrollment_id>/queue/<command_uuid>"): "command.cancel",
    ("GET", "/v1/push/<path:ids>"): "push",
    ("POST", "/v1/push/<path:ids>"): "push",
    ("PUT", "/v1/pushcert"): "pushcert.import",
    ("POST", "/v1/challenges"): "challenge.mint",
}
_READ_METHODS = {"GET", "HEAD", "OPTIONS"}


@blueprint.get("/v1/audit")
@require_api_key
async def audit_log():
    limit = request.args.get("limit", str(DEFAULT_LIMIT))
    before = request.args.get("before")
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT:
        raise ApiError(400, "bad_parameter", f"?limit= must be a whole number from 1 to {MAX_LIMIT}")
    if before is not None and not before.isdigit():
        raise ApiError(400, "bad_parameter", "?before= must be an entry id (the previous page's next_before)")
    filters = {key: request.args.get(key) or None for key in ("actor", "action", "target")}
    rows = await runtime().store.read(lambda conn: audit.entries(
        conn, before=int(before) if before else None, limit=int(limit) + 1, **filters))
    page, more = rows[:int(limit)], len(rows) > int(limit)
    return jsonify({"entries": page, "next_before": page[-1]["id"] if more else None})


@blueprint.after_app_request
async def _audit_api_change(response: Response) -> Response:
    rule = request.url_rule.rule if request.url_rule is not None else None
    if rule is None or not rule.startswith(("/v1/", "/api/")) or not 200 <= response.status_code < 300:
        return response
    action = ACTIONS.get((request.method, rule))
    if action is None and request.method in _READ_METHODS:
        return response
    answer = await response.get_json(silent=True) if response.is_json else None
    target, details = _what(rule, dict(request.view_args or {}), answer if isinstance(answer, dict) else {})
    if action is None and request.args:  # an unnamed route: its query says what changed (DDM's ?set=, ...)
        details = {**(details or {}), "query": {key: value[:200] for key, value in list(request.args.items())[:10]}}
    # Everything read from the request here: the write runs on the store's thread, outside the request.
    remote, name = request.remote_addr, action or f"{request.method} {rule}"
    try:
        await runtime().store.write(lambda conn: audit.record(
            conn, actor=API_ACTOR, action=name, target=target, details=details, remote=remote))
    except Exception as exc:  # the change is committed and answered; a lost audit row is logged, not a 500
        log.error("audit_write_failed", rule=rule, error=repr(exc))
    return response


def _what(rule: str, args: dict, answer: dict) -> tuple[object, dict | None]:
    """To whom and the rest, from the route's arguments and the answer (never a secret: no challenge)."""
    if "request_type" in answer and isinstance(answer.get("status"), dict):  # an enqueue
        queued = [eid for eid, entry in answer["status"].items() if "command_error" not in entry]
        return queued, {"command_uuid": answer.get("command_uuid"), "request_type": answer.get("request_type"),
                        "no_push": answer.get("no_push")}
    if rule.startswith("/v1/push/") and isinstance(answer.get("status"), dict):
        return list(answer["status"]), None
    if rule == "/v1/pushcert":
        return answer.get("topic"), {"not_after": answer.get("not_after")}
    if rule == "/v1/challenges":
        return None, {"expires_at": answer.get("expires_at")}
    target = args.get("enrollment_id") or args.get("command_uuid") or ",".join(str(v) for v in args.values()) or None
    details = {key: value for key, value in answer.items() if isinstance(value, (int, str)) and key != "challenge"}
    return target, details or None
