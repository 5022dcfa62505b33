"""A simulated Apple device, built without any appliance code: plistlib for messages, cryptography's
PKCS7SignatureBuilder for Mdm-Signature (detached, DER), h11 over a trio TLS stream for HTTP/1.1.

    from tests.support.device_sim import DeviceSim, TestCA

    ca = TestCA("Test Device CA")                       # write ca.pem_path into [identity] trusted_ca_files
    cert, key = ca.issue("DEVICE-UDID-1")               # or a certificate the appliance CA issued via SCEP
    ctx = server.ssl_context()                          # trusts the server's TLS certificate
    async with DeviceSim(server.base_url, ctx, cert, key, "DEVICE-UDID-1") as device:
        await device.enroll()                           # Authenticate + TokenUpdate, each must answer 200
        reply = await device.idle()                     # Reply(status, body, headers)
        while reply.command is not None:                # the command plist as a dict
            reply = await device.acknowledge(reply.command_uuid)
        done = await device.answer_commands()           # or: answer every queued command as a Mac would
        # an InstallProfile carrying the enrollment profile (identity renewal): SCEP with its challenge,
        # then every request goes with the new identity
        cert, key, profile = await device.install_enrollment_profile(command["Command"]["Payload"])

Every request carries Mdm-Signature unless sign=False (then give an ssl_context that holds the
device certificate as TLS client certificate, see client_context()). One keep-alive connection per
DeviceSim, opened lazily and reopened after the server closes it. `device.user("UserGUID")` speaks on a
user channel of the same device. `device.send(path, body, content_type=..., headers=...)` sends
anything (for bad-input tests). Nothing here raises on a 4xx: tests look at Reply.status.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import plistlib
import ssl
import subprocess
import tempfile
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CHECKIN_TYPE = "application/x-apple-aspen-mdm-checkin"
CONNECT_TYPE = "application/x-apple-aspen-mdm; charset=UTF-8"
DEFAULT_TOPIC = "com.apple.mgmt.External.00000000-0000-0000-0000-000000000000"


# --- test PKI ----------------------------------------------------------------------------------------

class TestCA:
    """A CA of our own making for device identities; .pem_path is a file for [identity] trusted_ca_files."""

    __test__ = False  # not a pytest test class

    def __init__(self, name: str = "Device Sim Test CA", directory: Path | None = None, key_type: str = "rsa"):
        self.key = _new_key(key_type)
        now = dt.datetime.now(dt.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        directory = Path(directory or tempfile.mkdtemp(prefix="device-sim-ca-"))
        self.pem_path = directory / "device-ca.pem"
        self.pem_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, *, key_type: str = "rsa", days: float = 365,
              not_before: dt.datetime | None = None) -> tuple[x509.Certificate, Any]:
        """A device identity (certificate, private key), client-auth, signed by this CA."""
        key = _new_key(key_type)
        start = not_before or dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert, key


def _new_key(key_type: str):
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def client_context(ca_file: Path | str, cert: x509.Certificate | None = None, key: Any = None) -> ssl.SSLContext:
    """A TLS context trusting ca_file, optionally presenting (cert, key) as TLS client certificate."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        with tempfile.TemporaryDirectory() as tmp:
            cert_path, key_path = Path(tmp, "c.pem"), Path(tmp, "k.pem")
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
            context.load_cert_chain(cert_path, key_path)
    return context


def mdm_signature(body: bytes, cert: x509.Certificate, key: Any, hash_algorithm=None) -> str:
    """The Mdm-Signature header value: base64 of a detached DER CMS SignedData over the exact body."""
    signed = (
        pkcs7.PKCS7SignatureBuilder().set_data(body)
        .add_signer(cert, key, hash_algorithm or hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary])
    )
    return base64.b64encode(signed).decode("ascii")


def read_profile(payload: bytes, ca_file: Path | str | None = None) -> dict:
    """A .mobileconfig as a dict: plain, or CMS-signed (verified by openssl against ca_file, when given)."""
    if payload.lstrip()[:1] == b"<" or payload.startswith(b"bplist"):
        return plistlib.loads(payload)
    command = ["openssl", "cms", "-verify", "-inform", "DER", "-binary", "-purpose", "any"]
    command += ["-CAfile", str(ca_file)] if ca_file is not None else ["-noverify"]
    done = subprocess.run(command, input=payload, capture_output=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"signed profile does not verify: {done.stderr.decode(errors='replace')}")
    return plistlib.loads(done.stdout)


