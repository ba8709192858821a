"""The optional API key of prediction routes, the same for every protocol.

A client sends ``X-API-Key: <key>`` or ``Authorization: Bearer <key>`` (HTTP headers,
WebSocket handshake headers, gRPC metadata); the key is compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

__all__ = ["credential", "key_ok"]


def credential(pairs: Iterable[tuple[bytes | str, bytes | str]]) -> bytes | None:
    """The key a client sent, from ``(name, value)`` pairs (ASGI bytes or gRPC strings)."""
    found = None
    for key, value in pairs:
        name = key.lower() if isinstance(key, bytes) else key.lower().encode()
        raw = value if isinstance(value, bytes) else value.encode("latin-1")
        if name == b"x-api-key":
            found = bytes(raw)
        elif name == b"authorization" and raw[:7].lower() == b"bearer ":
            found = bytes(raw[7:]).strip()
    return found


def key_ok(given: bytes | None, key: bytes | None) -> bool:
    """True when no key is configured, or ``given`` is it."""
    return key is None or (given is not None and hmac.compare_digest(given, key))
