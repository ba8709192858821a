"""``linear``: scikit-learn's Ridge on scaled inputs (regression)."""

from __future__ import annotations

from typing import Any

from flywheel.training.families import Family, Task

__all__ = ["FAMILY"]


def make(task: Task, seed: int) -> Any:
    from sklearn.linear_model import Ridge

    return Ridge(random_state=seed)


FAMILY = Family(name="linear", tasks=("regression",), make=make, scaled=True)
