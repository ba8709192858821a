"""Head to head: two servers measured in alternating wrk runs, both alive the whole time.

The single runs of the main benchmark measure each server once, in a fixed order: flywheel
first, a minute after `flywheel run` has trained and written its artifacts, the bare ASGI
app last, minutes later. On a shared VM the machine's state drifts over that time, so a ratio
of two single runs carries the drift. Here both servers are started together, pinned to the
same core, and measured in turns (A B, B A, A B, ...), so drift hits both alike; every
round's ratio is kept and the median is the figure. The single-run ratios stay in the report
beside it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.serving import load


@dataclass
class Contender:
    name: str
    url: str
    script: Path


def interleave(
    first: Contender,
    second: Contender,
    connections: int,
    rounds: int,
    duration: float,
    core: int | None,
    say: Any = print,
) -> dict[str, Any]:
    """``rounds`` alternating wrk runs of each; ``first``'s req/s over ``second``'s per round."""
    runs: dict[str, list[dict[str, Any]]] = {first.name: [], second.name: []}
    for who in (first, second):  # warm-up, discarded
        load.run_wrk(who.url, who.script, connections, min(duration, 2.0), core)
    for i in range(rounds):
        order = (first, second) if i % 2 == 0 else (second, first)
        for who in order:
            result, _ = load.run_wrk(who.url, who.script, connections, duration, core)
            runs[who.name].append(result.to_dict())
        a, b = runs[first.name][-1], runs[second.name][-1]
        say(
            f"  head to head c{connections} round {i + 1}/{rounds}: {first.name} "
            f"{a['rps']:,.0f}, {second.name} {b['rps']:,.0f} req/s, "
            f"ratio {a['rps'] / b['rps']:.3f}"
        )
    ratios = [
        a["rps"] / b["rps"]
        for a, b in zip(runs[first.name], runs[second.name], strict=True)
        if b["rps"]
    ]
    errors = sum(r["errors"] for rs in runs.values() for r in rs)
    return {
        "first": first.name,
        "second": second.name,
        "connections": connections,
        "rounds": rounds,
        "duration_s": duration,
        "runs": runs,
        "ratios": ratios,
        "median_ratio": statistics.median(ratios) if ratios else None,
        "errors": errors,
    }
