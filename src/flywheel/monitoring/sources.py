"""Where monitoring's data comes from: a version's reference, and current windows (files a
user has, or the prediction log), all turned into the monitor's one batch shape (feature
columns, ``__score__``, ``__prediction__``, ``__label__``, ``ts``)."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.errors import DataError, NotFound
from flywheel.monitoring.profile import PREDICTION, SCORE, Reference, Task, numeric_values
from flywheel.monitoring.reference import as_text, build_reference, score_columns
from flywheel.monitoring.window import LABEL
from flywheel.schema import FeatureSpec

if TYPE_CHECKING:
    import pandas as pd

    from flywheel.registry.artifacts import ModelArtifacts
    from flywheel.workspace import Workspace

__all__ = [
    "REFERENCE_FILE",
    "Model",
    "file_windows",
    "load_model",
    "log_batches",
    "monitor_table",
    "parse_every",
]

log = logging.getLogger("flywheel.monitoring")

REFERENCE_FILE = "reference.json"
_BATCH_ROWS = 65536


# --------------------------------------------------------------------------- the model


@dataclass
class Model:
    """A registered version as monitoring needs it: its files, a scorer and its reference."""

    artifacts: ModelArtifacts
    reference: Reference
    session: Any = None

    @property
    def specs(self) -> list[FeatureSpec]:
        return list(self.artifacts.feature_specs)

    def score(self, frame: pd.DataFrame) -> dict[str, pa.Array]:
        """``__score__``/``__prediction__`` of raw rows, as the served model gives them."""
        from flywheel.registry.onnx_export import make_session, onnx_predict

        if self.session is None:
            self.session = make_session(self.artifacts.model_path.read_bytes())
        labels, proba = onnx_predict(self.session, frame, self.specs, task=self.artifacts.task)
        return score_columns(self.artifacts.task, self.reference.classes, labels, proba)


def load_model(ws: Workspace, ref: str, *, reference: str = "holdout") -> Model:
    """The version behind ``ref`` and its reference: the profile stored with it at
    registration, else one built now from its run's holdout (and kept under
    ``<home>/monitoring/references``); or ``snapshot:<id>`` (a named snapshot's rows)."""
    from flywheel.registry.artifacts import fetch_model_artifacts, split_model_ref

    name, which = split_model_ref(ref, ws.settings.registry.model_name)
    artifacts = fetch_model_artifacts(ws, which, name=name)
    model = Model(artifacts=artifacts, reference=_placeholder(artifacts))
    if reference.startswith("snapshot:"):
        model.reference = _snapshot_reference(ws, model, reference.split(":", 1)[1])
        return model
    stored = artifacts.card_path.parent / REFERENCE_FILE
    cached = ws.settings.home / "monitoring" / "references" / name / f"{artifacts.version}.json"
    for path in (stored, cached):
        if path.exists():
            model.reference = Reference.from_dict(json.loads(path.read_text(encoding="utf-8")))
            return model
    if not artifacts.run_id:
        raise NotFound(
            f"{name} v{artifacts.version} has no reference profile and no training run to build "
            "one from. Give a snapshot as reference: --reference snapshot:<id>.",
            model=name,
            version=artifacts.version,
        )
    log.info(
        "%s v%s has no stored reference: building it from its holdout", name, artifacts.version
    )
    model.reference = holdout_reference(ws, model)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(model.reference.to_dict()), encoding="utf-8")
    tmp.replace(cached)
    return model


def _placeholder(artifacts: ModelArtifacts) -> Reference:
    from flywheel.monitoring.profile import WindowProfile

    return Reference(
        model=artifacts.name,
        version=artifacts.version,
        source="",
        task=artifacts.task,
        features=[s.name for s in artifacts.feature_specs],
        bins=[],
        profile=WindowProfile(rows=0, columns={}),
        classes=as_text(artifacts.classes) if artifacts.classes is not None else None,
        threshold=artifacts.threshold,
    )


