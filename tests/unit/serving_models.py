"""Tiny real ONNX models for the serving tests (built with flywheel's own pipeline + export)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from flywheel.registry.onnx_export import export_onnx
from flywheel.serving.sources import ModelFiles
from flywheel.training.features import FeatureSpec, build_pipeline, prepare_frame

SPECS = [
    FeatureSpec("tenure", "numeric"),
    FeatureSpec("charges", "numeric"),
    FeatureSpec("plan", "categorical"),
]


def frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "tenure": rng.integers(0, 72, n).astype(float),
            "charges": rng.normal(70, 20, n),
            "plan": rng.choice(["basic", "pro", "max"], n),
        }
    )


def rows(n: int, seed: int = 1) -> list[dict]:
    return frame(n, seed).to_dict(orient="records")


def build(
    tmp: Path,
    *,
    family: str = "logreg",
    task: str = "classification",
    version: str = "1",
    seed: int = 0,
    specs: tuple[FeatureSpec, ...] | None = None,
) -> ModelFiles:
    """Fit, export to ONNX, write ``tmp/v<version>/model.onnx``; return its ModelFiles.
    ``specs``: the model's inputs (default SPECS: tenure, charges, plan)."""
    specs = tuple(SPECS) if specs is None else specs
    df = frame(seed=seed)
    y = ((df["tenure"] < 20) ^ (df["plan"] == "max")).astype(int)
    if task == "regression":
        y = df["charges"] * 2 + df["tenure"]
    params = {"max_iter": 200} if family == "logreg" else {"n_estimators": 5, "max_depth": 3}
    if family == "linear":
        params = {}
    elif family == "hist_gb":
        params = {"max_iter": 5, "max_depth": 3}
    pipe = build_pipeline(specs, task=task, family=family, hyperparams=params, ratios=[], seed=seed)
    pipe.fit(prepare_frame(df, specs), y)
    data = export_onnx(pipe, specs, task=task)
    folder = tmp / f"v{version}-{family}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(data)
    classes = [int(c) for c in pipe.classes_] if task == "classification" else None
    return ModelFiles(version, path, list(specs), task, classes, hashlib.sha256(data).hexdigest())
