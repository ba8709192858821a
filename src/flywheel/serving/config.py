"""What one server runs with: the ``serving`` settings block, declared once.

:class:`ServingConfig` *is* :class:`flywheel.config.ServingSettings` (every knob, its default,
its bounds and its description live there, with ``FLYWHEEL_SERVING__*``) plus what a server
decides when it starts: the models it serves, the admin token (``FLYWHEEL_ADMIN_TOKEN``) and
``inline_max_rows``. Tests and embedders build it directly; ``flywheel serve`` builds it
with :meth:`ServingConfig.from_settings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field, SecretStr, ValidationError

from flywheel.config import ServingSettings
from flywheel.errors import ConfigError

if TYPE_CHECKING:
    from flywheel.config import Settings

__all__ = ["ServedModel", "ServingConfig", "secret_bytes"]


@dataclass(frozen=True)
class ServedModel:
    """A model the server answers for: ``name`` (in URLs) follows ``ref`` (alias or version)
    of ``registered_name`` (defaults to ``name``)."""

    name: str
    ref: str = "champion"
    registered_name: str | None = None


class ServingConfig(ServingSettings):
    model_config = ConfigDict(frozen=True, extra="forbid")

    models: tuple[ServedModel, ...] = ()  # empty: settings.registry.model_name @ champion
    admin_token: SecretStr | None = Field(None, description="Admin routes; none: disabled.")
    inline_max_rows: int = Field(1024, ge=1, description="Bigger batches run in a thread.")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ServingConfig:
        """``settings.serving`` + the admin token (``Settings.admin_token``) + explicit
        overrides (None values are ignored); bad values raise ConfigError naming the key."""
        unknown = sorted(set(overrides) - set(cls.model_fields))
        if unknown:
            raise ConfigError(
                f"Unknown serving option(s) {unknown}; known: {sorted(cls.model_fields)}.",
                key="serving",
            )
        values: dict[str, Any] = {
            **settings.serving.model_dump(),
            "models": (ServedModel(settings.registry.model_name),),
            "admin_token": settings.admin_token if secret_bytes(settings.admin_token) else None,
            **{k: v for k, v in overrides.items() if v is not None},
        }
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = "serving." + ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{key}: {first['msg']}.", key=key) from None


def secret_bytes(value: SecretStr | str | None) -> bytes | None:
    """A key or token as the bytes requests are compared with (None: not configured)."""
    if value is None:
        return None
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    return text.encode() if text else None
