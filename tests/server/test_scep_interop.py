"""A real, widely deployed SCEP client against the appliance: micromdm/scep's `scepclient` (Go).

Debian ships it (`apt-get install scep`); without it these tests are skipped. It writes envelopes
with Go's pkcs7 (DES-CBC, encryptedContent as a BER-constructed string) and derives the
transaction ID from the public key, so a rerun with the same key and CSR is a replay.
"""

from __future__ import annotations

import os
import shutil
import subprocess

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


@pytest.mark.skipif(shutil.which("scepserver") is None, reason="scepserver (Debian package scep) not installed")
async def test_our_test_client_is_understood_by_micromdm_scepserver(tmp_path):
    """Checks the test client itself against the reference server, so its envelopes, signatures and
    CertRep reading are not merely in agreement with our own server."""
    import httpx
    from cryptography import x509

    from tests.support import scep_client as client
    from tests.support.harness import free_port

    await trio.run_process(["scepserver", "ca", "-init", "-keySize", "2048"], cwd=str(tmp_path), capture_stdout=True,
                           capture_stderr=True)
    port = free_port()
    process = await trio.lowlevel.open_process(
        ["scepserver", "-depot", "depot", "-port", str(port), "-challenge", "pw"], cwd=str(tmp_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/scep"
        async with httpx.AsyncClient(timeout=10) as http:
            for _ in range(100):
                try:
                    response = await http.get(base, params={"operation": "GetCACert"})
                    break
                except httpx.ConnectError:
                    await trio.sleep(0.05)
            ca = x509.load_der_x509_certificate(response.content)
            for cipher in client.CIPHERS:
                for digest in ("sha1", "sha256"):
                    # micromdm refuses a second certificate for the same DN: one name per request.
                    requester = client.Requester(common_name=f"sim-{cipher}-{digest}", challenge="pw")
                    request = client.pkcs_req(requester, ca, cipher=cipher, digest=digest)
                    reply = await http.post(base + "?operation=PKIOperation", content=request.der)
                    answer = client.read_cert_rep(reply.content, ca, request)
                    assert answer.status == 0, (cipher, digest, answer.fail_info)
                    assert answer.certificates[-1].public_key() == requester.key.public_key()
    finally:
        process.terminate()
        await process.wait()
