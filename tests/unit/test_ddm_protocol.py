"""appliance.protocol.ddm without a server: declarations checked against Apple's schema facts, tokens,
the device's requests and status reports (hostile ones included), the DeclarativeManagement command, and
the generator of the schema facts run on a small sample of Apple's YAML."""

from __future__ import annotations

import json
import plistlib
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.protocol import ddm
from appliance.protocol.catalog import check as catalog_check
from appliance.protocol.commands import parse_command
from appliance.protocol.ddm import DeclarationError
from appliance.protocol.errors import MessageError


def declare(declaration_type: str, payload: dict, identifier: str = "x.1") -> ddm.Declaration:
    return ddm.check_declaration({"Type": declaration_type, "Identifier": identifier, "Payload": payload})


def test_a_known_type_is_checked_against_apples_schema():
    ok = declare("com.apple.configuration.passcode.settings", {"MinimumLength": 6, "RequireAlphanumericPasscode": True})
    assert (ok.kind, ok.warnings, ok.references) == ("configuration", (), ())
    with pytest.raises(DeclarationError, match=r"Payload\.MinimumLength must be an integer, got a string"):
        declare("com.apple.configuration.passcode.settings", {"MinimumLength": "6"})
    with pytest.raises(DeclarationError, match=r"Payload\.RequireAlphanumericPasscode must be true or false"):
        declare("com.apple.configuration.passcode.settings", {"RequireAlphanumericPasscode": 1})
    with pytest.raises(DeclarationError, match=r"Payload\.TargetOSVersion is required"):
        declare("com.apple.configuration.softwareupdate.enforcement.specific", {"TargetLocalDateTime": "2027-01-01T00:00:00"})
    # Nested keys and array items too.
    with pytest.raises(DeclarationError, match=r"Payload\.StatusItems\[1\]\.Name is required"):
        declare("com.apple.configuration.management.status-subscriptions",
                {"StatusItems": [{"Name": "device.model.family"}, {}]})
    with pytest.raises(DeclarationError, match=r"Payload\.Reference\.Size must be an integer"):
        declare("com.apple.asset.data", {"Reference": {"DataURL": "https://a.example/x", "Size": True}})


def test_unknown_types_keys_and_values_are_accepted_with_a_warning():
    new_type = declare("com.apple.configuration.brand.new.thing", {"Anything": [1, 2]})
    assert new_type.kind == "configuration" and "not in Apple's schema" in new_type.warnings[0]
    extra_key = declare("com.apple.configuration.passcode.settings", {"MinimumLength": 4, "Colour": "blue"})
    assert extra_key.warnings == ("Payload.Colour is not a key of com.apple.configuration.passcode.settings in "
                                  "Apple's schema",)
    odd_value = declare("com.apple.asset.data", {"Reference": {"DataURL": "https://a.example/x"},
                                                 "Authentication": {"Type": "Kerberos"}})
    assert "Payload.Authentication.Type" in odd_value.warnings[0]


@pytest.mark.parametrize("document, reason", [
    ({"Identifier": "a", "Payload": {}}, "Type must be a non-empty string"),
    ({"Type": "com.example.configuration.x", "Identifier": "a", "Payload": {}}, "is not a declaration type"),
    ({"Type": "com.apple.profile.x", "Identifier": "a", "Payload": {}}, "is not a declaration type"),
    ({"Type": "com.apple.configuration.", "Identifier": "a", "Payload": {}}, "is not a declaration type"),
    ({"Type": "com.apple.configuration.x", "Payload": {}}, "Identifier must be a non-empty string"),
    ({"Type": "com.apple.configuration.x", "Identifier": "a" * 65, "Payload": {}}, "longer than 64 octets"),
    ({"Type": "com.apple.configuration.x", "Identifier": "é" * 33, "Payload": {}}, "longer than 64 octets"),
    ({"Type": "com.apple.configuration.x", "Identifier": "a/b", "Payload": {}}, "'/'"),
    ({"Type": "com.apple.configuration.x", "Identifier": "a\nb", "Payload": {}}, "control characters"),
    ({"Type": "com.apple.configuration.x", "Identifier": "a", "Payload": []}, "Payload must be an object"),
    ({"Type": "com.apple.configuration.x", "Identifier": "a"}, "Payload must be an object"),
    ({"Type": "com.apple.activation.simple", "Identifier": "a", "Payload": {"StandardConfigurations": [3]}},
     "StandardConfigurations\\[0\\] must be a string"),
])
def test_a_bad_declaration_is_refused_naming_the_key(document, reason):
    with pytest.raises(DeclarationError, match=reason):
        ddm.check_declaration(document)


