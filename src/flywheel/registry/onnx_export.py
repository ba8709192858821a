"""ONNX export of a whole fitted pipeline, and the parity check against native predictions.

The ONNX graph has one input per feature, named as the feature, shape ``[None, 1]``:
float32 for numeric, string for categorical. Outputs: ``label`` (the original class labels:
int64 for integer classes, string for string classes; float32 ``[None, 1]`` values for
regression) and, for classifiers, ``probabilities`` ``[None, n_classes]`` (no ZipMap), columns
in the order of ``pipeline.classes_``. A binary classifier exported with a decision
``threshold`` computes ``label`` as ``probabilities[:, 1] >= threshold`` inside the graph, so
every consumer of the file gets the labels training chose. The graph is named
deterministically, so exporting the same pipeline twice gives the same bytes. See
``docs/onnx.md``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from sklearn.pipeline import Pipeline

from flywheel.errors import RegistryError
from flywheel.schema import FeatureSpec
from flywheel.training import families
from flywheel.training.features import RatioFeatures, Task, prepare_frame

__all__ = [
    "TARGET_OPSET",
    "ParityReport",
    "check_parity",
    "export_onnx",
    "make_session",
    "onnx_feeds",
    "onnx_predict",
]

log = logging.getLogger("flywheel.registry")

# onnxmltools 1.16 emits LightGBM/XGBoost trees as ai.onnx.ml TreeEnsemble* v1 nodes, which
# need ai.onnx.ml <= 3 (v5 replaced them); skl2onnx targets the same domain versions, so the
# whole graph is pinned here. See docs/onnx.md for what was tried.
TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
META_PREFIX = "flywheel."
# skl2onnx names a graph with a random uuid unless told; ours is this, or the name given.
DEFAULT_GRAPH_NAME = "flywheel"
_T = "flywheel_threshold"  # prefix of the names the threshold nodes add
_L = "flywheel_labels"  # prefix of the names the original-labels node adds


@dataclass(frozen=True)
class ParityReport:
    rows: int
    max_abs_diff: float
    rows_over_tolerance: int
    label_mismatches: int
    tolerance: float
    relative: bool = False  # regression diffs divided by max(1, max |native value|)
    label_ties: int = 0  # labels that differ only where native probabilities tie (≤ tolerance)

    @property
    def passed(self) -> bool:
        return self.rows_over_tolerance == 0 and self.label_mismatches == 0


# --------------------------------------------------------------------------- converters


def _ratio_shape(operator: Any) -> None:
    from skl2onnx.common.data_types import FloatTensorType

    n_rows = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = FloatTensorType([n_rows, len(operator.raw_operator.pairs_)])


def _ratio_convert(scope: Any, operator: Any, container: Any) -> None:
    """``num / where(den < 1, 1, den)`` per ratio, columns concatenated (float32 throughout)."""
    from skl2onnx.algebra.onnx_ops import OnnxConcat, OnnxDiv, OnnxGather, OnnxLess, OnnxWhere

    opv = container.target_opset
    x = operator.inputs[0]
    one = np.array([1], dtype=np.float32)
    columns = []
    for i, j in operator.raw_operator.pairs_:
        num = OnnxGather(x, np.array([i], dtype=np.int64), axis=1, op_version=opv)
        den = OnnxGather(x, np.array([j], dtype=np.int64), axis=1, op_version=opv)
        safe = OnnxWhere(OnnxLess(den, one, op_version=opv), one, den, op_version=opv)
        columns.append(OnnxDiv(num, safe, op_version=opv))
    out = OnnxConcat(*columns, axis=1, op_version=opv, output_names=operator.outputs[:1])
    out.add_to(scope, container)


def register_converters(model: Any) -> None:
    """Teach skl2onnx RatioFeatures, and run the ONNX hook of the model family whose types
    ``model`` (the pipeline's final estimator) is made of (LightGBM's and XGBoost's register
    onnxmltools' converters, which import the boosting library: an export of any other
    family does not). Each registration runs once per process."""
    _register_ratio()
    families.prepare_onnx(model)


@cache
def _register_ratio() -> None:
    from skl2onnx import update_registered_converter

    update_registered_converter(
        RatioFeatures, "FlywheelRatioFeatures", _ratio_shape, _ratio_convert
    )


# --------------------------------------------------------------------------- export


def _initial_types(specs: list[FeatureSpec]) -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    return [
        (s.name, FloatTensorType([None, 1]) if s.kind == "numeric" else StringTensorType([None, 1]))
        for s in specs
    ]


def _rename_outputs(model: onnx.ModelProto, wanted: list[str]) -> None:
    """Rename the graph outputs in order to ``wanted`` (and every node that uses them)."""
    mapping = {o.name: new for o, new in zip(model.graph.output, wanted, strict=False)}
    for node in model.graph.node:
        node.output[:] = [mapping.get(n, n) for n in node.output]
        node.input[:] = [mapping.get(n, n) for n in node.input]
    for out in model.graph.output:
        out.name = mapping.get(out.name, out.name)


def _add_metadata(
    model: onnx.ModelProto,
    specs: list[FeatureSpec],
    task: Task,
    pipeline: Pipeline,
    threshold: float | None,
    relabel: np.ndarray | None = None,
) -> None:
    meta = {
        "task": task,
        "features": json.dumps([{"name": s.name, "kind": s.kind} for s in specs]),
        "family": type(pipeline.steps[-1][1]).__name__,
    }
    if task == "classification":
        labels = pipeline.classes_ if relabel is None else relabel
        meta["classes"] = json.dumps([_plain(c) for c in labels])
    if threshold is not None:
        meta["threshold"] = repr(threshold)
    onnx.helper.set_model_props(model, {META_PREFIX + k: v for k, v in meta.items()})


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def export_onnx(
    pipeline: Pipeline,
    specs: list[FeatureSpec],
    *,
    task: Task,
    threshold: float | None = None,
    graph_name: str = DEFAULT_GRAPH_NAME,
    classes: Sequence[Any] | None = None,
) -> bytes:
    """Serialized ONNX of the fitted ``pipeline``: one input per spec, ``label`` (+
    ``probabilities`` for classifiers). Raises :class:`RegistryError` if conversion fails.

    ``threshold`` (binary classifiers only): ``label`` is the second class where its
    probability is ``>= threshold``, else the first (see :func:`_threshold_label`); None
    keeps the converter's argmax. ``graph_name`` names the graph; the same pipeline,
    threshold and name give the same bytes. ``classes``: the original class labels of a
    pipeline fitted on their indices ``0..k-1`` (as flywheel's training fits it): ``label``
    gives them back (see :func:`original_labels`), and ``flywheel.classes`` lists them."""
    from skl2onnx import convert_sklearn

    model = pipeline.steps[-1][1]
    register_converters(model)
    options = {id(model): {"zipmap": False}} if task == "classification" else None
    try:
        onx = convert_sklearn(
            pipeline,
            name=graph_name,
            initial_types=_initial_types(specs),
            options=options,
            target_opset=TARGET_OPSET,
        )
    except Exception as exc:  # skl2onnx raises bare RuntimeError/TypeError/etc.
        raise RegistryError(
            f"ONNX export of {type(model).__name__} failed: {exc}. Check that the pipeline "
            "was built by flywheel.training.features.build_pipeline and is fitted.",
            estimator=type(model).__name__,
        ) from exc
    wanted = ["label", "probabilities"] if task == "classification" else ["label"]
    _rename_outputs(onx, wanted)
    _restore_input_names(onx, specs)
    if threshold is not None:
        _threshold_label(onx, np.asarray(pipeline.classes_), threshold, task)
    relabel = original_labels(pipeline, classes) if task == "classification" else None
    if relabel is not None:
        _relabel(onx, relabel)
    _add_metadata(onx, specs, task, pipeline, threshold, relabel)
    return onx.SerializeToString()


def original_labels(pipeline: Pipeline, classes: Sequence[Any] | None) -> np.ndarray | None:
    """What ``label`` should give for each of the pipeline's classes, when they are the
    indices ``0..k-1`` of other ``classes``: int64 for integral classes, else their text.
    None: the converter's labels are already right (no classes given, the same values, or
    bool classes, which come back as 0/1)."""
    fitted = [_plain(c) for c in getattr(pipeline, "classes_", [])]
    if classes is None or len(classes) != len(fitted) or fitted != list(range(len(fitted))):
        return None
    values = [_plain(c) for c in classes]
    if all(isinstance(v, bool) for v in values):
        return None
    if all(isinstance(v, int) or (isinstance(v, float) and v.is_integer()) for v in values):
        ints = [int(v) for v in values]
        return None if ints == fitted else np.asarray(ints, dtype=np.int64)
    return np.asarray([str(v) for v in values], dtype=object)


def _relabel(onx: onnx.ModelProto, values: np.ndarray) -> None:
    """``label`` = ``values[label]``: the class indices the pipeline was fitted on become
    the original labels (one Gather on a constant), typed int64 or string."""
    graph = onx.graph
    label = next(o for o in graph.output if o.name == "label")
    _rename_outputs_of_nodes(graph, {"label": f"{_L}_index"})
    graph.initializer.append(onnx.numpy_helper.from_array(values, f"{_L}_values"))
    graph.node.append(
        onnx.helper.make_node("Gather", [f"{_L}_values", f"{_L}_index"], ["label"], axis=0)
    )
    string = values.dtype == object
    label.type.tensor_type.elem_type = onnx.TensorProto.STRING if string else onnx.TensorProto.INT64
    onnx.checker.check_model(onx)


def _threshold_label(
    onx: onnx.ModelProto, classes: np.ndarray, threshold: float, task: Task
) -> None:
    """Replace the converter's argmax ``label`` by ``classes[probabilities[:, 1] >= t]``.

    Graph surgery rather than a converter: skl2onnx has none for scikit-learn's
    ``FixedThresholdClassifier``, and this works after any family's converter. The nodes
    compare float32 probabilities with the float32 threshold, as training rounded it; the
    converter's own label nodes that nothing reads any more are dropped."""
    if task != "classification" or len(classes) != 2:
        raise RegistryError(
            f"A decision threshold needs a binary classifier; this one is {task} with "
            f"{len(classes)} classes. Export it without a threshold.",
        )
    graph = onx.graph
    label = next(o for o in graph.output if o.name == "label")
    _rename_outputs_of_nodes(graph, {"label": f"{_T}_argmax_label"})
    graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(np.array(threshold, dtype=np.float32), f"{_T}_value"),
            onnx.numpy_helper.from_array(np.array(1, dtype=np.int64), f"{_T}_positive"),
            _classes_tensor(classes, label.type.tensor_type.elem_type),
        ]
    )
    make = onnx.helper.make_node
    graph.node.extend(
        [
            make("Gather", ["probabilities", f"{_T}_positive"], [f"{_T}_p"], axis=1),
            # not (p < t), i.e. p >= t: GreaterOrEqual needs opset 12, and skl2onnx writes
            # the lowest opset the converters need (11 for the churn pipeline). They differ
            # only for a NaN probability, which no flywheel model produces.
            make("Less", [f"{_T}_p", f"{_T}_value"], [f"{_T}_below"]),
            make("Not", [f"{_T}_below"], [f"{_T}_is_positive"]),
            make("Cast", [f"{_T}_is_positive"], [f"{_T}_index"], to=onnx.TensorProto.INT64),
            make("Gather", [f"{_T}_classes", f"{_T}_index"], ["label"], axis=0),
        ]
    )
    _prune(graph)
    onnx.checker.check_model(onx)


