"""One settings object for every entry point.

Precedence: explicit arguments, then environment variables (``FLYWHEEL_*``, nested with
``__``, e.g. ``FLYWHEEL_STORE__URL``), then the YAML file (``flywheel.yaml`` in the working
directory, or the path in ``FLYWHEEL_CONFIG``), then the defaults below. Every default is
embedded and local: a SQLite source, a local object store folder, MLflow on SQLite.
Production swaps URLs only (PostgreSQL, ``s3://``, an MLflow server).
"""

from __future__ import annotations

import getpass
import json
import os
import re
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from flywheel.errors import ConfigError

__all__ = [
    "ServingSettings",
    "Settings",
    "absolute_sqlite_url",
    "json_env_keys",
    "load_settings",
    "mask_url",
    "settings_file",
    "sqlalchemy_url",
]

_SQL_SCHEMES = ("sqlite://", "postgresql://", "postgresql+psycopg://", "postgres://")


class _KeyedValueError(ValueError):
    """A bad value found by a check that spans keys or sits on a section: ``key`` is the
    setting the message is about (the error's location would name only the section)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _check_duration(value: Any, key: str, *, positive: bool = False, units: str = "smhdw") -> Any:
    """``value`` if it is a duration (a whole number, then one of ``units``); else a
    ValueError that says what a duration looks like. Run before the type check, so that a
    bare number (``every: 1`` in YAML) gets this message too; other types pass through."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return value
    match = re.fullmatch(rf"(\d+)[{units}]", value)
    if match is None or (positive and int(match.group(1)) == 0):
        examples = ["30s", "15m", "1h", "1d", "2w"]
        shown = [e for e in examples if e[-1] in units]
        named = ", ".join(f"{u} ({_DURATION_UNITS[u]})" for u in units)
        longer = " longer than 0" if positive else ""
        raise ValueError(
            f"{key} must be a duration{longer} such as {', '.join(shown[:-1])} or {shown[-1]}: "
            f"a whole number, then one of {named}"
        )
    return value


def _check_sql_url(value: str, key: str) -> str:
    if not value.startswith(_SQL_SCHEMES):
        raise ValueError(
            f"{key} must be a sqlite:/// or postgresql:// URL, got {mask_url(value)!r}"
        )
    return value


class _Section(BaseModel):
    """A section of the settings: an unknown key is refused with its name (a misspelt
    ``retrain.cooldwn`` would otherwise leave the default in force, silently)."""

    model_config = ConfigDict(extra="forbid")


