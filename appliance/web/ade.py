"""POST /mdm/ade: the ADE profile's url. A device in Setup Assistant posts its CMS-signed machine info and
gets its enrollment profile (appliance.service.ade). Refusals are plain text with the reason; never 401."""

from __future__ import annotations

from quart import Blueprint, Response, request

from appliance.protocol.machine_info import MAX_SIZE
from appliance.service import ade
from appliance.service.abm import ADE_PATH
from appliance.web.app import runtime
from appliance.web.errors import text_error

blueprint = Blueprint("ade", __name__)


@blueprint.route(ADE_PATH, methods=["POST"])
async def ade_enroll() -> Response:
    rt = runtime()
    body = await request.get_data(cache=False)  # read whole first: an early answer upsets hypercorn's HTTP/2
    if len(body) > MAX_SIZE:
        return text_error(413, f"machine info is over the limit of {MAX_SIZE} bytes")
    if not body:
        return text_error(400, "no machine info: POST the device's CMS-signed MachineInfo")
    answer = await ade.enroll(rt, body)
    rt.metrics.ade_requests.labels(answer.outcome).inc()
    response = Response(answer.body, status=answer.status, content_type=answer.content_type)
    if answer.status == 200:
        response.headers["Cache-Control"] = "no-store"  # it carries a one-time challenge
    return response
