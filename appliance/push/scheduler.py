"""The push service on runtime.push: who gets pushed when, and what each push did to its enrollment.

- `request_push(ids)`: fire-and-forget (enqueue calls it after its commit); requests that arrive close
  together, or while the same enrollment's push is in flight, become one push.
- `await push_now(ids)`: the admin API's on-demand push, answered per id.
- background: re-push enrollments whose commands wait longer than [apns] repush_interval (or whose
  last push failed, after failed_retry_seconds), pick up a certificate imported by the CLI (polls a
  version number), warn daily about expiry.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass

import trio

from appliance.logs import get_logger
from appliance.push import pushcert
from appliance.push.apns import APNsClient, PushResult, PushStatus
from appliance.push.pushcert import PushCertError, PushCertificate
from appliance.store import push as push_store
from appliance.store.db import StoreClosed
from appliance.store.faults import StoreUnavailable
from appliance.store.timefmt import now, to_text

log = get_logger("push")


@dataclass(frozen=True)
class PushOutcome:
    """Per enrollment: the apns-id of an accepted push, or why there was none."""

    enrollment_id: str
    apns_id: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class PushService:
    cert_poll_seconds = 3.0  # how soon a certificate imported by the CLI is used
    # Requests made before the coalescer next runs become one batch; a request for an enrollment whose
    # push is in flight becomes one follow-up push after it (its command may have missed the first).
    # No extra wait: enqueue-to-push latency matters more than saving APNs a duplicate push.
    coalesce_seconds = 0.0
    expiry_check_seconds = 86400.0
    summary_seconds = 1.0
    # A push that failed (APNs unreachable or 5xx beyond the client's own retries) while commands wait
    # is tried again after this long, not only after repush_interval: an outage costs minutes, not a day.
    failed_retry_seconds = 600.0
    # APNs client reconnects: backoff cap, and how often to retry while failing with nothing to push.
    backoff_max = 60.0
    probe_interval = 30.0
    health_check_seconds = 1.0  # how soon a change of push health reaches the log and STATUS=

    def __init__(self, runtime, client: APNsClient | None = None):
        self.runtime = runtime
        cfg = runtime.config.apns
        self.client = client or APNsClient(
            cfg.url, ca_file=cfg.ca_file, expiration=cfg.expiration, timeout=cfg.timeout,
            max_streams=cfg.max_streams, log=get_logger("apns"),
            backoff_max=self.backoff_max, probe_interval=self.probe_interval,
        )
        # Pushes failing longer than [apns] unhealthy_after turn health, STATUS= and metrics to error.
        self.health = self.client.health
        self.health.unhealthy_after = cfg.unhealthy_after
        self.repush_interval = cfg.repush_interval
        self.api_deadline = cfg.push_api_deadline
        self._wanted: set[str] = set()
        self._inflight: set[str] = set()
        self._wake = trio.Event()
        self._version = 0
        self.load_error: str | None = None
        self._nursery: trio.Nursery | None = None
        self._summary_stale = True
        severity_number = {"ok": 0, "warning": 1, "error": 2}
        runtime.metrics.push_status.set_function(lambda: severity_number[self.severity()])
        runtime.metrics.push_failing_seconds.set_function(self.health.failing_for)

    # ----- what other parts call ----------------------------------------------------------------
    def request_push(self, enrollment_ids: Iterable[str]) -> None:
        """Push soon, without waiting; cheap (a set update) and safe to call from any request."""
        before = len(self._wanted)
        self._wanted.update(enrollment_ids)
        if len(self._wanted) != before:
            self._wake.set()

    async def push_now(self, enrollment_ids: Iterable[str], deadline: float | None = None
                       ) -> dict[str, PushOutcome]:
        """The on-demand push (/v1/push), answered per id within `deadline` ([apns] push_api_deadline).

        With APNs unreachable a push can take timeout x attempts (~45 s): if not all are answered by the
        deadline, every id gets a push_error saying so, and the pushes carry on in the background
        (their result is recorded on the enrollment when it comes).
        """
        ids = list(dict.fromkeys(enrollment_ids))
        waited = self.api_deadline if deadline is None else deadline
        answered = await self.push_answered(ids, waited)
        if answered is not None:
            return answered
        why = (f"APNs did not answer within {waited:g} s; the push goes on and its result will show on "
               f"the enrollment")
        if self.client.last_connection_error:
            why += f" (last connection error: {self.client.last_connection_error})"
        return {eid: PushOutcome(eid, error=why) for eid in ids}

    async def push_answered(self, enrollment_ids: Iterable[str], timeout: float) -> dict[str, PushOutcome] | None:
        """push_now for an API answer with a deadline: the outcomes if the pushes finish within `timeout`,
        else None. The pushes run in this service's nursery, so a deadline (or a client hanging up) never
        cancels pushes already on the wire; they finish and are recorded as usual."""
        ids = list(dict.fromkeys(enrollment_ids))
        if self._nursery is None:
            self.request_push(ids)
            return None
        self._wanted.difference_update(ids)  # this push also serves requests still waiting
        answered: dict[str, PushOutcome] = {}
        finished = trio.Event()

        async def push() -> None:
            try:
                answered.update(await self._push_in_background(ids) or {})
            finally:
                finished.set()

        self._nursery.start_soon(push)
        with trio.move_on_after(timeout):
            await finished.wait()
        return answered if finished.is_set() and len(answered) == len(ids) else None

    @property
    def certificate(self) -> PushCertificate | None:
        return self.client.certificate

    async def reload_certificate(self) -> PushCertificate | None:
        """Use the newest stored certificate (after an import); reconnects APNs with it."""
        stored = await self.runtime.store.read(push_store.current_certificate)
        self._version = stored.id if stored else 0
        if stored is None:
            self.client.set_certificate(None)
            log.warning("push_certificate_missing",
                        hint="import one with `mdm-appliance push-cert import CERT KEY`")
            self._update_metrics()
            return None
        try:
            cert = pushcert.load_pem(stored.certificate, stored.private_key)
            self.load_error = None
        except PushCertError as e:
            self.load_error = str(e)
            log.error("push_certificate_unusable", error=str(e))
            self._update_metrics()
            return None
        if self.client.certificate is None or self.client.certificate.fingerprint != cert.fingerprint:
            self.client.set_certificate(cert)
            log.info("push_certificate_loaded", topic=cert.topic, not_after=to_text(cert.not_after),
                     days_left=cert.days_left())
        self._check_expiry()
        return cert

    def status(self) -> dict:
        """For /healthz and STATUS=: topic, not_after, days_left, state, whether pushes get through."""
        cert = self.client.certificate
        failing_for = self.health.failing_for()
        failing = self.health.failing_since is not None
        info = {
            "topic": cert.topic if cert else None,
            "not_after": to_text(cert.not_after) if cert else None,
            "days_left": cert.days_left() if cert else None,
            "state": pushcert.expiry_state(cert) if cert else "missing",
            "certificate_error": self.client.cert_error or self.load_error,
            "connected": self.client.connected,
            "last_connection_error": self.client.last_connection_error,
            # Pushes failing (APNs unreachable, TLS refused, 403, 5xx) since, and why; None when they work.
            "failing_since": to_text(now() - dt.timedelta(seconds=failing_for)) if failing else None,
            "failing_seconds": math.floor(failing_for * 10) / 10,  # never rounded up past the threshold
            "failure": self.health.cause,
            "unhealthy_after": self.health.unhealthy_after,
        }
        return info

    def severity(self, info: dict | None = None) -> str:
        info = info or self.status()
        if info["state"] == "expired" or info["certificate_error"]:
            return "error"
        if info["failing_seconds"] >= info["unhealthy_after"] and info["failure"]:
            return "error"
        if info["state"] in ("warning", "missing"):
            return "warning"
        return "ok"

    async def health_check(self) -> tuple[str, dict, str]:
        info = self.status()
        return "push", info, self.severity(info)

    async def phrase(self) -> str:
        info = self.status()
        failing = ""
        if info["failure"] and info["failing_seconds"] >= info["unhealthy_after"]:
            failing = f"ERROR: pushes failing for {info['failing_seconds']:.0f} s ({info['failure']}); "
        if info["state"] == "missing":
            return failing + "no push certificate imported"
        if info["state"] == "expired":
            return failing + f"ERROR: push cert EXPIRED on {info['not_after'][:10]}, renew it with the same Apple ID"
        text = f"push cert {info['topic']} expires in {info['days_left']} days"
        if info["state"] == "warning":
            text = f"WARNING: {text}, renew it with the same Apple ID"
        if info["certificate_error"]:
            text += f" (APNs: {info['certificate_error']})"
        return failing + text

    # ----- pushing ---------------------------------------------------------------------------------
    async def _push(self, ids: list[str]) -> dict[str, PushOutcome]:
        if not ids:
            return {}
        store = self.runtime.store
        targets, skipped = await store.read(push_store.push_targets, ids)
        outcomes = {eid: PushOutcome(eid, error=reason) for eid, reason in skipped.items()}
        current = to_text(now())
        sendable = []
        for target in targets:
            if target.backoff_until and target.backoff_until > current:
                outcomes[target.enrollment_id] = PushOutcome(
                    target.enrollment_id,
                    error=f"throttled by APNs (429); next push after {target.backoff_until}")
            else:
                sendable.append(target)
        if sendable:
            sent_ids = [t.enrollment_id for t in sendable]
            self._inflight.update(sent_ids)
            try:
                results = await self.client.push_many((t.token, t.push_magic) for t in sendable)
            finally:
                self._inflight.difference_update(sent_ids)
                if self._wanted:
                    self._wake.set()  # requests that came in while these were in flight
            records = [self._record(t, r) for t, r in zip(sendable, results)]
            await store.write(push_store.record_outcomes, records)
            self._summary_stale = True
            for target, result in zip(sendable, results):
                self.runtime.metrics.pushes.labels(result.status.value).inc()
                outcomes[target.enrollment_id] = PushOutcome(
                    target.enrollment_id, result.apns_id if result.ok else None,
                    None if result.ok else result.describe())
                if result.status is PushStatus.THROTTLED and result.retry_after:
                    self._retry_later(target.enrollment_id, result.retry_after)
            failed = sum(1 for r in results if not r.ok)
            if failed:
                log.info("push_batch", sent=len(results), failed=failed,
                         first_error=next(r.describe() for r in results if not r.ok))
        return {eid: outcomes[eid] for eid in ids}

    def _record(self, target: push_store.PushTarget, result: PushResult) -> push_store.Outcome:
        backoff = None
        if result.status is PushStatus.THROTTLED and result.retry_after:
            backoff = to_text(now() + dt.timedelta(seconds=result.retry_after))
        return push_store.Outcome(
            target.enrollment_id, target.token, result.status.value,
            apns_id=result.apns_id, error=None if result.ok else result.describe(),
            invalid_at=push_store.apns_timestamp_text(result.timestamp)
            if result.status is PushStatus.UNREGISTERED else None,
            backoff_until=backoff,
        )

    def _retry_later(self, enrollment_id: str, delay: float) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._request_after, enrollment_id, delay)

    async def _request_after(self, enrollment_id: str, delay: float) -> None:
        await self.runtime.clock.sleep(delay + 1)  # APNs' Retry-After is a backoff: the clock decides
        self.request_push([enrollment_id])

    # ----- background ------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.client.run)
            await self.reload_certificate()
            nursery.start_soon(self._coalescer)
            nursery.start_soon(_outlasting_store_faults, self._watch_certificate)
            nursery.start_soon(_outlasting_store_faults, self._repush_worker)
            nursery.start_soon(self._expiry_warner)
            nursery.start_soon(_outlasting_store_faults, self._summary_refresher)
            nursery.start_soon(self._health_watcher)
            task_status.started(self)

    async def _coalescer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep(self.coalesce_seconds)
            batch = list(self._wanted - self._inflight)
            if not batch:
                continue  # all in flight: _push wakes us when they are done
            self._wanted.difference_update(batch)
            self._nursery.start_soon(self._push_in_background, batch)

    async def _push_in_background(self, ids: list[str]) -> dict[str, PushOutcome] | None:
        try:
            return await self._push(ids)
        except StoreClosed:
            log.info("push_outcomes_not_recorded", count=len(ids), reason="shutting down")
        except StoreUnavailable as exc:  # the pushes went out; their outcomes are not recorded
            log.warning("push_outcomes_not_recorded", count=len(ids), reason=exc.reason)
        except Exception as e:  # noqa: BLE001 - a failed batch must not take the server down
            log.exception("push_batch_failed", count=len(ids), error=repr(e))
        return None

    async def _watch_certificate(self) -> None:
        while True:
            await trio.sleep(self.cert_poll_seconds)
            version = await self.runtime.store.read(push_store.certificate_version)
            if version != self._version:
                await self.reload_certificate()

    async def _repush_worker(self) -> None:
        failed_retry = min(self.repush_interval, self.failed_retry_seconds)
        period = max(0.2, min(300.0, self.repush_interval / 4, failed_retry / 2))
        while True:
            await trio.sleep(period)
            cutoff = to_text(now() - dt.timedelta(seconds=self.repush_interval))
            failed_cutoff = to_text(now() - dt.timedelta(seconds=failed_retry))
            ids = await self.runtime.store.read(push_store.repush_candidates, cutoff, failed_cutoff)
            # those still being pushed (APNs slow or down) are not asked for, nor logged, again
            ids = [i for i in ids if i not in self._inflight and i not in self._wanted]
            if ids:
                log.info("repush", count=len(ids), waiting_longer_than=self.repush_interval)
                self.request_push(ids)
            self._update_metrics()  # days left keeps counting down between daily checks
            self._summary_stale = True  # enrollments checked out or re-enrolled since

    async def _summary_refresher(self) -> None:
        """Enrollments by last push result/reason for /metrics: at most once a second, after pushes."""
        while True:
            await trio.sleep(self.summary_seconds)
            if not self._summary_stale:
                continue
            self._summary_stale = False
            by_result = await self.runtime.store.read(push_store.push_summary)
            by_reason = await self.runtime.store.read(push_store.push_reason_summary)
            metrics = self.runtime.metrics
            metrics.enrollments_by_push_result.clear()  # no await until set: a scrape never sees a gap
            for result, count in by_result.items():
                metrics.enrollments_by_push_result.labels(result).set(count)
            metrics.enrollments_by_push_reason.clear()
            for (result, reason), count in by_reason.items():
                metrics.enrollments_by_push_reason.labels(result, reason).set(count)

    async def _health_watcher(self) -> None:
        """Say in the log, once, when pushes turn unhealthy and when they recover; refresh STATUS=."""
        reported_unhealthy, reported_severity = False, self.severity()
        while True:
            await trio.sleep(self.health_check_seconds)
            unhealthy, severity = self.health.unhealthy(), self.severity()
            if unhealthy and not reported_unhealthy:
                log.error("push_unhealthy", failing_seconds=round(self.health.failing_for(), 1),
                          cause=self.health.cause)
            elif reported_unhealthy and not unhealthy:
                log.info("push_recovered")
            if severity != reported_severity:
                self.runtime.refresh_status()
            reported_unhealthy, reported_severity = unhealthy, severity

    async def _expiry_warner(self) -> None:
        while True:
            await trio.sleep(self.expiry_check_seconds)
            self._check_expiry()

    def _check_expiry(self) -> None:
        self._update_metrics()
        cert = self.client.certificate
        if cert is None:
            return
        state = pushcert.expiry_state(cert)
        if state == "expired":
            log.error("push_certificate_expired", topic=cert.topic, not_after=to_text(cert.not_after),
                      hint="renew it at Apple's push certificates portal with the same Apple ID")
        elif state == "warning":
            log.warning("push_certificate_expires_soon", topic=cert.topic, days_left=cert.days_left(),
                        not_after=to_text(cert.not_after),
                        hint="renew it at Apple's push certificates portal with the same Apple ID")

    def _update_metrics(self) -> None:
        metrics = self.runtime.metrics
        cert = self.client.certificate
        if cert is None:
            metrics.push_cert_days_left.set(float("nan"))
            metrics.push_cert_not_after.set(0)
        else:
            metrics.push_cert_days_left.set((cert.not_after - now()).total_seconds() / 86400)
            metrics.push_cert_not_after.set(cert.not_after.timestamp())


async def _outlasting_store_faults(loop) -> None:
    """Runs a periodic loop that reads the database: a storage fault pauses it, never ends it (nor the process)."""
    while True:
        try:
            await loop()
        except StoreUnavailable as exc:
            log.warning("push_worker_waiting", worker=loop.__name__.strip("_"), reason=exc.reason,
                        retry_in_seconds=exc.retry_after)
            await trio.sleep(exc.retry_after)


async def run_push(runtime, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The supervisor's push part: ready once the stored certificate is loaded (or reported missing)."""
    service = PushService(runtime)
    runtime.push = service
    runtime.health_checks.append(service.health_check)
    runtime.status_phrases.append(service.phrase)
    await service.run(task_status=task_status)
