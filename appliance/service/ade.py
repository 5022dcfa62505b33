"""Automated Device Enrollment: the endpoint a device in Setup Assistant sends its machine info to (the ADE
profile's url), and the steps that hold the device there until its setup is done.

The endpoint: verify the machine info's CMS signature and its chain to Apple's device CAs ([ade]
device_ca_files), read it, check ABM assigned the device to one of our servers ([ade]
allow_unknown_devices), and answer the enrollment profile with a one-time SCEP challenge tied to its
serial number (an identity issued against it can Authenticate only with that serial number).

Await configuration ([ade] await_device_configured): the first TokenUpdate with AwaitingConfiguration
queues the configured setup commands (or at once DeviceConfigured when there are none) and pushes; when
the last setup command has its final result, DeviceConfigured is queued and handed out in the same answer;
its Acknowledged ends the wait. Both are steps around the check-in and report cores (service/mdm.py), in
their transaction.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
import uuid
from dataclasses import dataclass

import trio

from appliance.identity.errors import IdentityError
from appliance.identity.machine_info import APPLE_DEVICE_CA_BUNDLE, MachineInfoAnchors, UntrustedMachineInfo
from appliance.logs import get_logger
from appliance.protocol import answers, commands
from appliance.protocol.errors import MessageError
from appliance.protocol.machine_info import MachineInfo, parse_machine_info
from appliance.protocol.messages import TokenUpdate
from appliance.protocol.profile import ProfileError
from appliance.service import enrollment
from appliance.store import abm as abm_store
from appliance.store import outbox, queue
from appliance.store import scep as scep_store
from appliance.webhook.events import ade_event

log = get_logger("ade")

AWAITING, SETUP_COMMANDS, DEVICE_CONFIGURED_SENT = "awaiting", "setup_commands", "device_configured_sent"
CONFIGURED, DEVICE_CONFIGURED_FAILED = "configured", "device_configured_failed"


@dataclass(frozen=True)
class AdeAnswer:
    status: int
    content_type: str
    body: bytes
    outcome: str  # for the metric: served, unsigned, bad_signature, untrusted, malformed, unknown_device, not_ready


class AdeService:
    """What the ADE endpoint and the setup steps need from [ade], prepared once at start."""

    def __init__(self, config) -> None:
        self.config = config.ade
        self.anchors = MachineInfoAnchors.from_files(self.config.device_ca_files or [APPLE_DEVICE_CA_BUNDLE])
        self._setup = [_setup_command(item) for item in self.config.setup_commands]
        self._device_configured = commands.build_command({"RequestType": "DeviceConfigured"})

    def setup_commands(self) -> list[commands.Command]:
        """The setup commands for one device: each its own CommandUUID."""
        return [commands.with_uuid(command, str(uuid.uuid4()).upper()) for command in self._setup]

    def device_configured(self) -> commands.Command:
        return commands.with_uuid(self._device_configured, str(uuid.uuid4()).upper())


def _setup_command(item) -> commands.Command:
    if item.command is not None:
        return commands.build_command(item.command)
    return commands.parse_command(item.plist.read_bytes())


# --- the endpoint ---------------------------------------------------------------------------------------

def _refused(status: int, reason: str, outcome: str) -> AdeAnswer:
    return AdeAnswer(status, "text/plain; charset=utf-8", reason.encode() + b"\n", outcome)


async def enroll(runtime, body: bytes) -> AdeAnswer:
    """POST of a device's machine info -> its enrollment profile, or a refusal with the reason."""
    ade: AdeService = runtime.ade
    signed = body[:1] == b"\x30"  # DER: a CMS SignedData; an unsigned one is a plist ("<?xml", "bplist")
    if signed:
        try:
            content = await trio.to_thread.run_sync(ade.anchors.verify, body)
        except IdentityError as exc:
            outcome = ("malformed" if exc.status == 400 else "untrusted" if isinstance(exc, UntrustedMachineInfo)
                       else "bad_signature")
            log.warning("ade_machine_info_refused", reason=exc.reason)
            return _refused(exc.status, exc.reason, outcome)
    elif ade.config.require_signed_machine_info:
        log.warning("ade_machine_info_refused", reason="not signed")
        return _refused(403, "machine info must be CMS-signed by the device ([ade] require_signed_machine_info)",
                        "unsigned")
    else:
        content = body
    try:
        info = parse_machine_info(content)
    except MessageError as exc:
        return _refused(400, exc.reason, "malformed")
    options = _ServeOptions(runtime, info, signed)
    try:
        inputs, server = await runtime.store.write(_prepare, options)
    except _UnknownDevice:
        log.warning("ade_unknown_device", serial_number=info.serial_number, udid=info.udid)
        return _refused(403, f"device {info.serial_number} is not assigned to this MDM server in Apple Business "
                             "Manager", "unknown_device")
    except ProfileError as exc:
        log.warning("ade_profile_refused", reason=str(exc))
        return _refused(409, str(exc), "not_ready")
    data, record = await trio.to_thread.run_sync(
        lambda: enrollment.render_profile(runtime.config, runtime.ca, inputs,
                                          server_cert_from_ca=runtime.server_cert_from_ca,
                                          tls_cert=runtime.tls_cert, tls_key=runtime.tls_key))
    if record is not None:  # [enrollment] identity = "pkcs12": the identity is in the profile; tie it now
        await runtime.store.write(_record_pkcs12, record, info.serial_number)
        runtime.metrics.scep_issued.labels("PKCS12").inc()
    if options.webhook and runtime.webhooks is not None:
        runtime.webhooks.wake()
    log.info("ade_profile_served", serial_number=info.serial_number, udid=info.udid, abm_server=server,
             signed=signed, product=info.product)
    return AdeAnswer(200, enrollment.PROFILE_CONTENT_TYPE, data, "served")


