"""Rollouts: plans, routing, guardrails, decisions.

A rollout moves traffic from the champion to a challenger version of one registered model
by a plan (:mod:`.plan`): shadow, canary, A/B or blue-green. Its state lives in the
registry's database (:mod:`.store`), so it survives restarts and every replica reading it
routes the same way (:mod:`.routing`: a hash of a sticky key, no shared state). The serving
core counts each arm's requests (:mod:`.counters`); the controller (:mod:`.controller`)
judges each step on guardrails (:mod:`.guardrails`) with always-valid statistics
(:mod:`.stats`), advances, promotes through the registry, or rolls back, and audits every
transition. Nothing here imports the serving stack.
"""

from __future__ import annotations


def replica_id() -> str:
    """This process's name among the replicas (host:pid): the one its counts are written
    under, and the holder named by a promotion's claim."""
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"
