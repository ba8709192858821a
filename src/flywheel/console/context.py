"""What every console route reads from: the settings, the workspace (built on first use),
and where live figures come from (this server's predictor, or another server's URL)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from flywheel.config import Settings
    from flywheel.serving.predictor import Predictor
    from flywheel.workspace import Workspace

__all__ = ["Console"]

T = TypeVar("T")


class Console:
    """One per app: ``predictor`` when mounted in ``flywheel serve``, ``server_url`` when run
    alone (``flywheel console --server URL``); either may be None."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        predictor: Predictor | None = None,
        server_url: str | None = None,
        admin_token: bytes | None = None,
        api_key: bytes | None = None,
    ) -> None:
        self._settings = settings
        self.predictor = predictor
        self.server_url = server_url.rstrip("/") if server_url else None
        self.admin_token = admin_token
        self.api_key = api_key
        self._ws: Workspace | None = None
        self._lock = threading.Lock()
        self._cache: dict[Any, tuple[float, Any]] = {}

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            agent = getattr(self.predictor, "rollout_agent", None)
            if agent is not None:
                self._settings = agent.ws.settings
            else:
                from flywheel.config import load_settings

                self._settings = load_settings()
        return self._settings

    @property
    def ws(self) -> Workspace:
        """The server's workspace (its rollout agent's) or one built from the settings."""
        with self._lock:
            if self._ws is None:
                agent = getattr(self.predictor, "rollout_agent", None)
                if agent is not None:
                    self._ws = agent.ws
                else:
                    from flywheel.workspace import Workspace

                    self._ws = Workspace(self.settings)
            return self._ws

    def cached(self, key: Any, seconds: float, make: Callable[[], T]) -> T:
        """``make()``, kept ``seconds`` (registry reads through MLflow's client are slow)."""
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < seconds:
            return hit[1]  # type: ignore[no-any-return]
        value = make()
        self._cache[key] = (now, value)
        return value

    def forget(self) -> None:
        """Drop cached reads (after an action changed the registry)."""
        self._cache.clear()

    @property
    def model_name(self) -> str:
        return self.settings.registry.model_name