class SourceSettings(_Section):
    url: str | None = Field(
        None, description="SQL source database URL (sqlite:/// or postgresql://)."
    )
    dataset: str = Field("churn", description="Name of the dataset that snapshots belong to.")
    query: str | None = Field(
        None, description="SQL query to extract; overrides table + timestamp_column."
    )
    table: str = Field(
        "churn_features", description="Table or view to extract when no query is set."
    )
    timestamp_column: str | None = Field(
        "observed_at",
        description="Column for incremental extraction (rows newer than the last snapshot).",
    )
    key_columns: list[str] = Field(
        default_factory=lambda: ["customer_id", "observed_at"],
        description="Columns that identify a row (checked for uniqueness by the contract).",
    )
    target: str = Field("churned", description="Target (label) column.")
    batch_rows: int = Field(
        100_000, gt=0, description="Rows per streamed Arrow batch during ingest."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _check_sql_url(v, "source.url")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", v):
            raise ValueError(
                f"source.dataset must be letters, digits, '_', '.', '-' (max 64), got {v!r}"
            )
        return v


class StoreSettings(_Section):
    url: str | None = Field(None, description="Object store: a local folder or s3://bucket/prefix.")
    endpoint_url: str | None = Field(
        None, description="S3 API endpoint for MinIO, Ceph, R2 or a test server."
    )
    region: str | None = Field(None, description="S3 region.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and "://" in v and not v.startswith(("s3://", "file://", "memory://")):
            raise ValueError(
                f"store.url must be a local path or s3://bucket/prefix, got {mask_url(v)!r}"
            )
        return v


class TrackingSettings(_Section):
    uri: str | None = Field(
        None, description="MLflow tracking URI (sqlite:///..., http://host:port)."
    )
    artifact_location: str | None = Field(
        None, description="Artifact root for new experiments (local folder or s3://)."
    )
    experiment: str = Field("flywheel", description="MLflow experiment name.")


class TrainingSettings(_Section):
    params_file: Path | None = Field(None, description="Default params.yaml for `flywheel train`.")
    slice_columns: list[str] = Field(
        default_factory=lambda: ["contract_type", "region"],
        description="Columns whose values define evaluation slices (skipped when absent).",
    )
    optuna_storage: str | None = Field(
        None, description="Optuna storage URL (e.g. postgresql://...) to share trials."
    )


class GateSettings(_Section):
    min_metrics: dict[str, float] = Field(
        default_factory=lambda: {"roc_auc": 0.70, "r2": 0.10},
        description="Holdout metric floors (e.g. roc_auc, f1, precision, recall); a metric not "
        "produced for the task is not applicable; an unknown name is an error.",
    )
    max_metrics: dict[str, float] = Field(
        default_factory=dict, description="Holdout metric ceilings (e.g. log_loss, rmse)."
    )
    max_slice_gap: dict[str, float] = Field(
        default_factory=lambda: {"roc_auc": 0.25},
        description="Largest allowed gap of a metric between slices of one column.",
    )
    champion_margin: float = Field(
        0.01, ge=0, description="How much worse than the champion the primary metric may be."
    )

    @field_validator("min_metrics", "max_metrics", "max_slice_gap")
    @classmethod
    def _known_metrics(cls, v: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        # the names live in a module that imports nothing, so settings stay light to load
        from flywheel.training.metric_names import METRIC_NAMES

        unknown = sorted(set(v) - METRIC_NAMES)
        if unknown:
            raise ValueError(
                f"gates.{info.field_name} names unknown metric(s) {unknown}; "
                f"use {', '.join(sorted(METRIC_NAMES))}"
            )
        return v


class RegistrySettings(_Section):
    model_name: str = Field("churn", description="Registered model name.")
    require_approval: bool = Field(False, description="Promotions wait for `flywheel approve`.")
    audit_url: str | None = Field(
        None, description="Audit log database URL (sqlite:/// or postgresql://)."
    )
    parity_tolerance: float = Field(1e-4, gt=0, description="Max |ONNX - native| probability.")

    @field_validator("audit_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _check_sql_url(v, "registry.audit_url")


class ServingSettings(_Section):
    host: str = Field("127.0.0.1", description="Bind address (loopback unless told otherwise).")
    port: int = Field(8080, ge=0, le=65535, description="REST + WebSocket port.")
    grpc_port: int | None = Field(8081, ge=0, le=65535, description="gRPC port (unset: no gRPC).")
    max_batch_rows: int = Field(256, ge=1, description="Rows per micro-batch.")
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        description="Extra linger under concurrency (on a quiet server a lone request never "
        "waits).",
    )
    gather_turns: int = Field(
        2,
        ge=0,
        description="Under concurrency, event-loop turns a batch waits for requests already "
        "read (0: none; on a quiet server a lone request never waits).",
    )
    max_rows_per_request: int = Field(10_000, ge=1, description="More rows answer 422.")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1, description="Larger bodies answer 413.")
    poll_interval_s: float = Field(
        30.0, ge=0, description="Registry polling for alias moves (0: off)."
    )
    ort_threads: int = Field(1, ge=1, description="ONNX Runtime intra-op threads per model.")
    api_key: SecretStr | None = Field(
        None, description="If set, prediction routes need it (X-API-Key or Bearer)."
    )
    labels_key: SecretStr | None = Field(
        None,
        description="Key of POST /v1/feedback (X-API-Key or Bearer) whenever any auth is on "
        "(api_key or admin_token); prediction keys are refused there.",
    )
    access_log: bool = Field(False, description="uvicorn's per-request access log (costly).")
    log_json: bool = Field(True, description="Structured JSON log lines with request ids.")
    prediction_log_url: str | None = Field(
        None,
        description="Prediction log database (sqlite:/// WAL or postgresql://); default under home.",
    )
    prediction_log_on_full: Literal["block", "drop"] = Field(
        "block", description="When the log falls behind: backpressure (block) or counted drops."
    )
    prediction_log_durability: Literal["async", "commit"] = Field(
        "async",
        description="async: answer, then log the row ~0.1 s later (kill -9 loses that window); "
        "commit: an answer waits for its row's group commit.",
    )
    mqtt_url: str | None = Field(
        None, description="MQTT broker URL (mqtt://host:1883); unset: MQTT off."
    )
    mqtt_request_topic: str = Field("flywheel/predict/#", description="MQTT request topic filter.")
    mqtt_error_topic: str = Field(
        "flywheel/errors", description="MQTT topic for malformed requests."
    )
    mqtt_reply_prefix: str = Field(
        "flywheel/reply", description="Reply topic prefix for MQTT 3.1.1 clients."
    )
    mqtt_client_id: str = Field(
        "flywheel-serving", description="MQTT client id (unique per replica)."
    )
    fronts: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="More front doors by name, each with its own settings block "
        "(flywheel.serving.fronts); e.g. {line: {factory: 'pkg.mod:front', port: 9000}}.",
    )

    @field_validator("prediction_log_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _check_sql_url(v, "serving.prediction_log_url")

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("mqtt://", "mqtts://")):
            raise ValueError(
                f"serving.mqtt_url must be mqtt://host:port or mqtts://..., got {mask_url(v)!r}"
            )
        return v


class MonitoringSettings(_Section):
    url: str | None = Field(
        None, description="Monitor state database (windows, decisions); default under home."
    )
    every: str = Field("1d", description="Window length over the prediction log (e.g. 1d, 6h, 7d).")
    window_rows: int | None = Field(
        None, ge=1, description="Windows of this many rows instead of by time (unset: by time)."
    )
    min_rows: int = Field(200, ge=1, description="Fewer rows: 'insufficient data', no verdict.")
    reference: str = Field(
        "holdout",
        description="What windows are compared with: holdout (the version's evaluation rows), "
        "snapshot:<id>, or rolling:<N>d (the last N days of served traffic).",
        pattern=r"^(holdout|snapshot:\S+|rolling:\d+d)$",
    )
    w1_threshold: float = Field(0.1, gt=0, description="Numeric effect threshold (W1 / sigma).")
    js_threshold: float = Field(0.1, gt=0, le=1, description="Categorical effect threshold (JS).")
    fdr: float = Field(0.05, gt=0, lt=1, description="Benjamini-Hochberg level across features.")
    null_draws: int = Field(1000, ge=100, description="Null draws per feature and size bucket.")
    drift_share: float = Field(
        0.1, gt=0, le=1, description="Importance-weighted share of drifted features for drift."
    )
    persist_k: int = Field(2, ge=1, description="Alarm when k of the last m windows say so.")
    persist_m: int = Field(3, ge=1, description="... of the last m windows.")
    cooldown_windows: int = Field(
        1, ge=0, description="Windows after a version starts that give verdicts but no alarm."
    )
    min_label_completeness: float = Field(
        0.5, ge=0, le=1, description="Realised metrics only above this share of labelled rows."
    )
    max_drop: float = Field(
        0.05,
        ge=0,
        description="Performance breach: worse than the reference by more than this "
        "(absolute for scores, relative for errors).",
    )
    estimate_metric: str | None = Field(
        None, description="Estimated metric that decides (default f1 binary, accuracy multiclass)."
    )
    label_horizon_windows: int = Field(
        30, ge=0, description="monitor run re-reads this many recent windows for late labels."
    )
    webhook_url: str | None = Field(None, description="POST a window's alarm here as JSON.")
    webhook_token: SecretStr | None = Field(None, description="Bearer token for the webhook.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _check_sql_url(v, "monitoring.url")

    @field_validator("every", mode="before")
    @classmethod
    def _every(cls, v: Any) -> Any:
        return _check_duration(v, "monitoring.every", positive=True)

    @model_validator(mode="after")
    def _persistence(self) -> MonitoringSettings:
        if self.persist_k > self.persist_m:
            raise _KeyedValueError(
                "monitoring.persist_k",
                f"monitoring.persist_k ({self.persist_k}) is larger than monitoring.persist_m "
                f"({self.persist_m}): an alarm needs k of the last m windows, so it could never "
                "ring; set persist_k to at most persist_m",
            )
        return self


class RolloutSettings(_Section):
    poll_s: float = Field(
        1.0,
        gt=0,
        description="How often each server reads the rollout state, writes its counts and "
        "judges the step (seconds).",
    )
    heal: bool = Field(
        True,
        description="Roll a newly promoted champion back by itself on a breach (the heal_* "
        "settings; docs/rollouts.md#self-healing).",
    )
    heal_watch_s: float = Field(
        3600.0, gt=0, description="A champion is watched this long after its promotion."
    )
    heal_window_s: float = Field(60.0, gt=0, description="Each health check's window (seconds).")
    heal_min_requests: int = Field(100, ge=1, description="Requests in a window before judging.")
    heal_max_error_rate: float = Field(
        0.05, gt=0, le=1, description="A champion failing more than this share is rolled back."
    )
    heal_max_p99_ms: float | None = Field(
        None, gt=0, description="A champion slower than this p99 is rolled back (unset: off)."
    )
    heal_alpha: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description="Level of each window's test: a breach counts only when the window's "
        "errors (or answers slower than heal_max_p99_ms) are more than the limit allows "
        "beyond chance.",
    )


class RetrainSettings(_Section):
    """When to retrain and what a retrain does (docs/continuous-training.md). Every time
    here is on the data's clock: the simulation's in a replay, the wall clock in production."""

    schedule: str | None = Field(
        None,
        description="Cron schedule (minute hour day month weekday, UTC) for a retrain, e.g. "
        "'0 3 * * 1' (unset: none).",
    )
    on_drift: bool = Field(
        True,
        description="Retrain on the monitor's alarm for drift (persistent, weighted by "
        "feature importance).",
    )
    on_prediction_drift: bool = Field(
        True, description="Retrain on the monitor's alarm for prediction (score) drift."
    )
    on_performance: bool = Field(
        True,
        description="Retrain when realised (or, before labels, estimated) performance falls "
        "below the reference by more than monitoring.max_drop.",
    )
    min_performance: float | None = Field(
        None, description="Also retrain when the primary metric falls below this value."
    )
    new_labels: int | None = Field(
        None,
        ge=1,
        description="Retrain when this many labelled rows arrived since the last "
        "retrain (unset: off).",
    )
    cooldown: str = Field("30d", description="No retrain within this after the last one.")
    budget: int = Field(4, ge=1, description="At most this many retrains per budget_period.")
    budget_period: str = Field("90d", description="The budget's period.")
    trials: int = Field(
        0,
        ge=0,
        description="0: retrain with the champion's parameters; N: a bounded search "
        "of N Optuna trials.",
    )
    rollout: Literal["canary", "shadow", "none"] = Field(
        "canary", description="How a registered challenger goes out (none: register only)."
    )
    rollout_plan: Path | None = Field(
        None, description="A rollout plan YAML for the challenger (overrides the default plan)."
    )
    window: str | None = Field(
        None,
        description="Train a retrain (and hold out) only on the rows of this long before the "
        "snapshot's newest row, by source.timestamp_column, e.g. '120d' (unset: every row).",
    )
    check_every: str = Field(
        "1h",
        description="How often `flywheel worker` runs the monitor and checks the triggers.",
    )
    retries: int = Field(3, ge=0, description="Retries of a step on a transient failure.")
    retry_backoff_s: float = Field(
        1.0, ge=0, description="First retry's wait; doubles each retry (seconds)."
    )

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str | None) -> str | None:
        if not v:  # unset (or empty): no schedule
            return v
        from flywheel.pipelines.cron import parse  # imports nothing heavy

        # a ConfigError naming the key and the broken rule, raised here rather than on each
        # of the worker's ticks; pydantic passes it through (load_settings adds the fix)
        parse(v)
        return v

    @field_validator("cooldown", "budget_period", mode="before")
    @classmethod
    def _duration(cls, v: Any, info: ValidationInfo) -> Any:
        return _check_duration(v, f"retrain.{info.field_name}")

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, v: Any) -> Any:
        return _check_duration(v, "retrain.window", positive=True)

    @field_validator("check_every", mode="before")
    @classmethod
    def _check_every(cls, v: Any) -> Any:
        # read by `flywheel worker` as its --every default, which takes no weeks
        return _check_duration(v, "retrain.check_every", positive=True, units="smhd")


