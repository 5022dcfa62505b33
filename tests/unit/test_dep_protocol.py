"""The DEP API's sans-I/O pieces: OAuth 1.0a signing, the server token, fetch/sync answers, profiles, errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from appliance.protocol import dep, oauth1
from appliance.protocol.dep import DepAnswerError


def test_oauth1_signature_matches_the_specifications_worked_example():
    # OAuth Core 1.0, Appendix A.5: the photos.example.net request and its published signature.
    credentials = oauth1.Credentials("dpf43f3p2l4k3l03", "kd94hf93k423kf44", "nnch734d00sl2jdk", "pfkkdhi9sl3r4s00")
    header = oauth1.authorization_header("GET", "http://photos.example.net/photos?file=vacation.jpg&size=original",
                                         credentials, timestamp=1191242096, nonce="kllo9940pd9333jh")
    assert header.startswith('OAuth realm="ADM", ')
    assert 'oauth_signature="tR3%2BTy81lMeYAr%2FFid0kMTYa%2FWM%3D"' in header
    assert 'oauth_signature_method="HMAC-SHA1"' in header and 'oauth_version="1.0"' in header


def test_oauth1_base_string_uri_drops_default_ports_and_lowercases():
    assert oauth1.base_string_uri("HTTPS://MDMEnrollment.Apple.com:443/session") == \
        "https://mdmenrollment.apple.com/session"
    assert oauth1.base_string_uri("http://127.0.0.1:8080/session?x=1") == "http://127.0.0.1:8080/session"
    assert oauth1.percent_encode("a b+c/é~") == "a%20b%2Bc%2F%C3%A9~"


def test_credentials_repr_keeps_the_secrets_out():
    credentials = oauth1.Credentials("CK_abcdefgh12345", "secret-1", "token-2", "secret-3")
    assert "secret" not in repr(credentials) and "token-2" not in repr(credentials)
    token = dep.ServerToken("CK_1234567890", "cs", "at", "as", None)
    assert "cs" not in repr(token).replace("consumer_key", "")


TOKEN = {"consumer_key": "CK_1", "consumer_secret": "CS_2", "access_token": "AT_3", "access_secret": "AS_4",
         "access_token_expiry": "2031-05-29T19:08:17Z"}


def test_server_token_is_read_from_its_mime_wrapped_message():
    text = ("Content-Type: text/plain;charset=UTF-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
            f"-----BEGIN MESSAGE-----\r\n{json.dumps(TOKEN)}\r\n-----END MESSAGE-----\r\n").encode()
    token = dep.parse_server_token(text)
    assert (token.consumer_key, token.consumer_secret, token.access_token, token.access_secret) == \
        ("CK_1", "CS_2", "AT_3", "AS_4")
    assert token.expires_at == datetime(2031, 5, 29, 19, 8, 17, tzinfo=UTC)
    assert dep.parse_server_token(token.as_json()) == token  # what is stored reads back the same


@pytest.mark.parametrize("text, reason", [
    (b"\xff\xfe", "not UTF-8"),
    (b"no json here", "no JSON"),
    (b"[1, 2]", "not an object"),
    (json.dumps({**TOKEN, "access_secret": ""}).encode(), "access_secret"),
    (json.dumps({**TOKEN, "access_token_expiry": "soon"}).encode(), "access_token_expiry"),
])
def test_a_broken_token_is_refused_naming_what_is_wrong(text, reason):
    with pytest.raises(DepAnswerError, match=reason):
        dep.parse_server_token(text)


def test_device_page_is_read_with_times_and_op_types():
    page = dep.parse_device_page(json.dumps({
        "cursor": "abc", "more_to_follow": True, "fetched_until": "2026-01-01T00:00:00Z",
        "devices": [{"serial_number": " C02X1 ", "model": "MacBook Air", "os": "OSX", "op_type": "Added",
                     "op_date": "2026-01-01T00:00:00.5+01:00", "profile_status": "empty"}],
    }).encode())
    assert page.cursor == "abc" and page.more_to_follow
    device = page.devices[0]
    assert device.serial_number == "C02X1" and device.op_type == "added"
    assert device.op_date == datetime(2025, 12, 31, 23, 0, 0, 500000, tzinfo=UTC)


@pytest.mark.parametrize("answer, key", [
    ({"more_to_follow": False}, "cursor"),
    ({"cursor": "c", "more_to_follow": "yes"}, "more_to_follow"),
    ({"cursor": "c", "devices": {}}, "devices"),
    ({"cursor": "c", "devices": [{"model": "x"}]}, r"devices\[0\].serial_number"),
    ({"cursor": "c", "devices": [{"serial_number": "S", "op_date": "yesterday"}]}, r"devices\[0\].op_date"),
    ({"cursor": "c", "devices": [{"serial_number": "S", "color": 7}]}, r"devices\[0\].color"),
])
def test_a_malformed_page_names_the_bad_key(answer, key):
    with pytest.raises(DepAnswerError, match=key):
        dep.parse_device_page(json.dumps(answer).encode())


def test_sync_duplicates_resolve_to_the_latest_op_date():
    def record(op_type, day):
        return dep.DepDevice("S1", op_type=op_type, op_date=datetime(2026, 1, day, tzinfo=UTC))

    latest = dep.latest_per_serial([record("added", 1), record("deleted", 3), record("modified", 2),
                                    dep.DepDevice("S2", op_type="added")])
    assert {d.serial_number: d.op_type for d in latest} == {"S1": "deleted", "S2": "added"}


@pytest.mark.parametrize("body, code", [
    (b"EXPIRED_CURSOR", "EXPIRED_CURSOR"),
    (b'"INVALID_CURSOR"', "INVALID_CURSOR"),
    (b'{"code": "T_C_NOT_SIGNED", "message": "x"}', "T_C_NOT_SIGNED"),
    (b"<html>oops</html>", None),
    (b"", None),
])
def test_error_codes_are_read_in_every_form_the_service_writes(body, code):
    assert dep.error_code(body) == code


def test_profile_body_carries_the_settings_and_changes_its_digest_with_them():
    settings = dep.ProfileSettings(profile_name="Example", url="https://mdm.example.org/mdm/ade",
                                   department="IT", skip_setup_items=("Siri", "Privacy"), anchor_certs=("QUJD",))
    body = dep.define_profile_body(settings)
    assert body["is_mdm_removable"] is False and body["is_supervised"] is True and body["is_mandatory"] is True
    assert body["skip_setup_items"] == ["Siri", "Privacy"] and body["anchor_certs"] == ["QUJD"]
    assert "support_phone_number" not in body
    other = dep.define_profile_body(dep.ProfileSettings(profile_name="Example", url=settings.url, department="Ops",
                                                        skip_setup_items=("Siri", "Privacy"), anchor_certs=("QUJD",)))
    assert dep.profile_hash(body) != dep.profile_hash(other)
    assert dep.profile_hash(body) == dep.profile_hash(dict(reversed(list(body.items()))))
    with pytest.raises(ValueError, match="Sirri"):
        dep.define_profile_body(dep.ProfileSettings(profile_name="x", url=settings.url, skip_setup_items=("Sirri",)))


def test_assign_answer_is_read_per_device():
    answer = dep.parse_assign_answer(b'{"profile_uuid": "P1", "devices": {"A": "SUCCESS", "B": "not_accessible"}}')
    assert answer.profile_uuid == "P1" and answer.devices == {"A": "SUCCESS", "B": "NOT_ACCESSIBLE"}
    with pytest.raises(DepAnswerError, match="devices"):
        dep.parse_assign_answer(b'{"devices": {"A": 1}}')
    with pytest.raises(DepAnswerError, match="profile_uuid"):
        dep.parse_define_answer(b'{"devices": {}}')
