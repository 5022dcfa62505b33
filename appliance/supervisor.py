"""The root nursery: every long-lived part of the appliance, started in order, read top to bottom.

Each part is `async def run_x(..., *, task_status)` started with `nursery.start`, so the process reports
READY=1 only when the database is open and migrated, the push client has its certificate (or has said it
has none), the workers run and the listeners are bound. A step that cannot start says so in one line
(appliance.startup). A part that crashes later takes the process down with its cause logged; systemd
restarts it. SIGTERM/SIGINT: stop accepting, let in-flight requests finish
within [server] shutdown_grace, stop the workers, close the database, exit 0.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig

from appliance import clock as clocks
from appliance.bootstrap import Prepared, prepare_data_dir
from appliance.config import Config, parse_listen
from appliance.logs import get_logger
from appliance.identity.server_tls import ServerTLS
from appliance.metrics import Metrics
from appliance.own_certificates import run_own_certificates
from appliance.push.scheduler import run_push
from appliance.runtime import Runtime
from appliance.service.abm import run_abm
from appliance.service.ade import AdeService
from appliance.service.ddm import run_ddm
from appliance.service.enrollment import warn_on_changed_urls
from appliance.service.expiry import run_expiry
from appliance.service.inventory import run_inventory
from appliance.service.renewal import run_renewal
from appliance.service.retention import run_retention
from appliance.startup import check_tls_files, data_dir_failure, database_failure, explained, listener_failure
from appliance.store.db import run_store
from appliance.store.faults import StoreUnavailable
from appliance.store.fleet import device_counts
from appliance.systemd import Notifier, run_watchdog, watchdog_interval
from appliance.web import tls_peer
from appliance.web.app import ALL_ROLES, create_app
from appliance.web.identify import DeviceIdentification
from appliance.webhook.deliver import run_webhooks

log = get_logger("supervisor")

STATUS_REFRESH_SECONDS = 60


@dataclass
class Serving:
    """What serve() reports once ready: where it listens and its Runtime (tests read both)."""

    binds: list[str]
    api_binds: list[str]
    runtime: Runtime
    stop: trio.Event


async def serve(config: Config, *, notifier: Notifier | None = None, handle_signals: bool = True,
                clock: clocks.Clock = clocks.SYSTEM, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """`clock`: the time every part keeps (appliance.clock); tests hand in one they advance."""
    notifier = notifier or Notifier()
    # From here on, this task and all it starts (the store thread through run_store) read `clock`.
    clocks.use(clock)
    os.umask(0o077)  # everything we create in data_dir (database, keys) is the service user's alone
    if config.server.tls and config.server.tls_cert is not None:
        check_tls_files(config.server.tls_cert, config.server.tls_key)
    with explained(data_dir_failure(config.data_dir)):
        prepared = prepare_data_dir(config)
    stop = trio.Event()
    async with trio.open_nursery() as root:
        with explained(database_failure(prepared.db_path)):
            store = await root.start(run_store, prepared.db_path, config.storage.synchronous, clock)
        runtime = _runtime(config, prepared, store, clock)
        # Topic, ServerURL and CheckInURL never change for an enrolled device: say so if they did.
        await warn_on_changed_urls(runtime)
        async with trio.open_nursery() as workers:
            if handle_signals:
                workers.start_soon(_wait_for_signal, stop, workers.cancel_scope)
            # The push client and the background workers start here, before the listeners.
            await workers.start(run_push, runtime)
            await workers.start(run_webhooks, runtime)
            await workers.start(run_ddm, runtime)
            await workers.start(run_renewal, runtime)
            runtime.inventory = await workers.start(run_inventory, runtime)
            await workers.start(run_abm, runtime)
            # The TLS certificate the listeners serve, renewed (or reloaded) while they run.
            server_tls = await workers.start(run_own_certificates, runtime)
            await workers.start(run_expiry, runtime)
            runtime.retention = await workers.start(run_retention, runtime)
            runtime.metrics.database.source = runtime.retention
            workers.start_soon(_relay_store_faults, runtime)
            interval = watchdog_interval()
            if interval is not None:
                await workers.start(run_watchdog, notifier, interval)
            async with trio.open_nursery() as listeners:
                binds, api_binds = await _start_listeners(listeners, runtime, stop, server_tls)
                await workers.start(_run_status_line, runtime, notifier)
                await notifier.notify("READY=1")
                log.info("ready", listen=",".join(binds), api_listen=",".join(api_binds) or None)
                task_status.started(Serving(binds, api_binds, runtime, stop))
                await stop.wait()
                await notifier.notify("STOPPING=1")
                log.info("stopping", grace_seconds=config.server.shutdown_grace)
            # Listeners return once their in-flight requests are answered (or the grace period ran
            # out); only then do the workers stop, and last the store closes (run_store's finally).
            workers.cancel_scope.cancel()
        root.cancel_scope.cancel()
    log.info("stopped")


def _runtime(config: Config, prepared: Prepared, store, clock: clocks.Clock) -> Runtime:
    metrics = Metrics()
    metrics.up_since.set_to_current_time()
    metrics.store.store = store
    runtime = Runtime(
        config=config,
        store=store,
        clock=clock,
        ca=prepared.ca,
        metrics=metrics,
        api_key=prepared.api_key,
        console_key=prepared.console_key,
        server_cert_from_ca=prepared.server_cert_from_ca,
        tls_cert=prepared.tls_cert,
        tls_key=prepared.tls_key,
    )
    # Trust anchors for device identities: read once here, not per request.
    runtime.trust = DeviceIdentification.from_config(config, prepared.ca.certificate)
    runtime.ade = AdeService(config)
    # The database first: when it fails (disk full, I/O error), that is what STATUS= must lead with.
    runtime.health_checks.append(store.health)
    runtime.status_phrases.append(store.status_phrase)
    runtime.health_checks.append(partial(devices_health, runtime))
    runtime.status_phrases.append(partial(devices_phrase, runtime))
    return runtime


async def devices_health(runtime: Runtime) -> tuple[str, dict, str]:
    counts = await runtime.store.read(device_counts)
    return "devices", {"devices": counts["known"], "active": counts["active"]}, "ok"


async def devices_phrase(runtime: Runtime) -> str:
    counts = await runtime.store.read(device_counts)
    return f"{counts['active']} devices enrolled"


async def _start_listeners(nursery, runtime: Runtime, stop: trio.Event,
                           server_tls: ServerTLS | None) -> tuple[list[str], list[str]]:
    config = runtime.config
    if config.api.listen:
        with explained(listener_failure(config.server.listen, "[server] listen")):
            binds = await nursery.start(run_http, runtime, config.server.listen, ALL_ROLES - {"api"}, stop,
                                      server_tls)
        with explained(listener_failure(config.api.listen, "[api] listen")):
            api_binds = await nursery.start(run_http, runtime, config.api.listen, ALL_ROLES - {"device"}, stop,
                                          server_tls)
        return binds, api_binds
    with explained(listener_failure(config.server.listen, "[server] listen")):
        return await nursery.start(run_http, runtime, config.server.listen, ALL_ROLES, stop, server_tls), []


def hypercorn_config(runtime: Runtime, listen: str) -> HypercornConfig:
    config = runtime.config
    host, port = parse_listen(listen)
    hc = HypercornConfig()
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hc.accesslog = None  # we write our own request line (appliance.web.app)
    hc.errorlog = logging.getLogger("hypercorn.error")  # our format, warnings and up (see logs.py)
    hc.graceful_timeout = config.server.shutdown_grace
    hc.include_server_header = False
    # 1000 by default, and it also closes HTTP/2 connections with GOAWAY mid-stream (STACK.md).
    hc.keep_alive_max_requests = 1_000_000
    hc.keep_alive_timeout = 75
    # Integrators enqueue to thousands of ids in one request line; SCEP clients send ~7 KB URLs.
    hc.h11_max_incomplete_size = 1024 * 1024
    if config.server.tls:
        hc.certfile = str(runtime.tls_cert)
        hc.keyfile = str(runtime.tls_key)
        hc.ciphers = "ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE+AES"
    return hc


async def run_http(runtime: Runtime, listen: str, roles: frozenset[str], stop: trio.Event,
                   server_tls: ServerTLS | None = None, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """One hypercorn listener serving the quart-trio app; returns after a graceful stop."""
    app = create_app(runtime, roles)
    hc = hypercorn_config(runtime, listen)
    if server_tls is not None:
        tls_peer.serve_certificate_from(hc, server_tls)
    if runtime.config.server.tls and "device" in roles:
        # Devices may authenticate with a TLS client certificate; ask, but do not require one.
        bundle = runtime.config.data_dir / "tls-client-cas.pem"
        bundle.write_bytes(runtime.trust.ca_bundle_pem())
        tls_peer.request_client_certificates(hc, bundle)
    # hypercorn.trio.serve plus the TLS client certificate in the scope, and each connection's errors
    # kept to that connection (appliance.web.tls_peer).
    await tls_peer.serve(app, hc, shutdown_trigger=stop.wait, task_status=task_status,
                         count_connection_error=runtime.metrics.count_connection_error)


async def _wait_for_signal(stop: trio.Event, everything: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not stop.is_set():
                log.info("signal_received", signal=name)
                stop.set()
            else:
                # A second signal: the operator does not want to wait for the grace period. Requests
                # still running are cut off (their writes either committed or never happened); the
                # store still closes cleanly after this scope.
                log.warning("stopping_now", signal=name, reason="second signal during the grace period")
                everything.cancel()


async def status_line(runtime: Runtime) -> str:
    phrases = []
    for phrase in runtime.status_phrases:
        try:
            text = await phrase()
        except StoreUnavailable:
            continue  # a phrase read from the database cannot be had now; the store's own phrase says why
        if text:
            phrases.append(text)
    return "; ".join(phrases) or "running"


async def _relay_store_faults(runtime: Runtime) -> None:
    """A database fault, and its end, reach STATUS= at once, not at the line's next minute."""
    while True:
        await runtime.store.fault_changed()
        runtime.refresh_status()


async def _run_status_line(runtime: Runtime, notifier: Notifier, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    while True:
        runtime.status_changed = trio.Event()
        await notifier.notify(f"STATUS={await status_line(runtime)}")
        with trio.move_on_after(STATUS_REFRESH_SECONDS):  # or sooner, when a part's health changes
            await runtime.status_changed.wait()