class Settings(BaseSettings):
    """Effective configuration. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="FLYWHEEL_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    home: Path = Field(Path(".flywheel"), description="Folder for every embedded default.")
    seed: int = Field(42, description="Seed for simulation, splits and models.")
    user: str = Field(default_factory=getpass.getuser, description="Who is acting (audit log).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="Log level of flywheel's loggers (INFO shows each step's details)."
    )
    admin_token: SecretStr | None = Field(None, description="Bearer token for admin actions.")
    source: SourceSettings = Field(default_factory=SourceSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    gates: GateSettings = Field(default_factory=GateSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if isinstance(env_settings, EnvSettingsSource):
            _check_json_env(env_settings)
        yaml_file = Path(settings_file())
        named = os.environ.get("FLYWHEEL_CONFIG")
        if named and not yaml_file.expanduser().exists():  # as `--config` refuses it
            raise ConfigError(
                f"Bad configuration: FLYWHEEL_CONFIG names {named!r}, which does not exist. "
                "Fix: point FLYWHEEL_CONFIG (or --config) at an existing settings file, set it "
                "to /dev/null to read none, or unset it to read ./flywheel.yaml.",
                key="FLYWHEEL_CONFIG",
                value=named,
            )
        if named and yaml_file.expanduser().is_dir():
            raise ConfigError(
                f"Bad configuration: FLYWHEEL_CONFIG names {named!r}, which is a folder. "
                "Fix: point FLYWHEEL_CONFIG (or --config) at a settings file in it.",
                key="FLYWHEEL_CONFIG",
                value=named,
            )
        return (init_settings, env_settings, _YamlFile(settings_cls, yaml_file))

    @field_validator("home")
    @classmethod
    def _home(cls, v: Path) -> Path:
        home = v.expanduser().resolve()
        if home.exists() and not home.is_dir():
            raise ValueError(f"home must be a folder, but {str(home)!r} is a file")
        return home

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        # Paths are resolved here, once: every later join (MLflow's downloads, the model
        # cache, the crash log) sees absolute paths, whatever the current folder becomes.
        home = self.home  # absolute: see _home
        if self.store.url is not None and "://" not in self.store.url:
            self.store.url = str(Path(self.store.url).expanduser().resolve())
        for section, key in _SQL_URL_FIELDS:
            owner = getattr(self, section)
            setattr(owner, key, absolute_sqlite_url(getattr(owner, key)))
        art = self.tracking.artifact_location
        if art is not None and "://" not in art:
            self.tracking.artifact_location = str(Path(art).expanduser().resolve())
        if self.retrain.rollout_plan is not None:
            self.retrain.rollout_plan = self.retrain.rollout_plan.expanduser().resolve()
        if self.training.params_file is not None:
            self.training.params_file = self.training.params_file.expanduser().resolve()
        if self.source.url is None:
            self.source.url = self.embedded_source_url
        if self.store.url is None:
            self.store.url = str(home / "store")
        if self.tracking.uri is None:
            self.tracking.uri = f"sqlite:///{(home / 'mlflow.db').as_posix()}"
        if self.tracking.artifact_location is None and not self.tracking.uri.startswith("http"):
            self.tracking.artifact_location = str(home / "mlartifacts")
        if self.registry.audit_url is None:
            self.registry.audit_url = f"sqlite:///{(home / 'audit.db').as_posix()}"
        if self.serving.prediction_log_url is None:
            self.serving.prediction_log_url = f"sqlite:///{(home / 'predictions.db').as_posix()}"
        if self.monitoring.url is None:
            self.monitoring.url = f"sqlite:///{(home / 'monitoring.db').as_posix()}"
        return self

    @property
    def embedded_source_url(self) -> str:
        """``source.url``'s default: the SQLite database `flywheel simulate` writes."""
        return f"sqlite:///{(self.home / 'source.db').as_posix()}"

    @property
    def contracts_dir(self) -> Path:
        """Where inferred data contracts (YAML, user-editable) live."""
        return self.home / "contracts"

    def show(self) -> dict[str, Any]:
        """The effective configuration with secrets masked."""
        return _mask(self.model_dump(mode="json"))


