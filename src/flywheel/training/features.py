"""Features and model as ONE scikit-learn pipeline, built so the ONNX export is exact.

Conventions every module relies on:
- numeric inputs are cast to float32 *before* fitting (ONNX tree ensembles compare in
  float32; fitting on float64 puts rows on the other side of a split);
- a missing categorical value is the empty string ``""`` (ONNX has no string NaN);
- no scaler in front of tree models; preprocessing lives inside the pipeline.

The pipeline is ``Pipeline([("features", ColumnTransformer), ("model", estimator)])`` and
takes the frame :func:`prepare_frame` returns. The ColumnTransformer has up to three
branches, each selecting columns *by name* (so the ONNX graph keeps one input per feature):

- ``numeric``: SimpleImputer(median) [+ StandardScaler for a family declared ``scaled``,
  i.e. ``logreg``/``linear``];
- ``ratio``: :class:`RatioFeatures` on the numerator/denominator columns, then the same
  imputer [+ scaler] (a ratio is NaN when either side is);
- ``categorical``: OneHotEncoder(handle_unknown="ignore", dtype=float32).

Every intermediate output is float32, so trees see exactly what ONNX Runtime sees.

The estimator comes from a model family (:mod:`flywheel.training.families`, one module per
family, imported on first use): this module imports neither LightGBM nor XGBoost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from flywheel.errors import DataError, TrainingError
from flywheel.schema import FeatureSpec
from flywheel.training import families
from flywheel.training.families import Family, Task

__all__ = [
    "CLASSIFICATION_FAMILIES",
    "CLASS_WEIGHT_FAMILIES",
    "REGRESSION_FAMILIES",
    "FeatureSpec",
    "RatioFeature",
    "RatioFeatures",
    "align_thresholds_to_float32",
    "build_features",
    "build_pipeline",
    "infer_feature_specs",
    "prepare_frame",
    "ratio_values",
]


class _FamilyNames(Sequence[str]):
    """The names of the registered families that pass ``rule``, read from the registry at
    every use, so a family registered after this module was imported is included.

    ``name in view`` loads only that family's declaration (a :class:`ConfigError` names a
    registered module that cannot be read); iterating loads them all (cheap: declarations
    import no estimator library) and leaves out, with a warning, one whose module is broken.
    """

    def __init__(self, rule: Callable[[Family], bool]) -> None:
        self._rule = rule

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in families.declared() if self._rule(f))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and families.known(name) and self._rule(families.get(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[str, ...]: ...
    def __getitem__(self, index: int | slice) -> str | tuple[str, ...]:
        return self._names()[index]

    def __repr__(self) -> str:
        return repr(self._names())


CLASSIFICATION_FAMILIES = _FamilyNames(lambda f: "classification" in f.tasks)
REGRESSION_FAMILIES = _FamilyNames(lambda f: "regression" in f.tasks)
# Classifier families whose estimator takes ``class_weight`` (XGBClassifier does not).
CLASS_WEIGHT_FAMILIES = _FamilyNames(lambda f: f.class_weight and "classification" in f.tasks)


if not TYPE_CHECKING:  # hidden from mypy, which would otherwise accept any name from here

    def __getattr__(name: str) -> Any:
        """``EncodedXGBClassifier`` moved to the xgboost family; models saved before name
        it here, so skops still finds it (importing XGBoost only when asked for)."""
        if name == "EncodedXGBClassifier":
            from flywheel.training.families._xgboost_classifier import EncodedXGBClassifier

            return EncodedXGBClassifier
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class RatioFeature:
    """Engineered feature ``numerator / max(denominator, 1)``, e.g. tickets per tenure month."""

    name: str
    numerator: str
    denominator: str


# --------------------------------------------------------------------------- specs + frames


def _column_kind(series: pd.Series) -> Literal["numeric", "categorical"] | None:
    """ "numeric", "categorical", or None for a column that is no feature (dates, times)."""
    dtype = series.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        return None
    if isinstance(dtype, pd.CategoricalDtype):
        return "categorical"
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
        return "numeric"
    if pd.api.types.infer_dtype(series, skipna=True) in {"datetime", "datetime64", "date"}:
        return None
    return "categorical"


def infer_feature_specs(df: pd.DataFrame, *, target: str, drop: list[str]) -> list[FeatureSpec]:
    """One spec per usable column, in DataFrame column order.

    Numeric dtypes (ints, floats, nullable ints, bools as 0/1) are ``numeric``; strings,
    objects and categories are ``categorical``; datetimes, ``drop`` and ``target`` are left out.
    """
    if target not in df.columns:
        raise DataError(
            f"Target column {target!r} is not in the data; columns are {list(df.columns)}. "
            "Name an existing column as the target.",
            target=target,
        )
    skip = {target, *drop}
    specs = []
    for name in df.columns:
        kind = None if name in skip else _column_kind(df[name])
        if kind is not None:
            specs.append(FeatureSpec(name=str(name), kind=kind))
    if not specs:
        raise DataError(
            f"No feature columns left after excluding target {target!r}, drop={drop} and "
            "datetime columns. Keep at least one numeric or categorical column.",
            target=target,
            drop=drop,
        )
    return specs


def _numeric_column(series: pd.Series) -> np.ndarray:
    try:
        return series.to_numpy(dtype=np.float32, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"Numeric feature {series.name!r} holds a non-numeric value ({exc}). "
            "Send numbers (or null) for this column.",
            column=str(series.name),
        ) from exc


def _categorical_column(series: pd.Series) -> np.ndarray:
    values = series.astype(object).to_numpy(dtype=object)
    missing = pd.isna(values)
    return np.array(
        ["" if gone else str(v) for v, gone in zip(values, missing, strict=True)], dtype=object
    )


def prepare_frame(df: pd.DataFrame, specs: list[FeatureSpec]) -> pd.DataFrame:
    """The spec columns in spec order: numeric as float32 (NaN kept), categorical as ``str``
    objects with missing values as ``""``. This is what the pipeline and ONNX both take."""
    missing = [s.name for s in specs if s.name not in df.columns]
    if missing:
        raise DataError(
            f"Feature column(s) {missing} are missing from the input; the model needs "
            f"{[s.name for s in specs]}. Add the missing column(s).",
            missing=missing,
        )
    columns = {
        s.name: pd.Series(
            _numeric_column(df[s.name]) if s.kind == "numeric" else _categorical_column(df[s.name]),
            index=df.index,
            dtype=np.float32 if s.kind == "numeric" else object,
        )
        for s in specs
    }
    return pd.DataFrame(columns, index=df.index)


# --------------------------------------------------------------------------- ratio transformer


def ratio_values(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / max(denominator, 1)`` in float32; NaN on either side gives NaN.

    Written as ``where(d < 1, 1, d)`` rather than ``maximum`` because that is exactly what
    the ONNX converter emits (``Less`` + ``Where``), NaN behaviour included.
    """
    num = numerator.astype(np.float32, copy=False)
    den = denominator.astype(np.float32, copy=False)
    safe = np.where(den < np.float32(1), np.float32(1), den).astype(np.float32)
    return (num / safe).astype(np.float32)


