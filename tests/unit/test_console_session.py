"""Console session cookies and CSRF tokens (appliance/web/console/session.py), with a fake clock."""

from __future__ import annotations

from appliance.web.console.session import IDLE_SECONDS, MAX_SECONDS, SessionCodec, password_fingerprint


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_signed_in_session_survives_the_round_trip():
    codec = SessionCodec("k" * 32, Clock())
    session = codec.signed_in("alice", "$argon2id$hash")
    loaded = codec.loads(codec.dumps(session))
    assert loaded == session
    assert loaded.fingerprint == password_fingerprint("$argon2id$hash")


def test_a_cookie_signed_with_another_key_or_altered_is_refused():
    clock = Clock()
    ours, theirs = SessionCodec("k" * 32, clock), SessionCodec("x" * 32, clock)
    text = theirs.dumps(theirs.signed_in("alice", "h"))
    assert ours.loads(text) is None
    good = ours.dumps(ours.signed_in("alice", "h"))
    assert ours.loads(good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1]) is None
    assert ours.loads("") is None and ours.loads("garbage") is None and ours.loads("a" * 5000) is None


def test_an_idle_session_expires_and_use_keeps_it_alive():
    clock = Clock()
    codec = SessionCodec("k" * 32, clock)
    session = codec.signed_in("alice", "h")
    clock.now += IDLE_SECONDS - 1
    touched = codec.touched(codec.loads(codec.dumps(session)))
    clock.now += IDLE_SECONDS - 1
    assert codec.loads(codec.dumps(touched)) is not None  # used within the idle time: still open
    clock.now += 2
    assert codec.loads(codec.dumps(touched)) is None  # idle longer than IDLE_SECONDS


def test_a_session_ends_after_its_maximum_age_however_busy():
    clock = Clock()
    codec = SessionCodec("k" * 32, clock)
    session = codec.signed_in("alice", "h")
    while clock.now < session.signed_in + MAX_SECONDS - 60:
        clock.now += IDLE_SECONDS / 2
        session = codec.loads(codec.dumps(codec.touched(session)))
        assert session is not None
    clock.now += 120
    assert codec.loads(codec.dumps(codec.touched(session))) is None


def test_csrf_token_belongs_to_one_session():
    codec = SessionCodec("k" * 32, Clock())
    one, other = codec.new(), codec.new()
    assert codec.csrf_ok(one, codec.csrf_token(one))
    assert not codec.csrf_ok(one, codec.csrf_token(other))
    assert not codec.csrf_ok(one, None) and not codec.csrf_ok(one, "") and not codec.csrf_ok(one, "é" * 64)


def test_signing_in_gives_a_new_session_id():
    codec = SessionCodec("k" * 32, Clock())
    before = codec.new()
    after = codec.signed_in("alice", "h")
    assert after.sid != before.sid
    assert not codec.csrf_ok(after, codec.csrf_token(before))
