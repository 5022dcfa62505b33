"""Identity renewal: device identities our CA issued are renewed over MDM before they expire.

A worker of the root nursery looks every [renewal] check_interval for active devices whose bound identity
is due (protocol/renewal.py says when). For each it sends the enrollment profile again, with InstallProfile
over the device's own authenticated channel: the same PayloadIdentifier, ServerURL, CheckInURL and the
device's Topic, and a fresh one-time SCEP challenge tied to the bound certificate (with [enrollment]
identity = "pkcs12", an identity issued here and recorded as the binding's successor), signed when
[enrollment] sign_profile says so. The device enrolls for a new certificate and installs the profile; the
certificate is the binding's proven successor, so the first request that comes with it, Authenticate or
any other, moves the binding and the queue, bootstrap token and history stay (service/certauth.py, which
also marks the renewal done). An attempt that has not completed by its time (NotNow, Error, no answer) is
replaced by a new one after a wait that doubles from retry_initial to retry_max; one whose certificate
expired first is given up (the device cannot speak to us any more: it must enroll again).

Identities from other CAs ([identity] trusted_ca_files) are shown with their expiry and never renewed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta

import trio

from appliance.logs import get_logger
from appliance.protocol.commands import Command, new_command
from appliance.protocol.profile import ProfileError
from appliance.protocol.renewal import renewal_starts, retry_after
from appliance.service import certauth
from appliance.service.enrollment import ProfileInputs, mint_challenge_sync, push_topic, render_profile
from appliance.store import bindings, queue
from appliance.store import renewal as renewal_store
from appliance.store import scep as scep_store
from appliance.store.db import StoreClosed
from appliance.store.faults import StoreUnavailable
from appliance.store.timefmt import from_text, now, to_text

log = get_logger("renewal")

# /healthz warns when an active device's identity ends within this long (and STATUS= says so).
EXPIRY_WARNING = timedelta(days=14)


@dataclass(frozen=True)
class _Prepared:
    """What the first transaction of an attempt hands the profile rendering."""

    topic: str | None
    challenge: str | None


class Renewals:
    """The renewal worker (runtime.renewals) and what /healthz, STATUS= and the API read of it."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        cfg = runtime.config.renewal
        self.renew_before = timedelta(seconds=cfg.renew_before)
        self.retry_initial = timedelta(seconds=cfg.retry_initial)
        self.retry_max = timedelta(seconds=cfg.retry_max)
        self.check_interval = cfg.check_interval
        self.ca_subject = runtime.ca.certificate.subject.rfc4514_string()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        while True:
            try:
                await self.check()
            except StoreClosed:
                return  # shutting down
            except StoreUnavailable as exc:
                # Disk full, say: nothing of a failed attempt was stored; the next pass takes it up again.
                log.warning("identity_renewal_waiting", reason=exc.reason, retry_in_seconds=self.check_interval)
            await self.runtime.clock.sleep(self.check_interval)

    async def check(self) -> int:
        """One pass: begin or retry every renewal that is due. Returns how many attempts were queued."""
        moment = now()
        due = await self.runtime.store.read(renewal_store.due, self.ca_subject,
                                            to_text(moment + self.renew_before), to_text(moment))
        queued = 0
        for candidate in due:
            not_before, not_after = from_text(candidate["not_before"]), from_text(candidate["not_after"])
            if now() < renewal_starts(not_before, not_after, self.renew_before):
                continue  # a short-lived certificate: not yet half way
            if not_after <= now():
                await self._give_up(candidate)
            elif await self._attempt(candidate):
                queued += 1
        return queued

    # --- one attempt ---------------------------------------------------------------------------------

    async def _attempt(self, candidate: dict) -> bool:
        device, sha256 = candidate["device_id"], candidate["sha256"]
        number = (candidate["attempts"] or 0) + 1 if candidate["renewing"] == sha256 else 1
        next_attempt = now() + retry_after(number, self.retry_initial, self.retry_max)
        prepared = await self.runtime.store.write(self._prepare, candidate, next_attempt)
        if prepared is None:
            return False  # the binding moved meanwhile
        command, record, failure = None, None, None
        try:
            data, record = await trio.to_thread.run_sync(self._render, prepared)
            command = new_command({"RequestType": "InstallProfile", "Payload": data})
        except ProfileError as exc:
            failure = f"the renewal profile cannot be built: {exc}"
        queued = await self.runtime.store.write(self._queue, candidate, command, record, failure, next_attempt)
        if not queued:
            return False
        metrics = self.runtime.metrics
        if command is None:
            metrics.renewal_attempts.labels("failed").inc()
            log.error("identity_renewal_failed", device_id=device, attempt=number, reason=failure,
                      retry_at=to_text(next_attempt))
            return False
        metrics.renewal_attempts.labels("queued").inc()
        if record is not None:
            metrics.scep_issued.labels("PKCS12").inc()
        log.info("identity_renewal_sent", device_id=device, attempt=number, command_uuid=command.uuid,
                 not_after=candidate["not_after"], retry_at=to_text(next_attempt))
        if self.runtime.push is not None:
            self.runtime.push.request_push([device])
        return True

    def _prepare(self, conn: sqlite3.Connection, candidate: dict, next_attempt: datetime) -> _Prepared | None:
        """First transaction: the previous attempt is replaced (why it did not complete is kept), and a
        challenge tied to the bound certificate is minted, valid until this attempt is replaced."""
        device, sha256 = candidate["device_id"], candidate["sha256"]
        if bindings.bound_fingerprint(conn, device) != sha256:
            return None
        if candidate["renewing"] == sha256 and candidate["command_uuid"] is not None:
            found = renewal_store.facts(conn, self.ca_subject, [device]).get(device)
            if found is not None:
                renewal_store.note_failure(conn, device, attempt_outcome(found))
            renewal_store.withdraw(conn, candidate["command_uuid"])
        scep_store.drop_renewal_challenges(conn, device)
        challenge = None
        config = self.runtime.config
        if config.enrollment.identity == "scep":
            ttl = (next_attempt - now()).total_seconds() + config.enrollment.challenge_ttl
            challenge, _ = mint_challenge_sync(conn, config, renewal_of=device, ttl=ttl)
        row = conn.execute("SELECT topic FROM enrollments WHERE id = ?", (device,)).fetchone()
        # The device's own Topic: it can never change for an enrolled device.
        return _Prepared(topic=(row[0] if row and row[0] else None) or push_topic(conn), challenge=challenge)

    def _render(self, prepared: _Prepared) -> tuple[bytes, scep_store.IssuedCertificate | None]:
        """Off the event loop: the profile (a PKCS#12 identity's key, the optional signature)."""
        if not prepared.topic:
            raise ProfileError("the device has no push Topic and no push certificate is imported")
        rt = self.runtime
        return render_profile(rt.config, rt.ca, ProfileInputs(prepared.topic, prepared.challenge),
                              server_cert_from_ca=rt.server_cert_from_ca, tls_cert=rt.tls_cert,
                              tls_key=rt.tls_key)

    def _queue(self, conn: sqlite3.Connection, candidate: dict, command: Command | None,
               record: scep_store.IssuedCertificate | None, failure: str | None, next_attempt: datetime) -> bool:
        """Second transaction: the attempt recorded and its InstallProfile queued, unless the binding moved."""
        device, sha256 = candidate["device_id"], candidate["sha256"]
        if bindings.bound_fingerprint(conn, device) != sha256:
            scep_store.drop_renewal_challenges(conn, device)
            return False
        renewal_store.begin(conn, device, sha256, candidate["not_after"])
        if command is None:
            renewal_store.attempted(conn, device, None, to_text(next_attempt), failure)
            return True
        if record is not None:
            # identity = "pkcs12": the identity in the profile is the bound certificate's proven successor.
            scep_store.record_issued(conn, record)
            certauth.note_successor(conn, hashlib.sha256(record.certificate).hexdigest(),
                                    renews=certauth.renewal_of(conn, device))
        queue.enqueue(conn, command.uuid, command.request_type, command.body, [device])
        renewal_store.attempted(conn, device, command.uuid, to_text(next_attempt))
        return True

    async def _give_up(self, candidate: dict) -> None:
        device = candidate["device_id"]
        reason = (f"the identity certificate expired at {candidate['not_after']} before it was renewed: the "
                  f"device can no longer reach the appliance and must enroll again")

        def give_up(conn: sqlite3.Connection) -> None:
            renewal_store.begin(conn, device, candidate["sha256"], candidate["not_after"])
            current = renewal_store.row(conn, device)
            if current and current["command_uuid"]:
                renewal_store.withdraw(conn, current["command_uuid"])
            scep_store.drop_renewal_challenges(conn, device)
            renewal_store.give_up(conn, device, reason)

        await self.runtime.store.write(give_up)
        self.runtime.metrics.renewal_attempts.labels("given_up").inc()
        log.error("identity_renewal_given_up", device_id=device, not_after=candidate["not_after"], reason=reason)

    # --- what operators see ----------------------------------------------------------------------------

    async def describe(self, device_ids: list[str]) -> dict[str, dict]:
        """Per device with a bound certificate: the certificate and its renewal (see `describe`)."""
        found = await self.runtime.store.read(renewal_store.facts, self.ca_subject, device_ids)
        return {device: describe(facts, self.ca_subject, self.renew_before, now()) for device, facts in found.items()}

    async def health(self) -> tuple[str, dict, str]:
        count, first = await self.runtime.store.read(renewal_store.expiring, to_text(now() + EXPIRY_WARNING))
        states = await self.runtime.store.read(renewal_store.state_counts, self.ca_subject)
        details = {"renewals": states, "expiring_within_14_days": count,
                   "expiring": [{"device_id": r["device_id"], "not_after": r["not_after"]} for r in first]}
        return "identities", details, "warning" if count else "ok"

    async def phrase(self) -> str | None:
        count, _ = await self.runtime.store.read(renewal_store.expiring, to_text(now() + EXPIRY_WARNING))
        return f"{count} device identities expire within 14 days" if count else None