class ScepRefused(Exception):
    """The SCEP server answered FAILURE (fail_info: RFC 8894 failInfo)."""

    def __init__(self, fail_info: int | None) -> None:
        super().__init__(f"SCEP FAILURE, failInfo {fail_info}")
        self.fail_info = fail_info


# --- HTTP --------------------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def plist(self) -> Any:
        return plistlib.loads(self.body) if self.body else None

    @property
    def command(self) -> dict | None:
        """The command dict when the answer is a command, else None (an empty 200 ends the session)."""
        if self.status != 200 or not self.body:
            return None
        return self.plist

    @property
    def command_uuid(self) -> str | None:
        command = self.command
        return command["CommandUUID"] if command else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Connection:
    """One HTTP/1.1 keep-alive connection over TLS (h11 + trio), TCP_NODELAY (trio sets it)."""

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 443
        self.ssl_context = ssl_context
        self.stream: trio.SSLStream | None = None
        self.h11: h11.Connection | None = None

    async def _open(self) -> None:
        self.stream = await trio.open_ssl_over_tcp_stream(
            self.host, self.port, ssl_context=self.ssl_context, https_compatible=True)
        self.h11 = h11.Connection(h11.CLIENT)

    async def close(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            with trio.move_on_after(2):
                await stream.aclose()

    async def request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes,
                      timeout: float = 30) -> Reply:
        with trio.fail_after(timeout):
            for attempt in (1, 2):
                reused = self.stream is not None
                if not reused:
                    await self._open()
                try:
                    return await self._exchange(method, target, headers, body)
                except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError,
                        ConnectionError, _ClosedEarly):
                    await self.close()
                    if not reused or attempt == 2:
                        raise
            raise AssertionError("unreachable")

    async def _exchange(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> Reply:
        conn = self.h11
        all_headers = [("Host", f"{self.host}:{self.port}"), *headers]
        if not any(name.lower() in ("content-length", "transfer-encoding") for name, _ in headers):
            all_headers.append(("Content-Length", str(len(body))))
        out = conn.send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            out += conn.send(h11.Data(data=body))
        out += conn.send(h11.EndOfMessage())
        await self.stream.send_all(out)
        status, reply_headers, chunks = 0, {}, []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(65536)
                if not data and status == 0:
                    raise _ClosedEarly()
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                reply_headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            await self.close()
        else:
            conn.start_next_cycle()
        return Reply(status, b"".join(chunks), reply_headers)


class _ClosedEarly(ConnectionError):
    """The server closed the connection before answering."""


# --- the device ----------------------------------------------------------------------------------------

class DeviceSim:
    """A device (UDID, identity certificate and key) speaking the MDM protocol to base_url."""

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext, cert: x509.Certificate, key: Any,
                 udid: str, *, sign: bool = True, serial_number: str | None = None, topic: str = DEFAULT_TOPIC,
                 checkin_path: str = "/mdm/checkin", connect_path: str = "/mdm/connect",
                 connection: Connection | None = None) -> None:
        self.base_url = base_url
        self.cert, self.key, self.udid = cert, key, udid
        self.sign = sign
        self.serial_number = serial_number or ("SIM" + udid.replace("-", "")[:9].upper())
        self.topic = topic
        self.checkin_path, self.connect_path = checkin_path, connect_path
        self.connection = connection or Connection(base_url, ssl_context)
        self.push_token = uuidlib.uuid4().bytes + uuidlib.uuid4().bytes
        self.push_magic = str(uuidlib.uuid4()).upper()
        self.channel: dict[str, Any] = {"UDID": udid}
        # Facts the device reports (Authenticate, DeviceInformation); a test changes them, e.g. after an update.
        self.os_version, self.build_version = "14.4", "23E214"
        self.device_name = f"Sim {udid[:8]}"

    async def __aenter__(self) -> DeviceSim:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.connection.close()

    def user(self, user_id: str, short_name: str | None = None, long_name: str | None = None) -> DeviceSim:
        """The same device speaking on a user channel (shares this device's connection and identity)."""
        other = DeviceSim(self.base_url, None, self.cert, self.key, self.udid, sign=self.sign,  # type: ignore[arg-type]
                          serial_number=self.serial_number, topic=self.topic, checkin_path=self.checkin_path,
                          connect_path=self.connect_path, connection=self.connection)
        other.channel = {"UDID": self.udid, "UserID": user_id}
        if short_name is not None:
            other.channel["UserShortName"] = short_name
        if long_name is not None:
            other.channel["UserLongName"] = long_name
        return other

    # raw ------------------------------------------------------------------------------------------------

    async def send(self, path: str, body: bytes, *, content_type: str | None = CONNECT_TYPE,
                   headers: list[tuple[str, str]] | None = None, sign: bool | None = None,
                   method: str = "PUT") -> Reply:
        all_headers = list(headers or [])
        if content_type is not None:
            all_headers.append(("Content-Type", content_type))
        if self.sign if sign is None else sign:
            all_headers.append(("Mdm-Signature", mdm_signature(body, self.cert, self.key)))
        return await self.connection.request(method, path, all_headers, body)

    async def checkin(self, message_type: str, **keys: Any) -> Reply:
        message = {"MessageType": message_type, **self.channel, **keys}
        return await self.send(self.checkin_path, plistlib.dumps(message), content_type=CHECKIN_TYPE)

    async def report(self, status: str, command_uuid: str | None = None, **keys: Any) -> Reply:
        message: dict[str, Any] = {"Status": status, **self.channel}
        if command_uuid is not None:
            message["CommandUUID"] = command_uuid
        message.update(keys)
        return await self.send(self.connect_path, plistlib.dumps(message))

    # check-ins ------------------------------------------------------------------------------------------

    async def authenticate(self, **keys: Any) -> Reply:
        facts = {"Topic": self.topic, "SerialNumber": self.serial_number, "Model": "MacBookPro18,3",
                 "ModelName": "MacBook Pro", "ProductName": "MacBookPro18,3", "OSVersion": self.os_version,
                 "BuildVersion": self.build_version, "DeviceName": self.device_name}
        facts.update(keys)
        return await self.checkin("Authenticate", **facts)

    async def token_update(self, **keys: Any) -> Reply:
        fields = {"Token": self.push_token, "PushMagic": self.push_magic, "Topic": self.topic}
        fields.update(keys)
        return await self.checkin("TokenUpdate", **fields)

    async def enroll(self) -> None:
        for reply in (await self.authenticate(), await self.token_update()):
            if reply.status != 200:
                raise AssertionError(f"enrollment of {self.udid} refused: {reply.status} {reply.text}")

    async def check_out(self) -> Reply:
        return await self.checkin("CheckOut")

    async def set_bootstrap_token(self, token: bytes | None) -> Reply:
        return await self.checkin("SetBootstrapToken", **({"BootstrapToken": token} if token is not None else {}))

    async def get_bootstrap_token(self) -> Reply:
        return await self.checkin("GetBootstrapToken")

    # command endpoint -----------------------------------------------------------------------------------

    async def idle(self) -> Reply:
        return await self.report("Idle")

    async def acknowledge(self, command_uuid: str, **result: Any) -> Reply:
        return await self.report("Acknowledged", command_uuid, **result)

    async def error(self, command_uuid: str, chain: list[dict] | None = None) -> Reply:
        chain = chain or [{"ErrorCode": 12021, "ErrorDomain": "MCMDMErrorDomain",
                           "LocalizedDescription": "Simulated failure", "USEnglishDescription": "Simulated failure"}]
        return await self.report("Error", command_uuid, ErrorChain=chain)

    async def command_format_error(self, command_uuid: str) -> Reply:
        return await self.report("CommandFormatError", command_uuid)

    async def not_now(self, command_uuid: str) -> Reply:
        return await self.report("NotNow", command_uuid)

    # profiles ------------------------------------------------------------------------------------------

    async def install_enrollment_profile(self, payload: bytes, ca_file: Path | str | None = None
                                         ) -> tuple[x509.Certificate, Any, dict]:
        """What a device does with an InstallProfile whose Payload is an MDM enrollment profile: read it
        (a signed one is verified against ca_file first), get the identity it describes (SCEP with the
        payload's URL, Challenge and CAFingerprint, or the PKCS#12 it carries) and take it as this device's
        identity from now on. Returns (certificate, key, the profile)."""
        profile = read_profile(payload, ca_file)
        payloads = {item["PayloadType"]: item for item in profile["PayloadContent"]}
        if "com.apple.security.scep" in payloads:
            cert, key = await self._scep_enroll(payloads["com.apple.security.scep"]["PayloadContent"])
        else:
            pkcs = payloads["com.apple.security.pkcs12"]
            key, cert, _ = pkcs12.load_key_and_certificates(pkcs["PayloadContent"], pkcs["Password"].encode())
        self.cert, self.key = cert, key
        return cert, key, profile

    async def _scep_enroll(self, scep: dict) -> tuple[x509.Certificate, Any]:
        from tests.support import scep_client  # independent of the appliance too

        url = urlsplit(scep["URL"])
        connection = Connection(f"{url.scheme}://{url.netloc}", self.connection.ssl_context)
        try:
            reply = await connection.request("GET", f"{url.path}?operation=GetCACert", [], b"")
            assert reply.status == 200, reply.text
            if "CAFingerprint" in scep:  # the device refuses any other CA
                assert hashlib.sha1(reply.body).digest() == scep["CAFingerprint"], "CAFingerprint mismatch"
            ca = x509.load_der_x509_certificate(reply.body)
            (common_name,) = [value for ((oid, value),) in scep["Subject"] if oid == "CN"]
            requester = scep_client.Requester(common_name=common_name, challenge=scep.get("Challenge"))
            request = scep_client.pkcs_req(requester, ca)
            reply = await connection.request("POST", f"{url.path}?operation=PKIOperation",
                                             [("Content-Type", "application/x-pki-message")], request.der)
        finally:
            await connection.close()
        assert reply.status == 200, reply.text
        answer = scep_client.read_cert_rep(reply.body, ca, request)
        if answer.status != 0:
            raise ScepRefused(answer.fail_info)
        (cert,) = answer.certificates
        return cert, requester.key

    async def answer_commands(self, limit: int = 50) -> list[tuple[str, str]]:
        """Idle, then answer each command the server hands out as a Mac would (result_for), until the
        server ends the session. Returns [(CommandUUID, RequestType)] in the order answered."""
        answered: list[tuple[str, str]] = []
        reply = await self.idle()
        while reply.command is not None:
            if len(answered) >= limit:
                raise AssertionError(f"{self.udid}: more than {limit} commands in one session")
            command = reply.command
            request_type = command["Command"]["RequestType"]
            answered.append((command["CommandUUID"], request_type))
            reply = await self.acknowledge(command["CommandUUID"], **self.result_for(command["Command"]))
        if reply.status != 200:
            raise AssertionError(f"{self.udid}: the server answered {reply.status}: {reply.text}")
        return answered

    def result_for(self, command: dict) -> dict[str, Any]:
        """The result keys a Mac (this device's facts) sends for a command; {} for commands without any."""
        answer = _RESULTS.get(command.get("RequestType"))
        return answer(self, command) if answer else {}

    def facts(self) -> dict[str, Any]:
        """What DeviceInformation can be asked about this device (a MacBook Pro, on macOS 14.4 at first)."""
        return {
            "UDID": self.udid, "SerialNumber": self.serial_number, "DeviceName": self.device_name,
            "OSVersion": self.os_version, "BuildVersion": self.build_version, "Model": "MacBookPro18,3", "ModelName": "MacBook Pro",
            "ProductName": "MacBookPro18,3", "ModelNumber": "Z15G", "IsAppleSilicon": True,
            "DeviceCapacity": 460.43, "AvailableDeviceCapacity": 301.2, "BatteryLevel": 0.87, "HasBattery": True,
            "IsSupervised": True, "IsMultiUser": False, "IsActivationLockEnabled": False,
            "IsActivationLockSupported": True, "SystemIntegrityProtectionEnabled": True,
            "WiFiMAC": "f0:18:98:00:00:01", "BluetoothMAC": "f0:18:98:00:00:02", "LocalHostName": "sim-mac",
            "HostName": "sim-mac.local", "AwaitingConfiguration": False,
            "OSUpdateSettings": {"AutomaticCheckEnabled": True, "AutomaticOSInstallationEnabled": False,
                                 "BackgroundDownloadEnabled": True, "CatalogURL": "", "IsDefaultCatalog": True,
                                 "PerformPeriodicCheck": True, "PreviousScanResult": 2},
        }


