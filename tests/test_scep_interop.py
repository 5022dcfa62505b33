"""A real, widely deployed SCEP client against the appliance: micromdm/scep's `scepclient` (Go).

Debian ships it (`apt-get install scep`); without it these tests are skipped. It writes envelopes
with Go's pkcs7 (DES-CBC, encryptedContent as a BER-constructed string) and derives the
transaction ID from the public key, so a rerun with the same key and CSR is a replay.
"""

from __future__ import annotations

import os
import shutil

import pytest
import trio
from cryptography import x509

pytestmark = pytest.mark.skipif(shutil.which("scepclient") is None, reason="scepclient (Debian package scep) not installed")


async def _scepclient(server, workdir, challenge: str) -> trio.CompletedProcess:
    # Go reads extra trust anchors from SSL_CERT_FILE: the appliance CA that issued the TLS certificate.
    env = {**os.environ, "SSL_CERT_FILE": str(server.ca_file)}
    return await trio.run_process(
        ["scepclient", "-server-url", server.base_url + "/scep", "-challenge", challenge,
         "-private-key", str(workdir / "key.pem"), "-certificate", str(workdir / "cert.pem"),
         "-cn", "go-scepclient"],
        env=env, cwd=str(workdir), capture_stdout=True, capture_stderr=True, check=False)


async def test_micromdm_scepclient_enrolls(server, tmp_path):
    done = await _scepclient(server, tmp_path, "test-challenge")
    output = (done.stdout + done.stderr).decode()
    assert done.returncode == 0 and "pkiStatus=SUCCESS" in output, output
    cert = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    cert.verify_directly_issued_by(server.runtime.ca.certificate)
    assert cert.subject.rfc4514_string().startswith("CN=go-scepclient")


async def test_micromdm_scepclient_with_a_wrong_challenge_gets_bad_request(server, tmp_path):
    done = await _scepclient(server, tmp_path, "wrong")
    output = (done.stdout + done.stderr).decode()
    assert "failInfo: badRequest" in output, output
    assert not (tmp_path / "cert.pem").exists()
