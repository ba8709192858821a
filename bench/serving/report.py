"""Tables: one per scenario, the servers (cold start, idle memory), and the goals of issue #3
as ratios measured in the same run, each with PASS/MISS."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

SCENARIOS = (
    ("c16", "wrk, 16 connections, 1-row requests"),
    ("c64", "wrk, 64 connections, 1-row requests"),
    ("sequential", "one connection, sequential 1-row requests"),
    ("grpc", "gRPC ModelInfer, 16 in flight"),
    ("mqtt", "MQTT round trip through the broker, 16 in flight"),
)


def _f(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "—" if value is None else fmt.format(value)


def _get(out: dict[str, Any], scenario: str, key: str) -> dict[str, Any] | None:
    return out.get(scenario, {}).get(key)


def goals(out: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(goal, flywheel, peer, measured, verdict) rows."""
    rows: list[tuple[str, str, str, str, str]] = []

    def ratio(
        label: str,
        fw_key: str,
        peer_key: str,
        scenario: str,
        metric: str,
        target: float,
        higher: bool,
    ) -> None:
        fw, peer = _get(out, scenario, fw_key), _get(out, scenario, peer_key)
        if not fw or not peer or not fw.get(metric) or not peer.get(metric):
            rows.append((f"{label} [{scenario}]", fw_key, peer_key, "not measured", "—"))
            return
        value = fw[metric] / peer[metric]
        ok = value >= target if higher else value <= target
        # three digits below 1: 0.334× passes "≥ 1/3" and 0.327× does not
        shown = (
            (f"{value:,.3f}×" if value < 1 else f"{value:,.2f}×")
            if higher
            else f"1/{1 / value:,.1f}"
        )
        rows.append((f"{label} [{scenario}]", fw_key, peer_key, shown, "PASS" if ok else "MISS"))

    for c in ("c16", "c64"):
        ratio(
            "req/s ≥ 50× mlflow models serve",
            "flywheel /invocations",
            "mlflow /invocations",
            c,
            "rps",
            50,
            True,
        )
        ratio(
            "p99 ≤ 1/20 of mlflow models serve",
            "flywheel /invocations",
            "mlflow /invocations",
            c,
            "p99_ms",
            1 / 20,
            False,
        )
        ratio(
            "req/s ≥ 8× MLServer V2 REST", "flywheel V2 REST", "mlserver V2 REST", c, "rps", 8, True
        )
        ratio(
            "req/s ≥ 2× FastAPI constant",
            "flywheel /v1/predict",
            "fastapi_const /predict",
            c,
            "rps",
            2,
            True,
        )
        ratio(
            "req/s ≥ 1/3 bare ASGI constant",
            "flywheel /v1/predict",
            "bare_const /",
            c,
            "rps",
            1 / 3,
            True,
        )
    for c in ("c16", "c64"):
        h = out.get("head_to_head", {}).get(c)
        label = f"req/s ≥ 1/3 bare ASGI constant, head to head [{c}]"
        if not h or h["median_ratio"] is None:
            rows.append((label, "flywheel /v1/predict", "bare_const /", "not measured", "—"))
            continue
        median, low, high = h["median_ratio"], min(h["ratios"]), max(h["ratios"])
        rows.append(
            (
                label,
                "flywheel /v1/predict",
                "bare_const /",
                f"median {median:.3f}× of {h['rounds']} alternating rounds ({low:.3f}–{high:.3f})",
                "PASS" if median >= 1 / 3 and not h["errors"] else "MISS",
            )
        )
    seq = _get(out, "sequential", "flywheel /v1/predict")
    for q, limit in (("p50_ms", 1.0), ("p99_ms", 3.0)):
        if seq:
            rows.append(
                (
                    f"sequential {q[:3]} ≤ {limit:g} ms",
                    "flywheel /v1/predict",
                    "—",
                    f"{seq[q]:.3f} ms",
                    "PASS" if seq[q] <= limit else "MISS",
                )
            )
        else:
            rows.append(
                (
                    f"sequential {q[:3]} ≤ {limit:g} ms",
                    "flywheel /v1/predict",
                    "—",
                    "not measured",
                    "—",
                )
            )
    swap = out.get("hot_swap")
    rows.append(
        (
            "hot swap under load: 0 failed, version changed",
            "flywheel",
            "—",
            f"failed {swap['failed']}, v{swap['version_before']}→v{swap['version_after']}"
            if swap
            else "not measured",
            ("PASS" if swap["ok"] else "MISS") if swap else "—",
        )
    )
    exact = out.get("predlog_exact")
    rows.append(
        (
            "prediction log: one row per answered request (ids)",
            "flywheel",
            "—",
            f"{exact['rows']} rows / {exact['answered_2xx']} answered" if exact else "not measured",
            ("PASS" if exact["exact"] else "MISS") if exact else "—",
        )
    )
    total = out.get("predlog_total")
    rows.append(
        (
            "prediction log: rows = answered (whole run)",
            "flywheel",
            "—",
            f"{total['rows']} rows / {total['server_2xx']} answered (server), "
            f"{total['client_seen_2xx']} seen by clients"
            if total
            else "not measured",
            ("PASS" if total["exact"] else "MISS") if total else "—",
        )
    )
    return rows


def print_report(out: dict[str, Any]) -> None:
    console = Console(width=140)
    load = out["config"]
    console.print(
        f"\n[bold]flywheel serving benchmark[/] — server core {load['server_core']}, "
        f"load core {load['load_core']}, {load['duration_s']:g} s per run, "
        f"load average at start {load['load_avg_at_start'][0]:.2f}"
        + (" [yellow](quick mode)[/]" if load["quick"] else "")
    )
    for key, title in SCENARIOS:
        data = out.get(key)
        if not data:
            continue
        table = Table(title=title)
        for col in ("server / endpoint", "req/s", "p50 ms", "p99 ms", "requests", "errors"):
            table.add_column(col, justify="left" if col.startswith("server") else "right")
        for name, r in sorted(data.items(), key=lambda kv: -kv[1]["rps"]):
            table.add_row(
                name,
                _f(r["rps"]),
                _f(r["p50_ms"], "{:.3f}"),
                _f(r["p99_ms"], "{:.3f}"),
                f"{r['requests']:,}",
                f"{r['errors']}" + (f" ({r['detail']})" if r["errors"] else ""),
            )
        console.print(table)
    servers = Table(title="servers: cold start (process start → first prediction), idle RSS")
    for col in ("server", "cold start s", "idle RSS MiB"):
        servers.add_column(col, justify="left" if col == "server" else "right")
    for name, s in out["servers"].items():
        servers.add_row(name, _f(s["cold_start_s"], "{:.2f}"), _f(s["idle_rss_mib"], "{:.0f}"))
    console.print(servers)
    ratios = Table(title="goals (issue #3), ratios from this run")
    for col in ("goal", "flywheel", "peer", "measured", "verdict"):
        ratios.add_column(col)
    for row in goals(out):
        style = {"PASS": "green", "MISS": "red"}.get(row[4], "dim")
        ratios.add_row(*row[:4], f"[{style}]{row[4]}[/]")
    console.print(ratios)
    for name, why in {**out.get("not_measured", {}), **out.get("errors", {})}.items():
        console.print(f"[yellow]not measured[/] {name}: {why}")


def goal_records(out: dict[str, Any]) -> list[dict[str, str]]:
    keys = ("goal", "flywheel", "peer", "measured", "verdict")
    return [dict(zip(keys, row, strict=True)) for row in goals(out)]
