"""The enrollment profile (.mobileconfig), sans-I/O: settings in, plist bytes out.

Apple's rules this follows (apple/device-management profiles/com.apple.mdm.yaml and the SCEP,
PKCS#12 and root payload schemas): the MDM payload's IdentityCertificateUUID names the
identity payload's PayloadUUID; Topic, ServerURL and CheckInURL can never change once a device
is enrolled, so the caller records them (see `enrolled_urls`).
"""

from __future__ import annotations

import plistlib
import uuid
from dataclasses import dataclass

SCEP_PATH = "/scep"
SERVER_PATH = "/mdm/connect"
CHECKIN_PATH = "/mdm/checkin"
ACCESS_RIGHTS_ALL = 8191
SERVER_CAPABILITIES = ("com.apple.mdm.per-user-connections", "com.apple.mdm.bootstraptoken")


class ProfileError(Exception):
    """The profile cannot be built; the message says what the operator should do."""


@dataclass(frozen=True)
class ScepIdentity:
    challenge: str
    subject_common_name: str
    name: str = "mdm-appliance"
    ca_fingerprint: bytes | None = None  # CAFingerprint: SHA-1 of the CA certificate DER


@dataclass(frozen=True)
class Pkcs12Identity:
    pkcs12: bytes
    password: str


@dataclass(frozen=True)
class ProfileSettings:
    public_url: str
    organization: str
    identifier: str
    topic: str | None
    identity: ScepIdentity | Pkcs12Identity
    root_certificate_der: bytes | None = None  # when the server's TLS certificate is ours
    display_name: str | None = None


@dataclass(frozen=True)
class EnrolledUrls:
    """What a device keeps from the profile for as long as it is enrolled."""

    topic: str
    server_url: str
    checkin_url: str


def enrolled_urls(public_url: str, topic: str) -> EnrolledUrls:
    base = public_url.rstrip("/")
    return EnrolledUrls(topic=topic, server_url=base + SERVER_PATH, checkin_url=base + CHECKIN_PATH)


def check_public_url(public_url: str) -> None:
    """Apple's schema: ServerURL and CheckInURL must begin with https://, or the device refuses
    the profile. (The config allows http:// with [server] tls = false, for the proxy's own side.)"""
    if not public_url.lower().startswith("https://"):
        raise ProfileError(
            f"[server] public_url {public_url!r} is not https://: devices only enroll with an https "
            "ServerURL; set public_url to the https address devices reach (e.g. the TLS proxy's)"
        )


def _payload(kind: str, identifier: str, display_name: str, **content) -> dict:
    return {
        "PayloadType": kind,
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": str(uuid.uuid4()).upper(),
        "PayloadDisplayName": display_name,
        **content,
    }


def build_enrollment_profile(settings: ProfileSettings) -> dict:
    """The profile as a plist dictionary."""
    if not settings.topic:
        raise ProfileError(
            "no push certificate imported: the profile needs its topic; "
            "import one with `mdm-appliance push-cert import`"
        )
    check_public_url(settings.public_url)
    base = settings.public_url.rstrip("/")
    ident = settings.identifier
    payloads = []
    if settings.root_certificate_der:
        payloads.append(_payload(
            "com.apple.security.root", f"{ident}.ca", f"{settings.organization} MDM CA",
            PayloadCertificateFileName="mdm-appliance-ca.cer",
            PayloadContent=settings.root_certificate_der,
        ))
    identity = settings.identity
    if isinstance(identity, ScepIdentity):
        content = {
            "URL": base + SCEP_PATH,
            "Name": identity.name,
            # Subject: an array of RDNs, each an array of [OID, value] pairs.
            "Subject": [[["O", settings.organization]], [["CN", identity.subject_common_name]]],
            "Challenge": identity.challenge,
            "Keysize": 2048,
            "Key Type": "RSA",
            "Key Usage": 5,  # digital signature + key encipherment
            "Retries": 3,
            "RetryDelay": 10,
        }
        if identity.ca_fingerprint:
            content["CAFingerprint"] = identity.ca_fingerprint
        identity_payload = _payload("com.apple.security.scep", f"{ident}.identity",
                                    "Device identity (SCEP)", PayloadContent=content)
    else:
        identity_payload = _payload(
            "com.apple.security.pkcs12", f"{ident}.identity", "Device identity",
            PayloadCertificateFileName="device-identity.p12",
            PayloadContent=identity.pkcs12, Password=identity.password,
        )
    payloads.append(identity_payload)
    urls = enrolled_urls(base, settings.topic)
    payloads.append(_payload(
        "com.apple.mdm", f"{ident}.mdm", "Device management",
        IdentityCertificateUUID=identity_payload["PayloadUUID"],
        Topic=urls.topic,
        ServerURL=urls.server_url,
        CheckInURL=urls.checkin_url,
        SignMessage=True,
        AccessRights=ACCESS_RIGHTS_ALL,
        CheckOutWhenRemoved=True,
        ServerCapabilities=list(SERVER_CAPABILITIES),
    ))
    return {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": ident,
        "PayloadUUID": str(uuid.uuid4()).upper(),
        "PayloadDisplayName": settings.display_name or f"{settings.organization} device management",
        "PayloadOrganization": settings.organization,
        "PayloadDescription": "Enrolls this device in the organization's device management.",
        "PayloadScope": "System",
        "PayloadRemovalDisallowed": False,
        "PayloadContent": payloads,
    }


def encode_profile(profile: dict) -> bytes:
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)
