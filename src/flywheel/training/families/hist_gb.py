"""``hist_gb``: scikit-learn's HistGradientBoostingClassifier / HistGradientBoostingRegressor."""

from __future__ import annotations

from typing import Any

from flywheel.training.families import Family, Task

__all__ = ["FAMILY"]


def make(task: Task, seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    if task == "classification":
        return HistGradientBoostingClassifier(random_state=seed)
    return HistGradientBoostingRegressor(random_state=seed)


FAMILY = Family(
    name="hist_gb",
    tasks=("classification", "regression"),
    make=make,
    class_weight=True,
)
