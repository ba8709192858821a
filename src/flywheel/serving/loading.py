"""Loading ONNX models for serving (where they come from: :mod:`flywheel.serving.sources`).

Serving never unpickles: a model is an ONNX file whose sha256 must equal the one recorded
at registration (tag ``flywheel.onnx_sha256``). The bytes are hashed and then handed to
ONNX Runtime from memory, so the file cannot change between the check and the load.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.errors import RegistryError
from flywheel.schema import FeatureSpec, InputSchema
from flywheel.serving.batching import BatchStats, MicroBatcher, ScoredFn
from flywheel.serving.errors import IntegrityError

if TYPE_CHECKING:
    import onnxruntime as ort


__all__ = ["ORT_DATATYPES", "PLATFORM", "LoadedModel", "load_model"]

log = logging.getLogger("flywheel.serving")
_META = "flywheel."
PLATFORM = "onnxruntime"
# ONNX Runtime tensor types -> Open Inference datatypes
ORT_DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(string)": "BYTES",
    "tensor(bool)": "BOOL",
}


@dataclass
class LoadedModel:
    """One model version ready to score: its ONNX session, input schema and batcher."""

    name: str
    version: str
    sha256: str
    task: str
    classes: list[Any] | None
    schema: InputSchema
    session: ort.InferenceSession
    output_names: list[str]
    batcher: MicroBatcher = field(init=False, repr=False)
    # the prediction log that knows this version's input names (its rows then carry the
    # inputs as a JSON array of columns); set by the predictor when it loads the version
    columns_logged_to: Any = field(default=None, init=False, repr=False)
    # the session's own run, without the Python wrapper's checks (see run)
    _run: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # InferenceSession.run checks on every call, in Python, that the feed names every
        # input (14 pybind lookups for the churn model) and that no OrtValue is foreign:
        # 3-8 µs a call, as much as a 10% canary's whole budget per answer. Our feed always
        # names every input (schema.names come from the session, checked at load) and holds
        # numpy arrays only, so the binding's run is called directly when it is there.
        raw = getattr(self.session, "_sess", None)
        self._run = raw.run if raw is not None and hasattr(raw, "run") else None

    def configure_batching(
        self,
        *,
        max_rows: int,
        max_wait_s: float,
        inline_max_rows: int,
        gather_turns: int,
        stats: BatchStats | None = None,
        on_scored: ScoredFn | None = None,
    ) -> None:
        self.batcher = MicroBatcher(
            self.run,
            self.schema.numeric,
            max_rows=max_rows,
            max_wait_s=max_wait_s,
            gather_turns=gather_turns,
            inline_max_rows=inline_max_rows,
            stats=stats,
            on_scored=on_scored,
        )

    def run(self, feeds: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Score ``[n, 1]`` arrays given in input order (blocking). The batcher never
        sends a single row (see :func:`flywheel.serving.batching.assemble`)."""
        feed = dict(zip(self.schema.names, feeds, strict=True))
        run = self._run
        outputs = (
            run(self.output_names, feed, None)
            if run is not None
            else self.session.run(self.output_names, feed)
        )
        labels = np.asarray(outputs[0]).reshape(-1)
        proba = np.asarray(outputs[1]) if len(outputs) > 1 else None
        return labels, proba

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "classes": self.classes,
            "sha256": self.sha256,
            "inputs": [{"name": s.name, "kind": s.kind} for s in self.schema.specs],
            "outputs": self.output_names,
        }

    def metadata(self, name: str | None = None) -> dict[str, Any]:
        """Open Inference model metadata, protocol-free (REST renders it as JSON, gRPC as a
        ``ModelMetadataResponse``): inputs are ``[-1, 1]`` per feature, outputs' datatypes
        come from the ONNX session, so every protocol reports the same ones."""
        ort_types = {o.name: o.type for o in self.session.get_outputs()}
        outputs = []
        for out in self.output_names:
            shape = [-1]
            if out == "probabilities":
                shape = [-1, len(self.classes) if self.classes else -1]
            outputs.append(
                {
                    "name": out,
                    "datatype": ORT_DATATYPES.get(ort_types.get(out, ""), "FP32"),
                    "shape": shape,
                }
            )
        return {
            "name": name or self.name,
            "versions": [self.version],
            "platform": PLATFORM,
            "inputs": [
                {
                    "name": s.name,
                    "datatype": "FP32" if s.kind == "numeric" else "BYTES",
                    "shape": [-1, 1],
                }
                for s in self.schema.specs
            ],
            "outputs": outputs,
            "parameters": {"task": self.task, "classes": self.classes, "sha256": self.sha256},
        }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _metadata(session: ort.InferenceSession) -> dict[str, str]:
    props = session.get_modelmeta().custom_metadata_map or {}
    return {k.removeprefix(_META): v for k, v in props.items() if k.startswith(_META)}


