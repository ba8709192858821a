"""The decision threshold of a binary classifier: chosen on validation data, then used
wherever labels are made.

A binary classifier labels a row positive when its positive-class probability is ``>=`` the
threshold. 0.5 (what ``argmax`` amounts to) is rarely the right cut for an imbalanced target:
on the churn demo (about 4% positives) it labels almost nobody a churner (F1 0.06). Training
chooses the threshold on validation rows — the out-of-fold CV predictions of the training
part, or an inner split of it when CV is off; never the holdout, whose metrics must stay an
honest estimate — by one of the objectives of ``threshold:`` in ``params.yaml``:

- ``f1``: maximise F1 of the positive class (the default);
- ``cost``: minimise the expected cost of a cost matrix (``fp``, ``fn``, ``tp``, ``tn``);
- ``recall``: the highest precision among thresholds whose recall is ``>= min_recall``;
- ``fixed``: a given value.

Every distinct validation probability is a candidate cut; the threshold returned is the
midpoint between the chosen cut and the next lower probability (so it labels the validation
rows exactly as evaluated), rounded to float32, the precision ONNX Runtime compares in.

Why not scikit-learn's ``TunedThresholdClassifierCV``: it refits the pipeline on its own
folds (training already has out-of-fold predictions), and it has no "precision at a minimum
recall" objective. ``FixedThresholdClassifier`` is used where it fits: the MLflow copy of the
pipeline is wrapped in it, so ``mlflow.sklearn``/``pyfunc`` users get the same labels
(:mod:`flywheel.training.train`); the ONNX graph gets the threshold by graph surgery
(:mod:`flywheel.registry.onnx_export`), as skl2onnx has no converter for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flywheel.training.params import ThresholdParams

__all__ = ["ThresholdChoice", "apply_threshold", "choose_threshold"]

log = logging.getLogger("flywheel.training")


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen threshold and the evidence for it."""

    value: float
    objective: str  # f1 | cost | recall | fixed
    source: str  # cv_out_of_fold | validation_split | fixed | default
    rows: int = 0  # validation rows it was chosen on
    validation: dict[str, float] = field(default_factory=dict)  # f1/precision/recall there
    note: str | None = None  # why the default 0.5 was kept, when it was

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "objective": self.objective,
            "source": self.source,
            "rows": self.rows,
            "validation": dict(self.validation),
            "note": self.note,
        }


def apply_threshold(proba: np.ndarray, threshold: float) -> np.ndarray:
    """Class indices ``0``/``1`` of binary probabilities ``[n, 2]``: ``p1 >= threshold``."""
    return (np.asarray(proba)[:, 1] >= threshold).astype("int64")


@dataclass(frozen=True)
class _Cuts:
    """Confusion counts when every row with ``p >= cut`` is labelled positive, per cut,
    plus the cut above every probability (nobody positive) as the first entry."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    positives: int
    negatives: int

    @property
    def fn(self) -> np.ndarray:
        return self.positives - self.tp

    @property
    def tn(self) -> np.ndarray:
        return self.negatives - self.fp


def _cuts(y: np.ndarray, p: np.ndarray) -> _Cuts:
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ps) != 0), len(ps) - 1]  # end of each distinct value
    tp = np.cumsum(ys)[last]
    fp = last + 1 - tp
    values = ps[last]
    lower = np.r_[values[1:], 0.0]  # the next lower distinct probability (0 after the last)
    top = values[0]
    thresholds = np.r_[(top + 1.0) / 2 if top < 1 else np.nextafter(1.0, 2.0), (values + lower) / 2]
    return _Cuts(
        thresholds=thresholds,
        tp=np.r_[0, tp],
        fp=np.r_[0, fp],
        positives=int(y.sum()),
        negatives=int(len(y) - y.sum()),
    )


def _ratios(c: _Cuts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 per cut (0 where undefined)."""
    called = c.tp + c.fp
    precision = np.divide(c.tp, called, out=np.zeros(len(called)), where=called > 0)
    recall = c.tp / max(c.positives, 1)
    denominator = 2 * c.tp + c.fp + c.fn
    f1 = np.divide(2 * c.tp, denominator, out=np.zeros(len(called)), where=denominator > 0)
    return precision, recall, f1


def _best(c: _Cuts, params: ThresholdParams) -> int:
    precision, recall, f1 = _ratios(c)
    if params.objective == "f1":
        return int(np.argmax(f1))
    if params.objective == "cost":
        assert params.costs is not None  # ThresholdParams requires it for this objective
        m = params.costs
        cost = m.tp * c.tp + m.fp * c.fp + m.fn * c.fn + m.tn * c.tn
        return int(np.argmin(cost))
    assert params.min_recall is not None  # objective "recall"
    feasible = np.flatnonzero(recall >= params.min_recall - 1e-12)  # the lowest cut reaches 1
    ranked = np.lexsort((recall[feasible], precision[feasible]))  # precision, then recall
    return int(feasible[ranked[-1]])


def _validation_metrics(c: _Cuts, i: int, params: ThresholdParams) -> dict[str, float]:
    precision, recall, f1 = _ratios(c)
    out = {"f1": float(f1[i]), "precision": float(precision[i]), "recall": float(recall[i])}
    if params.costs is not None:
        m = params.costs
        total = m.tp * c.tp[i] + m.fp * c.fp[i] + m.fn * c.fn[i] + m.tn * c.tn[i]
        out["cost_per_row"] = float(total / (c.positives + c.negatives))
    return out


def choose_threshold(
    y: np.ndarray, p_positive: np.ndarray, params: ThresholdParams, *, source: str
) -> ThresholdChoice:
    """The threshold ``params`` asks for on validation labels ``y`` (0/1) and positive-class
    probabilities ``p_positive``; ``source`` says where those rows came from.

    A fixed objective returns its value. Validation rows of a single class cannot choose a
    threshold: the default 0.5 is kept and ``note`` says why.
    """
    y = np.asarray(y).astype("int64")
    p = np.asarray(p_positive, dtype="float64")
    if params.objective == "fixed":
        assert params.value is not None  # ThresholdParams requires it for this objective
        return ThresholdChoice(float(np.float32(params.value)), "fixed", "fixed")
    c = _cuts(y, p)
    if c.positives == 0 or c.negatives == 0:
        note = f"the {len(y)} validation rows hold a single class; kept 0.5"
        log.warning("decision threshold not tuned: %s", note)
        return ThresholdChoice(0.5, params.objective, "default", len(y), note=note)
    i = _best(c, params)
    value = float(np.float32(c.thresholds[i]))
    choice = ThresholdChoice(
        value, params.objective, source, len(y), _validation_metrics(c, i, params)
    )
    log.info("decision threshold %.4f (%s on %d %s rows)", value, params.objective, len(y), source)
    return choice
