"""Trust check of device certificates: issued by an anchor, inside validity give or take skew."""

import datetime as dt

import pytest

from appliance.identity.errors import UntrustedCertificate
from appliance.identity.trust import TrustAnchors
from tests.support.identity_pki import NOW, issue, make_ca

SKEW = dt.timedelta(minutes=5)


@pytest.fixture(scope="module")
def rsa_ca():
    return make_ca("Appliance CA")


@pytest.fixture(scope="module")
def ec_ca():
    return make_ca("Site EC CA", "ec")


@pytest.fixture(scope="module")
def anchors(rsa_ca, ec_ca):
    return TrustAnchors([rsa_ca.cert, ec_ca.cert], SKEW)


def test_certificate_from_rsa_anchor_accepted(anchors, rsa_ca):
    anchors.check(issue(rsa_ca, "device").cert)
    anchors.check(issue(rsa_ca, "ec-key-device", "ec").cert)


def test_certificate_from_ec_anchor_accepted(anchors, ec_ca):
    anchors.check(issue(ec_ca, "device").cert)


def test_certificate_without_subject_alt_name_accepted(anchors, rsa_ca):
    cert = issue(rsa_ca, "scep-device").cert
    assert not [e for e in cert.extensions if e.oid.dotted_string == "2.5.29.17"]
    anchors.check(cert)


def test_certificate_from_another_ca_refused(anchors):
    stranger = make_ca("Appliance CA")  # same name as ours, different key
    with pytest.raises(UntrustedCertificate, match="does not verify"):
        anchors.check(issue(stranger, "device").cert)
    elsewhere = make_ca("Someone Else")
    with pytest.raises(UntrustedCertificate, match="not issued by a trusted CA"):
        anchors.check(issue(elsewhere, "device").cert)


def test_self_signed_certificate_refused(anchors):
    with pytest.raises(UntrustedCertificate):
        anchors.check(make_ca("device").cert)


def test_anchor_itself_is_not_a_device_identity(anchors, rsa_ca):
    with pytest.raises(UntrustedCertificate, match="CA certificate"):
        anchors.check(rsa_ca.cert)


def test_expired_certificate_refused(anchors, rsa_ca):
    cert = issue(rsa_ca, "old", not_before=NOW - dt.timedelta(days=400), not_after=NOW - dt.timedelta(days=1)).cert
    with pytest.raises(UntrustedCertificate, match="expired"):
        anchors.check(cert)


def test_just_expired_within_skew_accepted(anchors, rsa_ca):
    cert = issue(rsa_ca, "edge", not_before=NOW - dt.timedelta(days=1), not_after=NOW).cert
    anchors.check(cert, now=NOW + dt.timedelta(minutes=4))
    with pytest.raises(UntrustedCertificate, match="expired"):
        anchors.check(cert, now=NOW + dt.timedelta(minutes=6))


def test_not_yet_valid_within_skew_accepted(anchors, rsa_ca):
    cert = issue(rsa_ca, "early", not_before=NOW + dt.timedelta(minutes=3)).cert
    anchors.check(cert, now=NOW)


def test_not_yet_valid_beyond_skew_refused(anchors, rsa_ca):
    cert = issue(rsa_ca, "future", not_before=NOW + dt.timedelta(minutes=10)).cert
    with pytest.raises(UntrustedCertificate, match="not yet valid"):
        anchors.check(cert, now=NOW)


def test_zero_skew_is_exact(rsa_ca):
    strict = TrustAnchors([rsa_ca.cert], dt.timedelta(0))
    cert = issue(rsa_ca, "early", not_before=NOW + dt.timedelta(seconds=30)).cert
    with pytest.raises(UntrustedCertificate, match="not yet valid"):
        strict.check(cert, now=NOW)
    strict.check(cert, now=NOW + dt.timedelta(seconds=30))


def test_renewed_ca_with_same_name_both_trusted(rsa_ca):
    renewed = make_ca("Appliance CA")
    both = TrustAnchors([rsa_ca.cert, renewed.cert], SKEW)
    both.check(issue(rsa_ca, "before-renewal").cert)
    both.check(issue(renewed, "after-renewal").cert)
    assert len(both) == 2


def test_end_entity_certificate_refused_as_anchor(rsa_ca):
    with pytest.raises(ValueError, match="not a CA"):
        TrustAnchors([issue(rsa_ca, "device").cert], SKEW)


def test_a_trusted_certificate_still_has_its_dates_checked_on_every_request(rsa_ca):
    anchors = TrustAnchors([rsa_ca.cert], SKEW)
    cert = issue(rsa_ca, "window", not_before=NOW, not_after=NOW + dt.timedelta(days=1)).cert
    for _ in range(2):  # the second check is answered from what the first one proved about the issuer
        anchors.check(cert, now=NOW + dt.timedelta(hours=1))
    with pytest.raises(UntrustedCertificate, match="not yet valid"):
        anchors.check(cert, now=NOW - dt.timedelta(hours=1))
    with pytest.raises(UntrustedCertificate, match="expired"):
        anchors.check(cert, now=NOW + dt.timedelta(days=2))


def test_what_one_set_of_anchors_proved_does_not_carry_over_to_another(rsa_ca):
    cert = issue(rsa_ca, "device").cert
    TrustAnchors([rsa_ca.cert], SKEW).check(cert)
    others = TrustAnchors([make_ca("Appliance CA").cert], SKEW)  # same name, different key
    for _ in range(2):
        with pytest.raises(UntrustedCertificate, match="does not verify"):
            others.check(cert)