class RatioFeatures(TransformerMixin, BaseEstimator):
    """Engineered ratio columns ``numerator / max(denominator, 1)``, float32.

    Fit on a DataFrame holding (at least) every numerator and denominator column; the
    columns are found by name at fit time (``pairs_``), so at transform time it takes the same
    columns in the same order, as a frame or an array. Outputs one column per ratio.
    Its ONNX converter lives in :mod:`flywheel.registry.onnx_export`.
    """

    def __init__(self, ratios: Sequence[RatioFeature] = ()) -> None:
        self.ratios = ratios

    def fit(self, X: Any, y: Any = None) -> RatioFeatures:
        if not isinstance(X, pd.DataFrame):
            raise TrainingError(
                f"RatioFeatures must be fitted on a DataFrame to find columns by name; got "
                f"{type(X).__name__}. Pass the frame prepare_frame returns.",
            )
        validate_data(self, X, dtype=np.float32, ensure_all_finite="allow-nan", reset=True)
        names = list(self.feature_names_in_)
        pairs = []
        for ratio in self.ratios:
            absent = [c for c in (ratio.numerator, ratio.denominator) if c not in names]
            if absent:
                raise TrainingError(
                    f"Ratio {ratio.name!r} uses column(s) {absent} that are not in the input "
                    f"{names}. Name numeric feature columns.",
                    ratio=ratio.name,
                )
            pairs.append((names.index(ratio.numerator), names.index(ratio.denominator)))
        self.pairs_ = pairs
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "pairs_")
        arr = validate_data(self, X, dtype=np.float32, ensure_all_finite="allow-nan", reset=False)
        out = [ratio_values(arr[:, i], arr[:, j]) for i, j in self.pairs_]
        return (
            np.column_stack(out).astype(np.float32) if out else np.empty((len(arr), 0), np.float32)
        )

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray([r.name for r in self.ratios], dtype=object)


