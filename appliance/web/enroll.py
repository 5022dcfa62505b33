"""GET /mdm/enroll: the enrollment profile, for a browser on the device (or curl).

Guarded by [enrollment] secret, given as `?token=SECRET` or as the HTTP Basic password (any
user name). A browser, not an enrolled device, asks here, so a missing or wrong secret is a 401
with a Basic challenge (the browser shows a password prompt). Without a configured secret the
profile is never served (403): a profile with a valid challenge must not be world-readable.
"""

from __future__ import annotations

import hmac

from quart import Blueprint, Response, request

from appliance.logs import get_logger
from appliance.protocol.profile import ProfileError
from appliance.service import enrollment
from appliance.web.app import runtime
from appliance.web.auth import basic_password
from appliance.web.errors import text_error

blueprint = Blueprint("enroll", __name__)
log = get_logger("enrollment")


def _presented_secret() -> str | None:
    return request.args.get("token") or basic_password()


@blueprint.route("/mdm/enroll", methods=["GET"])
async def enroll_profile() -> Response:
    rt = runtime()
    secret = rt.config.enrollment.secret
    if not secret:
        return text_error(403, "enrollment is closed: set [enrollment] secret to serve the profile")
    presented = _presented_secret()
    if presented is None or not hmac.compare_digest(presented.encode(), secret.encode()):
        response = text_error(401, "enrollment secret missing or wrong (?token=... or HTTP Basic password)")
        response.headers["WWW-Authenticate"] = 'Basic realm="MDM enrollment", charset="UTF-8"'
        return response
    try:
        data = await enrollment.build_profile(rt)
    except ProfileError as exc:
        log.warning("profile_refused", reason=str(exc))
        # The appliance is not ready to enroll yet (no push certificate, no challenge): a state the
        # operator fixes, answered 409 with the fix; never a 5xx, which monitoring reads as a crash.
        return text_error(409, str(exc))
    response = Response(data, status=200, content_type=enrollment.PROFILE_CONTENT_TYPE)
    response.headers["Content-Disposition"] = 'attachment; filename="enroll.mobileconfig"'
    response.headers["Cache-Control"] = "no-store"  # each download may carry its own challenge
    return response
