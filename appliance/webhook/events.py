"""Webhook events in the JSON shape MicroMDM introduced and NanoMDM keeps ("microwebhook"), so receivers
written for either work unchanged.

Envelope: {"topic", "event_id", "created_at", and one of "checkin_event" / "acknowledge_event"}.
Topics are "mdm." + the check-in MessageType (mdm.Authenticate, mdm.TokenUpdate, mdm.CheckOut, ...) and
"mdm.Connect" for every report on the command endpoint (Idle included). raw_payload is the device's
plist, base64 (Go's encoding of []byte). NanoMDM additions: "ids" (id, parent_id, type of the resolved
enrollment) and "token_update_tally" on TokenUpdate.

Our own, in the same envelope: "appliance.Reenrollment" (a "reenrollment_event") when another identity
certificate re-enrolled a known device and the old enrollment's pending commands and secrets were cleared;
"appliance.DeclarationStatus" (a "declaration_status_event") when a DDM status report changed the status
of declarations on an enrollment; "appliance.CommandExpired" (a "command_expired_event") when a command
was taken off an enrollment's queue because its expiry came before a final status;
"abm.DeviceAdded", "abm.DeviceModified", "abm.DeviceDeleted" and "abm.AssignmentFailed" (an "abm_event")
from the Apple Business Manager sync; "ade.ProfileServed" and "ade.DeviceConfigured" (an "ade_event") from
Automated Device Enrollment.

Sans-I/O: builds bytes, never sends them. The body is built once and stored in the outbox, so every
retry carries the same event_id and bytes (receivers can de-duplicate on event_id; the HMAC is stable).
"""

from __future__ import annotations

import base64
import json
import uuid

from appliance.store.timefmt import now_text

CONNECT_TOPIC = "mdm.Connect"
REENROLLMENT_TOPIC = "appliance.Reenrollment"
DECLARATION_STATUS_TOPIC = "appliance.DeclarationStatus"
COMMAND_EXPIRED_TOPIC = "appliance.CommandExpired"


