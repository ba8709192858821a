"""Serving knobs. A plain dataclass until ``Settings`` grows a ``serving`` block (proposed in
docs/serving.md); :meth:`ServingConfig.from_settings` is the one place that maps them."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from flywheel.errors import ConfigError

if TYPE_CHECKING:
    from flywheel.config import Settings

__all__ = ["ServedModel", "ServingConfig"]


@dataclass(frozen=True)
class ServedModel:
    """A model the server answers for: ``name`` (in URLs) follows ``ref`` (alias or version)
    of ``registered_name`` (defaults to ``name``)."""

    name: str
    ref: str = "champion"
    registered_name: str | None = None


@dataclass(frozen=True)
class ServingConfig:
    host: str = "127.0.0.1"  # bind address; loopback unless told otherwise
    port: int = 8080
    workers: int = 1  # each worker process loads its own copy of every model
    models: tuple[ServedModel, ...] = ()  # empty: settings.registry.model_name @ champion
    max_batch_rows: int = 256  # rows per micro-batch
    max_wait_ms: float = 0.0  # extra linger under concurrency; a quiet server never lingers
    gather_turns: int = 2  # under concurrency, loop turns a flush waits (0: next turn)
    inline_max_rows: int = 1024  # bigger batches run in a worker thread
    max_rows_per_request: int = 10_000  # more -> 422 too_many_rows
    max_body_bytes: int = 16 * 1024 * 1024  # more -> 413 payload_too_large
    poll_interval_s: float = 30.0  # registry polling for alias moves; 0 turns it off
    ort_threads: int = 1  # ONNX Runtime intra-op threads per model
    api_key: str | None = field(default=None, repr=False)  # prediction routes need it if set
    admin_token: str | None = field(default=None, repr=False)  # admin routes; none: disabled
    log_json: bool = True  # JSON log lines (entry points install the formatter)
    access_log: bool = False  # uvicorn's per-request log line (costly at high rates)

    def __post_init__(self) -> None:
        for name in (
            "port",
            "workers",
            "max_batch_rows",
            "inline_max_rows",
            "max_rows_per_request",
            "max_body_bytes",
            "ort_threads",
        ):
            if int(getattr(self, name)) < (0 if name == "port" else 1):
                raise ConfigError(
                    f"serving.{name} must be positive, got {getattr(self, name)!r}.",
                    key=f"serving.{name}",
                )
        if self.max_wait_ms < 0 or self.poll_interval_s < 0 or self.gather_turns < 0:
            raise ConfigError(
                "serving.max_wait_ms, serving.poll_interval_s and serving.gather_turns must "
                "be >= 0.",
                key="serving",
            )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ServingConfig:
        """``settings.serving`` + the admin token (``Settings.admin_token``, i.e.
        ``FLYWHEEL_ADMIN_TOKEN``) + explicit overrides (None values are ignored)."""
        sv = settings.serving
        token = settings.admin_token.get_secret_value() if settings.admin_token else None
        base = cls(
            host=sv.host,
            port=sv.port,
            workers=sv.workers,
            models=(ServedModel(settings.registry.model_name),),
            max_batch_rows=sv.max_batch_rows,
            max_wait_ms=sv.max_wait_ms,
            gather_turns=sv.gather_turns,
            max_rows_per_request=sv.max_rows_per_request,
            max_body_bytes=sv.max_body_bytes,
            poll_interval_s=sv.poll_interval_s,
            ort_threads=sv.ort_threads,
            api_key=sv.api_key.get_secret_value() if sv.api_key else None,
            admin_token=token or None,
            log_json=sv.log_json,
            access_log=sv.access_log,
        )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(
                f"Unknown serving option(s) {unknown}; known: {sorted(known)}.", key="serving"
            )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})
