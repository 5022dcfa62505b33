"""The command catalog: spot checks against Apple's schema, each entry's self-consistency, checking a
command (strict), building one from text (the CLI's -k KEY VALUE), and the generator that made its facts."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import plistlib
import textwrap
from pathlib import Path

import pytest

from appliance.protocol import catalog
from appliance.protocol.catalog import CatalogError, UnknownCommand

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {
    "DeviceInformation", "SecurityInfo", "ProfileList", "CertificateList", "InstalledApplicationList",
    "ManagedApplicationList", "InstallProfile", "RemoveProfile", "InstallApplication", "RemoveApplication",
    "RestartDevice", "ShutDownDevice", "DeviceLock", "EraseDevice", "ClearPasscode", "EnableLostMode",
    "DisableLostMode", "PlayLostModeSound", "DeviceLocation", "ScheduleOSUpdate", "AvailableOSUpdates",
    "OSUpdateStatus", "Settings", "ActivationLockBypassCode", "UserList", "LogOutUser", "DeclarativeManagement",
}


# --- facts (spot checks against apple/device-management mdm/commands) -------------------------------

def test_the_catalog_holds_what_a_small_organization_uses():
    assert REQUIRED <= {spec.request_type for spec in catalog.commands()}


def test_spot_checks_against_apples_schema():
    erase = catalog.get("EraseDevice")
    assert erase.destructive and erase.key("PIN").type == "string" and not erase.key("PIN").required
    assert erase.key("PIN").platforms == ("macOS",)
    assert erase.key("ObliterationBehavior").allowed == ("Default", "DoNotObliterate", "ObliterateWithWarning", "Always")
    assert erase.key("ReturnToService").key("Enabled").type == "boolean"
    assert erase.key("ReturnToService").key("Enabled").required
    assert catalog.get("DeviceLock").key("PIN").type == "string"
    queries = catalog.get("DeviceInformation").key("Queries")
    assert queries.type == "array" and queries.required and [i.type for i in queries.items] == ["string"]
    assert {"OSVersion", "SerialNumber", "UDID", "DeviceName"} <= set(queries.items[0].allowed)
    assert catalog.get("InstallProfile").key("Payload").type == "data"
    assert catalog.get("InstallProfile").key("Payload").required
    assert catalog.get("RemoveProfile").key("Identifier").type == "string"
    assert catalog.get("ClearPasscode").key("UnlockToken").type == "data"
    assert catalog.get("InstallApplication").key("iTunesStoreID").type == "integer"
    assert catalog.get("InstallApplication").key("ManagementFlags").allowed == (1, 4, 5)
    assert catalog.get("ProfileList").key("ManagedOnly").default is False
    update = catalog.get("ScheduleOSUpdate").key("Updates").items[0]
    assert update.type == "dictionary" and update.key("InstallAction").required
    assert "InstallASAP" in update.key("InstallAction").allowed
    assert catalog.get("DeclarativeManagement").key("Data").type == "data"
    # Platforms and supervision.
    lost = catalog.get("EnableLostMode")
    assert [(p.name, p.supervised) for p in lost.platforms] == [("iOS", True)]
    assert {p.name for p in catalog.get("DeviceInformation").platforms} == {"iOS", "macOS", "tvOS", "visionOS", "watchOS"}
    assert "macOS" not in {p.name for p in catalog.get("ClearPasscode").platforms}
    assert catalog.get("ShutDownDevice").keys == ()
    # Settings: an array of dictionaries told apart by Item.
    shapes = catalog.get("Settings").key("Settings").items
    assert {"DeviceName", "Bluetooth", "Wallpaper"} <= {shape.key("Item").allowed[0] for shape in shapes}


@pytest.mark.parametrize("request_type, destructive", [
    ("EraseDevice", True), ("DeviceLock", True), ("RestartDevice", True), ("ShutDownDevice", True),
    ("ClearPasscode", True), ("RemoveProfile", True), ("RemoveApplication", True), ("EnableLostMode", True),
    ("DeviceInformation", False), ("ProfileList", False), ("InstallProfile", False), ("DeviceLocation", False),
    ("NotACommand", False),
])
def test_destructive_commands(request_type, destructive):
    assert catalog.is_destructive(request_type) is destructive


def _walk(keys, path=""):
    for key in keys:
        yield f"{path}{key.name}", key
        yield from _walk(key.keys, f"{path}{key.name}.")
        yield from _walk(key.items, f"{path}{key.name}[].")


def test_every_entry_is_self_consistent():
    names = [spec.request_type for spec in catalog.commands()]
    assert len(names) == len(set(names))
    categories = [spec.category for spec in catalog.commands()]
    assert categories == sorted(categories, key=catalog.CATEGORIES.index)  # grouped, in CATEGORIES order
    for spec in catalog.commands():
        assert spec.category in catalog.CATEGORIES and spec.summary.endswith(".")
        assert spec.platforms, spec.request_type
        platform_names = {p.name for p in spec.platforms}
        assert all(p.introduced[0].isdigit() for p in spec.platforms)
        siblings = [key.name for key in spec.keys]
        assert len(siblings) == len(set(siblings)), spec.request_type
        for path, key in _walk(spec.keys):
            where = f"{spec.request_type}.{path}"
            assert key.type in catalog.TYPES, where
            assert set(key.platforms) <= platform_names, where
            assert not (key.keys and key.type != "dictionary"), where
            assert not (key.items and key.type != "array"), where
            names = [sub.name for sub in key.keys]
            assert len(names) == len(set(names)), where
            for value in key.allowed + ((key.default,) if key.default is not None else ()):
                assert catalog._is_type(key.type, value), (where, value)
            if key.default is not None and key.allowed:
                assert key.default in key.allowed, where
            assert key.describe()
    json.dumps(catalog.to_json())  # every fact is JSON


def test_the_generator_selects_the_commands_the_catalog_describes():
    spec = importlib.util.spec_from_file_location("gen_catalog", ROOT / "tools" / "gen_catalog.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert list(generator.SELECTION) == [s.request_type for s in catalog.commands()]


def test_the_generator_reads_facts_and_leaves_apples_prose(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_catalog", ROOT / "tools" / "gen_catalog.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    commands = tmp_path / "mdm" / "commands"
    commands.mkdir(parents=True)
    for index, request_type in enumerate(generator.SELECTION):
        (commands / f"c{index}.yaml").write_text(textwrap.dedent(f"""\
            title: A title we must not copy
            payload:
              requesttype: {request_type}
              supportedOS:
                iOS: {{introduced: '9.3', supervised: true}}
                macOS: {{introduced: n/a}}
                tvOS: {{introduced: '10.2'}}
            payloadkeys:
            - key: Pin
              type: <string>
              presence: optional
              content: Prose we must not copy.
              supportedOS:
                tvOS: {{introduced: n/a}}
            - key: Mode
              type: <integer>
              presence: required
              rangelist: [1, 4]
              default: 1
            - key: Names
              type: <array>
              subkeys:
              - key: NamesItem
                type: <string>
                subkeys:
                - {{key: Alpha, type: <string>}}
                - {{key: Beta, type: <string>}}
            - key: Config
              type: <dictionary>
              subkeys:
              - {{key: ANY, type: <any>}}
            """))
    text = generator.generate(tmp_path, "0123abc")
    assert "must not copy" not in text and "0123abc" in text
    out = tmp_path / "catalog_data.py"  # the command line writes what generate() gives
    assert generator.main([str(tmp_path), "--commit", "0123abc", "--out", str(out)]) == 0
    assert out.read_text() == text
    namespace: dict = {}
    exec(compile(text, "catalog_data", "exec"), namespace)  # noqa: S102 (our generator's output)
    facts = namespace["COMMANDS"]["EraseDevice"]
    assert facts["platforms"] == {"iOS": {"introduced": "9.3", "supervised": True},
                                  "tvOS": {"introduced": "10.2", "supervised": False}}
    pin, mode, names, config = facts["keys"]
    assert pin == {"name": "Pin", "type": "string", "required": False, "platforms": ["iOS"]}
    assert mode["required"] and mode["allowed"] == [1, 4] and mode["default"] == 1
    assert names["items"][0]["allowed"] == ["Alpha", "Beta"]
    assert config["type"] == "dictionary" and config["keys"] == []


def test_the_committed_facts_name_their_source():
    from appliance.protocol import catalog_data

    assert catalog_data.SOURCE.startswith("apple/device-management mdm/commands at ")
    assert catalog.to_json()["source"] == catalog_data.SOURCE


# --- checking (?strict=1) ---------------------------------------------------------------------------

def test_a_command_that_fits_passes():
    catalog.check({"RequestType": "DeviceInformation", "Queries": ["OSVersion", "SerialNumber"]})
    catalog.check({"RequestType": "EraseDevice", "PIN": "123456", "ReturnToService": {"Enabled": True}})
    catalog.check({"RequestType": "InstallApplication", "iTunesStoreID": 361309726, "Configuration": {"any": [1]}})
    catalog.check({"RequestType": "Settings", "Settings": [{"Item": "DeviceName", "DeviceName": "Front desk"},
                                                           {"Item": "Bluetooth", "Enabled": False}]})
    catalog.check({"RequestType": "ScheduleOSUpdate", "Updates": [{"InstallAction": "InstallASAP"}]})


@pytest.mark.parametrize("command, key, words", [
    ({"RequestType": "EraseDevise"}, "RequestType", "did you mean EraseDevice?"),
    ({"RequestType": "deviceinformation", "Queries": []}, "RequestType", "did you mean DeviceInformation?"),
    ({"Queries": []}, "RequestType", "no RequestType"),
    ({"RequestType": "DeviceInformation"}, "Queries", "missing key Queries (an array of strings)"),
    ({"RequestType": "DeviceInformation", "Queries": "OSVersion"}, "Queries", "must be an array of strings, got a string"),
    ({"RequestType": "DeviceInformation", "Queries": ["OSVerison"]}, "Queries[0]", "did you mean OSVersion?"),
    ({"RequestType": "EraseDevice", "PIN": 123456}, "PIN", "key PIN must be a string, got an integer"),
    ({"RequestType": "DeviceLock", "Pin": "1"}, "Pin", "unknown key Pin (did you mean PIN?)"),
    ({"RequestType": "ProfileList", "ManagedOnly": 1}, "ManagedOnly", "must be a boolean, got an integer"),
    ({"RequestType": "InstallApplication", "iTunesStoreID": True}, "iTunesStoreID", "must be an integer, got a boolean"),
    ({"RequestType": "InstallApplication", "ManagementFlags": 2}, "ManagementFlags", "expected 1, 4, 5"),
    ({"RequestType": "InstallProfile", "Payload": "PD94bWw="}, "Payload", "must be data, got a string"),
    ({"RequestType": "EraseDevice", "ReturnToService": {"Enabled": True, "WifiProfileData": b""}},
     "ReturnToService.WifiProfileData", "did you mean WiFiProfileData?"),
    ({"RequestType": "EraseDevice", "ReturnToService": {}}, "ReturnToService.Enabled", "missing key"),
    ({"RequestType": "Settings", "Settings": [{"Item": "DeviceNme"}]}, "Settings[0].Item", "did you mean DeviceName?"),
    ({"RequestType": "Settings", "Settings": [{"Item": "Bluetooth", "Enabled": "yes"}]}, "Settings[0].Enabled",
     "must be a boolean"),
    ({"RequestType": "ShutDownDevice", "Force": True}, "Force", "it takes no keys"),
])
def test_a_command_that_does_not_fit_is_refused_naming_the_key(command, key, words):
    with pytest.raises(CatalogError) as caught:
        catalog.check(command)
    assert caught.value.key == key
    assert words in str(caught.value), str(caught.value)


def test_did_you_mean_for_an_unknown_type_lists_suggestions():
    with pytest.raises(UnknownCommand) as caught:
        catalog.get("DeviceInfo")
    assert "DeviceInformation" in caught.value.suggestions
    with pytest.raises(UnknownCommand) as caught:
        catalog.get("Foo")
    assert caught.value.suggestions == () and "Foo is not a command in the catalog" in str(caught.value)


# --- building from text (-k KEY VALUE, form fields) -------------------------------------------------

def test_values_are_typed_by_the_catalog():
    assert catalog.build("EraseDevice", [("PIN", "012345")]) == {"RequestType": "EraseDevice", "PIN": "012345"}
    assert catalog.build("DeviceLock", [("PIN", "123456"), ("Message", "true")]) == \
        {"RequestType": "DeviceLock", "PIN": "123456", "Message": "true"}
    assert catalog.build("DeviceInformation", [("Queries", "OSVersion"), ("Queries", "SerialNumber")]) == \
        {"RequestType": "DeviceInformation", "Queries": ["OSVersion", "SerialNumber"]}
    assert catalog.build("DeviceInformation", [("Queries", '["OSVersion", "UDID"]')])["Queries"] == ["OSVersion", "UDID"]
    assert catalog.build("ProfileList", [("ManagedOnly", "yes")])["ManagedOnly"] is True
    assert catalog.build("RestartDevice", [("NotifyUser", "False")])["NotifyUser"] is False
    assert catalog.build("InstallApplication", [("iTunesStoreID", "361309726")])["iTunesStoreID"] == 361309726
    assert catalog.build("ClearPasscode", [("UnlockToken", "AAEC")])["UnlockToken"] == b"\x00\x01\x02"
    assert catalog.build("EraseDevice", [("ReturnToService", '{"Enabled": true, "MDMProfileData": {"$data": "AA=="}}')]) \
        ["ReturnToService"] == {"Enabled": True, "MDMProfileData": b"\x00"}
    updates = catalog.build("ScheduleOSUpdate", [("Updates", '{"InstallAction": "DownloadOnly"}'),
                                                 ("Updates", '{"InstallAction": "InstallASAP", "ProductVersion": "17.5"}')])
    assert [u["InstallAction"] for u in updates["Updates"]] == ["DownloadOnly", "InstallASAP"]
    built = catalog.build("Settings", [("Settings", '{"Item": "DeviceName", "DeviceName": "Desk 1"}')])
    assert built["Settings"] == [{"Item": "DeviceName", "DeviceName": "Desk 1"}]


def test_at_file_reads_data_and_property_lists_through_the_callers_reader():
    files = {"profile.mobileconfig": b"\x00profile\xff",
             "config.plist": plistlib.dumps({"ServerURL": "https://x"}),
             "updates.plist": plistlib.dumps([{"InstallAction": "InstallLater"}], fmt=plistlib.FMT_BINARY)}
    read = files.__getitem__
    assert catalog.build("InstallProfile", [("Payload", "@profile.mobileconfig")], read)["Payload"] == b"\x00profile\xff"
    assert catalog.build("InstallApplication", [("Identifier", "com.example.app"), ("Configuration", "@config.plist")],
                         read)["Configuration"] == {"ServerURL": "https://x"}
    assert catalog.build("ScheduleOSUpdate", [("Updates", "@updates.plist")], read)["Updates"] == \
        [{"InstallAction": "InstallLater"}]
    # A string key keeps "@..." as text; bytes from a form upload count as the file.
    assert catalog.build("DeviceLock", [("Message", "@home")], read)["Message"] == "@home"
    assert catalog.build("InstallProfile", [("Payload", b"<plist/>")])["Payload"] == b"<plist/>"


@pytest.mark.parametrize("request_type, values, key, words", [
    ("Foo", [], "RequestType", "not a command in the catalog"),
    ("DeviceLock", [("Pin", "1234")], "Pin", "did you mean PIN?"),
    ("DeviceInformation", [], "Queries", "missing key Queries"),
    ("DeviceInformation", [("Queries", "OSVerison")], "Queries[0]", "did you mean OSVersion?"),
    ("InstallApplication", [("iTunesStoreID", "12.5")], "iTunesStoreID", "must be an integer, got 12.5"),
    ("ProfileList", [("ManagedOnly", "maybe")], "ManagedOnly", "must be true or false"),
    ("ClearPasscode", [("UnlockToken", "not base64!")], "UnlockToken", "must be base64"),
    ("EraseDevice", [("PIN", "1"), ("PIN", "2")], "PIN", "given twice"),
    ("EraseDevice", [("ReturnToService", "{not json")], "ReturnToService", "must be JSON"),
    ("EraseDevice", [("ReturnToService", '{"Enabled": null}')], "ReturnToService", "null"),
    ("InstallProfile", [("Payload", b"x"), ("Payload", b"y")], "Payload", "given twice"),
])
def test_building_refuses_with_the_key_named(request_type, values, key, words):
    with pytest.raises(CatalogError) as caught:
        catalog.build(request_type, values)
    assert caught.value.key == key and words in str(caught.value), str(caught.value)


def test_dates_and_reals_are_typed():
    key = catalog.Key("When", "date")
    assert catalog._parse(key, "2026-01-02T03:04:05Z", "When", "X") == dt.datetime(2026, 1, 2, 3, 4, 5)
    with pytest.raises(CatalogError):
        catalog._parse(catalog.Key("Speed", "real"), "nan", "Speed", "X")
    assert catalog._parse(catalog.Key("Speed", "real"), "2.5", "Speed", "X") == 2.5
