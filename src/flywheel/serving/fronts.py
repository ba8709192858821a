"""Front doors beside REST, registered by name: a new protocol is one new file.

A front translates its protocol to and from the core and nothing else: it is started with
the :class:`~flywheel.serving.predictor.Predictor` (whose ``calls`` run the request cycle:
ids, auth, error kinds, metrics) and closed at shutdown. REST (and the WebSocket stream on
its port) is the base every server runs; these run beside it on the same event loop::

    class Front(Protocol):
        name: str
        def describe(self) -> str: ...                       # "gRPC 127.0.0.1:8081"
        async def start(self, predictor: Predictor) -> None:   # listen / connect, then return
        async def close(self) -> None: ...                     # stop, drain

A front is made by a factory ``factory(settings, block) -> Front | None`` (None: off).
``block`` is the front's own settings block, ``serving.fronts.<name>`` (a mapping in
``flywheel.yaml`` or ``FLYWHEEL_SERVING__FRONTS`` as JSON), which the front validates itself.
Factories are found by name: the built-ins (``grpc``, ``mqtt``, whose blocks are the
``serving.grpc_*``/``serving.mqtt_*`` settings), the ``flywheel.fronts`` entry-point group of
installed packages, :func:`register`, or a ``factory: "package.module:attr"`` key in the
block itself. Every front named in ``serving.fronts`` is started; a block may say
``enabled: false``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

from flywheel.errors import ConfigError

if TYPE_CHECKING:
    from flywheel.config import Settings
    from flywheel.serving.predictor import Predictor

__all__ = ["BUILTIN", "Front", "FrontFactory", "build_fronts", "register"]

ENTRY_POINT_GROUP = "flywheel.fronts"


class Front(Protocol):
    name: str

    def describe(self) -> str: ...

    async def start(self, predictor: Predictor) -> None: ...

    async def close(self) -> None: ...


FrontFactory = Callable[["Settings", Mapping[str, Any]], "Front | None"]

# built-in fronts: name -> "module:factory", imported only when used
BUILTIN: dict[str, str] = {
    "grpc": "flywheel.serving.grpc:grpc_front",
    "mqtt": "flywheel.serving.mqtt:mqtt_front",
}
_registered: dict[str, str | FrontFactory] = {}


def register(name: str, factory: str | FrontFactory) -> None:
    """Make ``name`` a front: a factory or its ``"module:attr"`` path (imported when used)."""
    _registered[name] = factory


def _load(name: str, target: str | FrontFactory) -> FrontFactory:
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr or "front")
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"serving.fronts.{name}: cannot import the front {target!r} ({exc}).",
            key=f"serving.fronts.{name}",
        ) from exc
    if not callable(factory):
        raise ConfigError(f"serving.fronts.{name}: {target!r} is not callable.")
    return factory  # type: ignore[no-any-return]


def _factory(name: str, block: Mapping[str, Any]) -> FrontFactory:
    if "factory" in block:
        return _load(name, str(block["factory"]))
    if name in _registered:
        return _load(name, _registered[name])
    if name in BUILTIN:
        return _load(name, BUILTIN[name])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return _load(name, ep.value)
    known = sorted(
        {*BUILTIN, *_registered, *(e.name for e in entry_points(group=ENTRY_POINT_GROUP))}
    )
    raise ConfigError(
        f"serving.fronts.{name}: no front named {name!r}; known: {known} (or give "
        "'factory: package.module:attr').",
        key=f"serving.fronts.{name}",
    )


def build_fronts(settings: Settings) -> list[Front]:
    """The fronts ``settings`` turns on, built (so bad settings fail before anything
    listens) but not started: the built-ins first, then ``serving.fronts`` in order."""
    blocks: dict[str, Mapping[str, Any]] = {key: {} for key in BUILTIN}
    for name, given in (settings.serving.fronts or {}).items():
        if not isinstance(given, Mapping):
            raise ConfigError(
                f"serving.fronts.{name} must be a mapping of that front's settings, got "
                f"{type(given).__name__}.",
                key=f"serving.fronts.{name}",
            )
        blocks[name] = given
    fronts = []
    for name, block in blocks.items():
        if block.get("enabled", True) is False:
            continue
        options = {k: v for k, v in block.items() if k not in ("factory", "enabled")}
        front = _factory(name, block)(settings, options)
        if front is not None:
            fronts.append(front)
    return fronts
