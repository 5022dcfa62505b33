"""What a check-in and a command report do, read top to bottom as the protocol.

Each device request is one short write transaction (runtime.store.write, group-committed): the
certificate binding step around the core (service/certauth.py: admit, clear at a re-enrollment, bind),
the state change, the webhook outbox row and the pick of the next command commit together, and the caller
answers the device only after that commit. A refusal raised inside (CertificateNotBound, MessageError)
rolls the request's savepoint back: nothing changes.

Nothing here pushes: a report or an Idle never needs a push (a NotNow must not cause one); enqueuing
does, and that is the admin API's call to runtime.push. DeclarativeManagement check-ins are answered by
appliance.service.ddm inside the same transaction; a TokenUpdate that enrolls a channel marks it for the
DDM notifier (a step around the core), which is woken after the commit.
"""

from __future__ import annotations

import sqlite3

from appliance.logs import get_logger
from appliance.protocol import answers
from appliance.protocol.answers import EMPTY, Answer
from appliance.protocol.errors import MessageError
from appliance.protocol.messages import (
    Authenticate,
    CheckIn,
    CheckOut,
    DeclarativeManagement,
    GetBootstrapToken,
    GetToken,
    Report,
    SetBootstrapToken,
    TokenUpdate,
    UserAuthenticate,
)
from appliance.service import ade, ddm
from appliance.service.certauth import Presented, binding_step
from appliance.service.inventory import answer_step, authenticate_step
from appliance.store import enrollments, outbox, queue
from appliance.webhook.events import acknowledge_event, checkin_event

log = get_logger("mdm")


async def checkin(runtime, message: CheckIn, certificate: Presented, url_params: dict | None = None) -> Answer:
    """Handle a check-in message from a device whose certificate is trusted (not yet known to be bound)."""
    options = _Options(runtime, url_params)
    answer = await runtime.store.write(_CHECKIN, message, certificate, options)
    runtime.metrics.mdm_checkins.labels(message.message_type, str(answer.status)).inc()
    if isinstance(message, DeclarativeManagement):
        runtime.metrics.ddm_requests.labels(message.request.endpoint, str(answer.status)).inc()
    elif isinstance(message, TokenUpdate):
        if runtime.ddm is not None:
            runtime.ddm.wake()  # the enrollment step may have marked this channel
        if runtime.inventory is not None:
            runtime.inventory.wake()  # a device that just enrolled is due for its first inventory
    _after_commit(runtime, options)
    return answer


async def report(runtime, message: Report, certificate: Presented, url_params: dict | None = None) -> Answer:
    """Handle a report on the command endpoint; answers with the next command or an empty body."""
    options = _Options(runtime, url_params)
    answer, outcome = await runtime.store.write(_REPORT, message, certificate, options)
    runtime.metrics.mdm_reports.labels(message.status, outcome).inc()
    _after_commit(runtime, options)
    if answer.command_uuid is not None:
        runtime.metrics.mdm_commands_sent.inc()
    return answer


def _after_commit(runtime, options: "_Options") -> None:
    # The transaction just committed an outbox row: deliver it now, not at the worker's next poll.
    if options.webhook and runtime.webhooks is not None:
        runtime.webhooks.wake()
    # Group memberships moved with the device's facts: whoever follows them hears it now.
    if options.groups_changed:
        runtime.group_changes.notify()
    if options.push_after and runtime.push is not None:
        runtime.push.request_push(options.push_after)  # ADE setup commands were queued: the device waits
    if options.configured:
        runtime.metrics.ade_configured.inc(len(options.configured))


class _Options:
    """What the transaction needs from the config (read on the trio side, not on the db thread)."""

    __slots__ = ("webhook", "accept_user_authenticate", "url_params", "ddm", "ade", "push_after", "configured",
                 "groups_changed")

    def __init__(self, runtime, url_params: dict | None) -> None:
        self.webhook = runtime.config.webhook.url is not None
        self.accept_user_authenticate = runtime.config.checkin.user_authenticate == "accept"
        self.url_params = url_params or None
        self.ddm = runtime.ddm.options  # set by the DDM part, which starts before the listeners
        self.ade = runtime.ade  # the ADE setup (service/ade.py); None in a runtime without one
        self.push_after: list[str] = []  # enrollments to push once the transaction committed
        self.configured: list[str] = []  # ADE devices whose DeviceConfigured was acknowledged
        self.groups_changed = False  # set by the inventory steps (appliance.service.inventory)


# --- on the db thread, inside one transaction -----------------------------------------------------

