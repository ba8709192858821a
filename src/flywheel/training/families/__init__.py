"""Model families: one module per family, found by name and imported on first use.

A family module declares one :class:`Family` as ``FAMILY``: its name, the tasks it does,
an estimator factory, whether its inputs are scaled, whether it takes ``class_weight``,
the distributions it needs at prediction time, the module prefixes of the types its fitted
estimator holds (skops trusts them on load) and an optional ONNX converter hook.

The built-in families live beside this file. Another package adds one without editing
flywheel, either at run time::

    from flywheel.training import families
    families.register("knn", "mypkg.knn")  # "module" (holding FAMILY) or "module:attr"

or by declaring an entry point in its ``pyproject.toml``::

    [project.entry-points."flywheel.families"]
    knn = "mypkg.knn"

Declaring a family must stay cheap: import the estimator's library inside ``make`` and
``register_onnx``, never at the module's top. flywheel reads every declaration to list the
families a task can use, and that must not import LightGBM or XGBoost (see
docs/training.md, "Adding a model family").
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, entry_points
from importlib.metadata import version as dist_version
from typing import Any, Literal, get_args

from flywheel.errors import ConfigError

__all__ = [
    "ENTRY_POINT_GROUP",
    "N_JOBS",
    "Family",
    "Task",
    "declared",
    "get",
    "known",
    "matching",
    "names",
    "pinned",
    "prepare_onnx",
    "register",
    "unregister",
]

log = logging.getLogger("flywheel.training")

Task = Literal["classification", "regression"]
TASKS: tuple[Task, ...] = get_args(Task)
ENTRY_POINT_GROUP = "flywheel.families"
# Threads per estimator: the machines running training are shared.
N_JOBS = 1

Factory = Callable[[Task, int], Any]  # (task, seed) -> an unfitted scikit-learn estimator


@dataclass(frozen=True)
class Family:
    """One model family, as its module declares it (``FAMILY = Family(...)``).

    ``make(task, seed)`` returns an unfitted estimator with flywheel's defaults for that
    family (seeded, ``n_jobs=N_JOBS``, quiet); training then checks the ``hyperparams`` of
    params.yaml against its ``get_params()`` and applies them with ``set_params``.
    ``trusted_prefixes`` are module prefixes (``"xgboost."``) of the types a fitted
    estimator holds beyond scikit-learn, NumPy and SciPy: skops loads them, and
    ``register_onnx`` runs (once per process, before the first export) for an estimator
    whose class or a base class comes from one of them. ``requirements`` are distribution
    names, pinned to the installed versions when a model is logged.
    """

    name: str
    tasks: tuple[Task, ...]
    make: Factory
    # StandardScaler on numeric inputs. Never for trees: a float32 scaler in front of a tree
    # moves rows across split thresholds in ONNX.
    scaled: bool = False
    class_weight: bool = False  # its classifier takes class_weight="balanced"
    requirements: tuple[str, ...] = ()
    trusted_prefixes: tuple[str, ...] = ()
    register_onnx: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(
                f"Model family name {self.name!r} is not an identifier. Use letters, digits "
                "and underscores (e.g. 'knn').",
                family=self.name,
            )
        bad = [t for t in self.tasks if t not in TASKS]
        if not self.tasks or bad:
            raise ConfigError(
                f"Model family {self.name!r} declares tasks {list(self.tasks)}; each must be "
                f"one of {list(TASKS)}, and at least one is needed.",
                family=self.name,
            )

    def pinned_requirements(self) -> list[str]:
        """``name==version`` of each requirement as installed now (see :func:`pinned`)."""
        return pinned(self.requirements)


def pinned(distributions: Iterable[str]) -> list[str]:
    """``name==version`` of each distribution as installed now, read when called (a bare
    name for one that is not installed)."""
    out = []
    for name in distributions:
        try:
            out.append(f"{name}=={dist_version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


_BUILTIN = ("logreg", "linear", "random_forest", "hist_gb", "lightgbm", "xgboost")
_paths: dict[str, str] = {name: f"{__name__}.{name}" for name in _BUILTIN}
_loaded: dict[str, Family] = {}
_onnx_ready: set[str] = set()
_broken: set[str] = set()  # registered families whose module could not be read (warned once)
_discovered = False


def register(name: str, path: str) -> None:
    """Make family ``name`` available from ``path``: ``"package.module"`` (which defines
    ``FAMILY``) or ``"package.module:attribute"``. Nothing is imported until the family is
    first used. Registering a taken name again with another path is a :class:`ConfigError`."""
    _discover()
    taken = _paths.get(name)
    if taken is not None and taken != path:
        raise ConfigError(
            f"Model family {name!r} is already registered from {taken!r}; cannot register it "
            f"again from {path!r}. Pick another name or unregister the first one.",
            family=name,
        )
    _paths[name] = path


def unregister(name: str) -> None:
    """Forget family ``name`` (a no-op for an unknown name)."""
    _paths.pop(name, None)
    _loaded.pop(name, None)
    _onnx_ready.discard(name)
    _broken.discard(name)


def _discover() -> None:
    """Read the ``flywheel.families`` entry points once; a built-in name is never replaced."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        taken = _paths.get(point.name)
        if taken is not None and taken != point.value:
            log.warning(
                "entry point %s=%s ignored: family %r is already registered from %s",
                point.name,
                point.value,
                point.name,
                taken,
            )
            continue
        _paths[point.name] = point.value


