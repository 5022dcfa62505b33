"""GET /mdm/enroll: the enrollment profile, for a browser on the device (or curl).

Guarded by [enrollment] secret, given as `?token=SECRET` or as the HTTP Basic password (any
user name). A browser, not an enrolled device, asks here, so a missing or wrong secret is a 401
with a Basic challenge (the browser shows a password prompt). Without a configured secret the
profile is never served (403): a profile with a valid challenge must not be world-readable.
Wrong secrets are limited per client ([enrollment] secret_guess_limit within secret_guess_window,
then 429 with Retry-After, even for the right secret), as SCEP challenges are.
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from appliance.logs import get_logger
from appliance.protocol.profile import ProfileError
from appliance.service import enrollment
from appliance.web.app import runtime
from appliance.web.auth import basic_password, secret_matches
from appliance.web.errors import text_error
from appliance.web.guessing import client_address

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
    guesses, client = rt.enrollment_secret_guesses, client_address()
    if guesses.blocked(client):
        rt.metrics.guess_limit_refusals.labels("enrollment_secret").inc()
        wait = guesses.retry_after(client)
        return text_error(429, f"too many wrong enrollment secrets from {client}: refused for {wait} s more, "
                               "even with the right secret", retry_after=wait)
    presented = _presented_secret()
    if presented is None or not secret_matches(presented, secret):
        if presented is not None:  # a browser's first request carries none: it is asked for one
            rt.metrics.failed_authentications.labels("enrollment_secret").inc()
            if guesses.wrong_guess(client):
                log.warning("enrollment_secret_guessing_limited", client=client, limit=guesses.limit,
                            window_seconds=guesses.window)
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