def _device_information(device: DeviceSim, command: dict) -> dict[str, Any]:
    facts = device.facts()
    return {"QueryResponses": {query: facts[query] for query in command.get("Queries", []) if query in facts}}


def _profile_list(device: DeviceSim, command: dict) -> dict[str, Any]:
    def profile(name: str, identifier: str, payload_type: str, removal_disallowed: bool) -> dict[str, Any]:
        return {
            "HasRemovalPasscode": False, "IsEncrypted": False, "IsManaged": True,
            "PayloadContent": [{"PayloadDescription": "", "PayloadDisplayName": name,
                                "PayloadIdentifier": f"{identifier}.payload", "PayloadType": payload_type,
                                "PayloadVersion": 1}],
            "PayloadDescription": "", "PayloadDisplayName": name, "PayloadIdentifier": identifier,
            "PayloadOrganization": "Example School", "PayloadRemovalDisallowed": removal_disallowed,
            "PayloadUUID": str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, identifier)).upper(), "PayloadVersion": 1,
            "SignerCertificates": [b"0\x82\x03\x00 simulated DER"],
        }

    return {"ProfileList": [
        profile("MDM enrollment", "org.example.mdm", "com.apple.mdm", True),
        profile("Wi-Fi (Staff)", "org.example.wifi.staff", "com.apple.wifi.managed", False),
    ]}


