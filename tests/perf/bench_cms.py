"""Cost of identifying a device request: Mdm-Signature verify and trust check, per call.

    PYTHONPATH=. /work/venv/bin/python tests/perf/bench_cms.py [--seconds 2]

Vectors come from `openssl cms -sign` (tests/support/identity_pki.py); a ~1 KiB plist body like an Idle report.
Prints CPU microseconds per call (median of 5 runs) for each case.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import statistics
import time

from appliance.identity.cms import verify_detached_signature
from appliance.identity.trust import TrustAnchors
from tests.support.identity_pki import builder_sign, issue, make_ca, openssl_sign

BODY = b"<plist><dict><key>Status</key><string>Idle</string><key>UDID</key><string>" + b"0" * 900 + b"</string></dict></plist>"


def per_call_us(fn, seconds: float) -> float:
    # CPU time of this process, not wall time: other work on the shared cores does not count.
    runs = []
    for _ in range(5):
        calls = 0
        started = time.process_time()
        while time.process_time() - started < seconds / 5:
            fn()
            calls += 1
        runs.append((time.process_time() - started) / calls * 1e6)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per case")
    seconds = parser.parse_args().seconds

    rsa_ca, ec_ca = make_ca("Bench CA"), make_ca("Bench EC CA", "ec")
    rsa_device, ec_device = issue(rsa_ca, "rsa-device"), issue(ec_ca, "ec-device", "ec")
    anchors = TrustAnchors([rsa_ca.cert, ec_ca.cert], dt.timedelta(minutes=5))
    cases = {
        "RSA-2048 PKCS#1 v1.5, SHA-256, signed attributes (openssl)": (openssl_sign(rsa_device, BODY), rsa_device),
        "RSA-2048 PKCS#1 v1.5, SHA-1, signed attributes (openssl)": (openssl_sign(rsa_device, BODY, "-md", "sha1"), rsa_device),
        "RSA-2048 PSS, SHA-256 (openssl)": (openssl_sign(rsa_device, BODY, "-keyopt", "rsa_padding_mode:pss"), rsa_device),
        "RSA-2048, no signed attributes (openssl -noattr)": (openssl_sign(rsa_device, BODY, "-noattr"), rsa_device),
        "ECDSA P-256, SHA-256 (cryptography builder)": (builder_sign(ec_device, BODY), ec_device),
    }
    print(f"body {len(BODY)} bytes; CPU time per call, median of 5 runs, {seconds:.1f} s per case")
    for name, (der, device) in cases.items():
        header = base64.b64encode(der)
        assert verify_detached_signature(header, BODY) == device.cert
        us = per_call_us(lambda: verify_detached_signature(header, BODY), seconds)
        print(f"  verify_detached_signature  {name}: {us:7.0f} µs")
    for label, device in (("RSA-2048 CA", rsa_device), ("ECDSA P-256 CA", ec_device)):
        # First sight of a certificate: the issuer's signature is verified (fresh anchors each call).
        us = per_call_us(lambda: TrustAnchors([rsa_ca.cert, ec_ca.cert], dt.timedelta(minutes=5)).check(device.cert), seconds)
        print(f"  TrustAnchors.check         {label}, first sight of the certificate: {us:7.0f} µs")
        # Every later request with it: only the validity dates are checked.
        us = per_call_us(lambda: anchors.check(device.cert), seconds)
        print(f"  TrustAnchors.check         {label}, certificate seen before: {us:7.0f} µs")


if __name__ == "__main__":
    main()