def attempt_outcome(facts: dict) -> str:
    """Where the current attempt stands, in a phrase: why it has not completed yet."""
    result = facts.get("result")
    if result == "Acknowledged":
        return "the device installed the renewal profile but has not used its new identity"
    if result is not None:
        return f"the device answered {result} to the InstallProfile{_first_error(facts.get('error_chain'))}"
    if facts.get("command_uuid") is None:
        return facts.get("last_failure") or "no attempt was made"
    if facts.get("not_now_count") is None or facts.get("cancelled_at") is not None:
        return "the InstallProfile command was taken off the queue"
    if facts.get("not_now_count"):
        return f"the device answered NotNow (last at {facts['not_now_at']})"
    if facts.get("sent_at") is not None:
        return f"the device took the InstallProfile command at {facts['sent_at']} and has not answered"
    return "the device has not fetched the InstallProfile command yet"


def _first_error(chain_json: str | None) -> str:
    try:
        chain = json.loads(chain_json) if chain_json else []
        first = chain[0]
        text = first.get("USEnglishDescription") or first.get("LocalizedDescription")
        code = " ".join(str(part) for part in (first.get("ErrorDomain"), first.get("ErrorCode")) if part is not None)
    except (ValueError, IndexError, AttributeError, TypeError):
        return ""
    return f": {code} {text}".rstrip() if text or code else ""