class _UnknownDevice(Exception):
    pass


class _ServeOptions:
    __slots__ = ("config", "info", "signed", "webhook", "allow_unknown", "awaits")

    def __init__(self, runtime, info: MachineInfo, signed: bool) -> None:
        self.config = runtime.config
        self.info, self.signed = info, signed
        self.webhook = runtime.config.webhook.url is not None
        self.allow_unknown = runtime.config.ade.allow_unknown_devices
        self.awaits = runtime.config.ade.await_device_configured


def _prepare(conn: sqlite3.Connection, options: _ServeOptions):
    """One transaction: the device known from ABM, a one-time challenge minted and tied to its serial
    number, the profile's URLs recorded, and the device's ADE record written."""
    info = options.info
    server = abm_store.assigned_server(conn, info.serial_number)
    if server is None and not options.allow_unknown:
        raise _UnknownDevice(info.serial_number)
    inputs = enrollment.prepare_profile(conn, options.config, one_time_challenge=True)
    if inputs.challenge is not None:
        abm_store.tie_challenge(conn, scep_store.challenge_hash(inputs.challenge), info.serial_number)
    facts = {"product": info.product, "version": info.version, "os_version": info.os_version,
             "language": info.language, "imei": info.imei, "meid": info.meid}
    abm_store.record_profile_served(conn, serial=info.serial_number, udid=info.udid, server=server, info=facts,
                                    signed=options.signed, awaits_configuration=options.awaits)
    if options.webhook:
        topic, body = ade_event("profile_served", {"serial_number": info.serial_number, "udid": info.udid,
                                                   "abm_server": server, "signed": options.signed, **facts})
        outbox.add(conn, enrollment_id=info.udid, topic=topic, body=body)
    return inputs, server


def _record_pkcs12(conn: sqlite3.Connection, record: scep_store.IssuedCertificate, serial: str) -> None:
    scep_store.record_issued(conn, record)
    abm_store.tie_identity(conn, hashlib.sha256(record.certificate).hexdigest(), serial)


def tie_issued_identity(conn: sqlite3.Connection, challenge: str, certificate_der: bytes) -> None:
    """At SCEP issuing, in its transaction: an identity issued against a challenge tied to a serial number
    is tied to it too."""
    serial = abm_store.challenge_serial(conn, scep_store.challenge_hash(challenge))
    if serial is not None:
        abm_store.tie_identity(conn, hashlib.sha256(certificate_der).hexdigest(), serial)


# --- holding the device in Setup Assistant -----------------------------------------------------------------

