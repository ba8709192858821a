"""A target whose classes are text ("no"/"yes", "class_0"..."class_2"): training fits the
classes' indices, and every answer must give the classes back, not their indices (they came
back as 0, 1, 2 on every door, so a label sent to /v1/feedback never matched a prediction).
Trained, promoted and served as a user does, then asked over REST, MLflow's /invocations
and Open Inference v2; the registered ONNX file is read back too."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_wine

from tests.e2e.conftest import FLYWHEEL_BIN, flywheel, start_serve, stop_serve, write_settings
from tests.integration.conftest import free_port

pytestmark = pytest.mark.slow


def _world(cwd: Path, name: str) -> tuple[list[dict[str, float]], list[str]]:
    """A folder whose dataset and model are ``name``, trained and promoted; returns three
    rows of features and every class."""
    if name == "wine":
        data = load_wine(as_frame=True)
        frame = data.frame.assign(target=data.target_names[data.target])
    else:  # a binary model: trained with a decision threshold when training picks one
        frame = load_breast_cancer(as_frame=True).frame
        frame["target"] = np.where(frame["target"] == 0, "yes", "no")  # malignant: "yes"
    frame.to_csv(cwd / f"{name}.csv", index=False)
    write_settings(
        cwd,
        source={"dataset": name},
        registry={"model_name": name},
        gates={"champion_margin": 1.0, "min_metrics": {}, "max_slice_gap": {}},
    )
    (cwd / "params.yaml").write_text("family: logreg\ncv_folds: 0\n")
    flywheel(cwd, "ingest", "--file", f"{name}.csv", "--target", "target")
    assert f"registered {name} version 1" in flywheel(cwd, "train").stdout
    flywheel(cwd, "promote", "1", "--reason", "first champion")
    rows = frame.drop(columns=["target"]).iloc[[0, 60, len(frame) - 1]]
    return rows.to_dict("records"), sorted(frame["target"].unique())


@pytest.mark.parametrize("name", ["wine", "cancer"])
def test_text_classes_come_back_as_text_on_every_door(tmp_path: Path, name: str) -> None:
    records, classes = _world(tmp_path, name)
    port = free_port()
    serve = start_serve([FLYWHEEL_BIN, "serve", "--port", str(port), "--no-grpc"], tmp_path, port)
    url = f"http://127.0.0.1:{port}"
    try:
        native = httpx.post(f"{url}/v1/predict", json={"records": records}, timeout=10).json()
        mlflow = httpx.post(
            f"{url}/invocations", json={"dataframe_records": records}, timeout=10
        ).json()
        v2_inputs = [
            {
                "name": feature,
                "shape": [len(records), 1],
                "datatype": "FP32",
                "data": [r[feature] for r in records],
            }
            for feature in records[0]
        ]
        v2 = httpx.post(
            f"{url}/v2/models/{name}/infer", json={"inputs": v2_inputs}, timeout=10
        ).json()
    finally:
        stop_serve(serve)
    assert native["classes"] == classes, native
    assert set(native["predictions"]) <= set(classes) and native["predictions"], native
    assert mlflow["predictions"] == native["predictions"], mlflow
    label = next(o for o in v2["outputs"] if o["name"] == "label")
    assert label["datatype"] == "BYTES" and label["data"] == native["predictions"], v2
    # the file itself: its label output and its flywheel.classes give the text
    import onnx
    import onnxruntime as ort

    path = next((tmp_path / ".flywheel").rglob("model.onnx"))
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(meta["flywheel.classes"]) == classes
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {
        i.name: np.array([[records[0][i.name]]], dtype=np.float32) for i in session.get_inputs()
    }
    assert session.run(["label"], feeds)[0].tolist() == native["predictions"][:1]
