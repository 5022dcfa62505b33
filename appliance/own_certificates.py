"""The appliance's own certificates while it runs: the TLS certificate the listeners serve, and the CA.

- The generated TLS certificate (bootstrap.py) is renewed by the device identities' rule ([renewal]
  renew_before, or half its lifetime) and loaded into the live listeners: new connections get it, open
  ones keep theirs, nothing restarts. An operator's own certificate ([server] tls_cert) is loaded again
  when its files change (a certbot renewal, say).
- The CA cannot renew itself without every device enrolling again: its expiry is warned about a year
  ahead (log once a day, STATUS=, /healthz check "certificates", /metrics).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import trio

from appliance.bootstrap import ensure_server_certificate
from appliance.clock import now
from appliance.identity.server_tls import ServerTLS
from appliance.logs import get_logger
from appliance.store.timefmt import to_text

log = get_logger("certificates")

CA_WARNING = timedelta(days=365)
TLS_WARNING = timedelta(days=14)


def _days(not_after: datetime) -> float:
    return (not_after - now()).total_seconds() / 86400


class OwnCertificates:
    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.tls = (ServerTLS(runtime.tls_cert, runtime.tls_key)
                    if runtime.config.server.tls and runtime.tls_cert is not None else None)
        self.generated = runtime.server_cert_from_ca
        self._ca_warned_on: str | None = None
        metrics = runtime.metrics
        metrics.ca_days_left.set_function(lambda: _days(runtime.ca.certificate.not_valid_after_utc))
        metrics.tls_days_left.set_function(self._tls_days_left)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await self.check()
        task_status.started(self.tls)
        while True:
            await self.runtime.clock.sleep(self.runtime.config.renewal.check_interval)
            await self.check()

    async def check(self) -> None:
        self._warn_about_the_ca()
        if self.tls is None:
            return
        try:
            if self.generated:
                # Off the event loop: a renewal makes a new RSA key.
                if await trio.to_thread.run_sync(ensure_server_certificate, self.runtime.ca, self.runtime.config):
                    self.tls.load()
                    log.info("server_certificate_renewed", not_after=to_text(self.tls.certificate().not_valid_after_utc))
            elif self.tls.changed():
                self.tls.load()
                log.info("server_certificate_reloaded", path=self.tls.cert_path,
                         not_after=to_text(self.tls.certificate().not_valid_after_utc))
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: a half-written or mismatched pair
            log.error("server_certificate_not_loaded", path=self.tls.cert_path, error=str(exc),
                      hint="the listeners keep serving the certificate they had")

    def _warn_about_the_ca(self) -> None:
        not_after = self.runtime.ca.certificate.not_valid_after_utc
        today = to_text(now())[:10]
        if not_after - now() > CA_WARNING or self._ca_warned_on == today:
            return
        self._ca_warned_on = today
        log.warning("ca_certificate_expires_soon" if not_after > now() else "ca_certificate_expired",
                    not_after=to_text(not_after), days_left=int(_days(not_after)),
                    hint="every device identity and the generated TLS certificate chain to this CA: "
                         "plan re-enrolling the fleet under a new CA before it ends (README, Identity renewal)")

    def _tls_days_left(self) -> float:
        if self.tls is None:
            return float("nan")
        try:
            return _days(self.tls.certificate().not_valid_after_utc)
        except (OSError, ValueError):
            return float("nan")

    async def health(self) -> tuple[str, dict, str]:
        ca_after = self.runtime.ca.certificate.not_valid_after_utc
        details = {"ca": {"not_after": to_text(ca_after), "days_left": int(_days(ca_after))}}
        severity = "error" if ca_after <= now() else "warning" if ca_after - now() <= CA_WARNING else "ok"
        if self.tls is not None:
            try:
                tls_after = self.tls.certificate().not_valid_after_utc
            except (OSError, ValueError) as exc:
                details["tls"] = {"error": str(exc)}
                return "certificates", details, "error"
            details["tls"] = {"not_after": to_text(tls_after), "days_left": int(_days(tls_after)),
                              "generated": self.generated}
            if tls_after <= now():
                severity = "error"
            elif tls_after - now() <= TLS_WARNING and severity == "ok":
                severity = "warning"
        return "certificates", details, severity

    async def phrase(self) -> str | None:
        ca_after = self.runtime.ca.certificate.not_valid_after_utc
        if ca_after - now() > CA_WARNING:
            return None
        return "appliance CA EXPIRED" if ca_after <= now() else f"appliance CA expires in {int(_days(ca_after))} days"


async def run_own_certificates(runtime, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The supervisor's part for the appliance's own certificates: hands out the ServerTLS the listeners
    serve from (None without TLS)."""
    own = OwnCertificates(runtime)
    runtime.health_checks.append(own.health)
    runtime.status_phrases.append(own.phrase)
    await own.run(task_status=task_status)
