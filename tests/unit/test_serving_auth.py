"""One API-key rule for every protocol: X-API-Key or Authorization: Bearer, constant-time."""

from __future__ import annotations

from flywheel.serving.auth import credential, key_ok


def test_credential_from_asgi_bytes_and_grpc_strings() -> None:
    assert credential([(b"x-api-key", b"k1")]) == b"k1"
    assert credential([(b"authorization", b"Bearer k2")]) == b"k2"
    assert credential([("authorization", "bearer k3")]) == b"k3"  # scheme is case-insensitive
    assert credential([("X-API-Key", "k4")]) == b"k4"
    assert credential([(b"authorization", b"Basic abc")]) is None
    assert credential([]) is None


def test_key_ok() -> None:
    assert key_ok(None, None)  # no key configured: open
    assert key_ok(b"k", b"k")
    assert not key_ok(None, b"k")
    assert not key_ok(b"wrong", b"k")
