"""GET /ddm/assets/ID: the content of an asset declaration the appliance hosts, for the devices it is
assigned to only.

Asked with MDM authentication (the asset's Authentication Type MDM: the device's identity certificate as
Mdm-Signature or TLS client certificate), the certificate must be bound to a device one of whose channels
has the asset. Asked without, the URL's per-asset, per-enrollment token must match (the DataURL a device is
given carries it) and that enrollment must have the asset. Anything else is a 403 (a bad identity or token)
or a 404 (not this device's asset), never the content. Wrong tokens are counted per client address; past
the limit that address is refused for a while, right token or not.
"""

from __future__ import annotations

import hmac

from quart import Blueprint, Response, request

from appliance.identity.errors import IdentityError, NoDeviceIdentity
from appliance.logs import get_logger
from appliance.service.certauth import fingerprint
from appliance.service.ddm import ASSET_PATH, asset_token
from appliance.store import bindings
from appliance.store import ddm as store
from appliance.web.app import runtime
from appliance.web.errors import text_error
from appliance.web.identify import device_certificate

blueprint = Blueprint("ddm_assets", __name__)
log = get_logger("ddm")


@blueprint.get(f"{ASSET_PATH}<identifier>")
async def asset(identifier: str) -> Response:
    rt = runtime()
    if rt.ddm is None:
        return text_error(404, "no such asset")
    headers = {name.lower(): value for name, value in request.headers.items()}
    try:
        certificate = device_certificate(rt, request.scope, headers, await request.get_data())
    except NoDeviceIdentity:
        certificate = None
    except IdentityError as exc:
        return text_error(exc.status, exc.reason)
    if certificate is not None:
        found = await rt.store.read(_for_device, fingerprint(certificate), identifier)
    else:
        enrollment_id, token = request.args.get("enrollment", ""), request.args.get("token", "")
        address = request.remote_addr
        limit = rt.ddm.asset_guesses
        if limit.blocked(address):
            return text_error(429, "too many wrong asset tokens from this address: try again later")
        expected = asset_token(rt.ddm.options.asset_key, identifier, enrollment_id)
        if not enrollment_id or not hmac.compare_digest(token.encode(), expected.encode()):
            if limit.wrong_guess(address):
                log.warning("ddm_asset_token_guessing_limited", remote=address)
            return text_error(403, "asset token missing or wrong (or authenticate as the device)")
        found = await rt.store.read(_for_enrollments, [enrollment_id], identifier)
    if found is None:
        return text_error(404, "no such asset for this device")
    response = Response(bytes(found["data"]), status=200, content_type=found["content_type"])
    response.headers["ETag"] = f'"{found["sha256"]}"'
    response.headers["Cache-Control"] = "no-store"
    return response


def _for_device(conn, sha256: str, identifier: str):
    device_id = bindings.device_bound_to(conn, sha256)
    if device_id is None:
        return None
    return _for_enrollments(conn, store.device_enrollments(conn, device_id), identifier)


def _for_enrollments(conn, enrollment_ids: list[str], identifier: str):
    row = store.asset(conn, identifier)
    if row is None:
        return None
    for eid in enrollment_ids:
        active = conn.execute("SELECT active FROM enrollments WHERE id = ?", (eid,)).fetchone()
        if active and active[0] and store.is_effective(conn, eid, identifier):
            return row
    return None