def _specs_from_session(session: ort.InferenceSession) -> list[FeatureSpec]:
    return [
        FeatureSpec(i.name, "categorical" if i.type == "tensor(string)" else "numeric")
        for i in session.get_inputs()
    ]


def _check_inputs(session: ort.InferenceSession, specs: Sequence[FeatureSpec], where: str) -> None:
    onnx_inputs = {i.name: i.type for i in session.get_inputs()}
    names = [s.name for s in specs]
    if set(onnx_inputs) != set(names):
        raise RegistryError(
            f"{where}: the ONNX inputs {sorted(onnx_inputs)} do not match the feature specs "
            f"{sorted(names)}. Re-export the model with flywheel.registry.onnx_export.",
            where=where,
        )
    for spec in specs:
        want = "tensor(float)" if spec.kind == "numeric" else "tensor(string)"
        if onnx_inputs[spec.name] != want:
            raise RegistryError(
                f"{where}: ONNX input {spec.name!r} is {onnx_inputs[spec.name]} but the spec "
                f"says {spec.kind} ({want}). Re-export the model.",
                field=spec.name,
            )


def load_model(
    onnx_path: str | Path,
    specs: Sequence[FeatureSpec] | None = None,
    expected_sha256: str | None = None,
    *,
    name: str = "model",
    version: str = "0",
    task: str | None = None,
    classes: list[Any] | None = None,
    threads: int = 1,
    require_sha256: bool = True,
) -> LoadedModel:
    """Load ``onnx_path`` after checking its sha256; specs/task/classes default to the
    model's ``flywheel.*`` metadata, then to its ONNX inputs. Raises :class:`IntegrityError`
    on a sha256 mismatch (or a missing one, unless ``require_sha256=False``)."""
    import onnxruntime as ort

    data = Path(onnx_path).read_bytes()
    actual = _sha256(data)
    where = f"model {name!r} v{version}"
    if expected_sha256 is None and require_sha256:
        raise IntegrityError(
            f"{where}: no expected sha256 was given, so the file cannot be verified. "
            "Pass the registry's flywheel.onnx_sha256 tag.",
            model=name,
            version=version,
        )
    if expected_sha256 is not None and actual != expected_sha256.lower():
        raise IntegrityError(
            f"{where}: model.onnx has sha256 {actual} but {expected_sha256} was recorded at "
            "registration; the artifact changed. Refusing to load it.",
            model=name,
            version=version,
            expected=expected_sha256,
            actual=actual,
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise RegistryError(f"{where}: ONNX Runtime cannot load it: {exc}", model=name) from exc
    meta = _metadata(session)
    if specs is None:
        specs = (
            [FeatureSpec(f["name"], f["kind"]) for f in json.loads(meta["features"])]
            if "features" in meta
            else _specs_from_session(session)
        )
    _check_inputs(session, specs, where)
    outputs = [o.name for o in session.get_outputs()]
    task = (
        task
        or meta.get("task")
        or ("classification" if "probabilities" in outputs else "regression")
    )
    if classes is None and "classes" in meta:
        classes = json.loads(meta["classes"])
    wanted = ["label", "probabilities"] if task == "classification" else ["label"]
    if not set(wanted) <= set(outputs):
        raise RegistryError(f"{where}: ONNX outputs {outputs} lack {wanted}.", model=name)
    return LoadedModel(
        name=name,
        version=str(version),
        sha256=actual,
        task=task,
        classes=classes,
        schema=InputSchema(tuple(specs)),
        session=session,
        output_names=wanted,
    )