def _installed_applications(device: DeviceSim, command: dict) -> dict[str, Any]:
    apps = [("Safari", "com.apple.Safari", "17.4", "19618.1.15.11.12", 112_345_088),
            ("Keynote", "com.apple.iWork.Keynote", "14.0", "7038.0.87", 641_564_672),
            ("Google Chrome", "com.google.Chrome", "123.0.6312.87", "6312.87", 1_177_726_976),
            ("zoom.us", "us.zoom.xos", "5.17.11 (31580)", "5.17.11.31580", 420_142_080)]
    wanted = command.get("Identifiers")
    return {"InstalledApplicationList": [
        {"Name": name, "Identifier": bundle_id, "ShortVersion": short, "Version": build, "BundleSize": size,
         "Installing": False, "HasUpdateAvailable": False, "ExternalVersionIdentifier": 0}
        for name, bundle_id, short, build, size in apps if not wanted or bundle_id in wanted]}


def _security_info(device: DeviceSim, command: dict) -> dict[str, Any]:
    return {"SecurityInfo": {
        "FDE_Enabled": True, "FDE_HasPersonalRecoveryKey": True, "FDE_HasInstitutionalRecoveryKey": False,
        "SystemIntegrityProtectionEnabled": True, "AuthenticatedRootVolumeEnabled": True,
        "FirewallSettings": {"FirewallEnabled": True, "BlockAllIncoming": False, "StealthMode": False,
                             "Applications": [], "LoggingEnabled": False, "LoggingOption": "throttled"},
        "FirmwarePasswordStatus": {"PasswordExists": False, "ChangePending": False, "AllowOroms": True},
        "ManagementStatus": {"EnrolledViaDEP": False, "UserApprovedEnrollment": True, "IsUserEnrollment": False,
                             "IsActivationLockManageable": False},
        "SecureBoot": {"SecureBootLevel": "full", "ExternalBootLevel": "disallowed", "ReducedSecurity": []},
        "RemoteDesktopEnabled": False, "BootstrapTokenAllowedForAuthentication": "allowed",
        "BootstrapTokenRequiredForSoftwareUpdate": False, "BootstrapTokenRequiredForKernelExtensionApproval": False,
        "IsRecoveryLockEnabled": False,
    }}


def _certificate_list(device: DeviceSim, command: dict) -> dict[str, Any]:
    """The device's own identity and a root it trusts, as DER, the way CertificateList lists them."""
    identity_name = device.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return {"CertificateList": [
        {"CommonName": identity_name[0].value if identity_name else device.udid, "IsIdentity": True,
         "Data": device.cert.public_bytes(serialization.Encoding.DER)},
        {"CommonName": "Example School Root CA", "IsIdentity": False,
         "Data": _school_root().public_bytes(serialization.Encoding.DER)},
    ]}


@functools.lru_cache(maxsize=1)
def _school_root() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example School Root CA")])
    start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


_RESULTS = {
    "DeviceInformation": _device_information,
    "ProfileList": _profile_list,
    "InstalledApplicationList": _installed_applications,
    "SecurityInfo": _security_info,
    "CertificateList": _certificate_list,
}
