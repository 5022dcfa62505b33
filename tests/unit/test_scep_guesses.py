"""The challenge-guessing limit (identity.guesses), with a clock the test moves."""

from __future__ import annotations

from appliance.identity import guesses
from appliance.identity.guesses import GuessLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_blocked_at_the_limit_until_the_window_has_passed():
    clock = Clock()
    limit = GuessLimit(3, 60.0, clock)
    reached = [limit.wrong_guess("192.0.2.1") for _ in range(3)]
    assert reached == [False, False, True]  # the third reaches the limit: one log line, not three
    assert limit.blocked("192.0.2.1")
    assert not limit.blocked("192.0.2.2")
    clock.now += 59.9
    assert limit.blocked("192.0.2.1")
    clock.now += 0.2
    assert not limit.blocked("192.0.2.1")
    assert not limit.wrong_guess("192.0.2.1")  # a new window starts counting from one
    assert not limit.blocked("192.0.2.1")


def test_wrong_guesses_in_an_old_window_do_not_add_up():
    clock = Clock()
    limit = GuessLimit(2, 10.0, clock)
    limit.wrong_guess("a")
    clock.now += 11
    limit.wrong_guess("a")
    assert not limit.blocked("a")


def test_zero_means_no_limit_and_unknown_addresses_are_not_counted():
    off = GuessLimit(0, 10.0, Clock())
    for _ in range(100):
        off.wrong_guess("a")
    assert not off.blocked("a")
    on = GuessLimit(1, 10.0, Clock())
    on.wrong_guess(None)
    assert not on.blocked(None)


def test_memory_stays_bounded(monkeypatch):
    monkeypatch.setattr(guesses, "MAX_ADDRESSES", 5)
    limit = GuessLimit(1, 10.0, Clock())
    for i in range(20):
        limit.wrong_guess(f"10.0.0.{i}")
    assert len(limit._windows) == 5
    assert limit.blocked("10.0.0.19") and not limit.blocked("10.0.0.0")  # the oldest went first
