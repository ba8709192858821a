"""Hyperparameter search with Optuna; trials can be spread over machines through PostgreSQL.

Workers that train the same dataset, family, snapshot and search configuration compute the
same study name and join one study in the shared storage (``training.optuna_storage`` or
``--storage``). In-memory when no storage is given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import optuna

from flywheel.config import mask_url, sqlalchemy_url
from flywheel.errors import TrainingError
from flywheel.training.params import SearchParams

__all__ = ["SearchOutcome", "run_search", "storage_url", "study_name", "suggest"]

log = logging.getLogger("flywheel.training.search")

Objective = Callable[[dict[str, Any]], dict[str, float]]  # point -> "<m>_cv_mean"/"_cv_std"
Direction = Literal["maximize", "minimize"]
TrialProgress = Callable[[int, int], None]  # (finished trials in this call, trials asked)


@dataclass(frozen=True)
class SearchOutcome:
    study_name: str
    best_params: dict[str, Any]
    best_value: float
    best_number: int
    best_cv: dict[str, float]  # every CV score of the best trial (stored as a user attr)
    trials_run: int  # by this call
    trials_total: int  # in the study, every worker included
    direction: str


def storage_url(url: str | None) -> str | None:
    """A SQLAlchemy URL Optuna can open: ``postgresql://`` uses psycopg 3 (psycopg2 is absent)."""
    return None if url is None else sqlalchemy_url(url)


def study_name(dataset: str, family: str, snapshot_id: str, config: dict[str, Any]) -> str:
    """Deterministic name, so every worker on the same job joins the same study.

    ``config`` (target, metric, space, split, folds, seed) is hashed into the name, so a
    changed search never mixes its trials with an incomparable older study.
    """
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    return f"flywheel-{dataset}-{family}-{snapshot_id}-{digest[:8]}"


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sample one point of the search space (validated by :class:`SearchParams`)."""
    out: dict[str, Any] = {}
    for name, dim in space.items():
        kind = dim["type"]
        if kind == "categorical":
            out[name] = trial.suggest_categorical(name, dim["choices"])
        elif kind == "int":
            out[name] = trial.suggest_int(
                name,
                int(dim["low"]),
                int(dim["high"]),
                step=int(dim.get("step", 1)),
                log=bool(dim.get("log", False)),
            )
        else:
            out[name] = trial.suggest_float(
                name,
                float(dim["low"]),
                float(dim["high"]),
                step=dim.get("step"),
                log=bool(dim.get("log", False)),
            )
    return out


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial at INFO on its own handler; library code stays quiet."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def _create(name: str, url: str | None, direction: Direction, attempts: int = 4) -> optuna.Study:
    """Create or join the study, retrying briefly: workers starting together on a fresh
    database race to create Optuna's tables, and the loser gets a unique violation once."""
    for attempt in range(attempts):
        try:
            return optuna.create_study(
                study_name=name, storage=url, direction=direction, load_if_exists=True
            )
        except Exception as exc:  # SQLAlchemy / driver errors
            if attempt == attempts - 1:
                raise
            log.info("opening study %s failed (%s); retrying", name, type(exc).__name__)
            time.sleep(0.25 * 2**attempt)
    raise AssertionError("unreachable")


def _open_study(name: str, storage: str | None, direction: Direction, seed: int) -> optuna.Study:
    try:
        study = _create(name, storage_url(storage), direction)
    except Exception as exc:  # SQLAlchemy / driver errors: translate at the boundary
        raise TrainingError(
            f"Cannot open the Optuna study {name!r} in storage {mask_url(storage or 'memory')!r}: "
            f"{exc}. Check training.optuna_storage (a postgresql:// URL) and that the database "
            "is reachable.",
            storage=mask_url(storage or ""),
        ) from exc
    study.sampler = optuna.samplers.TPESampler(
        seed=_sampler_seed(seed, study, shared=bool(storage))
    )
    return study


def _sampler_seed(seed: int, study: optuna.Study, *, shared: bool) -> int:
    """The seed plus the trials already in the study, so a worker that joins later does not
    replay the first one's random start-up points. A shared study also mixes in the host and
    process, so workers started at the same moment differ too (a distributed search is not
    reproducible anyway); an in-memory search stays exactly reproducible."""
    offset = len(study.get_trials(deepcopy=False))
    if shared:
        offset += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())
    return (seed + offset) % 2**32


def run_search(
    objective: Objective,
    search: SearchParams,
    *,
    name: str,
    metric: str,
    higher_is_better: bool,
    trials: int,
    seed: int,
    storage: str | None = None,
    progress: TrialProgress | None = None,
) -> SearchOutcome:
    """Run ``trials`` trials of ``objective`` (a CV score) and return the study's best so far."""
    direction: Direction = "maximize" if higher_is_better else "minimize"
    with _quiet_optuna():
        study = _open_study(name, storage, direction, seed)
        ran = [0]  # trials finished by this call (other workers may add theirs meanwhile)

        def _objective(trial: optuna.Trial) -> float:
            scores = objective(suggest(trial, search.space))
            key = f"{metric}_cv_mean"
            if key not in scores:
                raise ValueError(f"{metric} is undefined on these CV folds")
            trial.set_user_attr("cv", scores)
            return scores[key]

        def _callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            ran[0] += 1
            log.info("trial %d: %s=%s %s", trial.number, metric, trial.value, trial.params)
            if progress is not None:
                progress(ran[0], trials)

        study.optimize(
            _objective,
            n_trials=trials,
            timeout=search.timeout_s,
            callbacks=[_callback],
            catch=(ValueError,),
            gc_after_trial=False,
        )
        return _outcome(study, name, ran[0], direction, metric)


def _outcome(
    study: optuna.Study, name: str, trials_run: int, direction: str, metric: str
) -> SearchOutcome:
    all_trials = study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise TrainingError(
            f"No Optuna trial of study {name!r} completed (every one failed). "
            "Check the search space against the family's hyperparameters.",
            study=name,
        )
    best = study.best_trial
    log.info("study %s: best %s=%.5f after %d trials", name, metric, best.value, len(all_trials))
    return SearchOutcome(
        study_name=name,
        best_params=dict(best.params),
        best_value=float(best.value) if best.value is not None else float("nan"),
        best_number=best.number,
        best_cv={k: float(v) for k, v in best.user_attrs.get("cv", {}).items()},
        trials_run=trials_run,
        trials_total=len(all_trials),
        direction=direction,
    )
