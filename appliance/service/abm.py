"""Apple Business Manager: one sync worker per ABM server entry, on runtime.abm.

A worker's round: define the ADE profile if the config changed it, then fetch (all devices, paged; the
first time, after an expired or invalid cursor, and every [abm] full_fetch_interval) or sync (the changes
since the cursor), storing each page with its cursor in one transaction; then assign the profile to every
device that should have it, retrying failures with backoff. Between rounds it waits [abm] sync_interval,
or less when an assignment retry is due, or until woken (sync now, a new token).

Peers' known troubles, and what is done here instead:
- a token import picked up without a restart: the API wakes the service, and a CLI import is seen by
  polling each server's version;
- several ABM servers: each has its own worker, token, cursor and profile;
- the cursor echoed back with more_to_follow true: the round stops, logs it, and the next round goes on;
- cursors expire after 7 days, and Apple's cooldown hides devices from syncs: an old cursor starts a full
  fetch, and so does every full_fetch_interval; a full fetch removes who it did not name;
- devices found by a fetch are assigned as well as those a sync reports added, and failures are retried.
"""

from __future__ import annotations

import base64
import random
import ssl
from datetime import datetime, timedelta

import httpx
import trio

from appliance import __version__
from appliance.abm.client import DepClient, DepError, DepUnavailable, Exchange, TokenRefused
from appliance.logs import get_logger
from appliance.protocol import dep
from appliance.protocol.dep import ProfileSettings
from appliance.store import abm as abm_store
from appliance.store import outbox
from appliance.store.db import StoreClosed
from appliance.store.faults import StoreUnavailable
from appliance.store.timefmt import from_text, to_text
from appliance.webhook.events import abm_event

log = get_logger("abm")

WARN_DAYS = 30
ADE_PATH = "/mdm/ade"
MIN_WAIT = 1.0  # no round follows another sooner, whatever happened


def profile_settings(config, ca_der: bytes | None) -> ProfileSettings:
    """The ADE profile defined with Apple, from [ade] (ca_der: our CA, when it issued the TLS certificate:
    the device must trust it for the profile url before it has any profile)."""
    ade = config.ade
    organization = config.server.organization
    return ProfileSettings(
        profile_name=ade.profile_name or f"{organization} automated enrollment",
        url=ade.url or config.server.public_url + ADE_PATH,
        is_supervised=ade.is_supervised, is_mandatory=ade.is_mandatory, is_mdm_removable=ade.is_mdm_removable,
        await_device_configured=ade.await_device_configured, auto_advance_setup=ade.auto_advance_setup,
        department=ade.department or organization, support_phone_number=ade.support_phone_number,
        support_email_address=ade.support_email_address, org_magic=ade.org_magic, language=ade.language,
        region=ade.region, skip_setup_items=tuple(ade.skip_setup_items),
        anchor_certs=(base64.b64encode(ca_der).decode("ascii"),) if ca_der else (),
    )