# --------------------------------------------------------------------------- pipeline


def _make_estimator(
    task: Task, family: str, hyperparams: dict[str, Any], seed: int, class_weight: str | None
) -> Any:
    if task not in ("classification", "regression"):
        raise TrainingError(
            f"Unknown task {task!r}. Use 'classification' or 'regression'.", task=task
        )
    valid = CLASSIFICATION_FAMILIES if task == "classification" else REGRESSION_FAMILIES
    if family not in valid:
        raise TrainingError(
            f"Unknown model family {family!r} for {task}. Valid families: {', '.join(valid)}.",
            family=family,
            valid=list(valid),
        )
    estimator = families.get(family).make(task, seed)
    known = estimator.get_params()
    unknown = sorted(set(hyperparams) - set(known))
    if unknown:
        raise TrainingError(
            f"Unknown hyperparameter(s) {unknown} for {type(estimator).__name__} "
            f"(family {family!r}). Valid names: {', '.join(sorted(known))}.",
            unknown=unknown,
            estimator=type(estimator).__name__,
        )
    if class_weight is not None:
        if "class_weight" not in known:
            raise TrainingError(
                f"class_weight is not supported by {type(estimator).__name__} (family "
                f"{family!r}, {task}). Remove 'class_weight' from params.yaml or use one of "
                f"{', '.join(CLASS_WEIGHT_FAMILIES)} for classification.",
                family=family,
                task=task,
            )
        hyperparams = {**hyperparams, "class_weight": class_weight}
    return estimator.set_params(**hyperparams)


def _check_ratios(specs: list[FeatureSpec], ratios: list[RatioFeature]) -> None:
    kinds = {s.name: s.kind for s in specs}
    for ratio in ratios:
        bad = [c for c in (ratio.numerator, ratio.denominator) if kinds.get(c) != "numeric"]
        if bad:
            raise TrainingError(
                f"Ratio {ratio.name!r} needs numeric feature columns; {bad} are not numeric "
                f"features (numeric features: {[n for n, k in kinds.items() if k == 'numeric']}).",
                ratio=ratio.name,
            )
    names = [r.name for r in ratios]
    clashes = sorted({n for n in names if n in kinds or names.count(n) > 1})
    if clashes:
        raise TrainingError(
            f"Ratio name(s) {clashes} repeat or clash with feature names. Rename the ratio(s).",
            names=clashes,
        )


def _numeric_steps(scaled: bool) -> list[tuple[str, Any]]:
    steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    if scaled:
        steps.append(("scale", StandardScaler()))
    return steps


