"""A rollout plan: which version, which strategy, which steps, which guardrails.

Written as YAML (``flywheel rollout start plan.yaml``) or built from flags
(``--challenger 3 --strategy canary``); the same pydantic model validates both, so a bad
plan gets one message naming the field and the rule. Example::

    challenger: "3"
    strategy: canary            # canary | shadow | ab | bluegreen
    steps: [5, 25, 50, 100]     # canary: the challenger's share of traffic per step, percent
    sticky: header:X-Customer-ID # request_id (default) | feature:NAME | header:NAME
    interval: 60s               # each step is judged after this long ...
    min_requests: 200           # ... and this many requests on each arm
    step_deadline: 2h           # undecided by then: inconclusive, paused (default: none, waits)
    guardrails:
      max_error_rate: 0.05      # challenger error rate <= champion's + 0.05
      max_p99_ratio: 1.5        # challenger p99 <= champion p99 x 1.5 + p99_slack_ms
      max_score_psi: 0.2        # prediction-score drift against the champion
      metric: accuracy          # with labels: accuracy | recall | precision | abs_error
      min_labels: 100           # labelled rows per arm before the metric counts
      hold_for_labels: false    # true: no step passes before the metric counts
    alpha: 0.05                 # the always-valid tests' level
    promote: auto               # auto | manual

Defaults per strategy: canary steps 5/25/50/100 and promotes itself; ``ab`` splits 50/50
and decides on ``guardrails.metric`` (needs labels); ``shadow`` mirrors every request to
the challenger and waits for ``rollout promote``; ``bluegreen`` loads the challenger warm at
0% and waits for ``rollout switch``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from flywheel.errors import DataError

__all__ = [
    "STRATEGIES",
    "STRATEGY_FIELDS",
    "Guardrails",
    "RolloutPlan",
    "load_plan",
    "parse_duration",
]

STRATEGIES = ("canary", "shadow", "ab", "bluegreen")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: str | float | int, field: str = "interval") -> float:
    """``30s``, ``5m``, ``1h``, ``250ms`` or plain seconds -> seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).strip())
        if match is None:
            raise ValueError(f"{field} must be a duration like 30s, 5m or 1h, got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"{field} must be >= 0, got {value!r}")
    return seconds


class Guardrails(BaseModel):
    """What a step must not break. Each check is skipped until it has the samples it needs;
    a breach rolls the rollout back at once, naming the check and by how much."""

    model_config = ConfigDict(extra="forbid")

    max_error_rate: float = Field(
        0.05,
        ge=0,
        le=1,
        description="The challenger's error rate may pass the champion's by at most this.",
    )
    max_error_rate_increase: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Breach when the always-valid interval of (challenger - champion) error "
        "rate lies wholly above this.",
    )
    max_p99_ratio: float = Field(1.5, gt=0, description="Challenger p99 <= champion p99 x this.")
    p99_slack_ms: float = Field(5.0, ge=0, description="... + this many milliseconds.")
    max_score_psi: float = Field(
        0.2, gt=0, description="PSI of the challenger's scores against the champion's."
    )
    min_rows_psi: int = Field(200, ge=10, description="Scored rows per arm before PSI counts.")
    metric: Literal["accuracy", "recall", "precision", "abs_error", "none"] = Field(
        "accuracy",
        description="The business metric, from late labels (classification: accuracy, recall "
        "= positives caught, precision; regression: abs_error); none: not checked.",
    )
    max_metric_drop: float = Field(
        0.0,
        ge=0,
        description="Breach when the always-valid interval says the challenger is worse by "
        "more than this.",
    )
    min_labels: int = Field(
        100, ge=1, description="Labelled rows per arm before the metric counts."
    )
    hold_for_labels: bool = Field(
        False,
        description="A step passes only once the metric counts (min_labels labelled rows on "
        "each arm since the rollout began): for labels that arrive late, so a canary cannot "
        "promote before the ground truth has had its say.",
    )


