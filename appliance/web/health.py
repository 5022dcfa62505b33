"""GET /healthz: a small JSON status, 200 once the appliance is ready (it only listens once it is).

Each part contributes through runtime.health_checks; the worst severity becomes the top-level status.
A warning or an error (an expiring push certificate, say) still answers 200: the process is up and a
load balancer must not take it away for that; monitoring reads "status". "ca_sha256" (the appliance
CA's fingerprint, public anyway through SCEP GetCACert) lets the CLI tell that the server answering
is the one of its own data_dir.
"""

from __future__ import annotations

import time

import trio
from cryptography.hazmat.primitives import hashes
from quart import Blueprint, jsonify

from appliance import __version__
from appliance.store.faults import StoreUnavailable
from appliance.web.app import runtime

blueprint = Blueprint("health", __name__)
_RANK = {"ok": 0, "warning": 1, "error": 2}


@blueprint.get("/healthz")
async def healthz():
    rt = runtime()
    results: list = [None] * len(rt.health_checks)

    async def run(index: int, check) -> None:
        try:
            results[index] = await check()
        except StoreUnavailable:
            pass  # a check that reads the database cannot now; the "store" check says why

    # At once, not one after another: behind a stalled database each read waits up to its deadline.
    async with trio.open_nursery() as nursery:
        for index, check in enumerate(rt.health_checks):
            nursery.start_soon(run, index, check)
    checks, worst = {}, "ok"
    for result in results:
        if result is None:
            worst = "error"
            continue
        name, details, severity = result
        checks[name] = {"status": severity, **details}
        if _RANK[severity] > _RANK[worst]:
            worst = severity
    return jsonify({
        "status": worst,
        "version": __version__,
        "uptime_seconds": round(time.time() - rt.started_at, 1),
        "ca_sha256": rt.ca.certificate.fingerprint(hashes.SHA256()).hex(),
        "checks": checks,
    })