def _rename_outputs_of_nodes(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rename node outputs (and the inputs that read them); graph outputs keep their names."""
    for node in graph.node:
        node.output[:] = [mapping.get(n, n) for n in node.output]
        node.input[:] = [mapping.get(n, n) for n in node.input]


def _classes_tensor(classes: np.ndarray, elem_type: int) -> onnx.TensorProto:
    """The two class labels, typed as the converter typed ``label`` (int64 or string)."""
    name = f"{_T}_classes"
    if elem_type == onnx.TensorProto.STRING:
        values = np.array([str(_plain(c)) for c in classes], dtype=object)
        return onnx.numpy_helper.from_array(values, name)
    if elem_type == onnx.TensorProto.INT64:
        return onnx.numpy_helper.from_array(np.asarray(classes).astype(np.int64), name)
    raise RegistryError(
        f"Cannot apply a threshold to a label of ONNX type {elem_type}; "
        "only int64 and string labels are supported.",
    )


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes none of whose outputs is needed by a graph output, and unused
    initializers (graphs with subgraphs, which skl2onnx does not emit here, are kept)."""
    if any(a.type == onnx.AttributeProto.GRAPH for n in graph.node for a in n.attribute):
        return
    needed = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(_copy(onnx.NodeProto(), node))
            needed.update(node.input)
    used = [_copy(onnx.TensorProto(), t) for t in graph.initializer if t.name in needed]
    del graph.node[:]
    graph.node.extend(reversed(kept))
    del graph.initializer[:]
    graph.initializer.extend(used)


def _copy(empty: Any, message: Any) -> Any:
    empty.CopyFrom(message)
    return empty


def _restore_input_names(onx: Any, specs: list[FeatureSpec]) -> None:
    """Give every graph input its feature's exact name.

    skl2onnx rewrites names that are not identifiers ("mean radius" -> "mean_radius");
    ONNX accepts any string, and serving feeds inputs by feature name, so the original
    names are put back (inputs keep the order of ``specs``).
    """
    graph = onx.graph
    renames = {
        inp.name: spec.name
        for inp, spec in zip(graph.input, specs, strict=True)
        if inp.name != spec.name
    }
    if not renames:
        return
    for inp in graph.input:
        inp.name = renames.get(inp.name, inp.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]


# --------------------------------------------------------------------------- predict


def onnx_feeds(df: pd.DataFrame, specs: list[FeatureSpec]) -> dict[str, np.ndarray]:
    """``{feature: [n, 1] array}`` (float32 or object ``str``) from a raw frame."""
    return _feeds(prepare_frame(df, specs), specs)


def _feeds(frame: pd.DataFrame, specs: list[FeatureSpec]) -> dict[str, np.ndarray]:
    return {
        s.name: frame[s.name]
        .to_numpy(dtype=np.float32 if s.kind == "numeric" else object)
        .reshape(-1, 1)
        for s in specs
    }


def onnx_predict(
    session: ort.InferenceSession, df: pd.DataFrame, specs: list[FeatureSpec], *, task: Task
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (or regression values) and class probabilities (None for regression)."""
    return _run(session, onnx_feeds(df, specs), task)


def _run(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], task: Task
) -> tuple[np.ndarray, np.ndarray | None]:
    if task == "classification":
        label, proba = session.run(["label", "probabilities"], feeds)
        return np.asarray(label).ravel(), np.asarray(proba)
    (values,) = session.run(["label"], feeds)
    return np.asarray(values).ravel(), None


def make_session(onnx_model: bytes, *, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with few threads (the machines are shared)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_model, opts, providers=["CPUExecutionProvider"])


def _diffs(native: np.ndarray, exported: np.ndarray, relative: bool) -> np.ndarray:
    native = np.asarray(native, dtype=np.float64).reshape(len(native), -1)
    exported = np.asarray(exported, dtype=np.float64).reshape(native.shape)
    diff = np.abs(native - exported)
    # Scale of the batch, not of the row: a float32 sum of terms ~1000 that cancels to ~0
    # is off by ~1e-4 however small the row's value is.
    scale = max(1.0, float(np.abs(native).max(initial=0.0)))
    return diff / scale if relative else diff


def _label_mismatches(
    classes: np.ndarray,
    native: np.ndarray,
    onnx_labels: np.ndarray,
    native_proba: np.ndarray,
    *,
    tolerance: float,
    threshold: float | None = None,
) -> tuple[int, int]:
    """(mismatches, ties): rows whose labels differ, split by whether the native
    probabilities of the two labels tie within ``tolerance`` (a vote split evenly, where
    float32 vs float64 rounding legitimately picks either side) or, with a decision
    ``threshold``, the native positive-class probability is within ``tolerance`` of it."""
    native = np.asarray(native).astype(object)
    differ = np.flatnonzero(native != onnx_labels.astype(object))
    position = {c: i for i, c in enumerate(classes)}
    ties = 0
    for row in differ:
        j = position.get(onnx_labels[row])
        if threshold is not None:
            ties += int(abs(native_proba[row, 1] - threshold) <= tolerance)
        elif j is not None:
            margin = native_proba[row, position[native[row]]] - native_proba[row, j]
            ties += int(margin <= tolerance)
    return len(differ) - ties, ties


def check_parity(
    pipeline: Pipeline,
    onnx_model: bytes,
    df: pd.DataFrame,
    specs: list[FeatureSpec],
    *,
    task: Task,
    tolerance: float = 1e-4,
    relative: bool = True,
    native: tuple[np.ndarray, np.ndarray | None] | None = None,
    prepared: bool = False,
    threshold: float | None = None,
    classes: Sequence[Any] | None = None,
) -> ParityReport:
    """Native vs ONNX Runtime predictions on ``df``.

    Classification compares every class probability (absolute) and the labels (a differing
    label on a probability tie within ``tolerance`` is counted in ``label_ties``, not as a
    mismatch). With a decision ``threshold`` (binary), the native labels are the positive
    class where its probability is ``>= threshold``, as the graph's ``label`` should be, and
    a differing label is a tie when that probability is within ``tolerance`` of it. Regression compares ``|Δ| / max(1, max |native|)``, relative to the batch's
    scale (``relative=True``, the default: ONNX outputs float32, whose rounding alone is ~1e-4
    at values ~1000), or plain ``|Δ|`` with ``relative=False``.

    ``native`` is the pipeline's own ``(labels, probabilities)`` on ``df`` when the caller
    has them already (evaluation computed them on the same holdout); else they are computed.
    ``prepared=True`` says ``df`` is already :func:`prepare_frame`'s output. ``classes``:
    as :func:`export_onnx` took them; the native labels are compared as the original ones.
    """
    frame = df if prepared else prepare_frame(df, specs)
    labels, proba = _run(make_session(onnx_model), _feeds(frame, specs), task)
    mismatches = ties = 0
    if task == "classification":
        fitted = np.asarray(pipeline.classes_)
        relabel = original_labels(pipeline, classes)
        labelled = fitted if relabel is None else relabel  # what the graph's label gives
        if native is None:
            native_proba = pipeline.predict_proba(frame)
            picked = (
                native_proba.argmax(axis=1)
                if threshold is None
                else (native_proba[:, 1] >= threshold).astype(np.int64)
            )
            native_labels = labelled[picked]
        else:
            native_labels, given = native
            assert given is not None  # classification has probabilities
            native_proba = given
            if relabel is not None:  # the pipeline's labels are the indices of the classes
                native_labels = relabel[np.asarray(native_labels, dtype=np.int64)]
        assert proba is not None  # onnx_predict returns probabilities for classification
        diff = _diffs(native_proba, proba, relative=False)
        mismatches, ties = _label_mismatches(
            labelled,
            native_labels,
            labels,
            native_proba,
            tolerance=tolerance,
            threshold=threshold,
        )
    else:
        values = pipeline.predict(frame) if native is None else native[0]
        diff = _diffs(values, labels, relative=relative)
    report = ParityReport(
        rows=len(frame),
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        rows_over_tolerance=int(np.sum((diff > tolerance).any(axis=1))),
        label_mismatches=mismatches,
        tolerance=tolerance,
        relative=relative and task == "regression",
        label_ties=ties,
    )
    log.info("parity %s", report)
    return report
