"""Model preparation, run in its own process (project venv) so the load-generating harness
stays small: from a FLYWHEEL_HOME where ``flywheel run`` registered a champion, write
``prep.json`` with everything the servers and clients need.

    python -m bench.serving.prep WORKDIR

- the sklearn pipeline the same run logged as MLflow model "model" (its ``models:/m-...``
  URI, for ``mlflow models serve``) and a joblib dump of it (MLServer, the FastAPI peer);
- the registered ONNX file (the bare onnxruntime reference app);
- one real snapshot row (features only, no nulls: JSON has no NaN) = the 1-row request;
- a second registered version of the same artifact (the hot-swap target), made with the
  MLflow client: retraining only to get a new version number would add a minute for nothing.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import joblib
import mlflow
import pandas as pd
from mlflow import MlflowClient

from flywheel.config import load_settings
from flywheel.data.snapshots import read_snapshot


def _sklearn_uri(client: MlflowClient, run_id: str, experiment_id: str) -> str:
    tags = client.get_run(run_id).data.tags
    if tags.get("flywheel.model_uri"):
        return tags["flywheel.model_uri"]
    found = mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list")
    for model in found:
        if model.name == "model" and model.source_run_id == run_id:
            return f"models:/{model.model_id}"
    return f"runs:/{run_id}/model"


def _row(settings: Any, snapshot_id: str, features: list[str]) -> dict[str, Any]:
    frame = read_snapshot(settings, snapshot_id)[features]
    complete = frame.dropna()
    row = (complete if len(complete) else frame).iloc[len(complete) // 2]
    out: dict[str, Any] = {}
    for name in features:
        value = row[name]
        if isinstance(value, str):
            out[name] = value
        else:
            number = float(value)
            out[name] = None if math.isnan(number) else number
    return out


def main(workdir: Path) -> None:
    settings = load_settings()
    mlflow.set_tracking_uri(settings.tracking.uri)
    mlflow.set_registry_uri(settings.tracking.uri)
    client = MlflowClient(tracking_uri=settings.tracking.uri)
    name = settings.registry.model_name
    champion = client.get_model_version_by_alias(name, "champion")
    run = client.get_run(champion.run_id)
    sk_uri = _sklearn_uri(client, champion.run_id, run.info.experiment_id)

    pipeline = mlflow.sklearn.load_model(sk_uri)
    joblib_path = workdir / "model.joblib"
    joblib.dump(pipeline, joblib_path)
    info = mlflow.models.get_model_info(sk_uri)
    features = [c.name for c in info.signature.inputs.inputs]
    strings = [
        c.name for c in info.signature.inputs.inputs if str(c.type) in ("string", "DataType.string")
    ]

    onnx_dir = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{name}/{champion.version}", dst_path=str(workdir / "onnx")
        )
    )
    row = _row(settings, champion.tags["flywheel.snapshot_id"], features)
    proba = float(pipeline.predict_proba(pd.DataFrame([row]))[0, 1])

    second = client.create_model_version(
        name,
        source=champion.source,
        run_id=champion.run_id,
        tags=dict(champion.tags),
        description="bench.serving hot-swap target",
    )
    out = {
        "model_name": name,
        "champion_version": str(champion.version),
        "swap_version": str(second.version),
        "run_id": champion.run_id,
        "sklearn_uri": sk_uri,
        "joblib": str(joblib_path),
        "onnx": str(onnx_dir / "model.onnx"),
        "features": features,
        "string_features": strings,
        "row": row,
        "sklearn_proba": proba,
        "tracking_uri": settings.tracking.uri,
        "snapshot_id": champion.tags.get("flywheel.snapshot_id"),
    }
    (workdir / "prep.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
