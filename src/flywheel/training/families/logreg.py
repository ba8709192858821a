"""``logreg``: scikit-learn's LogisticRegression on scaled inputs (classification)."""

from __future__ import annotations

from typing import Any

from flywheel.training.families import Family, Task

__all__ = ["FAMILY"]


def make(task: Task, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000, random_state=seed)


FAMILY = Family(name="logreg", tasks=("classification",), make=make, scaled=True, class_weight=True)