def _checkin(conn: sqlite3.Connection, message: CheckIn, options: _Options) -> Answer:
    enrollment = message.enrollment
    tally = None
    if isinstance(message, Authenticate):
        if enrollment.is_user_channel:
            raise MessageError("Authenticate is sent on the device channel only (no UserID)")
        enrollments.authenticate(conn, message)
        log.info("authenticated", enrollment_id=enrollment.id, serial_number=message.serial_number)
        answer = EMPTY
    elif isinstance(message, TokenUpdate):
        tally = enrollments.token_update(conn, message)
        if tally == 1:
            log.info("enrolled", enrollment_id=enrollment.id, type=enrollment.type)
        answer = EMPTY
    elif isinstance(message, CheckOut):
        enrollments.check_out(conn, enrollment)
        log.info("checked_out", enrollment_id=enrollment.id)
        answer = EMPTY
    elif isinstance(message, UserAuthenticate):
        answer = _user_authenticate(message, options)
    elif isinstance(message, SetBootstrapToken):
        enrollments.set_bootstrap_token(conn, enrollment.device_id, message.bootstrap_token)
        answer = EMPTY
    elif isinstance(message, GetBootstrapToken):
        token = enrollments.bootstrap_token(conn, enrollment.device_id)
        answer = answers.plist_answer({"BootstrapToken": token}) if token else EMPTY
    elif isinstance(message, GetToken):
        answer = answers.token_service_not_offered(message.token_service_type)
    elif isinstance(message, DeclarativeManagement):
        answer = ddm.declarative_management(conn, message, options.ddm)
    else:  # decode_checkin only makes the types above
        raise MessageError(f"unknown MessageType {message.message_type}")
    if not isinstance(message, (Authenticate, TokenUpdate)):  # those two set last_seen_at themselves
        enrollments.touch(conn, enrollment.id)
    if options.webhook:
        _checkin_event(conn, message, options, tally)
    return answer


def _user_authenticate(message: UserAuthenticate, options: _Options) -> Answer:
    if not options.accept_user_authenticate:
        return answers.USER_AUTHENTICATE_DECLINED
    # First message: no DigestResponse yet; an empty DigestChallenge accepts the user without a password.
    return answers.DIGEST_CHALLENGE if message.digest_response is None else EMPTY


def _report(conn: sqlite3.Connection, message: Report, options: _Options) -> tuple[Answer, str]:
    enrollment = message.enrollment
    plan = answers.plan(message)
    if plan.starts_session:
        queue.start_session(conn, enrollment.id)
        outcome = "idle"
    else:
        enrollments.touch(conn, enrollment.id)
        chain = [entry.as_dict() for entry in message.error_chain] or None
        outcome = queue.store_report(conn, enrollment.id, message.command_uuid, message.status, message.raw, chain)
        if outcome == "unknown":
            # 200 and the next command all the same: any other answer makes the device resend it forever.
            # Kept in stray_reports, against no command or result.
            log.warning("report_for_unknown_command", enrollment_id=enrollment.id,
                        command_uuid=message.command_uuid, status=message.status)
        elif outcome == "duplicate":
            log.info("report_duplicate", enrollment_id=enrollment.id, command_uuid=message.command_uuid)
    following = queue.next_command(conn, enrollment.id, after_not_now=plan.after_not_now)
    if options.webhook:
        _report_event(conn, message, options)
    if following is None:
        return EMPTY, outcome
    return answers.command(*following), outcome


# Each core runs inside the certificate binding step: it is only reached with an admitted certificate.
# A check-in's core also runs inside the DDM enrollment step (a newly enrolled channel is marked), and the
# inventory steps read device facts from Authenticate and from inventory answers; all of it inside the ADE
# steps, which hold a device in Setup Assistant until its setup commands are done.
_CHECKIN = binding_step(ade.checkin_step(ddm.enrollment_step(authenticate_step(_checkin))))
_REPORT = binding_step(ade.report_step(answer_step(_report)))


def _checkin_event(conn, message: CheckIn, options: _Options, tally: int | None) -> None:
    e = message.enrollment
    topic, body = checkin_event(
        message_type=message.message_type, udid=e.udid, enrollment_id=e.enrollment_id, raw=message.raw,
        url_params=options.url_params, ids=e.ids(), token_update_tally=tally,
    )
    outbox.add(conn, enrollment_id=e.id, topic=topic, body=body)


def _report_event(conn, message: Report, options: _Options) -> None:
    e = message.enrollment
    topic, body = acknowledge_event(
        udid=e.udid, enrollment_id=e.enrollment_id, status=message.status, command_uuid=message.command_uuid,
        raw=message.raw, url_params=options.url_params, ids=e.ids(),
    )
    outbox.add(conn, enrollment_id=e.id, topic=topic, body=body)