def describe(facts: dict, ca_subject: str, renew_before: timedelta, moment: datetime) -> dict:
    """The device's identity certificate and its renewal as the API and the CLI show them."""
    not_before, not_after = from_text(facts["not_before"]), from_text(facts["not_after"])
    state = facts["state"]
    renews_at = (renewal_starts(not_before, not_after, renew_before)
                 if state != "not_renewable" and not_before and not_after else None)
    if state == "not_renewable":
        reason = (f"issued by another CA ({facts['issuer'] or 'unknown'}): renew it with that CA"
                  if facts["issuer"] else "issuer unknown: the appliance renews only identities its CA issued")
    elif state == "scheduled":
        reason = f"renewal begins at {to_text(renews_at)}" if renews_at else None
    elif state == "done":
        reason = f"renewed at {facts['completed_at']}"
    elif facts["given_up_at"] is not None:
        reason = facts["last_failure"]
    else:
        reason = attempt_outcome(facts)
        if state == "pending" and facts.get("last_failure"):
            reason += f"; the attempt before: {facts['last_failure']}"
    in_progress = facts["renewing"] == facts["sha256"]
    renewal = {
        "state": state,
        "reason": reason,
        "renews_at": to_text(renews_at) if renews_at else None,
        "attempts": facts["attempts"] if in_progress else 0,
        "command_uuid": facts["command_uuid"] if in_progress else None,
        "attempted_at": facts["attempted_at"] if in_progress else None,
        "next_attempt_at": facts["next_attempt_at"] if in_progress and facts["given_up_at"] is None else None,
        "last_failure": facts["last_failure"] if in_progress else None,
        "completed_at": facts["completed_at"] if state == "done" else None,
    }
    days_left = (not_after - moment).total_seconds() / 86400 if not_after else None
    return {
        "sha256": facts["sha256"], "subject": facts["subject"], "issuer": facts["issuer"],
        "issued_by_appliance": facts["issuer"] == ca_subject,
        "not_before": facts["not_before"], "not_after": facts["not_after"], "bound_at": facts["bound_at"],
        "days_left": round(days_left, 2) if days_left is not None else None,
        "renewal": renewal,
    }


async def run_renewal(runtime, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The supervisor's renewal part: hands out the Renewals it runs (runtime.renewals)."""
    renewals = Renewals(runtime)
    runtime.renewals = renewals
    runtime.health_checks.append(renewals.health)
    runtime.status_phrases.append(renewals.phrase)
    await renewals.run(task_status=task_status)

