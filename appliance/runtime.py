"""The running appliance's shared parts, handed to every task and to the web app."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from appliance.clock import Clock
from appliance.config import Config
from appliance.identity.ca import ApplianceCA
from appliance.identity.guesses import GuessLimit
from appliance.metrics import Metrics
from appliance.service.accounts import SignInLimits
from appliance.service.groups import MembershipWatch
from appliance.store.db import Store

if TYPE_CHECKING:  # the parts that fill these fields import Runtime themselves
    from appliance.push.scheduler import PushService
    from appliance.service.abm import AbmService
    from appliance.service.ade import AdeService
    from appliance.service.ddm import DdmService
    from appliance.service.inventory import InventoryService
    from appliance.service.renewal import Renewals
    from appliance.service.retention import Retention
    from appliance.web.identify import DeviceIdentification
    from appliance.webhook.deliver import WebhookWorker

# A health contributor: returns (name, details, severity) where severity is "ok", "warning" or "error".
HealthCheck = Callable[[], Awaitable[tuple[str, dict, str]]]


@dataclass
class Runtime:
    config: Config
    store: Store
    clock: Clock  # the time the workers keep and wait on (appliance.clock)
    ca: ApplianceCA
    metrics: Metrics
    api_key: str
    server_cert_from_ca: bool
    tls_cert: Path | None = None
    tls_key: Path | None = None
    console_key: str = ""  # signs the web console's session cookies (data_dir/console.key)
    started_at: float = field(default_factory=time.time)
    # Filled by parts as they start (see supervisor.serve).
    push: PushService | None = None
    webhooks: WebhookWorker | None = None  # None without [webhook] url
    ddm: DdmService | None = None
    renewals: Renewals | None = None
    retention: Retention | None = None  # also the database figures for /metrics
    inventory: InventoryService | None = None
    trust: DeviceIdentification | None = None  # how device requests prove their identity
    abm: AbmService | None = None
    ade: AdeService | None = None  # the ADE endpoint's and setup steps' prepared config
    # Told after every commit that changed group membership (appliance.service.groups).
    group_changes: MembershipWatch = field(default_factory=MembershipWatch)
    health_checks: list[HealthCheck] = field(default_factory=list)
    # Short phrases for systemd's STATUS= line, e.g. "push cert com.apple.mgmt.X expires in 200 days".
    status_phrases: list[Callable[[], Awaitable[str | None]]] = field(default_factory=list)
    # Set by refresh_status(): the STATUS= line is rewritten now rather than at its next minute.
    status_changed: trio.Event = field(default_factory=trio.Event)
    # Wrong secrets per client, limited as the config says (identity.guesses): SCEP challenges,
    # enrollment-profile secrets, admin API keys.
    scep_guesses: GuessLimit = field(init=False)
    enrollment_secret_guesses: GuessLimit = field(init=False)
    api_key_guesses: GuessLimit = field(init=False)
    # Wrong console passwords per client address and per account (appliance.service.accounts).
    sign_ins: SignInLimits = field(init=False)

    def refresh_status(self) -> None:
        """A part's health changed: rewrite systemd's STATUS= line now."""
        self.status_changed.set()

    def __post_init__(self) -> None:
        enrollment, api = self.config.enrollment, self.config.api

        def seconds() -> float:  # the appliance's clock, so a test moves guessing windows with it
            return self.clock.now().timestamp()

        self.scep_guesses = GuessLimit(enrollment.challenge_guess_limit, enrollment.challenge_guess_window, seconds)
        self.enrollment_secret_guesses = GuessLimit(enrollment.secret_guess_limit, enrollment.secret_guess_window,
                                                    seconds)
        self.api_key_guesses = GuessLimit(api.key_guess_limit, api.key_guess_window, seconds)
        self.sign_ins = SignInLimits(seconds)
