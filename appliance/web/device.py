"""The two URLs a device talks to: CheckInURL (/mdm/checkin) and ServerURL (/mdm/connect).

Both route by Content-Type, so a profile without a CheckInURL (check-ins go to ServerURL) works too:
`application/x-apple-aspen-mdm-checkin` is a check-in, anything else a command report.
Order per request: body (413 over [server] max_body_size, without reading the rest into memory),
who is speaking (400 malformed, 403 untrusted), what was said (400 naming the key), then one
transaction; 200 only after it committed. Never 401: a device answered 401 drops its enrollment.
"""

from __future__ import annotations

from quart import Blueprint, Response, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from appliance.identity.errors import IdentityError
from appliance.logs import get_logger
from appliance.protocol.answers import Answer
from appliance.protocol.errors import MessageError
from appliance.protocol.messages import decode_checkin, decode_report
from appliance.service import mdm
from appliance.service.certauth import CertificateNotBound, Presented
from appliance.web.app import runtime
from appliance.web.errors import text_error
from appliance.web.identify import device_certificate

log = get_logger("device")

blueprint = Blueprint("device", __name__)

CHECKIN_CONTENT_TYPE = "application/x-apple-aspen-mdm-checkin"


@blueprint.route("/mdm/checkin", methods=["PUT"])
@blueprint.route("/mdm/connect", methods=["PUT"])
async def device_request() -> Response:
    rt = runtime()
    try:
        body = await request.get_data(cache=False)
    except RequestEntityTooLarge:
        return _refuse(rt, 413, f"body is over the limit of {rt.config.server.max_body_size} bytes",
                       close=True)
    try:
        certificate = device_certificate(request, body)  # logs its refusals in full
    except IdentityError as exc:
        return _refuse(rt, exc.status, exc.reason)
    is_checkin = request.mimetype == CHECKIN_CONTENT_TYPE
    try:
        message = decode_checkin(body) if is_checkin else decode_report(body)
    except MessageError as exc:
        return _refuse(rt, exc.status, exc.reason, checkin=is_checkin)
    g.enrollment_id = message.enrollment.id
    g.command_uuid = None if is_checkin else message.command_uuid
    params = request.args.to_dict() or None
    try:
        if is_checkin:
            answer = await mdm.checkin(rt, message, Presented.of(certificate), params)
        else:
            answer = await mdm.report(rt, message, Presented.of(certificate), params)
    except CertificateNotBound as exc:
        log.warning("device_certificate_not_bound", enrollment_id=message.enrollment.id, detail=exc.detail)
        return _refuse(rt, exc.status, exc.reason)
    except MessageError as exc:
        return _refuse(rt, exc.status, exc.reason, checkin=is_checkin)
    if g.command_uuid is None:
        g.command_uuid = answer.command_uuid
    return _response(answer)


def _response(answer: Answer) -> Response:
    response = Response(answer.body, status=answer.status)
    if answer.content_type is None:
        # An empty answer is zero bytes with no type: Apple's "empty response body".
        del response.headers["Content-Type"]
    else:
        response.headers["Content-Type"] = answer.content_type
    return response


def _refuse(rt, status: int, reason: str, *, checkin: bool | None = None, close: bool = False) -> Response:
    rt.metrics.mdm_refused.labels(str(status)).inc()
    if status < 403 or status == 413:  # identity refusals are logged where they are decided
        log.info("device_request_refused", status=status, reason=reason, checkin=checkin, path=request.path)
    response = text_error(status, reason)
    if close:
        # The rest of an oversized body is never read into memory; closing spares reading it at all.
        response.headers["Connection"] = "close"
    return response
