"""Which arm answers a request: a hash of its sticky key, the same on every replica.

A request's key (the client's request id, a named feature of its first row, or a header)
is hashed with the rollout's id as the salt (BLAKE2b, 64 bits) to a point ``u`` in [0, 100);
the challenger answers when ``u < weight``. No state is shared: every replica with the same
rollout state sends the same key to the same version, and since ``u`` stays put while the
weight grows step by step, a key that reached the challenger at 5% stays on it at 25%.
A new rollout has a new salt, so it draws a fresh sample of keys.

A request with no key of its own (no client request id, feature value or header: its only
id is the one the server just made up) has nothing to stick to, so it gets a fresh uniform
draw instead of a hash (~0.1 µs instead of ~0.9): the split is the same, and the server's
random id would have hashed to a random point anyway.

Routing is per request (an answer names one version on every protocol): with a feature key,
a request's rows follow its first row's key; send one key per request to route each.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cached_property
from typing import Any

__all__ = ["Router", "bucket"]

_SCALE = 100.0 / 2**64
_draw = random.random  # a request with no key: a point drawn in [0, 1)
# a keyed BLAKE2b per salt, copied for each key: keying a new hasher costs a compression of
# the key block, about as much as the rest of the hash (~0.7 µs a key instead of ~1.8)
_KEYED: dict[bytes, Any] = {}


def bucket(salt: bytes, key: str) -> float:
    """``key``'s point in [0, 100) for the rollout salted ``salt``: BLAKE2b (64 bits) of the
    key's UTF-8 bytes, keyed by the salt."""
    keyed = _KEYED.get(salt)
    if keyed is None:
        if len(_KEYED) >= 64:
            _KEYED.clear()
        keyed = _KEYED[salt] = hashlib.blake2b(digest_size=8, key=salt)
    digest = keyed.copy()
    try:
        digest.update(key.encode())
    except UnicodeEncodeError:  # a lone surrogate (JSON allows one): hashed as it stands
        digest.update(key.encode("utf-8", "surrogatepass"))
    return int.from_bytes(digest.digest(), "big") * _SCALE


@dataclass(frozen=True)
class Router:
    """A rollout's routing rule (immutable: a new step is a new router, swapped in whole).

    ``weight``: the challenger's answering share, percent; ``mirror``: the share of requests
    a shadow challenger also scores (0 when there is no shadow)."""

    rollout_id: str
    champion: str
    challenger: str
    weight: float
    mirror: float
    sticky: str  # request_id | feature:NAME | header:NAME

    @property
    def salt(self) -> bytes:
        return hashlib.blake2b(self.rollout_id.encode(), digest_size=16).digest()

    @cached_property
    def feature(self) -> str | None:
        return self.sticky[8:] if self.sticky.startswith("feature:") else None

    @cached_property
    def header(self) -> str | None:
        return self.sticky[7:].lower() if self.sticky.startswith("header:") else None

    def key(self, client_id: str | None, route_key: str | None, first: Any) -> str | None:
        """The request's sticky key; ``first`` is a callable giving the first row's value of a
        feature (or None). Falls back to the client's request id; None when the request has
        no key of its own (see the module docstring)."""
        if route_key and self.header is not None:
            return route_key
        name = self.feature
        if name is not None:
            value = first(name)
            if value is not None:
                return str(value)
        return client_id or None

    def answers(self, key: str | None, salt: bytes) -> bool:
        """True when the challenger answers ``key`` (None: a fresh draw)."""
        weight = self.weight
        if weight <= 0:
            return False
        if weight >= 100:
            return True
        if key is None:
            return _draw() * 100.0 < weight
        return bucket(salt, key) < weight

    def mirrors(self, key: str | None, salt: bytes) -> bool:
        """True when a shadow challenger also scores ``key``'s request (None: a fresh draw)."""
        if self.mirror <= 0:
            return False
        if self.mirror >= 100:
            return True
        if key is None:
            return _draw() * 100.0 < self.mirror
        # a different point than ``answers`` uses: the mirror sample is its own
        return bucket(salt, "mirror\x00" + key) < self.mirror