def reference_from_rows(
    *,
    name: str,
    version: str | None,
    task: Task,
    classes: Sequence[Any] | None,
    threshold: float | None,
    specs: Sequence[FeatureSpec],
    scorer: Callable[[pd.DataFrame], dict[str, pa.Array]],
    frame: pd.DataFrame,
    truth: Sequence[Any] | None,
    source: str,
    target: str | None,
    importance: dict[str, float] | None = None,
) -> Reference:
    """A reference from raw rows (scored by ``scorer``) and their truth, if known; its
    metrics are computed on those rows the way windows are measured."""
    from flywheel.monitoring.performance import realised
    from flywheel.monitoring.window import count_window

    table = _arrow(frame, specs)
    for key, col in scorer(frame).items():
        table = table.append_column(key, col)
    if truth is not None:
        values = list(truth)
        label = (
            pa.array([None if _missing(v) else float(v) for v in values], pa.float64())
            if task == "regression"
            else _text_labels(pa.array(values, from_pandas=True))
        )
        table = table.append_column(LABEL, label)
    ref = build_reference(
        model=name,
        version=version,
        source=source,
        frame=table,
        specs=specs,
        task=task,
        classes=classes,
        threshold=threshold,
        target=target,
        importance=importance,
    )
    if truth is not None:
        counts = count_window(ref, [table], sketches=False).performance
        ref.metrics = realised(counts) if counts is not None else {}
        positive = ref.positive
        ref.primary_metric = (
            "rmse" if task == "regression" else ("roc_auc" if positive else "accuracy")
        )
    return ref


def _model_reference(
    model: Model, frame: pd.DataFrame, truth: Sequence[Any] | None, source: str, target: str | None
) -> Reference:
    art = model.artifacts
    return reference_from_rows(
        name=art.name,
        version=art.version,
        task=art.task,
        classes=art.classes,
        threshold=art.threshold,
        specs=model.specs,
        scorer=model.score,
        frame=frame,
        truth=truth,
        source=source,
        target=target,
    )


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def holdout_reference(ws: Workspace, model: Model) -> Reference:
    from flywheel.training.runs import load_holdout, load_training_meta

    run_id = model.artifacts.run_id or ""
    meta = load_training_meta(ws, run_id)
    frame, truth = load_holdout(ws, run_id, meta=meta)
    return _model_reference(
        model, frame, truth.tolist(), source=f"holdout of run {run_id}", target=meta.target
    )


def _snapshot_reference(ws: Workspace, model: Model, snapshot_id: str) -> Reference:
    manifest = ws.snapshot(snapshot_id)
    df = ws.read_snapshot(manifest)
    target = manifest.target if getattr(manifest, "target", None) in df.columns else None
    truth = df[target].tolist() if target else None
    return _model_reference(model, df, truth, f"snapshot {manifest.id}", target)


def _arrow(frame: pd.DataFrame, specs: Sequence[FeatureSpec]) -> pa.Table:
    cols = {}
    for s in specs:
        if s.name not in frame.columns:
            cols[s.name] = pa.nulls(len(frame))
        elif s.kind == "numeric":
            cols[s.name] = pa.array(
                numeric_values(pa.array(frame[s.name].to_numpy(), from_pandas=True))[0]
            )
        else:
            values = frame[s.name].astype(object).where(frame[s.name].notna(), None)
            present = [v for v in values if v is not None]
            text = iter(as_text(present))  # 2.0 -> "2", as windows count categories
            cols[s.name] = pa.array(
                [None if v is None else next(text) for v in values], pa.string()
            )
    return pa.table(cols)


# --------------------------------------------------------------------------- files