class RolloutPlan(BaseModel):
    """A rollout plan (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    challenger: str = Field(..., min_length=1, description="The version to roll out.")
    strategy: Literal["canary", "shadow", "ab", "bluegreen"] = "canary"
    model: str | None = Field(None, description="Registered model (default registry.model_name).")
    champion: str | None = Field(
        None,
        description="The version `champion` names now (filled in at start; another is refused).",
    )
    steps: list[float] | None = Field(
        None, description="canary: challenger share per step, percent, increasing, ending 100."
    )
    split: float = Field(50.0, gt=0, lt=100, description="ab: the challenger's share, percent.")
    mirror: float = Field(
        100.0, gt=0, le=100, description="shadow: the share of requests the challenger scores."
    )
    sticky: str = Field(
        "request_id",
        description="Routing key: request_id (the client's X-Request-ID, else the server's), "
        "feature:NAME (the first row's value; a NAME the versions do not take reaches "
        "them only through /invocations, and start warns) or header:NAME.",
    )
    interval: float = Field(60.0, description="Seconds (or 30s, 5m, 1h) each step is observed.")
    min_requests: int = Field(200, ge=1, description="Requests per arm before a step is judged.")
    step_deadline: float | None = Field(
        None,
        description="Seconds (or 30m, 2h) a step may stay neither passed nor failed: then it "
        "ends inconclusive and the rollout pauses at its weights (Argo Rollouts' Inconclusive). "
        "None (the default): a step waits as long as it takes.",
    )
    max_requests: int = Field(
        100_000, ge=1, description="ab: no decision by this many per arm: inconclusive, paused."
    )
    metric: Literal["accuracy", "recall", "precision", "abs_error", "error_rate", "latency"] = (
        Field("accuracy", description="ab: the metric the test decides on.")
    )
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Level of the always-valid tests.")
    srm_alpha: float = Field(0.001, gt=0, lt=0.5, description="Sample-ratio mismatch test level.")
    promote: Literal["auto", "manual"] | None = Field(
        None, description="auto: promote when the last step passes; manual: wait."
    )
    guardrails: Guardrails = Field(default_factory=Guardrails)

    @field_validator("interval", mode="before")
    @classmethod
    def _interval(cls, v: Any) -> float:
        return parse_duration(v, "interval")

    @field_validator("step_deadline", mode="before")
    @classmethod
    def _step_deadline(cls, v: Any, info: ValidationInfo) -> float | None:
        if v is None or v is False or (isinstance(v, str) and v.strip().lower() in ("none", "off")):
            return None  # (YAML reads a bare `off` as false)
        seconds = parse_duration(v, "step_deadline")
        if seconds <= 0:
            raise ValueError(f"step_deadline must be > 0 (or none), got {v!r}")
        interval = info.data.get("interval")  # absent when the interval itself was invalid
        if interval is not None and seconds < interval:
            raise ValueError(
                f"step_deadline ({seconds:g} s) must be at least the interval ({interval:g} s): "
                "no step can pass before its interval"
            )
        return seconds

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[float] | None, info: ValidationInfo) -> list[float] | None:
        if v is None:
            return v  # none given: the strategy's default (canary: 5, 25, 50, 100)
        strategy = info.data.get("strategy", "canary")
        if strategy != "canary":
            raise ValueError(f"steps apply to canary only (strategy {strategy})")
        if not v:  # ([] once became the default steps, silently)
            raise ValueError(
                "steps must list the challenger's share per step, ending at 100; got an "
                "empty list (leave steps out for the default 5, 25, 50, 100)"
            )
        if any(not 0 < s <= 100 for s in v) or v != sorted(set(v)):
            raise ValueError(f"steps must increase within (0, 100], got {v}")
        if v[-1] != 100:
            raise ValueError(f"steps must end at 100 (the challenger takes all), got {v}")
        return v

    @field_validator("sticky")
    @classmethod
    def _sticky(cls, v: str) -> str:
        if v == "request_id" or re.fullmatch(r"feature:\S.*", v):
            return v  # a feature's name as the model has it (spaces and all)
        if re.fullmatch(r"header:[A-Za-z0-9!#$%&'*+.^_`|~\-]+", v):  # an HTTP token
            return v
        raise ValueError(f"sticky must be request_id, feature:NAME or header:NAME, got {v!r}")

    @field_validator("challenger", "champion", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        return None if v is None else str(v)

    @model_validator(mode="after")
    def _defaults(self) -> RolloutPlan:
        if self.strategy == "canary":  # (given steps were checked by _steps, naming the field)
            self.steps = self.steps or [5.0, 25.0, 50.0, 100.0]
        if self.promote is None:
            self.promote = "auto" if self.strategy in ("canary", "ab") else "manual"
        return self

    # ------------------------------------------------------------------ derived
    def weight_at(self, step: int) -> float:
        """The challenger's answering share (percent) at ``step``; shadow answers 0%."""
        if self.strategy == "canary":
            assert self.steps is not None
            return self.steps[min(step, len(self.steps) - 1)]
        if self.strategy == "ab":
            return self.split
        return 0.0

    @property
    def last_step(self) -> int:
        return len(self.steps) - 1 if self.strategy == "canary" and self.steps else 0

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_plan(source: str | Path | dict[str, Any], where: str = "the plan") -> RolloutPlan:
    """A plan from a YAML file or a dict; DataError (exit 4) naming the field and the rule
    (and ``where`` the dict came from)."""
    data: Any = source
    if isinstance(source, str | Path):
        import yaml

        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise DataError(f"Rollout plan {where!r} does not exist.", field="plan")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise DataError(f"{where} is not valid YAML: {exc}", field="plan") from exc
    if not isinstance(data, dict):
        raise DataError(f"{where} must be a mapping of plan fields.", field="plan")
    if "steps" in data and data["steps"] is None:  # YAML's `steps:` or `steps: null`
        raise DataError(
            f"{where}: steps: steps must be a list of percents ending at 100, got null "
            "(leave steps out for the default 5, 25, 50, 100)",
            field="steps",
            rule="type",
        )
    try:
        plan = RolloutPlan.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "plan"
        raise DataError(
            f"{where}: {field}: {first['msg']}", field=field, errors=len(exc.errors())
        ) from exc
    _only_its_strategy(plan, data, where)
    return plan


# The fields that apply to one strategy only (docs/rollouts.md, "A plan"); the others apply
# to every strategy. ``steps`` on another strategy is refused by its validator too.
STRATEGY_FIELDS: dict[str, str] = {
    "steps": "canary",
    "split": "ab",
    "metric": "ab",
    "max_requests": "ab",
    "mirror": "shadow",
}
_HINTS = {"metric": " (the guardrails' label metric, every strategy's, is guardrails.metric)"}


def _only_its_strategy(plan: RolloutPlan, data: dict[str, Any], where: str) -> None:
    """DataError (exit 4) for a field the plan's writer gave that belongs to another
    strategy (a canary's ``split: 30`` started at 5%, silently). Judged on the fields as
    written (``data``), not the validated plan: a stored plan holds every field, defaults
    included, and is read back without this check."""
    for field in data:
        owner = STRATEGY_FIELDS.get(str(field))
        if owner is not None and owner != plan.strategy:
            raise DataError(
                f"{where}: {field}: {field} applies to {owner} only (strategy "
                f"{plan.strategy}): drop it from the plan{_HINTS.get(str(field), '')}.",
                field=str(field),
                rule="strategy",
            )
