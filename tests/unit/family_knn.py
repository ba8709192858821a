"""A model family declared outside flywheel, as another package would: k-nearest neighbours
(classification), on scaled inputs. skl2onnx converts KNeighborsClassifier itself; the ONNX
hook only counts its calls, so a test can see it runs once, before the first export."""

from __future__ import annotations

from typing import Any

from flywheel.training.families import Family, Task

HOOK_CALLS: list[str] = []


def make(task: Task, seed: int) -> Any:
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=15)  # deterministic: it takes no seed


def register_onnx() -> None:
    HOOK_CALLS.append("knn")


FAMILY = Family(
    name="knn",
    tasks=("classification",),
    make=make,
    scaled=True,
    trusted_prefixes=("sklearn.neighbors.",),
    register_onnx=register_onnx,
)
