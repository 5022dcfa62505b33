"""Admin API: mint one-time SCEP challenges (each valid once, for [enrollment] challenge_ttl)."""

from __future__ import annotations

from quart import Blueprint, jsonify

from appliance.service import enrollment
from appliance.store.timefmt import to_text
from appliance.web.app import runtime
from appliance.web.auth import require_api_key

blueprint = Blueprint("challenges", __name__)


@blueprint.route("/v1/challenges", methods=["POST"])
@require_api_key
async def mint_challenge():
    rt = runtime()
    challenge, expires = await enrollment.mint_challenge(rt)
    ttl = int(rt.config.enrollment.challenge_ttl)
    return jsonify({"challenge": challenge, "expires_at": to_text(expires), "ttl_seconds": ttl}), 201
