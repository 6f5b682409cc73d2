"""The session cookie: sealed, bound to its name, rotatable, and never a crash on garbage."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from pploy.gate.session import MAX_COOKIE_LENGTH, CookieCodec, Session


def test_round_trip_and_opacity():
    codec = CookieCodec(["k1-0123456789abcdef"])
    value = codec.seal("_gate_session", {"u": "alice", "secret": "token-xyz"})
    assert "alice" not in value and "token" not in value
    assert codec.open("_gate_session", value) == {"u": "alice", "secret": "token-xyz"}


def test_tampering_is_detected():
    codec = CookieCodec(["k1-0123456789abcdef"])
    value = codec.seal("_gate_session", {"u": "alice"})
    for i in range(3, len(value)):
        flipped = value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]
        assert codec.open("_gate_session", flipped) in (None, {"u": "alice"})
    assert codec.open("_gate_session", value[:-4]) is None


def test_value_is_bound_to_the_cookie_name():
    codec = CookieCodec(["k1-0123456789abcdef"])
    value = codec.seal("_gate_login", {"u": "alice"})
    assert codec.open("_gate_session", value) is None


def test_rotation_accepts_old_keys_and_writes_with_the_new():
    old = CookieCodec(["old-key-0123456789"])
    rotated = CookieCodec(["new-key-0123456789", "old-key-0123456789"])
    value = old.seal("s", {"u": "a"})
    assert rotated.open("s", value) == {"u": "a"}
    assert old.open("s", rotated.seal("s", {"u": "b"})) is None
    assert CookieCodec(["new-key-0123456789"]).open("s", value) is None


def test_purposes_do_not_mix():
    key = ["shared-key-0123456789"]
    value = CookieCodec(key, purpose="login-state").seal("x", {"u": "a"})
    assert CookieCodec(key, purpose="session").open("x", value) is None


def test_oversized_is_ignored():
    codec = CookieCodec(["k"])
    big = codec.seal("s", {"pad": "x" * MAX_COOKIE_LENGTH})
    assert len(big) > MAX_COOKIE_LENGTH
    assert codec.open("s", big) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_garbage_never_raises(value):
    assert CookieCodec(["k"]).open("s", value) is None or value.startswith("g1.")


def test_session_validity_window():
    now = time.time()
    session = Session("alice", None, "dev", issued=now, expires=now + 10)
    assert session.valid(now + 5)
    assert not session.valid(now + 10)
    assert not session.valid(now - 120)  # issued "in the future": not ours
    assert Session.from_payload({"u": "", "iat": 1, "exp": 2}) is None
    assert Session.from_payload({"u": "a", "iat": "x", "exp": 2}) is None
    assert Session.from_payload({"u": "a", "iat": 1, "exp": 2, "o": [1]}) is None
