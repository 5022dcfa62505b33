"""Admin API for enrollment: one-time SCEP challenges, the enrollment profile, and the
Topic/ServerURL/CheckInURL sets profiles handed out. The CLI's `challenge`, `enroll-profile` and
`enrollment-urls` use these when a server is running, so its database is only ever written by it."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify

from appliance.protocol.profile import ProfileError
from appliance.service import enrollment
from appliance.store.timefmt import to_text
from appliance.web.app import runtime
from appliance.web.auth import require_api_key
from appliance.web.errors import ApiError

blueprint = Blueprint("enrollment_api", __name__)


@blueprint.route("/v1/challenges", methods=["POST"])
@require_api_key
async def mint_challenge():
    rt = runtime()
    challenge, expires = await enrollment.mint_challenge(rt)
    ttl = int(rt.config.enrollment.challenge_ttl)
    return jsonify({"challenge": challenge, "expires_at": to_text(expires), "ttl_seconds": ttl}), 201


@blueprint.route("/v1/enrollment-profile", methods=["POST"])
@require_api_key
async def enrollment_profile():
    """The profile GET /mdm/enroll serves, for the operator (POST: each one may mint a challenge)."""
    try:
        data = await enrollment.build_profile(runtime())
    except ProfileError as exc:
        raise ApiError(409, "profile_unavailable", str(exc)) from None
    response = Response(data, status=200, content_type=enrollment.PROFILE_CONTENT_TYPE)
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/v1/enrollment-urls")
@require_api_key
async def enrollment_urls():
    rt = runtime()

    def read(conn):
        return {"url_sets": enrollment.recorded_url_sets(conn),
                "warnings": enrollment.url_mismatches(conn, rt.config)}

    return jsonify(await rt.store.read(read))


@blueprint.delete("/v1/enrollment-urls/changed")
@require_api_key
async def forget_changed_urls():
    """The operator re-enrolled (or retired) the devices holding old URLs: stop warning about them."""
    rt = runtime()
    return jsonify({"forgotten": await rt.store.write(enrollment.forget_changed_urls, rt.config)})