class AbmService:
    poll_seconds = 3.0  # how soon a token imported by the CLI (straight into the database) is used
    expiry_check_seconds = 86400.0
    max_pages = 1000  # per round: a guard, 1,000,000 devices at the largest page size
    assign_batch = 1000

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.config = runtime.config.abm
        self.workers: dict[str, ServerWorker] = {}
        self._nursery: trio.Nursery | None = None
        self.http: httpx.AsyncClient | None = None
        ca_der = runtime.ca.certificate_der if runtime.server_cert_from_ca else None
        self.profile_body = dep.define_profile_body(profile_settings(runtime.config, ca_der))
        self.profile_hash = dep.profile_hash(self.profile_body)
        self.retry = abm_store.RetryPolicy(self.config.assign_retry_initial, self.config.assign_retry_max,
                                           self.config.throttled_retry)
        self._servers: list[dict] = []

    # --- what the API calls -----------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Look at the stored servers now (after a key pair or token change) and start, reload or stop workers."""
        versions = await self.runtime.store.read(abm_store.versions)
        self._servers = await self.runtime.store.read(abm_store.servers)
        for name in list(self.workers):
            if name not in versions:
                self.workers.pop(name).stop()
                log.info("abm_server_forgotten", server=name)
        for name, version in versions.items():
            worker = self.workers.get(name)
            if worker is None:
                worker = self.workers[name] = ServerWorker(self, name)
                if self._nursery is not None:
                    self._nursery.start_soon(worker.run)
            if worker.version != version:
                worker.version = version
                worker.reload = True
                worker.wake()
        self._update_gauges()

    def sync_now(self, name: str, full: bool = False) -> bool:
        worker = self.workers.get(name)
        if worker is None:
            return False
        worker.full_requested = worker.full_requested or full
        worker.wake()
        return True

    def wake_servers(self, names) -> None:
        for name in names:
            if name in self.workers:
                self.workers[name].wake()

    async def unassign(self, serials: list[str]) -> dict[str, dict]:
        """Take the profile off devices in ABM now (Remove a Profile) and never assign it automatically again."""
        servers = await self.runtime.store.write(abm_store.set_wanted, serials, abm_store.UNASSIGNED,
                                                 "profile unassigned by an operator")
        answers: dict[str, dict] = {}
        by_server: dict[str, list[str]] = {}
        for serial, name in servers.items():
            if name is None:
                answers[serial] = {"error": "not a device of any ABM server"}
            else:
                by_server.setdefault(name, []).append(serial)
        for name, batch in by_server.items():
            worker = self.workers.get(name)
            client = worker.client if worker else None
            if client is None:
                answers.update({serial: {"state": abm_store.UNASSIGNED, "error": f"ABM server {name} has no usable "
                                         "token: marked unassigned here only"} for serial in batch})
                continue
            try:
                answer = await client.remove_profile(batch)
                answers.update({serial: {"state": abm_store.UNASSIGNED, "result": answer.devices.get(serial)}
                                for serial in batch})
            except DepError as exc:
                answers.update({serial: {"state": abm_store.UNASSIGNED, "error": str(exc)} for serial in batch})
        self._update_gauges()
        return answers

    async def assign(self, serials: list[str]) -> dict[str, dict]:
        """Assign the profile again to devices (also ones an operator unassigned): done by their worker now."""
        servers = await self.runtime.store.write(abm_store.set_wanted, serials, abm_store.PENDING,
                                                 "assignment asked for by an operator")
        self.wake_servers({name for name in servers.values() if name})
        return {serial: ({"state": abm_store.PENDING, "abm_server": name} if name
                         else {"error": "not a device of any ABM server"}) for serial, name in servers.items()}

    # --- health ---------------------------------------------------------------------------------------------
    def status(self, servers: list[dict]) -> list[dict]:
        """Per stored server (store.abm.servers): token state and days left, sync state, last error."""
        moment = self.runtime.clock.now()
        found = []
        for server in servers:
            expires = from_text(server["token_expires_at"])
            days = None if expires is None else int((expires - moment).total_seconds() // 86400)
            worker = self.workers.get(server["name"])
            state = "missing" if not server["has_token"] else (
                "expired" if expires is not None and expires <= moment else
                "warning" if days is not None and days < WARN_DAYS else "ok")
            found.append({
                "name": server["name"], "token_state": state, "token_expires_at": server["token_expires_at"],
                "token_days_left": days, "last_sync_at": server["last_sync_at"],
                "last_full_fetch_at": server["last_full_fetch_at"], "phase": server["phase"],
                "last_error": worker.last_error if worker else server["last_error"],
                "profile_uuid": server["profile_uuid"],
            })
        return found

    async def health_check(self) -> tuple[str, dict, str]:
        servers = self.status(await self.runtime.store.read(abm_store.servers))
        severity = "ok"
        for server in servers:
            if server["token_state"] == "expired":
                severity = "error"
            elif server["token_state"] in ("warning", "missing") or server["last_error"]:
                severity = "warning" if severity == "ok" else severity
        return "abm", {"servers": servers}, severity

    async def phrase(self) -> str | None:
        parts = []
        for server in self.status(await self.runtime.store.read(abm_store.servers)):
            name, state = server["name"], server["token_state"]
            if state == "missing":
                parts.append(f"ABM {name}: no token imported")
            elif state == "expired":
                parts.append(f"ERROR: ABM token {name} EXPIRED on {server['token_expires_at'][:10]}, "
                             "download a new one")
            elif state == "warning":
                parts.append(f"WARNING: ABM token {name} expires in {server['token_days_left']} days, renew it")
            else:
                parts.append(f"ABM token {name} expires in {server['token_days_left']} days")
        return "; ".join(parts) or None

    def _update_gauges(self) -> None:
        metrics = self.runtime.metrics
        moment = self.runtime.clock.now()
        for server in self._servers:
            expires = from_text(server["token_expires_at"])
            if expires is not None:
                metrics.abm_token_days_left.labels(server["name"]).set((expires - moment).total_seconds() / 86400)
            synced = from_text(server["last_sync_at"])
            if synced is not None:
                metrics.abm_last_sync.labels(server["name"]).set(synced.timestamp())

    async def update_device_gauge(self) -> None:
        counts = await self.runtime.store.read(abm_store.counts)
        gauge = self.runtime.metrics.abm_devices
        gauge.clear()  # no await until set: a scrape never sees a gap
        for (server, state), count in counts.items():
            gauge.labels(server, state).set(count)

    def observe(self, server: str, exchange: Exchange) -> None:
        self.runtime.metrics.abm_requests.labels(server, exchange.endpoint, str(exchange.status)).inc()

    # --- running --------------------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        transport = httpx.AsyncHTTPTransport(
            verify=_verify(self.config.ca_file), limits=httpx.Limits(max_connections=8, max_keepalive_connections=8))
        async with httpx.AsyncClient(transport=transport, follow_redirects=False,
                                     headers={"User-Agent": f"mdm-appliance/{__version__}"}) as http:
            self.http = http
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self.refresh()  # starts a worker per stored server
                nursery.start_soon(self._watch_versions)
                nursery.start_soon(self._expiry_warner)
                task_status.started(self)

    async def _watch_versions(self) -> None:
        while True:
            await trio.sleep(self.poll_seconds)
            try:
                versions = await self.runtime.store.read(abm_store.versions)
                if any(self.workers.get(name) is None or self.workers[name].version != version
                       for name, version in versions.items()) or set(self.workers) - set(versions):
                    await self.refresh()
            except StoreUnavailable as exc:
                await trio.sleep(exc.retry_after)

    async def _expiry_warner(self) -> None:
        while True:
            try:
                self._servers = await self.runtime.store.read(abm_store.servers)
                for server in self.status(self._servers):
                    if server["token_state"] == "expired":
                        log.error("abm_token_expired", server=server["name"], not_after=server["token_expires_at"],
                                  hint="download a new token in Apple Business Manager, then `mdm-appliance abm "
                                       "token import NAME FILE`")
                    elif server["token_state"] == "warning":
                        log.warning("abm_token_expires_soon", server=server["name"],
                                    days_left=server["token_days_left"], not_after=server["token_expires_at"],
                                    hint="download a new token in Apple Business Manager, then `mdm-appliance "
                                         "abm token import NAME FILE`")
                self._update_gauges()
            except StoreUnavailable as exc:
                await trio.sleep(exc.retry_after)
                continue
            await self.runtime.clock.sleep(self.expiry_check_seconds)


