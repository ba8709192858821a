"""flywheel's exception hierarchy.

Every error a user can cause is a :class:`FlywheelError`. Each class carries its
user-facing details in one place: the CLI exit code and the HTTP status a server maps it
to. Other libraries' exceptions (MLflow, S3, database drivers) are translated at the
boundary with ``raise SomeFlywheelError(...) from exc``.

Word messages as: what is wrong, the bad value, the fix.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
    "ContractViolation",
    "DataError",
    "FlywheelError",
    "GateFailed",
    "NotFound",
    "ParityError",
    "PipelineBusy",
    "RegistryError",
    "RemoteError",
    "SourceError",
    "StoreError",
    "TrainingError",
    "UsageError",
]


class FlywheelError(Exception):
    """Base class. ``exit_code`` is for the CLI, ``status`` for HTTP servers."""

    exit_code: int = 1
    status: int = 500
    kind: str = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The one JSON error shape: ``{"error": {"kind", "message", "details"}}``."""
        return {"error": {"kind": self.kind, "message": self.message, "details": self.details}}


class ConfigError(FlywheelError):
    """A setting is missing or has a bad value (names the key)."""

    exit_code = 2
    status = 500
    kind = "config"


class UsageError(FlywheelError):
    """A command was called wrongly (options that exclude each other, a malformed value);
    the same code as the CLI parser's own usage errors."""

    exit_code = 2
    status = 400
    kind = "usage"


class NotFound(FlywheelError):
    """A snapshot, run, model version or alias does not exist."""

    exit_code = 3
    status = 404
    kind = "not_found"


class DataError(FlywheelError):
    """Input data is unreadable, empty or malformed."""

    exit_code = 4
    status = 422
    kind = "data"


class ContractViolation(DataError):
    """A snapshot breaks its data contract; ``details['violations']`` lists each rule."""

    exit_code = 5
    kind = "contract"


class SourceError(FlywheelError):
    """The SQL source could not be read (connection, query)."""

    exit_code = 6
    status = 502
    kind = "source"


class StoreError(FlywheelError):
    """The object store could not be read or written."""

    exit_code = 6
    status = 502
    kind = "store"


class TrainingError(FlywheelError):
    """Training could not run with these params or data."""

    exit_code = 7
    status = 422
    kind = "training"


class GateFailed(FlywheelError):
    """A quality gate failed; the registry is left unchanged."""

    exit_code = 8
    status = 409
    kind = "gate"


class ParityError(FlywheelError):
    """The ONNX export disagrees with the native model beyond tolerance."""

    exit_code = 9
    status = 500
    kind = "parity"


class RegistryError(FlywheelError):
    """A registry change was refused or failed (aliases, approvals, tracking server)."""

    exit_code = 10
    status = 409
    kind = "registry"


class PipelineBusy(FlywheelError):
    """Another retraining pipeline run holds this home's pipeline lock (a worker's tick, a
    CronJob's ``flywheel retrain``, a person): one run at a time per home."""

    exit_code = 13
    status = 409
    kind = "busy"


class RemoteError(FlywheelError):
    """A server flywheel called could not be reached, timed out, or answered an error
    (``flywheel predict``)."""

    exit_code = 12
    status = 502
    kind = "remote"
