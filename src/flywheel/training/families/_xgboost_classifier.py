"""flywheel's XGBClassifier, kept apart from the family's declaration because defining it
imports XGBoost (the declaration must stay cheap to read).

skops dumps store the class's import path: keep it here. Models saved before the families
package existed name ``flywheel.training.features.EncodedXGBClassifier``, which
:mod:`flywheel.training.features` still resolves (lazily) to this class.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.preprocessing import LabelEncoder
from xgboost import XGBClassifier

__all__ = ["EncodedXGBClassifier"]


class EncodedXGBClassifier(XGBClassifier):  # type: ignore[misc]
    """XGBClassifier that takes any class labels (xgboost itself wants 0..k-1).

    ``classes_`` are the original labels, so ``predict`` and the ONNX ``label`` output give
    them back. xgboost's sklearn API has no such option, hence this thin subclass.
    """

    def fit(self, X: Any, y: Any, **kwargs: Any) -> EncodedXGBClassifier:
        encoder = LabelEncoder().fit(y)
        super().fit(X, encoder.transform(y), **kwargs)
        self.label_encoder_ = encoder
        return self

    @property
    def classes_(self) -> np.ndarray:
        if not hasattr(self, "label_encoder_"):  # inside xgboost's own fit: the codes
            return np.arange(self.n_classes_)
        return np.asarray(self.label_encoder_.classes_)

    def predict(self, X: Any, **kwargs: Any) -> np.ndarray:
        codes = np.asarray(super().predict(X, **kwargs)).astype(np.int64)
        return np.asarray(self.label_encoder_.inverse_transform(codes))
