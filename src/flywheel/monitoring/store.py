"""The monitor's state: one row per evaluated window of a (model, version), in SQLite or
PostgreSQL (``monitoring.url``), so ``flywheel monitor run`` is idempotent (a window is
evaluated once, then only refreshed while its late labels arrive) and ``status``/``report``
read what runs decided. The latest decision per model is also written to
``<home>/monitoring/latest.json``, which the server's ``/metrics`` turns into gauges
without importing monitoring."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from flywheel.config import sqlalchemy_url
from flywheel.errors import StoreError

__all__ = ["MonitorStore", "write_latest"]

_meta = sa.MetaData()
_windows = sa.Table(
    "monitor_windows",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("version", sa.String(50), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("start", sa.Float, nullable=True),
    sa.Column("end", sa.Float, nullable=True),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("status", sa.String(40), nullable=False),
    sa.Column("verdict", sa.Boolean, nullable=False),
    sa.Column("alarm", sa.Boolean, nullable=False),
    sa.Column("completeness", sa.Float, nullable=False),
    sa.Column("result", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("model", "version", "name", name="uq_monitor_window"),
)


class MonitorStore:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = sa.create_engine(sqlalchemy_url(url), future=True)
            _meta.create_all(self.engine)
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(
                f"Could not open the monitor's database {url}: {exc}. Check monitoring.url.",
                url=url,
            ) from exc

    @contextmanager
    def _conn(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"The monitor's database failed: {exc}", url=self.url) from exc

    def windows(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        """Stored windows (their result dicts), oldest first."""
        q = sa.select(_windows.c.result).where(_windows.c.model == model)
        if version is not None:
            q = q.where(_windows.c.version == version)
        q = q.order_by(_windows.c.start, _windows.c.id)
        with self._conn() as conn:
            return [json.loads(r.result) for r in conn.execute(q)]

    def last_end(self, model: str, version: str) -> float | None:
        q = sa.select(sa.func.max(_windows.c.end)).where(
            _windows.c.model == model, _windows.c.version == version
        )
        with self._conn() as conn:
            value = conn.execute(q).scalar()
        return float(value) if value is not None else None

    def save(self, result: dict[str, Any]) -> bool:
        """Insert or replace the window (by model, version, name); True when it is new."""
        perf = result.get("performance") or {}
        row = {
            "model": result["model"],
            "version": str(result["version"]),
            "name": result["window"],
            "start": result.get("start"),
            "end": result.get("end"),
            "rows": result["rows"],
            "status": result["status"],
            "verdict": bool(result["verdict"]),
            "alarm": bool(result["alarm"]),
            "completeness": float(perf.get("label_completeness") or 0.0),
            "result": json.dumps(result),
            "updated_at": time.time(),
        }
        key = (
            (_windows.c.model == row["model"])
            & (_windows.c.version == row["version"])
            & (_windows.c.name == row["name"])
        )
        with self._conn() as conn:
            found = conn.execute(sa.select(_windows.c.id).where(key)).first()
            if found is None:
                conn.execute(_windows.insert().values(**row))
                return True
            conn.execute(_windows.update().where(key).values(**row))
            return False

    def latest(self) -> dict[str, dict[str, Any]]:
        """The latest window with a verdict (else the latest) per model."""
        out: dict[str, dict[str, Any]] = {}
        q = sa.select(_windows.c.model, _windows.c.status, _windows.c.result).order_by(
            _windows.c.end, _windows.c.id
        )
        with self._conn() as conn:
            for r in conn.execute(q):
                if r.status == "ok" or r.model not in out:
                    out[r.model] = json.loads(r.result)
        return out

    def dispose(self) -> None:
        self.engine.dispose()


def write_latest(home: Path, latest: dict[str, dict[str, Any]]) -> Path:
    """``<home>/monitoring/latest.json``: the server's monitor gauges (written atomically)."""
    models = {}
    for name, r in latest.items():
        perf = r.get("performance") or {}
        est = perf.get("estimated") or {}
        models[name] = {
            "version": r.get("version"),
            "window": r.get("window"),
            "end": r.get("end"),
            "alarm": bool(r.get("alarm")),
            "verdict": bool(r.get("verdict")),
            "drift_share": r.get("drift_share", 0.0),
            "drifted_features": r.get("drifted_features", []),
            "features": {
                f["feature"]: f["value"]
                for f in r.get("features", [])
                if f.get("value") is not None
            },
            # each statistic over the bar it must clear (its effect threshold or its null's
            # 95th percentile, the higher): comparable across features and statistics, unlike
            # the values (W1/sigma beside JS); >= 1 is big enough and beyond chance
            "feature_ratios": {
                f["feature"]: round(f["value"] / bar, 6)
                for f in r.get("features", [])
                if f.get("value") is not None
                and (bar := max(f.get("threshold") or 0.0, f.get("null_q95") or 0.0)) > 0
            },
            "label_completeness": perf.get("label_completeness"),
            "performance_breach": bool(perf.get("breach")),
            "reference": perf.get("reference") or None,
            "realised": perf.get("realised"),
            "estimated": {k: v["value"] for k, v in est.items()} or None,
            "updated": time.time(),
        }
    path = home / "monitoring" / "latest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"models": models}, indent=1), encoding="utf-8")
    tmp.replace(path)
    return path