def test_references_an_activation_and_a_configuration_make():
    activation = declare("com.apple.activation.simple", {"StandardConfigurations": ["c.1", "c.2"]})
    assert [(r.kind, r.identifier) for r in activation.references] == [("configuration", "c.1"),
                                                                       ("configuration", "c.2")]
    mail = declare("com.apple.configuration.account.mail", {
        "UserIdentityAssetReference": "who", "IncomingServer": {
            "ServerType": "IMAP", "HostName": "imap.example.org", "AuthenticationMethod": "Password",
            "AuthenticationCredentialsAssetReference": "cred"},
        "OutgoingServer": {"HostName": "smtp.example.org", "AuthenticationMethod": "Password"}})
    refs = {r.identifier: r for r in mail.references}
    assert set(refs) == {"who", "cred"}
    assert refs["cred"].kind == "asset" and refs["cred"].types == ("com.apple.asset.credential.userpassword",)
    assert refs["cred"].path == "Payload.IncomingServer.AuthenticationCredentialsAssetReference"


def test_parse_declaration_from_json_bytes_with_limits():
    parsed = ddm.parse_declaration(b'{"Type": "com.apple.configuration.x.y", "Identifier": "i", "Payload": {"a": 1},'
                                   b' "ServerToken": "ignored"}')
    assert parsed.identifier == "i" and parsed.payload_json == '{"a":1}'
    for body, reason in [(b"nope", "not JSON"), (b"[]", "must be a JSON object"), (b"\xff", "not UTF-8"),
                         (b"{" + b'"a":{' * 40 + b"}" * 41, "nested more than"),
                         (b"[" * 100_000, "nested more than"),
                         (b'{"x": ' + b'"' + b"y" * ddm.MAX_JSON_BYTES + b'"}', "over the limit"),
                         (b'{"Type": NaN}', "not JSON")]:
        with pytest.raises(DeclarationError, match=reason):
            ddm.parse_declaration(body)


def test_server_token_follows_content_not_key_order_and_touch_changes_it():
    a = ddm.server_token("com.apple.configuration.x.y", "i", {"a": 1, "b": [1, 2]})
    assert a == ddm.server_token("com.apple.configuration.x.y", "i", {"b": [1, 2], "a": 1})
    assert a != ddm.server_token("com.apple.configuration.x.y", "i", {"a": 2, "b": [1, 2]})
    assert a != ddm.server_token("com.apple.configuration.x.z", "i", {"a": 1, "b": [1, 2]})
    assert a != ddm.server_token("com.apple.configuration.x.y", "i", {"a": 1, "b": [1, 2]}, touch=1)
    assert len(a.encode()) <= 64  # Apple: at most 64 octets


def test_declarations_token_depends_on_the_set_of_server_tokens_only():
    one = ddm.declarations_token([("a", "t1"), ("b", "t2")])
    assert one == ddm.declarations_token([("b", "t2"), ("a", "t1")])
    assert one != ddm.declarations_token([("a", "t1"), ("b", "t3")])
    assert one != ddm.declarations_token([("a", "t1")])


def test_answers_have_apples_shapes():
    tokens = json.loads(ddm.tokens_json("tok", ddm.sync_timestamp(datetime(2026, 5, 1, 12, 30, 45, 123456, UTC))))
    assert tokens == {"SyncTokens": {"DeclarationsToken": "tok", "Timestamp": "2026-05-01T12:30:45Z"}}
    items = json.loads(ddm.declaration_items_json([ddm.Item("configuration", "c", "t")], "tok"))
    assert items == {"Declarations": {"Activations": [], "Configurations": [{"Identifier": "c", "ServerToken": "t"}],
                                      "Assets": [], "Management": []}, "DeclarationsToken": "tok"}
    body = ddm.declaration_json("com.apple.configuration.x.y", "c", "t", '{"k":"v"}')
    assert json.loads(body) == {"Type": "com.apple.configuration.x.y", "Identifier": "c", "ServerToken": "t",
                                "Payload": {"k": "v"}}


