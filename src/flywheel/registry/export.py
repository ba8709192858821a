"""A registered version as a self-contained folder: what a serving image bakes in.

``flywheel registry export churn@champion --out DIR`` downloads the version's MLflow model
(``MLmodel``, ``model.onnx``, ``extra_files/``: still a folder ``mlflow models serve -m``
takes), checks the ONNX bytes against the sha256 recorded at registration, and writes
``DIR/flywheel-model.json`` beside it: name, version, sha256, task, classes, input schema,
threshold, where it came from. ``flywheel serve --model-dir DIR`` serves that folder with no
registry and no MLflow import (:class:`flywheel.serving.sources.ModelDirSource`), re-checking
the sha256 on every load.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.config import mask_url
from flywheel.errors import UsageError

if TYPE_CHECKING:
    from flywheel.workspace import Workspace

__all__ = ["BUNDLE_FILE", "export_model_dir"]

BUNDLE_FILE = "flywheel-model.json"


def export_model_dir(ws: Workspace, name: str, ref: str, out: Path) -> dict[str, Any]:
    """Write version ``ref`` (a version or an alias) of ``name`` to ``out`` (which must be
    missing or empty); returns the bundle's description."""
    from flywheel.registry.artifacts import fetch_model_artifacts

    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(
            f"--out {out} exists and is not an empty folder; choose a new one.", field="out"
        )
    found = fetch_model_artifacts(ws, ref, name=name, dst=out)
    bundle = {
        "format": 1,
        "name": name,
        "version": str(found.version),
        "ref": str(ref),
        "onnx_sha256": found.onnx_sha256,
        "model_file": os.path.relpath(found.model_path, out),
        "task": found.task,
        "classes": found.classes,
        "feature_specs": [asdict(s) for s in found.feature_specs],
        "threshold": found.threshold,
        "run_id": found.run_id,
        "registry": mask_url(ws.settings.tracking.uri or ""),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = out / f".{BUNDLE_FILE}.tmp"
    tmp.write_text(json.dumps(bundle, indent=2) + "\n")
    tmp.replace(out / BUNDLE_FILE)  # the bundle appears whole or not at all
    return bundle
