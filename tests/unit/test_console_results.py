"""Commands and reports as the console shows them (appliance/web/console/results.py); built with plistlib."""

from __future__ import annotations

import plistlib

from appliance.web.console import results


def test_a_report_is_summarized_by_its_command():
    raw = plistlib.dumps({"UDID": "U", "CommandUUID": "C", "Status": "Acknowledged",
                          "ProfileList": [{"PayloadDisplayName": "Wi-Fi", "PayloadIdentifier": "org.example.wifi"}]})
    summary = results.view("ProfileList", raw)
    assert summary.status == "Acknowledged"
    assert any("org.example.wifi" in row for table in summary.tables for row in table.rows)


def test_stored_error_chains_are_read_back():
    chain = results.error_chain('[{"ErrorCode": 12021, "ErrorDomain": "MCMDMErrorDomain", '
                                '"USEnglishDescription": "Not allowed"}]')
    assert [(e.code, e.domain, e.description) for e in chain] == [(12021, "MCMDMErrorDomain", "Not allowed")]
    assert results.error_chain(None) == ()
    assert results.error_chain("not json")[0].description == "not json"


def test_what_a_command_asked_for_leaves_out_the_request_type():
    body = plistlib.dumps({"CommandUUID": "C", "Command": {"RequestType": "DeviceLock", "PIN": "123456",
                                                           "Message": "Lost"}})
    assert sorted(results.sent(body)) == [("Message", "Lost"), ("PIN", "123456")]
    assert results.sent(b"garbage")[0][0] == "command"