_SECRET_KEYS = re.compile(r"(token|secret|password|passwd|api_key|access_key|labels_key)", re.I)


def settings_file() -> str:
    """The settings file's name as the user gave it: ``$FLYWHEEL_CONFIG`` (which
    ``flywheel --config FILE`` sets), else ``flywheel.yaml`` in the current folder."""
    return os.environ.get("FLYWHEEL_CONFIG") or "flywheel.yaml"


def _fix_in(key: str) -> str:
    """Where to fix ``key``: the settings file as named, and its variable."""
    where = settings_file()
    return _env_name(key) if where == os.devnull else f"it in {where} or {_env_name(key)}"


def _file_or_one() -> str:
    """The settings file as named; "a settings file" where FLYWHEEL_CONFIG is /dev/null."""
    where = settings_file()
    return "a settings file" if where == os.devnull else where


def _env_name(key: str) -> str:
    """``retrain.cooldown`` → ``FLYWHEEL_RETRAIN__COOLDOWN``."""
    return "FLYWHEEL_" + key.upper().replace(".", "__")


def _json_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    """``(key, field or section model)`` of every setting whose environment variable
    pydantic-settings reads as JSON: every section (``FLYWHEEL_SERVING='{"port": 8080}'``)
    and every list or mapping setting."""
    found: list[tuple[str, Any]] = []
    for name, field in model.model_fields.items():
        key, ann = f"{prefix}{name}", field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            found.append((key, ann))
            found += _json_fields(ann, f"{key}.")
        elif getattr(ann, "__origin__", None) in (list, dict):
            found.append((key, field))
    return found