def test_the_command_carries_the_tokens_as_data_and_passes_the_validator_and_catalog():
    body = ddm.command("C-1", b'{"SyncTokens": {}}')
    command = parse_command(body)
    assert (command.uuid, command.request_type, command.body) == ("C-1", "DeclarativeManagement", body)
    catalog_check(command.command)
    assert plistlib.loads(body)["Command"]["Data"] == b'{"SyncTokens": {}}'


def test_requests_by_endpoint():
    assert ddm.parse_request("tokens", None).endpoint == ddm.TOKENS
    assert ddm.parse_request("declaration-items", None).endpoint == ddm.DECLARATION_ITEMS
    request = ddm.parse_request("declaration/configuration/my/odd/id", None)
    assert (request.endpoint, request.kind, request.identifier) == (ddm.DECLARATION, "configuration", "my/odd/id")
    for endpoint in ("Tokens", "declaration/configurations/x", "declaration/asset/", "status-report", "x" * 600):
        with pytest.raises(MessageError):
            ddm.parse_request(endpoint, None)
    with pytest.raises(MessageError, match="needs the status report"):
        ddm.parse_request("status", None)
    with pytest.raises(MessageError, match="not JSON"):
        ddm.parse_request("tokens", b"garbage")


REPORT = {
    "StatusItems": {
        "device": {"operating-system": {"version": "17.5", "build-version": "21F79"}, "model": {"family": "iPhone"}},
        "management": {
            "client-capabilities": {"supported-versions": ["1.0.0", "2.0.0"]},
            "declarations": {
                "activations": [{"identifier": "a", "active": True, "valid": "valid", "server-token": "ta"}],
                "configurations": [{"identifier": "c", "active": False, "valid": "invalid", "server-token": "tc",
                                    "reasons": [{"code": "Error.ConfigurationCannotBeApplied"}]}],
                "assets": [], "management": [{"identifier": "m", "active": True, "valid": "valid",
                                              "server-token": "tm"}]}},
        "softwareupdate": {"pending-version": {"os-version": "17.6", "build-version": "21G80"}},
    },
    "Errors": [{"StatusItem": "device.power.battery-health", "Reasons": [{"Code": "Error.NotSupported"}]}],
}


def test_a_status_report_is_read_into_declarations_values_and_errors():
    report = ddm.parse_status_report(json.dumps(REPORT).encode())
    assert [(s.kind, s.identifier, s.active, s.valid, s.server_token) for s in report.declarations] == [
        ("activation", "a", True, "valid", "ta"), ("configuration", "c", False, "invalid", "tc"),
        ("management", "m", True, "valid", "tm")]
    assert report.declarations[1].reasons == ({"code": "Error.ConfigurationCannotBeApplied"},)
    values = {(v.path, v.value) for v in report.values}
    assert (".StatusItems.device.operating-system.version", "17.5") in values
    assert {(".StatusItems.management.client-capabilities.supported-versions", "1.0.0"),
            (".StatusItems.management.client-capabilities.supported-versions", "2.0.0")} <= values
    assert (".StatusItems.softwareupdate.pending-version.os-version", "17.6") in values
    assert not any(path.startswith(".StatusItems.management.declarations") for path, _ in values)
    assert [e.path for e in report.errors] == [".Errors", ".StatusItems.management.declarations.configurations"]
    assert report.full_report is False


