"""``random_forest``: scikit-learn's RandomForestClassifier / RandomForestRegressor."""

from __future__ import annotations

from typing import Any

from flywheel.training.families import N_JOBS, Family, Task

__all__ = ["FAMILY"]


def make(task: Task, seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    model = RandomForestClassifier if task == "classification" else RandomForestRegressor
    return model(random_state=seed, n_jobs=N_JOBS)


FAMILY = Family(
    name="random_forest",
    tasks=("classification", "regression"),
    make=make,
    class_weight=True,
)