_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """Files in the order given; a folder gives its Parquet/CSV files in name order."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in _FORMATS)
            if not found:
                raise DataError(
                    f"{p} holds no .parquet or .csv file.", field="current", value=str(p)
                )
            out += found
        elif not p.exists():
            raise DataError(f"{p} does not exist.", field="current", value=str(p))
        elif p.suffix.lower() not in _FORMATS:
            raise DataError(
                f"{p}: unsupported file type {p.suffix!r}; use .parquet or .csv.",
                field="current",
                value=str(p),
            )
        else:
            out.append(p)
    return out


def _dataset_batches(path: Path) -> tuple[list[str], Iterator[pa.RecordBatch]]:
    """A file's column names and its batches, streamed: Parquet row groups without
    pre-buffering (pyarrow keeps pre-buffered row groups until the reader closes, so memory
    would grow with the file: apache/arrow#39808), CSV through the streaming reader."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fmt = _FORMATS[path.suffix.lower()]
    try:
        if fmt == "parquet":
            pf = pq.ParquetFile(str(path), pre_buffer=False)
            names = pf.schema_arrow.names
            stream: Iterator[pa.RecordBatch] = pf.iter_batches(batch_size=_BATCH_ROWS)
        else:
            reader = pacsv.open_csv(str(path), read_options=pacsv.ReadOptions(block_size=8 << 20))
            names = reader.schema.names
            stream = iter(reader)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(
            f"{path} is not a readable {fmt} file: {exc}", field="current", value=str(path)
        ) from None

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from stream
        except pa.ArrowInvalid as exc:
            raise DataError(f"{path}: {exc}", field="current", value=str(path)) from None

    return names, batches()


def file_windows(model: Model, paths: Sequence[Path]) -> Iterator[tuple[str, Iterator[pa.Table]]]:
    """Each file is one window: (its path, its batches in the monitor's shape). Columns the
    model does not use are ignored; a column named as the training target gives labels; a
    missing model column is a :class:`DataError` naming it."""
    import pandas as pd

    ref = model.reference
    needed = [s.name for s in model.specs]
    for path in expand_paths(paths):
        names, raw = _dataset_batches(path)
        missing = [n for n in needed if n not in names]
        if missing:
            raise DataError(
                f"{path} lacks the model's column(s) {', '.join(missing)} "
                f"(the model uses {', '.join(needed)}).",
                field="current",
                missing=missing,
                file=str(path),
            )
        target = ref.target if ref.target and ref.target in names else None

        def shaped(
            raw: Iterator[pa.RecordBatch] = raw, target: str | None = target
        ) -> Iterator[pa.Table]:
            for batch in raw:
                # counted as read (text in a numeric column is counted as invalid); scored
                # with the values converted as serving would
                table = pa.Table.from_batches([batch.select(needed)])
                typed = _arrow(batch.select(needed).to_pandas(), model.specs)
                frame = pd.DataFrame(
                    {n: typed.column(n).to_numpy(zero_copy_only=False) for n in needed}
                )
                for key, col in model.score(frame).items():
                    table = table.append_column(key, col)
                if target is not None:
                    t = batch.column(target)
                    label = (
                        pc.cast(t, pa.float64()) if ref.task == "regression" else _text_labels(t)
                    )
                    table = table.append_column(LABEL, label)
                yield table

        yield str(path), shaped()


def _text_labels(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    values = col.to_pylist()
    return pa.array(
        [None if _missing(v) else t for v, t in zip(values, as_text(values), strict=True)],
        pa.string(),
    )


# --------------------------------------------------------------------------- the log


_EVERY = re.compile(r"^(\d+)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_every(every: str) -> float:
    m = _EVERY.match(every.strip())
    if not m or int(m.group(1)) == 0:
        raise DataError(
            f"Bad window length {every!r}: use a number and a unit s, m, h, d or w (e.g. 1d, 6h).",
            field="every",
            value=every,
        )
    return float(int(m.group(1)) * _UNIT[m.group(2)])


def log_batches(
    url: str, model: Model, start: float | None, end: float | None
) -> Iterator[pa.Table]:
    """The version's logged predictions in ``[start, end)``, in the monitor's shape, oldest
    first (with ``ts``)."""
    from flywheel.predlog.read import predictions

    art = model.artifacts
    for batch in predictions(url, art.name, version=art.version, start=start, end=end):
        yield monitor_table(batch, model.specs, art.task, model.reference.positive)


def monitor_table(
    batch: pa.RecordBatch | pa.Table,
    specs: Sequence[FeatureSpec],
    task: str,
    positive: str | None,
) -> pa.Table:
    """One batch of the prediction log's read API in the monitor's shape: the features
    (read from ``input_<name>`` where a feature is named like a fixed column of the log),
    ``ts``, the score, the prediction and the label."""
    from flywheel.predlog.read import input_column

    cols: dict[str, pa.Array] = {}
    names = batch.column_names
    for s in specs:
        column = input_column(s.name)
        cols[s.name] = batch.column(column) if column in names else pa.nulls(batch.num_rows)
    cols["ts"] = batch.column("ts")
    if task == "regression":
        value = pc.cast(pc.cast(batch.column("prediction"), pa.float32()), pa.float64())
        cols[SCORE] = value
        cols[PREDICTION] = cols[SCORE]
        cols[LABEL] = pc.cast(batch.column("label"), pa.float64())
    else:
        cols[PREDICTION] = _text_labels(batch.column("prediction"))
        probas = [n for n in names if n.startswith("proba_")]
        # the model answers float32; the log keeps its text: back to the same float32
        if positive is not None and f"proba_{positive}" in names:
            cols[SCORE] = pc.cast(
                pc.cast(batch.column(f"proba_{positive}"), pa.float32()), pa.float64()
            )
        elif probas:
            stacked = np.column_stack(
                [batch.column(n).to_numpy(zero_copy_only=False) for n in probas]
            )
            cols[SCORE] = pa.array(np.nanmax(stacked, axis=1).astype(np.float32), pa.float32())
        cols[LABEL] = _text_labels(batch.column("label"))
    return pa.table(cols)