@pytest.mark.parametrize("document, reason", [
    ({"Errors": []}, "StatusItems must be an object"),
    ({"StatusItems": {}, "Errors": {}}, "Errors must be an array"),
    ({"StatusItems": {}, "FullReport": "yes"}, "FullReport must be true or false"),
    ({"StatusItems": {"management": {"declarations": []}}}, "declarations must be an object"),
    ({"StatusItems": {"management": {"declarations": {"assets": {}}}}}, "assets must be an array"),
    ({"StatusItems": {"management": {"declarations": {"assets": [{"identifier": "a", "active": "yes",
                                                                   "valid": "valid", "server-token": "t"}]}}}},
     r"assets\[0\]\.active must be true or false"),
    ({"StatusItems": {"x": list(range(ddm.MAX_STATUS_VALUES + 1))}}, "more than"),
])
def test_a_malformed_status_report_is_refused(document, reason):
    with pytest.raises(MessageError, match=reason):
        ddm.parse_status_report(json.dumps(document).encode())


def test_the_appliances_own_declarations_are_valid_and_bounded():
    builtins = ddm.builtin_declarations({"Name": "Org", "Email": "it@example.org"}, {})
    identifiers = [b.declaration.identifier for b in builtins]
    assert all(i.startswith(ddm.RESERVED_PREFIX) and len(i.encode()) <= 64 for i in identifiers)
    assert {b.declaration.kind for b in builtins} == {"activation", "configuration", "management"}
    assert {b.channel for b in builtins} == {ddm.ANY_CHANNEL, ddm.DEVICE_CHANNEL, ddm.USER_CHANNEL}


def test_os_update_builds_the_enforcement_and_its_activation():
    configuration, activation = ddm.os_update("17.6", "2027-01-15T18:00", build="21G80",
                                              details_url="https://it.example.org/ios")
    assert configuration.type == "com.apple.configuration.softwareupdate.enforcement.specific"
    assert configuration.payload == {"TargetOSVersion": "17.6", "TargetLocalDateTime": "2027-01-15T18:00:00",
                                     "TargetBuildVersion": "21G80", "DetailsURL": "https://it.example.org/ios"}
    assert activation.payload == {"StandardConfigurations": ["os-update-17.6"]}
    assert configuration.warnings == activation.warnings == ()
    for version, deadline in [("17,6", "2027-01-15"), ("latest", "2027-01-15"), ("17.6", "15/01/2027"),
                              ("17.6", "2027-01-15T18:00+02:00")]:
        with pytest.raises(DeclarationError):
            ddm.os_update(version, deadline)


def test_generator_reads_apples_yaml(tmp_path):
    pytest.importorskip("yaml")
    from tools import gen_ddm_facts

    declarations = tmp_path / "declarative" / "declarations" / "configurations"
    status = tmp_path / "declarative" / "status"
    declarations.mkdir(parents=True)
    status.mkdir(parents=True)
    (declarations / "x.yaml").write_text(
        "payload:\n  declarationtype: com.apple.configuration.x\n  supportedOS:\n    iOS:\n      introduced: '17.0'\n"
        "    tvOS:\n      introduced: n/a\npayloadkeys:\n- key: Name\n  type: <string>\n  presence: required\n"
        "- key: Asset\n  type: <string>\n  assettypes:\n  - com.apple.asset.data\n"
        "- key: Mode\n  type: <string>\n  rangelist: [a, b]\n")
    (status / "s.yaml").write_text("payload:\n  statusitemtype: device.x\n")
    text = gen_ddm_facts.generate(tmp_path, "abc123")
    namespace: dict = {}
    exec(compile(text, "ddm_facts", "exec"), namespace)  # noqa: S102 - our own generated module
    facts = namespace["DECLARATIONS"]["com.apple.configuration.x"]
    assert facts["platforms"] == {"iOS": "17.0"}
    assert facts["keys"] == [{"name": "Name", "type": "string", "required": True},
                             {"name": "Asset", "type": "string", "required": False,
                              "assets": ["com.apple.asset.data"]},
                             {"name": "Mode", "type": "string", "required": False, "allowed": ["a", "b"]}]
    assert namespace["STATUS_ITEMS"] == ("device.x",)
    assert "abc123" in namespace["SOURCE"]


def test_the_committed_facts_are_what_the_generator_writes():
    source = Path(ddm.__file__).with_name("ddm_facts.py").read_text()
    assert re.search(r"^SOURCE = 'apple/device-management declarative/ at [0-9a-f]{40}'$", source, re.M)
    assert "Generated by tools/gen_ddm_facts.py" in source