def _ratio_inputs(ratios: list[RatioFeature]) -> list[str]:
    """Numerator/denominator columns, each once, in first-use order."""
    return list(dict.fromkeys(c for r in ratios for c in (r.numerator, r.denominator)))


def build_features(
    specs: list[FeatureSpec], *, ratios: list[RatioFeature], scaled: bool
) -> ColumnTransformer:
    """The ``features`` step: numeric, ratio and categorical branches selected by name."""
    numeric = [s.name for s in specs if s.kind == "numeric"]
    categorical = [s.name for s in specs if s.kind == "categorical"]
    branches: list[tuple[str, Any, list[str]]] = []
    if numeric:
        branches.append(("numeric", Pipeline(_numeric_steps(scaled)), numeric))
    if ratios:
        ratio_steps = [("ratio", RatioFeatures(tuple(ratios))), *_numeric_steps(scaled)]
        branches.append(("ratio", Pipeline(ratio_steps), _ratio_inputs(ratios)))
    if categorical:
        encoder = OneHotEncoder(handle_unknown="ignore", dtype=np.float32, sparse_output=False)
        branches.append(("categorical", encoder, categorical))
    return ColumnTransformer(branches, remainder="drop", sparse_threshold=0.0)


def build_pipeline(
    specs: list[FeatureSpec],
    *,
    task: Task,
    family: str,
    hyperparams: dict[str, Any],
    ratios: list[RatioFeature],
    seed: int,
    class_weight: str | None = None,
) -> Pipeline:
    """An unfitted ``Pipeline([("features", ...), ("model", estimator)])``.

    Fit it on ``prepare_frame(df, specs)``. ``class_weight`` (``"balanced"``) is passed to
    the classifier (families in :data:`CLASS_WEIGHT_FAMILIES`). Raises
    :class:`TrainingError` for an unknown task or family, a hyperparameter the estimator
    does not have, a ``class_weight`` it does not take, or a bad ratio.
    """
    if not specs:
        raise TrainingError("No feature specs given. Pass at least one FeatureSpec.")
    estimator = _make_estimator(task, family, hyperparams, seed, class_weight)
    _check_ratios(specs, ratios)
    features = build_features(specs, ratios=ratios, scaled=families.get(family).scaled)
    return Pipeline([("features", features), ("model", estimator)])


def _floor_float32(thresholds: np.ndarray) -> np.ndarray:
    """The largest float32 value <= each threshold, returned as float64."""
    as32 = thresholds.astype(np.float32)
    above = as32.astype(np.float64) > thresholds
    down = np.nextafter(as32, np.float32(-np.inf))
    return np.where(above, down, as32).astype(np.float64)


def align_thresholds_to_float32(pipeline: Pipeline) -> Pipeline:
    """Make tree split thresholds float32 values without changing any native prediction.

    scikit-learn keeps thresholds in float64 (HistGradientBoosting puts them midway between
    float32 bin edges); ONNX's TreeEnsemble rounds them to the *nearest* float32, which can
    land above an input value the native model sends right, so a row crosses the split (seen
    on scikit-learn's diabetes data: |Δ| 0.0087). For float32 inputs ``x <= t`` is exactly
    ``x <= floor32(t)``, so snapping each threshold down keeps the native model's decisions
    for every input and lets the ONNX export agree bit for bit. Returns the same pipeline.
    """
    model = pipeline.steps[-1][1]
    for predictors in getattr(model, "_predictors", None) or []:  # HistGradientBoosting
        for predictor in predictors:
            nodes = predictor.nodes
            nodes["num_threshold"] = _floor_float32(nodes["num_threshold"])
    for tree in getattr(model, "estimators_", None) or []:  # RandomForest
        inner = getattr(tree, "tree_", None)
        if inner is None:
            continue
        split = inner.children_left != -1
        thresholds = inner.threshold  # a view into the tree's node array
        thresholds[split] = _floor_float32(thresholds[split])
    return pipeline