@cache
def json_env_keys() -> tuple[str, ...]:
    """The settings whose environment variable holds JSON (a section, a list, a mapping)."""
    return tuple(key for key, _ in _json_fields(Settings))


def _json_example(key: str) -> str:
    """A value of ``key``'s variable, for the error message: its default, or a made-up one
    where the default is empty (only built when a variable is refused)."""
    if key in _JSON_EXAMPLES:
        return _JSON_EXAMPLES[key]
    target = dict(_json_fields(Settings))[key]
    if isinstance(target, type) and issubclass(target, BaseModel):  # a section: its first
        first, sub = next(iter(target.model_fields.items()))
        value: Any = {first: sub.get_default(call_default_factory=True)}
    else:
        value = target.get_default(call_default_factory=True)
    return json.dumps(value, default=str)


# examples for the JSON settings whose default is empty
_JSON_EXAMPLES = {
    "gates.max_metrics": '{"log_loss": 0.5}',
    "serving.fronts": '{"line": {"factory": "pkg.mod:front", "port": 9000}}',
}


def _check_json_env(env: EnvSettingsSource) -> None:
    """A list, mapping or section given in an environment variable must be JSON: say so,
    naming the variable (pydantic-settings raises a bare SettingsError naming the section)."""
    for key in json_env_keys():
        name = _env_name(key)
        value = env.env_vars.get(name if env.case_sensitive else name.lower())
        if value is None:
            continue
        try:
            json.loads(value)
        except ValueError:
            # only a list's value is shown: a section or a mapping (serving.fronts' arguments)
            # may hold a secret
            listed = getattr(dict(_json_fields(Settings))[key], "annotation", None)
            shown = getattr(listed, "__origin__", None) is list
            got = f" (got {mask_url(value)[:80]!r})" if shown else ""
            raise ConfigError(
                f"Bad configuration for '{key}': {name} must be JSON, e.g. "
                f"{name}='{_json_example(key)}'{got}: lists, mappings and whole sections are "
                f"JSON in environment variables. Fix the variable, or set '{key}' in "
                f"{_file_or_one()} instead.",
                key=key,
                variable=name,
            ) from None


