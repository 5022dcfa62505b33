"""The ABM key pair and server token, and machine info signatures: files and signatures made by openssl and
cryptography's builders (tests/support), read by the appliance's identity code."""

from __future__ import annotations

import datetime as dt
import plistlib

import pytest
from cryptography import x509

from appliance.identity import abm_token
from appliance.identity.errors import SignatureInvalid, SignatureMalformed
from appliance.identity.machine_info import APPLE_DEVICE_CA_BUNDLE, MachineInfoAnchors, UntrustedMachineInfo
from appliance.protocol.machine_info import parse_machine_info
from appliance.protocol.errors import MessageError
from tests.support.dep_sim import DepSim
from tests.support.machine_info import DeviceChain, machine_info


@pytest.fixture(scope="module")
def keypair():
    return abm_token.make_keypair("main", "Example School")


@pytest.fixture(scope="module")
def sim():
    sim = DepSim()
    sim.add_server("main")
    return sim


def test_keypair_is_a_self_signed_certificate_naming_the_server(keypair):
    certificate = keypair.certificate
    assert certificate.subject == certificate.issuer
    assert "main" in certificate.subject.rfc4514_string() and "Example School" in certificate.subject.rfc4514_string()
    assert keypair.private_key.public_key().public_numbers() == certificate.public_key().public_numbers()


@pytest.mark.parametrize("cipher", ["aes256", "aes128", "des3"])
def test_token_file_from_abm_decrypts_with_the_servers_key(keypair, sim, cipher):
    data = sim.token_file("main", keypair.certificate_pem, cipher=cipher)
    assert data.startswith(b"MIME-Version") or b"pkcs7-mime" in data[:300]
    token = abm_token.decrypt_server_token(data, keypair)
    expected = sim.servers["main"].token
    assert (token.consumer_key, token.access_secret) == (expected.consumer_key, expected.access_secret)
    assert token.expires_at is not None and token.expires_at > dt.datetime.now(dt.UTC)


def test_token_for_another_key_pair_says_so(keypair, sim):
    other = abm_token.make_keypair("other", "Example School")
    data = sim.token_file("main", other.certificate_pem)
    with pytest.raises(abm_token.TokenError, match="encrypted to another certificate"):
        abm_token.decrypt_server_token(data, keypair)


def test_expired_token_is_refused_with_its_date(keypair, sim):
    token = {**sim.servers["main"].token_json(), "access_token_expiry": "2020-01-02T03:04:05Z"}
    data = sim.token_file("main", keypair.certificate_pem, token=token)
    with pytest.raises(abm_token.TokenError, match="expired on 2020-01-02"):
        abm_token.decrypt_server_token(data, keypair)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"hello, this is not a token", "not a server token file"),
    (b"MIME-Version: 1.0\nContent-Type: application/pkcs7-mime\n\n!!!not base64!!!", "not base64"),
    (b"MIME-Version: 1.0\nContent-Type: application/pkcs7-mime\n\nMIIBAAo=", "not a server token file"),
    (b"0\x82\x00\x03abc", "not a server token file"),
])
def test_a_wrong_file_is_refused_in_one_line(keypair, data, reason):
    with pytest.raises(abm_token.TokenError, match=reason) as caught:
        abm_token.decrypt_server_token(data, keypair)
    assert "\n" not in str(caught.value)


# --- machine info ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return DeviceChain(tmp_path_factory.mktemp("chain"))


def test_signed_machine_info_verifies_through_an_expired_intermediate(chain):
    anchors = MachineInfoAnchors([chain.root])
    body = chain.sign(machine_info("UDID-1", "C02TEST1"))
    info = parse_machine_info(anchors.verify(body))
    assert (info.udid, info.serial_number, info.product, info.language) == ("UDID-1", "C02TEST1", "Mac14,2", "en-US")


def test_sha1_signature_made_by_openssl_verifies(chain):
    body = chain.sign(machine_info("UDID-2", "C02TEST2"), sha1=True)
    assert parse_machine_info(MachineInfoAnchors([chain.root]).verify(body)).serial_number == "C02TEST2"


def test_chain_without_included_intermediates_needs_them_among_the_anchors(chain):
    body = chain.sign(machine_info("UDID-3", "C02TEST3"), include_chain=False)
    with pytest.raises(UntrustedMachineInfo):
        MachineInfoAnchors([chain.root]).verify(body)
    assert MachineInfoAnchors([chain.root, chain.authority, chain.device_ca]).verify(body)


def test_signature_from_another_ca_is_untrusted(chain, tmp_path):
    stranger = DeviceChain(tmp_path)
    body = stranger.sign(machine_info("UDID-4", "C02TEST4"))
    with pytest.raises(UntrustedMachineInfo, match="does not chain"):
        MachineInfoAnchors([chain.root]).verify(body)


def test_altered_content_does_not_verify(chain):
    body = chain.sign(machine_info("UDID-5", "C02TEST5"))
    forged = body.replace(b"C02TEST5", b"C02TEST6")
    assert forged != body
    with pytest.raises(SignatureInvalid):
        MachineInfoAnchors([chain.root]).verify(forged)


@pytest.mark.parametrize("body", [b"0\x03\x02\x01\x00", plistlib.dumps({"UDID": "x"}), b"\x30" + b"\xff" * 40])
def test_garbage_is_malformed(chain, body):
    with pytest.raises(SignatureMalformed):
        MachineInfoAnchors([chain.root]).verify(body)


def test_the_shipped_apple_bundle_is_the_chain_apple_documents():
    certificates = x509.load_pem_x509_certificates(APPLE_DEVICE_CA_BUNDLE.read_bytes())
    names = [c.subject.rfc4514_string() for c in certificates]
    assert any("CN=Apple Root CA," in name for name in names)
    assert any("CN=Apple iPhone Device CA," in name for name in names)
    anchors = MachineInfoAnchors.from_files([APPLE_DEVICE_CA_BUNDLE])
    assert len(anchors) == 3
    # Each certificate is signed by the next (SHA-1 signatures, which verify_directly_issued_by refuses).
    from appliance.identity.machine_info import _signed_by

    assert _signed_by(certificates[0], certificates[1]) and _signed_by(certificates[1], certificates[2])


@pytest.mark.parametrize("info, key", [
    ({"SERIAL": "S"}, "UDID"),
    ({"UDID": "U", "SERIAL": ""}, "SERIAL"),
    ({"UDID": "U", "SERIAL": "S", "PRODUCT": 7}, "PRODUCT"),
])
def test_machine_info_without_its_keys_names_them(info, key):
    with pytest.raises(MessageError, match=key):
        parse_machine_info(plistlib.dumps(info))
