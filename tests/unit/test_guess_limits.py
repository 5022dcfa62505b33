"""Guessing limits (identity.guesses), with a clock the test moves, and which client a request counts for."""

from __future__ import annotations

from appliance.identity import guesses
from appliance.identity.guesses import GuessLimit, guessing_client


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


def test_retry_after_counts_down_to_the_end_of_the_window():
    clock = Clock()
    limit = GuessLimit(2, 600.0, clock)
    assert limit.retry_after("a") == 0
    limit.wrong_guess("a")
    clock.now += 100
    limit.wrong_guess("a")  # the window started at the first wrong guess
    assert limit.retry_after("a") == 500
    clock.now += 499.5
    assert limit.retry_after("a") == 1  # whole seconds, never 0 while still blocked
    clock.now += 1
    assert limit.retry_after("a") == 0


def test_guesses_of_a_blocked_client_neither_count_nor_extend_its_window():
    clock = Clock()
    limit = GuessLimit(1, 60.0, clock)
    assert limit.wrong_guess("a")
    clock.now += 30
    assert not limit.wrong_guess("a")
    assert limit.retry_after("a") == 30
    clock.now += 30
    assert not limit.blocked("a")


TRUSTED = ["10.0.0.0/24", "::1"]


def test_the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy():
    assert guessing_client("192.0.2.1", ["198.51.100.7"], TRUSTED) == "192.0.2.1"  # forged, ignored
    assert guessing_client("10.0.0.5", ["203.0.113.9, 198.51.100.7"], TRUSTED) == "198.51.100.7"
    assert guessing_client("10.0.0.5", [], TRUSTED) == "10.0.0.5"  # a proxy's own request


def test_a_chain_of_trusted_proxies_is_walked_from_the_right():
    # The client wrote 1.1.1.1 itself; 10.0.0.9 (trusted) saw 198.51.100.7 and 10.0.0.5 saw 10.0.0.9.
    headers = ["1.1.1.1", "198.51.100.7, 10.0.0.9"]  # several header lines read as one list
    assert guessing_client("10.0.0.5", headers, TRUSTED) == "198.51.100.7"


def test_garbage_in_the_forwarded_header_counts_as_the_proxy_not_as_a_fresh_client():
    assert guessing_client("10.0.0.5", ["unknown-1234"], TRUSTED) == "10.0.0.5"
    assert guessing_client("10.0.0.5", ["198.51.100.7, x, 10.0.0.9"], TRUSTED) == "10.0.0.9"


def test_ipv6_clients_count_per_slash_64_and_mapped_ipv4_as_ipv4():
    first = guessing_client("2001:db8:1:2::1", [], TRUSTED)
    assert first == "2001:db8:1:2::/64" == guessing_client("2001:db8:1:2:ffff::99", [], TRUSTED)
    assert guessing_client("2001:db8:1:3::1", [], TRUSTED) != first
    assert guessing_client("::ffff:192.0.2.1", [], TRUSTED) == "192.0.2.1"
    assert guessing_client("::1", ["2001:db8::5"], TRUSTED) == "2001:db8::/64"
    assert guessing_client("::1", [], []) == "::1"
    assert guessing_client(None, [], TRUSTED) is None
