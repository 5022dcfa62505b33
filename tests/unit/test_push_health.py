"""Push health's clock: failing since the first failure, unhealthy after [apns] unhealthy_after, and each
kind of failure ended only by its own proof (a fake clock: no sleeps)."""

from __future__ import annotations

from appliance.push.health import PROVEN_AFTER, PushHealth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def health(after: float = 300.0) -> tuple[PushHealth, Clock]:
    clock = Clock()
    return PushHealth(after, clock=clock), clock


def test_working_pushes_are_healthy():
    h, clock = health()
    h.connection_up()
    h.answered()
    clock.now += 3600
    assert h.failing_since is None and h.failing_for() == 0 and not h.unhealthy() and h.cause is None


def test_unreachable_turns_unhealthy_only_after_the_threshold_with_the_latest_cause():
    h, clock = health(after=300)
    h.connection_failed("APNs unreachable: ConnectionRefusedError")
    clock.now += 299
    assert h.failing_for() == 299 and not h.unhealthy()
    h.connection_failed("APNs unreachable: timeout")  # later attempts keep the first time
    clock.now += 1
    assert h.unhealthy() and h.failing_for() == 300
    assert h.cause == "APNs unreachable: timeout"


def test_a_connection_that_proves_itself_ends_an_outage():
    h, clock = health(after=60)
    h.connection_failed("TLS with APNs refused: SSLError")
    clock.now += 120
    assert h.unhealthy()
    h.connection_up()
    clock.now += PROVEN_AFTER - 1
    assert h.unhealthy()  # up, but not proven yet
    clock.now += 1
    assert not h.unhealthy() and h.failing_since is None and h.cause is None


def test_a_flapping_connection_does_not_restart_the_clock():
    h, clock = health(after=60)
    h.connection_failed("APNs unreachable")
    for _ in range(10):  # connects, dies unproven within seconds, again and again
        clock.now += 5
        h.connection_up()
        clock.now += 2
        h.connection_down("GOAWAY Shutdown", proven=False)
    assert h.failing_for() == 70 and h.unhealthy() and h.cause == "GOAWAY Shutdown"


def test_403_and_5xx_keep_failing_on_a_working_connection_until_a_device_answer():
    h, clock = health(after=60)
    h.connection_up()
    h.answered("403 BadCertificate")
    clock.now += 3600  # the connection is long proven: that does not end a push failure
    h.answered("403 BadCertificate")
    assert h.unhealthy() and h.cause == "403 BadCertificate"
    h.answered("503 ServiceUnavailable")
    assert h.unhealthy() and h.cause == "503 ServiceUnavailable"
    h.answered()  # e.g. a 410 or a 200: APNs takes the certificate and serves
    assert not h.unhealthy() and h.failing_since is None and h.cause is None


def test_timeouts_are_push_failures_that_a_new_connection_alone_does_not_end():
    h, clock = health(after=30)
    h.push_failed("Timeout")
    h.connection_down("PING unanswered", proven=True)
    h.connection_up()
    clock.now += 40
    assert h.unhealthy() and h.cause == "Timeout"
    h.answered()
    assert not h.unhealthy()


def test_an_answer_on_a_new_connection_ends_an_outage_at_once():
    h, clock = health(after=10)
    h.connection_failed("APNs unreachable")
    clock.now += 20
    h.connection_up()
    h.answered()
    assert not h.unhealthy() and h.failing_for() == 0