def _envelope(topic: str, kind: str, event: dict) -> bytes:
    document = {
        "topic": topic,
        "event_id": str(uuid.uuid4()),
        "created_at": now_text(),  # RFC 3339 in UTC with sub-second digits, as Go's time.Time marshals
        kind: event,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _identity(udid: str, enrollment_id: str, ids: dict | None) -> dict:
    # Like the Go structs with omitempty: an empty UDID (User Enrollment) or EnrollmentID is left out.
    fields: dict = {}
    if udid:
        fields["udid"] = udid
    if enrollment_id:
        fields["enrollment_id"] = enrollment_id
    if ids:
        fields["ids"] = {key: value for key, value in ids.items() if value is not None}
    return fields


def _raw(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def checkin_topic(message_type: str) -> str:
    if not message_type or not message_type.isascii() or not message_type.isalnum():
        raise ValueError(f"not a check-in MessageType: {message_type!r}")
    return f"mdm.{message_type}"


def checkin_event(*, message_type: str, udid: str, enrollment_id: str, raw: bytes,
                  url_params: dict | None, ids: dict, token_update_tally: int | None) -> tuple[str, bytes]:
    """A check-in message (Authenticate, TokenUpdate, CheckOut, UserAuthenticate, SetBootstrapToken,
    GetBootstrapToken, DeclarativeManagement, GetToken, ...) -> (topic, JSON body).

    udid: the message's UDID field ("" for User Enrollment); enrollment_id: its EnrollmentID field ("" for
    device enrollments); ids: NanoMDM's resolved {"id", "parent_id", "type"}; token_update_tally only
    for TokenUpdate (how many TokenUpdates this enrollment has sent, 1 = first = newly enrolled).
    """
    topic = checkin_topic(message_type)
    event = _identity(udid, enrollment_id, ids)
    # MicroMDM always sent url_params on check-in events (null when there were none).
    event["url_params"] = dict(url_params) if url_params else None
    event["raw_payload"] = _raw(raw)
    if token_update_tally is not None:
        event["token_update_tally"] = int(token_update_tally)
    return topic, _envelope(topic, "checkin_event", event)


def acknowledge_event(*, udid: str, enrollment_id: str, status: str, command_uuid: str | None, raw: bytes,
                      url_params: dict | None, ids: dict) -> tuple[str, bytes]:
    """A report on the command endpoint (Status Idle, Acknowledged, Error, CommandFormatError, NotNow)
    -> ("mdm.Connect", JSON body). command_uuid is None for Idle."""
    event = _identity(udid, enrollment_id, ids)
    event["status"] = status
    if command_uuid:
        event["command_uuid"] = command_uuid
    if url_params:
        event["url_params"] = dict(url_params)
    event["raw_payload"] = _raw(raw)
    return CONNECT_TOPIC, _envelope(CONNECT_TOPIC, "acknowledge_event", event)


def reenrollment_event(*, udid: str, enrollment_id: str, ids: dict, previous_sha256: str, sha256: str,
                       subject: str, cleared_commands: int, bootstrap_token: bool, unlock_token: bool
                       ) -> tuple[str, bytes]:
    """A known device Authenticated with another identity certificate (a wiped device, or someone claiming
    its UDID) -> ("appliance.Reenrollment", JSON body): both certificates' SHA-256, the new one's subject,
    and what of the old enrollment was cleared (pending commands on all channels, which tokens)."""
    event = _identity(udid, enrollment_id, ids)
    event["previous_certificate_sha256"] = previous_sha256
    event["certificate_sha256"] = sha256
    event["certificate_subject"] = subject
    event["cleared"] = {"commands": int(cleared_commands), "bootstrap_token": bool(bootstrap_token),
                        "unlock_token": bool(unlock_token)}
    return REENROLLMENT_TOPIC, _envelope(REENROLLMENT_TOPIC, "reenrollment_event", event)


def declaration_status_event(*, udid: str, enrollment_id: str, ids: dict, status_id: str, changes: list[dict]
                             ) -> tuple[str, bytes]:
    """A DDM status report changed how declarations stand on an enrollment -> ("appliance.DeclarationStatus",
    JSON body): per declaration its identifier, kind, active, valid, server_token, reasons and `previous`
    (null the first time, else the former active, valid and server_token)."""
    event = _identity(udid, enrollment_id, ids)
    event["status_id"] = status_id
    event["changes"] = changes
    return DECLARATION_STATUS_TOPIC, _envelope(DECLARATION_STATUS_TOPIC, "declaration_status_event", event)


ABM_TOPICS = {"added": "abm.DeviceAdded", "modified": "abm.DeviceModified", "deleted": "abm.DeviceDeleted",
              "assignment_failed": "abm.AssignmentFailed"}
ADE_TOPICS = {"profile_served": "ade.ProfileServed", "device_configured": "ade.DeviceConfigured"}


def abm_event(kind: str, fields: dict) -> tuple[str, bytes]:
    """A device ABM added to, changed on or removed from an MDM server entry, or whose profile assignment
    failed -> (topic, JSON body). fields: serial_number, abm_server and what Apple said of the device."""
    topic = ABM_TOPICS[kind]
    return topic, _envelope(topic, "abm_event", dict(fields))


def ade_event(kind: str, fields: dict) -> tuple[str, bytes]:
    """An ADE device was handed its enrollment profile, or was released from Setup Assistant
    (DeviceConfigured acknowledged) -> (topic, JSON body)."""
    topic = ADE_TOPICS[kind]
    return topic, _envelope(topic, "ade_event", dict(fields))


def command_expired_event(*, udid: str, enrollment_id: str, ids: dict, command_uuid: str, request_type: str,
                          queued_at: str, expires_at: str, sent_at: str | None, not_now_count: int
                          ) -> tuple[str, bytes]:
    """A command reached its expiry still pending on an enrollment and was taken off its queue (its status
    there is now Expired) -> ("appliance.CommandExpired", JSON body). sent_at: when the device was last
    given it (None: never); not_now_count: how often it answered NotNow."""
    event = _identity(udid, enrollment_id, ids)
    event.update({"command_uuid": command_uuid, "request_type": request_type, "queued_at": queued_at,
                  "expires_at": expires_at, "sent_at": sent_at, "not_now_count": int(not_now_count)})
    return COMMAND_EXPIRED_TOPIC, _envelope(COMMAND_EXPIRED_TOPIC, "command_expired_event", event)