def _verify(ca_file) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


class ServerWorker:
    """The sync and assignment loop of one ABM server."""

    def __init__(self, service: AbmService, name: str) -> None:
        self.service = service
        self.runtime = service.runtime
        self.name = name
        self.version = 0
        self.reload = True
        self.client: DepClient | None = None
        self.expires_at: datetime | None = None  # the token's
        self.full_requested = False
        self.last_error: str | None = None
        self.failures = 0
        self.rounds = 0
        self.note: str | None = None  # what a round that went on anyway has to say (an echoed cursor)
        self._wake = trio.Event()
        self._cancel = trio.CancelScope()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._cancel.cancel()

    async def run(self) -> None:
        with self._cancel:
            while True:
                wait = await self._round_or_pause()
                await self._wait(max(MIN_WAIT, wait))

    async def _round_or_pause(self) -> float:
        """Run a round; return how long to wait before the next one."""
        self._wake = trio.Event()
        self.note = None
        try:
            waited = await self.round()
            self.failures = 0
            await self._record_error(self.note)  # None after a clean round: the last error is over
            return waited
        except StoreClosed:
            raise
        except StoreUnavailable as exc:
            log.warning("abm_waiting_for_database", server=self.name, reason=exc.reason)
            return float(exc.retry_after)
        except _NoToken as exc:
            await self._record_error(str(exc))
            return self.service.expiry_check_seconds
        except TokenRefused as exc:
            self.failures += 1
            await self._record_error(f"Apple refused the server token: {exc}")
            log.error("abm_token_refused", server=self.name, error=str(exc))
            return self._backoff(None, floor=300.0)
        except DepUnavailable as exc:
            self.failures += 1
            await self._record_error(str(exc))
            pause = self._backoff(exc.retry_after)
            log.warning("abm_unavailable", server=self.name, error=str(exc), retry_in_seconds=f"{pause:.0f}")
            return pause
        except (DepError, dep.DepAnswerError) as exc:
            self.failures += 1
            await self._record_error(str(exc))
            log.error("abm_round_failed", server=self.name, error=str(exc))
            return self._backoff(None)

    def _backoff(self, retry_after: float | None, floor: float = 30.0) -> float:
        """Retry-After when the service asked for one, else floor doubling per failure, up to [abm] retry_max."""
        cap = self.service.config.retry_max
        pause = min(cap, floor * 2 ** max(0, self.failures - 1)) * random.uniform(0.8, 1.0)
        if retry_after is not None:
            pause = max(retry_after, MIN_WAIT)
        return pause

    async def _record_error(self, error: str | None) -> None:
        if error != self.last_error:
            self.last_error = error
            await self.runtime.store.write(abm_store.record_error, self.name, error)
            self.runtime.refresh_status()

    async def _wait(self, seconds: float) -> None:
        async with trio.open_nursery() as nursery:
            async def sleeper() -> None:
                await self.runtime.clock.sleep(seconds)
                nursery.cancel_scope.cancel()

            async def waker() -> None:
                await self._wake.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(sleeper)
            nursery.start_soon(waker)

    # --- one round ------------------------------------------------------------------------------------------
    async def round(self) -> float:
        store = self.runtime.store
        expired = self.expires_at is not None and self.expires_at <= self.runtime.clock.now()
        if self.reload or self.client is None or expired:
            await self._load_token()
        client = self.client
        assert client is not None
        position = await store.read(abm_store.sync_position, self.name)
        if position is None:
            raise _NoToken("the server entry is gone")
        if position["profile_hash"] != self.service.profile_hash or not position["profile_uuid"]:
            await self._define_profile(client)
        await self._sync(client, position)
        await self._assign(client)
        self.rounds += 1
        await self.service.update_device_gauge()
        self.service._servers = await store.read(abm_store.servers)
        self.service._update_gauges()
        return await self._next_wait()

    async def _load_token(self) -> None:
        secrets = await self.runtime.store.read(abm_store.secrets, self.name)
        if secrets is None:
            raise _NoToken("the server entry is gone")
        _, _, token_json = secrets
        self.reload = False
        if token_json is None:
            self.client = None
            raise _NoToken(f"no server token imported: `mdm-appliance abm token import {self.name} FILE`")
        token = dep.parse_server_token(token_json)
        self.expires_at = token.expires_at
        if token.expires_at is not None and token.expires_at <= self.runtime.clock.now():
            self.client = None
            self.reload = True
            raise _NoToken(f"the server token expired on {token.expires_at:%Y-%m-%d}: download a new one")
        config = self.service.config
        self.client = DepClient(self.name, config.url_of(self.name), token, self.service.http,
                                timeout=config.request_timeout, now=self.runtime.clock.now,
                                observe=lambda exchange: self.service.observe(self.name, exchange))
        log.info("abm_token_loaded", server=self.name, url=config.url_of(self.name),
                 expires_at=to_text(token.expires_at) if token.expires_at else None)
        try:
            account = await self.client.account()
        except DepUnavailable:
            raise
        except DepError as exc:  # account details are for people: not worth failing the round for
            log.info("abm_account_unavailable", server=self.name, error=str(exc))
        else:
            await self.runtime.store.write(abm_store.record_account, self.name, account)
            log.info("abm_account", server=self.name, server_name=account.get("server_name"),
                     org_name=account.get("org_name"))

    async def _define_profile(self, client: DepClient) -> None:
        profile_uuid = await client.define_profile(self.service.profile_body)
        pending = await self.runtime.store.write(abm_store.record_profile, self.name, profile_uuid,
                                                 self.service.profile_hash)
        log.info("abm_profile_defined", server=self.name, profile_uuid=profile_uuid, devices_to_assign=pending)

    async def _sync(self, client: DepClient, position: dict) -> None:
        phase, cursor = position["phase"], position["cursor"]
        config = self.service.config
        moment = self.runtime.clock.now()
        why = self._full_fetch_reason(position, moment)
        if why is not None:
            await self.runtime.store.write(abm_store.start_full_fetch, self.name)
            log.info("abm_full_fetch", server=self.name, reason=why)
            phase, cursor = abm_store.FETCH, None
            self.full_requested = False
        started = to_text(moment)
        restarted = False
        for _ in range(self.service.max_pages):
            try:
                if phase == abm_store.FETCH:
                    page = await client.fetch_devices(cursor, config.page_size)
                else:
                    page = await client.sync_devices(cursor, config.page_size)
            except DepError as exc:
                if isinstance(exc, DepUnavailable) or exc.status != 400:
                    raise
                if phase == abm_store.FETCH and exc.code == dep.EXHAUSTED_CURSOR:
                    # The fetch had already returned every device: it is complete; syncs go on from here.
                    await self._store_page(phase, [], cursor, False, started)
                    return
                if exc.code in dep.CURSOR_ERRORS and not restarted:
                    log.warning("abm_cursor_refused", server=self.name, phase=phase, code=exc.code,
                                action="full fetch")
                    await self.runtime.store.write(abm_store.start_full_fetch, self.name)
                    phase, cursor, restarted = abm_store.FETCH, None, True
                    started = to_text(self.runtime.clock.now())
                    continue
                raise
            echoed = page.more_to_follow and cursor is not None and page.cursor == cursor
            outcome = await self._store_page(phase, list(page.devices), page.cursor, page.more_to_follow, started)
            self._count(phase, page, outcome)
            if echoed:
                # Apple sometimes answers the cursor it was sent with more_to_follow true: asking again would
                # loop for ever. Stop here; the next round asks again from the same cursor.
                self.runtime.metrics.abm_echoed_cursors.labels(self.name).inc()
                self.note = f"{phase} answered the cursor it was sent with more_to_follow true; the next round goes on"
                log.warning("abm_cursor_echoed", server=self.name, phase=phase, devices=len(page.devices),
                            action="round stopped; the next round goes on from this cursor")
                return
            cursor = page.cursor
            if not page.more_to_follow:
                if outcome.fetch_completed:
                    log.info("abm_fetch_complete", server=self.name, removed=len(outcome.gone))
                return
        log.warning("abm_round_cut", server=self.name, pages=self.service.max_pages)

    def _full_fetch_reason(self, position: dict, moment: datetime) -> str | None:
        if self.full_requested:
            return "asked for"
        if position["phase"] == abm_store.FETCH:
            return None if position["cursor"] else "first fetch"
        if not position["cursor"]:
            return "no cursor"
        cursor_at = from_text(position["cursor_at"])
        if cursor_at is not None and moment - cursor_at >= timedelta(days=dep.CURSOR_MAX_AGE_DAYS):
            return "the cursor is older than 7 days"
        last_full = from_text(position["last_full_fetch_at"])
        if last_full is None or moment - last_full >= timedelta(seconds=self.service.config.full_fetch_interval):
            return "periodic full fetch"
        return None

    async def _store_page(self, phase: str, devices: list[dep.DepDevice], cursor: str, more: bool,
                          started: str) -> abm_store.PageOutcome:
        webhook = self.runtime.config.webhook.url is not None
        name = self.name

        def store(conn) -> abm_store.PageOutcome:
            outcome = abm_store.apply_page(conn, name, phase, dep.latest_per_serial(devices), cursor, more, started)
            if webhook:
                for kind, fields in outcome.events:
                    topic, body = abm_event(kind, fields)
                    outbox.add(conn, enrollment_id=f"abm:{fields['serial_number']}", topic=topic, body=body)
            return outcome

        outcome = await self.runtime.store.write(store)
        if webhook and outcome.events and self.runtime.webhooks is not None:
            self.runtime.webhooks.wake()
        return outcome

    def _count(self, phase: str, page: dep.DevicePage, outcome: abm_store.PageOutcome) -> None:
        metric = self.runtime.metrics.abm_device_records
        changed = len(outcome.added) + len(outcome.modified) + len(outcome.deleted) - len(outcome.gone)
        for op, count in (("added", len(outcome.added)), ("modified", len(outcome.modified)),
                          ("deleted", len(outcome.deleted) - len(outcome.gone)),
                          ("unchanged", max(0, len(page.devices) - changed))):
            if count:
                metric.labels(self.name, phase, op).inc(count)
        log.info("abm_page", server=self.name, phase=phase, devices=len(page.devices), added=len(outcome.added),
                 modified=len(outcome.modified), deleted=len(outcome.deleted), more=page.more_to_follow)

    async def _assign(self, client: DepClient) -> None:
        store = self.runtime.store
        position = await store.read(abm_store.sync_position, self.name)
        profile_uuid = position["profile_uuid"] if position else None
        if not profile_uuid:
            return
        for _ in range(self.service.max_pages):  # every batch leaves its devices not due: this ends well before
            moment = to_text(self.runtime.clock.now())
            serials = await store.read(abm_store.due_assignments, self.name, moment, self.service.assign_batch)
            if not serials:
                return
            try:
                answer = await client.assign_profile(profile_uuid, serials)
            except DepUnavailable:
                raise
            except DepError as exc:
                # The whole call was refused (400 for a bad request, say): each device waits out its backoff.
                await self._record_outcomes(profile_uuid, [(s, abm_store.FAILED, str(exc)) for s in serials])
                raise
            outcomes = [_outcome(serial, answer.devices.get(serial)) for serial in serials]
            await self._record_outcomes(profile_uuid, outcomes)

    async def _record_outcomes(self, profile_uuid: str, outcomes: list[tuple[str, str, str | None]]) -> None:
        webhook = self.runtime.config.webhook.url is not None
        name, policy = self.name, self.service.retry

        def record(conn) -> None:
            abm_store.record_assignments(conn, name, profile_uuid, outcomes, policy)
            if webhook:
                for serial, state, reason in outcomes:
                    if state != abm_store.ASSIGNED:
                        topic, body = abm_event("assignment_failed", {
                            "serial_number": serial, "abm_server": name, "assign_state": state, "reason": reason,
                            "profile_uuid": profile_uuid})
                        outbox.add(conn, enrollment_id=f"abm:{serial}", topic=topic, body=body)

        await self.runtime.store.write(record)
        metric = self.runtime.metrics.abm_assignments
        failed = 0
        for _, state, _ in outcomes:
            metric.labels(self.name, _RESULT_LABEL.get(state, state)).inc()
            failed += state != abm_store.ASSIGNED
        log.info("abm_assigned", server=self.name, devices=len(outcomes), failed=failed, profile_uuid=profile_uuid)
        if webhook and failed and self.runtime.webhooks is not None:
            self.runtime.webhooks.wake()

    async def _next_wait(self) -> float:
        store = self.runtime.store
        position = await store.read(abm_store.sync_position, self.name)
        moment = self.runtime.clock.now()
        waits = [self.service.config.sync_interval]
        last_sync = from_text(position["last_sync_at"]) if position else None
        if last_sync is not None:
            waits[0] = (last_sync + timedelta(seconds=self.service.config.sync_interval) - moment).total_seconds()
        due = await store.read(abm_store.next_assignment_at, self.name)
        if due is not None:
            waits.append((from_text(due) - moment).total_seconds() if due else 0.0)
        return min(waits)


