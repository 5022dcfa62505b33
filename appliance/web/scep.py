"""SCEP over HTTP (RFC 8894 section 4): GetCACaps, GetCACert and PKIOperation by GET or POST.

Clients in the field differ: some send the GET message with '+' not percent-encoded (it arrives
as a space), some use the URL-safe base64 alphabet, some encode twice, some POST the message
and repeat it in the query string, and Cisco-style clients append /pkiclient.exe. All work.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote

from quart import Blueprint, Response, request

from appliance.service import scep as scep_service
from appliance.web.app import runtime
from appliance.web.errors import text_error
from appliance.web.guessing import client_address

blueprint = Blueprint("scep", __name__)

MAX_MESSAGE = 1024 * 1024  # a PKCSReq is 2-8 KB; anything near this is not a SCEP client


def decode_get_message(text: str) -> bytes | None:
    if "%" in text:  # percent-encoded twice
        text = unquote(text)
    text = "".join(text.replace(" ", "+").split())
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _answer(answer: scep_service.ScepAnswer) -> Response:
    return Response(answer.body, status=answer.status, content_type=answer.content_type)


@blueprint.route("/scep", methods=["GET", "POST"])
@blueprint.route("/scep/", methods=["GET", "POST"])
@blueprint.route("/scep/pkiclient.exe", methods=["GET", "POST"])
async def scep_endpoint() -> Response:
    operation = request.args.get("operation", "")
    rt = runtime()
    if operation == "GetCACaps":
        return _answer(scep_service.ca_caps())
    if operation == "GetCACert":
        return _answer(scep_service.ca_cert(rt))
    if operation != "PKIOperation":
        return text_error(400, f"unknown or missing SCEP operation {operation[:40]!r}: expected "
                               "GetCACaps, GetCACert or PKIOperation")
    message: bytes | None = None
    if request.method == "POST":
        message = await request.get_data(cache=False)
    if not message:
        text = request.args.get("message", "")
        if not text:
            return text_error(400, "PKIOperation without a message")
        message = decode_get_message(text)
        if message is None:
            return text_error(400, "the message parameter is not base64")
    if len(message) > MAX_MESSAGE:
        return text_error(413, "SCEP message too large")
    return _answer(await scep_service.pki_operation(rt, message, client_address()))
