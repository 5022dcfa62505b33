"""The OpenAPI document against the implementation: schemathesis generates requests for every operation
from the document and checks status codes, content types and bodies against it. Bounded: a handful of
examples per operation, generation only."""

from __future__ import annotations

import re

import hypothesis
import requests
import schemathesis
import trio
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error, positive_data_acceptance

from appliance.web.openapi import document
from tests.support.fleet_seed import seed_devices
from tests.support.harness import API_KEY, make_config, start_server

MAX_EXAMPLES = 6
# NanoMDM's answer codes: 500 means "every id failed" and carries the per-id JSON (the document says so);
# /v1/pushcert GET documents its 500 for an unreadable stored certificate.
DOCUMENTED_500 = {"/v1/enqueue/{ids}", "/v1/commands", "/v1/push/{ids}", "/v1/pushcert"}
# Bodies a schema cannot describe (a command plist, a PEM bundle, a command's free-form keys, an ABM token
# file): random "schema-valid" bytes are rightly
# rejected with 400, so acceptance of generated bodies is not checked there (the documented example is).
OPAQUE_BODY = {"/v1/enqueue/{ids}", "/v1/pushcert", "/v1/commands", "/v1/abm/servers/{name}/token",
               # a declaration checked against Apple's schema, an asset type, an OS version and local deadline
               "/api/v1/ddm/declarations", "/api/v1/ddm/assets/{identifier}", "/api/v1/ddm/os-update",
               # The device filter language (in ?filter= and a group's "filter"), which no schema describes;
               # and group names, which must be new to be created.
               "/v1/devices", "/v1/groups", "/v1/groups/{name}"}


async def test_served_document_is_the_one_we_check(server):
    async with server.client() as client:
        response = await client.get("/v1/openapi.json")  # no key needed
    assert response.status_code == 200
    served = response.json()
    assert served == document()
    paths = set(served["paths"])
    assert {"/v1/enqueue/{ids}", "/v1/commands", "/v1/commands/{command_uuid}", "/v1/devices",
            "/v1/devices/{device_id}", "/v1/devices/{device_id}/commands", "/v1/devices/{device_id}/queue",
            "/v1/push/{ids}", "/v1/pushcert", "/v1/challenges", "/v1/catalog"} <= paths


def _shape(path: str) -> str:
    """'/v1/devices/<enrollment_id>/queue' and '/v1/devices/{device_id}/queue' -> '/v1/devices/*/queue'."""
    return re.sub(r"<[^>]*>|\{[^}]*\}", "*", path)


def _every_route_is_documented(app_rules: list[str]) -> None:
    documented = {_shape(path) for path in document()["paths"]}
    missing = [rule for rule in app_rules if rule.startswith(("/v1/", "/api/")) and _shape(rule) not in documented]
    assert not missing, f"routes without an OpenAPI entry: {missing}"


async def test_every_api_route_is_documented(server):
    from appliance.web.app import create_app

    app = create_app(server.runtime)
    _every_route_is_documented([rule.rule for rule in app.url_map.iter_rules()])


def _run_schemathesis(base_url: str, ca_file: str, api_key: str) -> int:
    schema = schemathesis.openapi.from_dict(document())
    session = requests.Session()
    session.verify = ca_file
    calls = 0
    failures: list[str] = []
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            excluded = [not_a_server_error] if operation.path in DOCUMENTED_500 else []
            # The documented examples must pass every check; generated bodies of opaque operations need not
            # be accepted.
            runs = [("example", strategy, excluded) for strategy in schema.get_strategies_from_examples(operation)]
            runs.append(("generated", operation.as_strategy(),
                         excluded + ([positive_data_acceptance] if operation.path in OPAQUE_BODY else [])))
            for label, strategy, skipped in runs:  # noqa: B007 (check() runs inside this iteration)

                @hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                                     phases=[Phase.generate], suppress_health_check=list(HealthCheck))
                @hypothesis.given(case=strategy)
                def check(case) -> None:
                    nonlocal calls
                    calls += 1
                    if case.query and "cursor" in case.query:
                        # A cursor is opaque: made-up ones are rightly 400 (tests/server/test_admin_api.py covers them).
                        del case.query["cursor"]
                    case.call_and_validate(base_url=base_url, session=session, excluded_checks=skipped,
                                           headers={"Authorization": f"Bearer {api_key}"}, timeout=30,
                                           verify=ca_file)

                try:
                    check()
                except BaseException as exc:  # collect every operation's failure, report them together
                    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                        raise
                    details = "; ".join(str(e)[:400] for e in getattr(exc, "exceptions", [exc]))
                    failures.append(f"{operation.method.upper()} {operation.path} ({label}): {details}")
    finally:
        session.close()
    assert not failures, "\n\n".join(failures)
    return calls


async def test_implementation_conforms_to_the_document(nursery, tmp_path):
    # schemathesis's ignored_auth check sends wrong keys on purpose; the guessing limit (tested on its
    # own) would soon answer 429 to everything, so it is off here.
    server = await start_server(nursery, make_config(tmp_path, api={"key": API_KEY, "key_guess_limit": 0}))
    await server.runtime.store.write(lambda conn: seed_devices(conn, 3, users=True))
    calls = await trio.to_thread.run_sync(_run_schemathesis, server.base_url, str(server.ca_file), server.api_key)
    server.stop()
    assert calls >= 10
