"""``params.yaml``: model family, hyperparameters, split, seed, CV folds, search space,
class weighting and the decision threshold.

Every key is documented in ``docs/training.md``; ``examples/params.yaml`` is a commented
example. Unknown keys are rejected so a typo (``hyperparms``) fails loudly instead of
training with the defaults.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from flywheel.errors import ConfigError, NotFound
from flywheel.training import families
from flywheel.training.features import (
    CLASS_WEIGHT_FAMILIES,
    CLASSIFICATION_FAMILIES,
    REGRESSION_FAMILIES,
    RatioFeature,
)
from flywheel.training.metric_names import METRIC_NAMES

__all__ = [
    "RESERVED_PARAM_NAMES",
    "CostMatrix",
    "SearchParams",
    "ThresholdParams",
    "TrainParams",
    "load_params",
]

log = logging.getLogger("flywheel.training")

# Names training logs as MLflow params itself; a hyperparameter may not shadow them.
RESERVED_PARAM_NAMES = frozenset(
    {
        "family",
        "task",
        "target",
        "seed",
        "test_size",
        "cv_folds",
        "search_trials",
        "search_metric",
        "train_rows",
        "holdout_rows",
        "n_features",
        "ratios",
        "drop_columns",
        "class_weight",
        "threshold",
        "threshold_objective",
        "threshold_source",
        "decision_threshold",
    }
)
_SPACE_TYPES = ("int", "float", "categorical")


def _check_dimension(name: str, dim: dict[str, Any]) -> None:
    """One search-space entry: ``{type: int|float, low, high, log?, step?}`` or
    ``{type: categorical, choices}``."""
    kind = dim.get("type")
    if kind not in _SPACE_TYPES:
        raise ValueError(f"search.space.{name}.type must be one of {_SPACE_TYPES}, got {kind!r}")
    allowed = (
        {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log", "step"}
    )
    extra = sorted(set(dim) - allowed)
    if extra:
        raise ValueError(
            f"search.space.{name} has unknown keys {extra}; allowed: {sorted(allowed)}"
        )
    if kind == "categorical":
        choices = dim.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(
                f"search.space.{name}.choices must be a non-empty list, got {choices!r}"
            )
        return
    low, high = dim.get("low"), dim.get("high")
    if not isinstance(low, int | float) or not isinstance(high, int | float) or low >= high:
        raise ValueError(
            f"search.space.{name} needs numbers low < high, got low={low!r} high={high!r}"
        )
    if dim.get("log") and low <= 0:
        raise ValueError(f"search.space.{name} with log: true needs low > 0, got {low!r}")


class SearchParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trials: int = Field(
        default=0, ge=0, description="Optuna trials; 0 trains the given hyperparameters."
    )
    metric: str | None = Field(
        default=None, description="CV metric to optimise (default: the primary metric)."
    )
    space: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="name -> {type: int|float|categorical, low, high, log, choices}",
    )
    timeout_s: float | None = Field(
        default=None, gt=0, description="Stop the search after this long."
    )

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str | None) -> str | None:
        if v is not None and v not in METRIC_NAMES:
            raise ValueError(f"search.metric must be one of {sorted(METRIC_NAMES)}, got {v!r}")
        return v

    @field_validator("space")
    @classmethod
    def _space(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, dim in v.items():
            _check_dimension(name, dim)
        return v


class CostMatrix(BaseModel):
    """What each outcome of a binary decision costs (``threshold.costs``); a gain is a
    negative cost. Only the differences ``fp - tn`` and ``fn - tp`` matter."""

    model_config = ConfigDict(extra="forbid")

    fp: float = Field(description="Cost of a false positive (a negative row labelled positive).")
    fn: float = Field(description="Cost of a false negative (a positive row labelled negative).")
    tp: float = Field(default=0.0, description="Cost of a true positive.")
    tn: float = Field(default=0.0, description="Cost of a true negative.")

    @model_validator(mode="after")
    def _errors_cost_more(self) -> CostMatrix:
        if not (self.fp > self.tn and self.fn > self.tp):
            raise ValueError(
                "threshold.costs must make each error cost more than the right answer "
                f"(fp > tn and fn > tp), got fp={self.fp} tn={self.tn} fn={self.fn} tp={self.tp}"
            )
        return self


ThresholdObjective = Literal["f1", "cost", "recall", "fixed"]
_OBJECTIVE_KEYS = {"cost": "costs", "recall": "min_recall", "fixed": "value"}


class ThresholdParams(BaseModel):
    """How a binary classifier's decision threshold is chosen (``threshold:`` in params.yaml).

    Chosen on validation data, never on the holdout: the out-of-fold CV predictions of the
    training part, or an inner split of it (``validation_size``) when CV is off.
    """

    model_config = ConfigDict(extra="forbid")

    objective: ThresholdObjective = Field(
        default="f1",
        description="f1: maximise F1; cost: minimise the expected cost of `costs`; recall: "
        "the highest precision with recall >= `min_recall`; fixed: use `value`.",
    )
    costs: CostMatrix | None = Field(default=None, description="For objective: cost.")
    min_recall: float | None = Field(default=None, description="For objective: recall.")
    value: float | None = Field(default=None, description="For objective: fixed.")
    validation_size: float = Field(
        default=0.2, description="Inner validation fraction of the training part when CV is off."
    )

    @model_validator(mode="before")
    @classmethod
    def _number_is_fixed(cls, data: Any) -> Any:
        """``threshold: 0.3`` is short for ``threshold: {objective: fixed, value: 0.3}``."""
        if isinstance(data, int | float) and not isinstance(data, bool):
            return {"objective": "fixed", "value": data}
        return data

    @field_validator("min_recall")
    @classmethod
    def _min_recall(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v <= 1:
            raise ValueError(f"threshold.min_recall must be > 0 and <= 1, got {v!r}")
        return v

    @field_validator("value")
    @classmethod
    def _value(cls, v: float | None) -> float | None:
        if v is not None and not 0 <= v <= 1:
            raise ValueError(f"threshold.value must be between 0 and 1, got {v!r}")
        return v

    @field_validator("validation_size")
    @classmethod
    def _validation_size(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"threshold.validation_size must be > 0 and < 1, got {v!r}")
        return v

    @model_validator(mode="after")
    def _keys_fit_objective(self) -> ThresholdParams:
        needed = _OBJECTIVE_KEYS.get(self.objective)
        if needed is not None and getattr(self, needed) is None:
            raise ValueError(
                f"threshold.{needed} is required with threshold.objective: {self.objective}"
            )
        stray = [
            k for k in _OBJECTIVE_KEYS.values() if k != needed and getattr(self, k) is not None
        ]
        if stray:
            raise ValueError(
                f"threshold.{stray[0]} is not used with threshold.objective: {self.objective}; "
                f"remove it or set the objective it belongs to"
            )
        return self


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    family: str = "hist_gb"
    task: Literal["classification", "regression"] | None = None  # inferred from the target
    target: str | None = None  # default: the snapshot's target
    hyperparams: dict[str, Any] = Field(default_factory=dict)
    test_size: float = Field(default=0.2, description="Holdout fraction, > 0 and < 1.")
    cv_folds: int = Field(default=5, ge=0)  # 0 or 1: no CV
    seed: int | None = None  # default: settings.seed
    drop_columns: list[str] = Field(default_factory=list)
    ratios: list[RatioFeature] = Field(default_factory=list)
    search: SearchParams = Field(default_factory=lambda: SearchParams())
    class_weight: Literal["balanced"] | None = None  # classification: reweight rare classes
    threshold: ThresholdParams = Field(default_factory=lambda: ThresholdParams())

    @field_validator("test_size")
    @classmethod
    def _test_size(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"test_size must be > 0 and < 1, got {v!r}")
        return v

    @field_validator("family")
    @classmethod
    def _family(cls, v: str) -> str:
        if not families.known(v):
            known = ", ".join(sorted(families.names()))
            raise ValueError(f"family must be one of {known}, got {v!r}")
        try:
            families.get(v)  # a registered family whose module cannot be read
        except ConfigError as exc:
            raise ValueError(exc.message) from exc
        return v

    @field_validator("hyperparams")
    @classmethod
    def _hyperparams(cls, v: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(set(v) & RESERVED_PARAM_NAMES)
        if clash:
            raise ValueError(
                f"hyperparams may not use the reserved names {clash}; set them at top level"
            )
        return v

    @field_validator("class_weight")
    @classmethod
    def _class_weight(cls, v: str | None, info: ValidationInfo) -> str | None:
        family, task = info.data.get("family"), info.data.get("task")
        if v is not None and task == "regression":
            raise ValueError("class_weight applies to classification only; remove it")
        if v is not None and family is not None and family not in CLASS_WEIGHT_FAMILIES:
            raise ValueError(
                f"class_weight is not supported by family {family!r}; use one of "
                f"{', '.join(CLASS_WEIGHT_FAMILIES)} (for xgboost on a binary target, "
                "hyperparams.scale_pos_weight does the same)"
            )
        return v

    @model_validator(mode="after")
    def _family_fits_task(self) -> TrainParams:
        allowed = CLASSIFICATION_FAMILIES if self.task == "classification" else REGRESSION_FAMILIES
        if self.task is not None and self.family not in allowed:
            raise ValueError(
                f"family {self.family!r} cannot do {self.task}; use one of {', '.join(allowed)}"
            )
        return self


def _error_key(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "params"


def _message(err: dict[str, Any]) -> str:
    """Pydantic's message in our words: the rule and the bad value."""
    key, msg = _error_key(err["loc"]), str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}' (check the spelling; every key is in docs/training.md)"
    if err["type"].startswith("value_error") or msg.startswith(key):
        return msg
    return f"{key}: {msg[:1].lower()}{msg[1:]}, got {err.get('input')!r}"


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise NotFound(
            f"Params file {str(path)!r} does not exist. Pass an existing params.yaml "
            "(see examples/params.yaml) or omit it to use the defaults.",
            path=str(path),
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"Params file {str(path)!r} is not valid YAML: {exc}. Fix the syntax.", path=str(path)
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Params file {str(path)!r} must be a mapping of keys, got {type(data).__name__}. "
            "Start it with e.g. 'family: hist_gb'.",
            path=str(path),
        )
    return data


def load_params(path: Path | None) -> TrainParams:
    """Read ``params.yaml``; ``None`` gives the defaults.

    Raises :class:`NotFound` for a missing file and :class:`ConfigError` naming the key and
    the rule for bad YAML or values.
    """
    if path is None:
        return TrainParams()
    path = Path(path)
    data = _read_yaml(path)
    try:
        params = TrainParams.model_validate(data)
    except ValidationError as exc:
        errors = [{"key": _error_key(e["loc"]), "msg": _message(dict(e))} for e in exc.errors()]
        first = errors[0]
        raise ConfigError(
            f"Bad params file {str(path)!r}: {first['msg']}. Fix '{first['key']}' in {path.name}.",
            key=first["key"],
            path=str(path),
            errors=errors,
        ) from exc
    log.debug("loaded params from %s: %s", path, params)
    return params
