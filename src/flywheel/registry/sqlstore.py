"""Read-only lookups in MLflow's SQL registry, without importing MLflow (~1.3 s and ~110 MiB
of a serving process's start).

When ``tracking.uri`` is a SQLite or PostgreSQL database, the serving core resolves an alias
and reads a version's tags with one query each (stdlib ``sqlite3`` or ``psycopg``), copies a
version kept in a local artifact folder into ``<home>/models/<name>/<version>`` itself, and
serves it once its ``model.onnx`` matches the sha256 the registry recorded. Anything else —
an HTTP tracking server, S3 artifacts, a schema this code does not know — answers None and
the caller goes through MLflow's client as before. Nothing in MLflow's store is written.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["SqlRegistry"]

log = logging.getLogger("flywheel.registry")


class SqlRegistry:
    """MLflow's registry tables read directly; every method answers None when it cannot."""

    def __init__(self, tracking_uri: str, home: Path) -> None:
        self.uri = tracking_uri
        self.home = home
        self.kind = (
            "sqlite"
            if tracking_uri.startswith("sqlite:///")
            else "postgresql"
            if tracking_uri.startswith(("postgresql://", "postgres://"))
            else None
        )

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]] | None:
        if self.kind is None:
            return None
        try:
            if self.kind == "sqlite":
                path = self.uri.removeprefix("sqlite:///")
                if not Path(path).exists():
                    return None
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
                    return list(conn.execute(sql, params))
            import psycopg

            url = self.uri.split("+", 1)[0] if "+" in self.uri.split("://", 1)[0] else self.uri
            with psycopg.connect(url, connect_timeout=5) as pg:
                return list(pg.execute(sql.replace("?", "%s"), params))  # type: ignore[arg-type]
        except Exception as exc:  # any failure: MLflow's client takes over
            log.debug("MLflow SQL lookup failed (%s); using MLflow's client", exc)
            return None

    def alias_version(self, name: str, alias: str) -> str | None:
        rows = self._rows(
            "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?",
            (name, alias),
        )
        return str(rows[0][0]) if rows else None

    def tags(self, name: str, version: str) -> dict[str, str] | None:
        rows = self._rows(
            "SELECT key, value FROM model_version_tags WHERE name = ? AND version = ?",
            (name, int(version)),
        )
        return {str(k): str(v) for k, v in rows} if rows else None

    def run_started(self, name: str, version: str) -> float | None:
        """Unix seconds at which the MLflow run that produced the version started (None: the
        version or its run is gone, or the store cannot be read this way)."""
        rows = self._rows(
            "SELECT r.start_time FROM model_versions mv JOIN runs r ON r.run_uuid = mv.run_id "
            "WHERE mv.name = ? AND mv.version = ?",
            (name, int(version)),
        )
        return float(rows[0][0]) / 1000 if rows and rows[0][0] is not None else None

    def local_copy(self, name: str, version: str) -> bool:
        """Copy a version's files into ``<home>/models/<name>/<version>`` when the registry
        stores them in a local folder (the embedded default): a private copy renamed into
        place, as MLflow's download would be. False when they live elsewhere (S3, a proxied
        server) or anything fails: MLflow's client downloads them then."""
        rows = self._rows(
            "SELECT storage_location FROM model_versions WHERE name = ? AND version = ?",
            (name, int(version)),
        )
        if not rows or not rows[0][0]:
            return False
        where = str(rows[0][0]).removeprefix("file://")
        source = Path(where)
        if not source.is_absolute() or not (source / "model.onnx").is_file():
            return False
        target = self.home / "models" / name / str(version)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
            shutil.copytree(source, tmp, dirs_exist_ok=True)
            try:
                os.rename(tmp, target)
            except OSError:  # another process put it there first: theirs is checked later
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            log.debug("local copy of %s v%s failed (%s); using MLflow's client", name, version, exc)
            return False
        return True

    def cached(self, name: str, version: str, sha_tag: str, run_tag: str = "") -> Any:
        """A version in ``<home>/models/<name>/<version>`` whose ONNX bytes match the
        registry's sha256, as ``ModelArtifacts`` (None: not there, or not matching)."""
        from flywheel.errors import RegistryError
        from flywheel.registry.artifacts import read_version_folder

        tags = self.tags(name, version) or {}
        folder = self.home / "models" / name / str(version)
        if not tags.get(sha_tag) or not (folder / "model.onnx").is_file():
            return None
        try:
            return read_version_folder(
                name, str(version), folder, expected=tags[sha_tag], run_id=tags.get(run_tag)
            )
        except (RegistryError, OSError, ValueError, KeyError):
            return None  # changed or half-written: MLflow's client downloads it again