def known(name: str) -> bool:
    """Whether a family of that name is registered (imports nothing)."""
    if name not in _paths:
        _discover()
    return name in _paths


def names(task: Task | None = None) -> tuple[str, ...]:
    """Every registered family name (imports nothing), or those of :func:`declared` that do
    ``task``."""
    _discover()
    if task is None:
        return tuple(_paths)
    return tuple(f.name for f in declared() if task in f.tasks)


def declared() -> tuple[Family, ...]:
    """Every registered family's declaration, importing the modules not read yet (cheap:
    declarations import no estimator library). A family whose module cannot be read is
    left out with a warning here; :func:`get` names its error when it is asked for."""
    out = []
    for name in names():
        try:
            out.append(get(name))
        except ConfigError as exc:
            if name not in _broken:
                log.warning("model family %r left out: %s", name, exc.message)
                _broken.add(name)
    return tuple(out)


def get(name: str) -> Family:
    """The family's declaration, importing its module on first use."""
    family = _loaded.get(name)
    if family is None:
        if not known(name):
            raise ConfigError(
                f"Unknown model family {name!r}. Known families: {', '.join(names())}; "
                "or register one (docs/training.md, 'Adding a model family').",
                family=name,
                valid=list(names()),
            )
        family = _loaded[name] = _load(name, _paths[name])
    return family


def _load(name: str, path: str) -> Family:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises as it runs
        raise ConfigError(
            f"Model family {name!r} is registered from {path!r}, which cannot be imported: "
            f"{type(exc).__name__}: {exc}. Install the package that provides it, or fix the "
            "module or its registration.",
            family=name,
            path=path,
        ) from exc
    family = getattr(module, attribute or "FAMILY", None)
    if not isinstance(family, Family) or family.name != name:
        raise ConfigError(
            f"{path!r} must define {attribute or 'FAMILY'} = Family(name={name!r}, ...); "
            f"found {family!r}. Fix the module or its registration.",
            family=name,
            path=path,
        )
    return family


def matching(estimator: Any) -> tuple[str, ...]:
    """Families with a ``trusted_prefixes`` entry that the module of the estimator's class,
    or of one of its base classes, starts with."""
    modules = [cls.__module__ + "." for cls in type(estimator).__mro__]
    return tuple(
        f.name for f in declared() if any(m.startswith(f.trusted_prefixes) for m in modules)
    )


def prepare_onnx(estimator: Any) -> None:
    """Run the ONNX converter hook of every family :func:`matching` the estimator, once
    per family and process (an export of any other family imports nothing of theirs)."""
    for name in matching(estimator):
        hook = get(name).register_onnx
        if hook is not None and name not in _onnx_ready:
            hook()
            _onnx_ready.add(name)