def checkin_step(core):
    """Around the check-in core: the first TokenUpdate with AwaitingConfiguration starts the setup."""

    @functools.wraps(core)
    def step(conn: sqlite3.Connection, message, options):
        answer = core(conn, message, options)
        if (isinstance(message, TokenUpdate) and message.awaiting_configuration and options.ade is not None
                and not message.enrollment.is_user_channel):
            if _begin_setup(conn, message.enrollment, options):
                options.push_after.append(message.enrollment.id)
        return answer

    return step


def report_step(core):
    """Around the report core: the last setup command's result queues DeviceConfigured (and hands it out
    in this answer); DeviceConfigured's result ends the setup."""

    @functools.wraps(core)
    def step(conn: sqlite3.Connection, message, options):
        answer, outcome = core(conn, message, options)
        if options.ade is None or outcome != "stored" or message.enrollment.is_user_channel:
            return answer, outcome
        setup = abm_store.setup_of(conn, message.enrollment.device_id)
        if setup is None:
            return answer, outcome
        state, enrollment_id = setup["setup_state"], message.enrollment.id
        if state == SETUP_COMMANDS:
            sent = json.loads(setup["setup_commands"] or "[]")
            if message.command_uuid in sent and not _still_queued(conn, enrollment_id, sent):
                _queue_device_configured(conn, setup["serial_number"], enrollment_id, options)
                if answer.is_empty:
                    following = queue.next_command(conn, enrollment_id)
                    if following is not None:
                        answer = answers.command(*following)
        elif state == DEVICE_CONFIGURED_SENT and message.command_uuid == setup["device_configured_uuid"]:
            done = message.status == "Acknowledged"
            abm_store.set_setup(conn, setup["serial_number"], CONFIGURED if done else DEVICE_CONFIGURED_FAILED)
            log.info("ade_device_configured" if done else "ade_device_configured_failed",
                     serial_number=setup["serial_number"], enrollment_id=enrollment_id, status=message.status)
            if done:
                options.configured.append(setup["serial_number"])
                if options.webhook:
                    topic, body = ade_event("device_configured", {"serial_number": setup["serial_number"],
                                                                  "udid": message.enrollment.udid})
                    outbox.add(conn, enrollment_id=enrollment_id, topic=topic, body=body)
        return answer, outcome

    return step


def _begin_setup(conn: sqlite3.Connection, enrollment, options) -> bool:
    setup = abm_store.setup_of(conn, enrollment.device_id)
    # A device says it awaits configuration: it gets its setup even when the profile was served while
    # [ade] said otherwise (the profile in ABM changes only at the next round); never twice.
    if setup is None or setup["setup_state"] not in (None, AWAITING):
        return False
    ade: AdeService = options.ade
    serial = setup["serial_number"]
    setup_commands = ade.setup_commands()
    if not setup_commands:
        _queue_device_configured(conn, serial, enrollment.id, options)
        return True
    for command in setup_commands:
        queue.enqueue(conn, command.uuid, command.request_type, command.body, [enrollment.id])
    abm_store.set_setup(conn, serial, SETUP_COMMANDS, commands=[command.uuid for command in setup_commands])
    log.info("ade_setup_started", serial_number=serial, enrollment_id=enrollment.id,
             commands=",".join(command.request_type for command in setup_commands))
    return True


def _queue_device_configured(conn: sqlite3.Connection, serial: str, enrollment_id: str, options) -> None:
    command = options.ade.device_configured()
    queue.enqueue(conn, command.uuid, command.request_type, command.body, [enrollment_id])
    abm_store.set_setup(conn, serial, DEVICE_CONFIGURED_SENT, device_configured_uuid=command.uuid)
    log.info("ade_device_configured_queued", serial_number=serial, enrollment_id=enrollment_id,
             command_uuid=command.uuid)


def _still_queued(conn: sqlite3.Connection, enrollment_id: str, command_uuids: list[str]) -> bool:
    marks = ",".join("?" * len(command_uuids))
    return conn.execute(f"SELECT 1 FROM queue WHERE enrollment_id = ? AND command_uuid IN ({marks}) LIMIT 1",
                        (enrollment_id, *command_uuids)).fetchone() is not None
