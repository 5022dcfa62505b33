"""Console accounts: Argon2id hashes, name and role rules, and sign-in guessing limits."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from appliance.service import accounts


def test_password_hash_is_argon2id_and_verifies_only_the_right_password():
    stored = accounts.hash_password("correct horse battery")
    assert stored.startswith("$argon2id$")
    assert accounts.verify_password(stored, "correct horse battery")
    assert not accounts.verify_password(stored, "correct horse batterY")
    # An independent Argon2 implementation reads it (argon2-cffi's own verifier, fresh instance).
    assert PasswordHasher().verify(stored, "correct horse battery")


def test_unknown_user_and_garbage_hashes_never_verify():
    assert not accounts.verify_password(None, "anything at all")
    assert not accounts.verify_password("not a hash", "anything at all")
    assert not accounts.verify_password(accounts.hash_password("a" * 12), "a" * 2000)


@pytest.mark.parametrize("password", ["short", "x" * (accounts.MAX_PASSWORD + 1)])
def test_passwords_too_short_or_too_long_are_refused(password):
    with pytest.raises(accounts.AccountError):
        accounts.hash_password(password)


@pytest.mark.parametrize("name", ["", "-alice", "al ice", "a/b", "x" * 65, "<script>"])
def test_bad_user_names_are_refused(name):
    with pytest.raises(accounts.AccountError):
        accounts.check_name(name)


def test_roles_are_ordered():
    assert accounts.allows("admin", "operator") and accounts.allows("operator", "operator")
    assert accounts.allows("operator", "viewer") and not accounts.allows("viewer", "operator")
    assert not accounts.allows("operator", "admin")
    with pytest.raises(accounts.AccountError):
        accounts.check_role("root")


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_sign_ins_from_one_address_are_limited_until_the_window_passes():
    clock = Clock()
    limits = accounts.SignInLimits(clock)
    for n in range(accounts.ADDRESS_LIMIT):
        assert not limits.blocked("10.0.0.1", f"user{n}")
        limits.wrong("10.0.0.1", f"user{n}")
    assert limits.blocked("10.0.0.1", "anyone")
    assert not limits.blocked("10.0.0.2", "anyone")
    clock.now += accounts.GUESS_WINDOW + 1
    assert not limits.blocked("10.0.0.1", "anyone")


def test_sign_ins_to_one_account_are_limited_from_any_address():
    limits = accounts.SignInLimits(Clock())
    for n in range(accounts.ACCOUNT_LIMIT):
        limits.wrong(f"10.0.{n}.1", "Alice")
    assert limits.blocked("192.0.2.9", "alice")  # names compare without case
    assert not limits.blocked("192.0.2.9", "bob")