class _BadSettingsFile(Exception):
    """The settings file cannot be read as a mapping of settings (``message`` says why)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """``line 2, column 1: expected ',' or ']' ... (while parsing ... at line 1)``."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(exc).split())
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, where = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and where is not None:
        text += f" ({context} at line {where.line + 1})"
    return text


class _YamlFile(YamlConfigSettingsSource):
    """``flywheel.yaml``, which must hold a mapping of settings: malformed YAML, a list, say,
    or an unreadable file is refused as a bad setting (in :func:`load_settings`)."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except yaml.YAMLError as exc:
            raise _BadSettingsFile(
                f"{file_path} is not a YAML mapping of settings: it is not valid YAML, at "
                f"{_yaml_problem(exc)}"
            ) from exc
        except UnicodeDecodeError as exc:
            raise _BadSettingsFile(f"{file_path} is not YAML: it is not UTF-8 text") from exc
        except OSError as exc:
            raise _BadSettingsFile(f"{file_path} cannot be read: {exc.strerror or exc}") from exc
        if not isinstance(data, dict):
            raise _BadSettingsFile(
                f"{file_path} is not a YAML mapping of settings: it holds a "
                f"{type(data).__name__}, not a mapping of settings (key: value)"
            )
        for key in SECRET_KEYS:  # the file goes into the repo; a secret must not
            section, _, name = key.rpartition(".")
            owner = data.get(section) if section else data
            if isinstance(owner, dict) and owner.get(name) is not None:
                raise _SecretInFile(key)
        return data


# the settings that are secrets: read from the environment only (FLYWHEEL_<KEY>, `__` for
# the dot), never from flywheel.yaml, which is committed with the project
SECRET_KEYS = ("admin_token", "serving.api_key", "serving.labels_key", "monitoring.webhook_token")


class _SecretInFile(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def mask_url(url: str) -> str:
    """Hide the password in ``scheme://user:password@host``."""
    return re.sub(r"(://[^:/@]+):[^@/]+@", r"\1:***@", url)