_RESULT_LABEL = {abm_store.ASSIGNED: dep.SUCCESS, abm_store.FAILED: dep.FAILED, abm_store.THROTTLED: dep.THROTTLED,
                 abm_store.NOT_ACCESSIBLE: dep.NOT_ACCESSIBLE}


def _outcome(serial: str, result: str | None) -> tuple[str, str, str | None]:
    """An assign answer for one device -> (serial, assign state, reason)."""
    if result == dep.SUCCESS:
        return serial, abm_store.ASSIGNED, None
    if result == dep.THROTTLED:
        return serial, abm_store.THROTTLED, "THROTTLED: Apple's cooldown for this device; tried again after a day"
    if result == dep.NOT_ACCESSIBLE:
        return serial, abm_store.NOT_ACCESSIBLE, ("NOT_ACCESSIBLE: not assigned to this MDM server in Apple Business "
                                                  "Manager (unassigned or disowned)")
    if result is None:
        return serial, abm_store.FAILED, "Apple's answer did not name this device"
    return serial, abm_store.FAILED, f"{result}: Apple did not assign the profile; tried again later"


class _NoToken(Exception):
    """Nothing to sync with: no token, an expired one, or the entry is gone."""


async def run_abm(runtime, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The supervisor's ABM part: ready once the stored servers are read and their workers started."""
    service = AbmService(runtime)
    runtime.abm = service
    runtime.health_checks.append(service.health_check)
    runtime.status_phrases.append(service.phrase)
    await service.run(task_status=task_status)
