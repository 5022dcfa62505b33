"""Reports made readable for the console (appliance/web/console/results.py); reports built with plistlib."""

from __future__ import annotations

import plistlib

from appliance.web.console import results


def test_query_responses_become_facts():
    raw = plistlib.dumps({"UDID": "U", "CommandUUID": "C", "Status": "Acknowledged",
                          "QueryResponses": {"OSVersion": "14.4", "IsSupervised": True, "DeviceName": "Mac"}})
    view = results.view("DeviceInformation", "Acknowledged", raw)
    assert ("OSVersion", "14.4") in view["facts"] and ("IsSupervised", "yes") in view["facts"]
    assert not any(key in ("UDID", "CommandUUID", "Status") for key, _ in view["facts"])


def test_lists_of_dictionaries_become_tables():
    raw = plistlib.dumps({"Status": "Acknowledged", "ProfileList": [
        {"PayloadDisplayName": "Wi-Fi", "PayloadIdentifier": "org.example.wifi", "PayloadContent": [{}]},
        {"PayloadDisplayName": "VPN", "PayloadIdentifier": "org.example.vpn"}]})
    table = results.view("ProfileList", "Acknowledged", raw)["tables"][0]
    assert table["title"] == "ProfileList"
    assert table["columns"] == ["PayloadDisplayName", "PayloadIdentifier"]
    assert table["rows"] == [["Wi-Fi", "org.example.wifi"], ["VPN", "org.example.vpn"]]


def test_error_chain_is_shown_with_code_domain_and_description():
    chain = [{"ErrorCode": 12021, "ErrorDomain": "MCMDMErrorDomain", "LocalizedDescription": "Nope",
              "USEnglishDescription": "Not allowed"}]
    raw = plistlib.dumps({"Status": "Error", "ErrorChain": chain})
    assert results.view(None, "Error", raw)["errors"] == [
        {"code": 12021, "domain": "MCMDMErrorDomain", "description": "Not allowed"}]
    assert results.error_chain('[{"ErrorCode": 1, "ErrorDomain": "D"}]') == [{"code": 1, "domain": "D", "description": None}]


def test_a_result_that_is_not_a_plist_is_said_so():
    view = results.view(None, "Acknowledged", b"\x00not a plist")
    assert view["facts"] == [("result", "not a property list (12 bytes)")]