def sqlalchemy_url(url: str) -> str:
    """Our URLs say ``postgresql://``; SQLAlchemy needs the psycopg 3 driver named."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def _mask(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _mask(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, key) for v in value]
    if isinstance(value, str):
        return "***" if _SECRET_KEYS.search(key) and value else mask_url(value)
    if value is not None and _SECRET_KEYS.search(key):
        return "***"
    return value


_SQL_URL_FIELDS = (
    ("source", "url"),
    ("tracking", "uri"),
    ("registry", "audit_url"),
    ("serving", "prediction_log_url"),
    ("monitoring", "url"),
)


def absolute_sqlite_url(url: str | None) -> str | None:
    """``sqlite:///relative.db`` → ``sqlite:////abs/relative.db`` (other URLs unchanged)."""
    if url is None or not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return url
    path, _, query = url.removeprefix("sqlite:///").partition("?")
    absolute = Path(path).expanduser().resolve().as_posix()
    return f"sqlite:///{absolute}" + (f"?{query}" if query else "")


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation errors into a :class:`ConfigError` naming the key."""
    try:
        return Settings(**overrides)
    except ConfigError as exc:  # raised by a check of its own (retrain.schedule's parser)
        key = exc.details.get("key")
        if not isinstance(key, str) or exc.message.startswith("Bad configuration"):
            raise
        raise ConfigError(
            f"Bad configuration for '{key}': {exc.message.rstrip('.')}. Fix {_fix_in(key)}.",
            **exc.details,
        ) from exc
    except _SecretInFile as exc:
        raise ConfigError(
            f"Bad configuration for '{exc.key}': it is a secret, and secrets are read from the "
            f"environment only, never from {settings_file()} (a file that goes into the "
            f"repository). Remove it there and set {_env_name(exc.key)}.",
            key=exc.key,
        ) from None
    except _BadSettingsFile as exc:  # not a mapping of settings: a bad setting, not a bug
        raise ConfigError(
            f"Bad configuration: {exc.message}. Fix the file.",
            key="settings",
            file=settings_file(),
        ) from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "settings"
        cause = (first.get("ctx") or {}).get("error")
        if isinstance(cause, _KeyedValueError):
            key = cause.key
        msg = first["msg"].removeprefix("Value error, ").rstrip(".")
        if first["type"] == "extra_forbidden":
            msg = "there is no such setting (a misspelt key?); docs/configuration.md lists them"
        value = first.get("input")
        secret = _SECRET_KEYS.search(key) is not None
        if (
            isinstance(value, str | int | float)
            and not secret
            and first["type"] != "extra_forbidden"
        ):
            shown = repr(
                str(mask_url(value) if isinstance(value, str) and "://" in value else value)[:80]
            )
            if "got " not in msg and shown not in msg:
                msg += f" (got {shown})"
        fix = _fix_in(key) if key != "settings" else f"it in {settings_file()}"
        raise ConfigError(
            f"Bad configuration for '{key}': {msg}. Fix {fix}.",
            key=key,
            errors=[{"key": ".".join(map(str, e["loc"])), "msg": e["msg"]} for e in exc.errors()],
        ) from exc
