"""A model's input schema, shared by training and serving.

Imports neither scikit-learn nor onnxruntime (nor numpy): the serving core, the prediction
log and monitoring read it without the training stack. Training builds
:class:`FeatureSpec` s from a snapshot (:func:`flywheel.training.features.infer_feature_specs`);
serving builds an :class:`InputSchema` from the ONNX graph's inputs, in graph order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Literal

__all__ = ["FeatureKind", "FeatureSpec", "InputSchema"]

FeatureKind = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class FeatureSpec:
    """One model input: its column name and whether it is numeric or categorical."""

    name: str
    kind: FeatureKind


@dataclass(frozen=True, slots=True)
class InputSchema:
    """A model's inputs in ONNX order: names, kinds, and a name -> position index."""

    specs: tuple[FeatureSpec, ...]
    names: tuple[str, ...] = ()
    numeric: tuple[bool, ...] = ()
    values_of: Callable[[Mapping[str, Any]], tuple[Any, ...]] = field(
        init=False, repr=False, compare=False, default=tuple
    )
    kinds: tuple[tuple[bool, str], ...] = field(init=False, repr=False, compare=False, default=())
    numeric_of: Mapping[str, bool] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        names = tuple(s.name for s in self.specs)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "numeric", tuple(s.kind == "numeric" for s in self.specs))
        # a record's values in input order, as a tuple even for one feature
        getter = itemgetter(*names) if len(names) > 1 else _one(names)
        object.__setattr__(self, "values_of", getter)
        object.__setattr__(self, "kinds", tuple(zip(self.numeric, names, strict=True)))
        object.__setattr__(self, "numeric_of", dict(zip(names, self.numeric, strict=True)))


def _one(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    def values_of(record: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(record[n] for n in names)

    return values_of
