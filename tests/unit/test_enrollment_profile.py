"""The enrollment profile builder, sans-I/O: read back with plain plistlib, every key checked."""

from __future__ import annotations

import plistlib
import uuid

import pytest

from appliance.protocol.profile import (
    Pkcs12Identity,
    ProfileError,
    ProfileSettings,
    ScepIdentity,
    build_enrollment_profile,
    encode_profile,
)

TOPIC = "com.apple.mgmt.External.11111111-2222-3333-4444-555555555555"


def _settings(**changes) -> ProfileSettings:
    values = dict(
        public_url="https://mdm.example.org:8443/",
        organization="Example Org",
        identifier="org.example.enroll",
        topic=TOPIC,
        identity=ScepIdentity(challenge="c-123", subject_common_name="MDM identity x", name="Example Org"),
        root_certificate_der=b"\x30\x03\x02\x01\x01",
    )
    values.update(changes)
    return ProfileSettings(**values)


def _read(settings: ProfileSettings) -> dict:
    return plistlib.loads(encode_profile(build_enrollment_profile(settings)))


def _by_type(profile: dict) -> dict[str, dict]:
    return {payload["PayloadType"]: payload for payload in profile["PayloadContent"]}


def test_top_level_keys():
    profile = _read(_settings())
    assert profile["PayloadType"] == "Configuration"
    assert profile["PayloadVersion"] == 1
    assert profile["PayloadIdentifier"] == "org.example.enroll"
    assert uuid.UUID(profile["PayloadUUID"])
    assert profile["PayloadOrganization"] == "Example Org"
    assert "Example Org" in profile["PayloadDisplayName"]
    uuids = [p["PayloadUUID"] for p in profile["PayloadContent"]] + [profile["PayloadUUID"]]
    assert len(set(uuids)) == len(uuids)
    for payload in profile["PayloadContent"]:
        assert payload["PayloadVersion"] == 1
        assert payload["PayloadIdentifier"].startswith("org.example.enroll.")


def test_mdm_payload_names_the_scep_identity_and_the_urls():
    payloads = _by_type(_read(_settings()))
    mdm, scep = payloads["com.apple.mdm"], payloads["com.apple.security.scep"]
    assert mdm["IdentityCertificateUUID"] == scep["PayloadUUID"]
    assert mdm["ServerURL"] == "https://mdm.example.org:8443/mdm/connect"
    assert mdm["CheckInURL"] == "https://mdm.example.org:8443/mdm/checkin"
    assert mdm["Topic"] == TOPIC
    assert mdm["SignMessage"] is True
    assert mdm["AccessRights"] == 8191
    assert mdm["CheckOutWhenRemoved"] is True
    assert mdm["ServerCapabilities"] == ["com.apple.mdm.per-user-connections", "com.apple.mdm.bootstraptoken"]
    content = scep["PayloadContent"]
    assert content["URL"] == "https://mdm.example.org:8443/scep"
    assert content["Challenge"] == "c-123"
    assert content["Keysize"] == 2048
    assert content["Key Type"] == "RSA"
    assert content["Key Usage"] == 5
    assert content["Name"] == "Example Org"
    assert content["Subject"] == [[["O", "Example Org"]], [["CN", "MDM identity x"]]]
    assert "CAFingerprint" not in content


def test_root_payload_only_when_given():
    with_root = _by_type(_read(_settings()))
    assert with_root["com.apple.security.root"]["PayloadContent"] == b"\x30\x03\x02\x01\x01"
    assert "com.apple.security.root" not in _by_type(_read(_settings(root_certificate_der=None)))


def test_pkcs12_identity_replaces_scep():
    payloads = _by_type(_read(_settings(identity=Pkcs12Identity(pkcs12=b"p12", password="pw"))))
    assert "com.apple.security.scep" not in payloads
    p12 = payloads["com.apple.security.pkcs12"]
    assert (p12["PayloadContent"], p12["Password"]) == (b"p12", "pw")
    assert payloads["com.apple.mdm"]["IdentityCertificateUUID"] == p12["PayloadUUID"]


@pytest.mark.parametrize("topic", [None, ""])
def test_no_topic_no_profile(topic):
    with pytest.raises(ProfileError, match="mdm-appliance push-cert import"):
        build_enrollment_profile(_settings(topic=topic))


def test_scep_ca_fingerprint_is_plist_data():
    identity = ScepIdentity(challenge="c", subject_common_name="x", ca_fingerprint=bytes(range(20)))
    content = _by_type(_read(_settings(identity=identity)))["com.apple.security.scep"]["PayloadContent"]
    assert content["CAFingerprint"] == bytes(range(20))  # plistlib reads <data> back as bytes


def test_every_payload_has_the_common_keys_with_apple_types():
    for identity in (ScepIdentity(challenge="c", subject_common_name="x"), Pkcs12Identity(b"p12", "pw")):
        for payload in _read(_settings(identity=identity))["PayloadContent"]:
            assert isinstance(payload["PayloadType"], str) and payload["PayloadType"].startswith("com.apple.")
            assert type(payload["PayloadVersion"]) is int
            assert isinstance(payload["PayloadIdentifier"], str)
            assert str(uuid.UUID(payload["PayloadUUID"])).upper() == payload["PayloadUUID"]


def test_an_http_public_url_builds_no_profile():
    with pytest.raises(ProfileError, match="https"):
        build_enrollment_profile(_settings(public_url="http://mdm.example.org"))
