"""Write a fitted pipeline as an MLflow ``sklearn`` model (skops format) from one dump.

``mlflow.sklearn.save_model`` serialises the model itself and loads it straight back, and
flywheel must dump it once more beforehand to learn which types to trust: three passes over
a skops tree whose JSON is written by the pure-Python encoder (``indent=2``). This module
is a flavor for ``mlflow.models.Model.log`` that writes the same directory (``MLmodel``
with the ``sklearn`` and ``python_function`` flavors, ``model.skops``, the input example,
``requirements.txt``, ``conda.yaml``, ``python_env.yaml``) from the bytes flywheel already
made, so ``mlflow.sklearn.load_model`` and ``mlflow.pyfunc.load_model`` read it as usual.

It also says which types a dump may hold (:func:`trusted_types`) and which distributions
the model needs (:func:`pip_requirements`); both add what the model family declares.
"""

from __future__ import annotations

from typing import Any

from flywheel.errors import TrainingError
from flywheel.model_dir import finish_model_dir, start_model_dir
from flywheel.training import families

__all__ = ["BASE_REQUIREMENTS", "MODEL_FILE", "pip_requirements", "save_model", "trusted_types"]

MODEL_FILE = "model.skops"  # mlflow.sklearn's _SKOPS_MODEL_DATA_SUBPATH
# What every pipeline needs, whatever its family.
BASE_REQUIREMENTS = ("scikit-learn", "skops", "numpy", "pandas", "scipy")

# skops refuses to load types outside its default allow-list (HistGradientBoosting's
# TreePredictor, LightGBM/XGBoost boosters, our own transformers). The types a dump needs
# are listed with skops.io.get_untrusted_types and accepted only from these packages and the
# registered families' trusted_prefixes, both when saving and when loading (the list stored
# in MLmodel is never trusted).
_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "flywheel.")
_TRUSTED_EXACT = frozenset({"collections.OrderedDict", "collections.defaultdict"})


def trusted_types(data: bytes) -> list[str]:
    """The non-default types in a skops dump; a :class:`TrainingError` names any type
    outside scikit-learn, NumPy, SciPy, flywheel and every family's ``trusted_prefixes``."""
    import skops.io

    prefixes = _TRUSTED_PREFIXES + tuple(p for f in families.declared() for p in f.trusted_prefixes)
    needed = list(skops.io.get_untrusted_types(data=data))
    refused = [t for t in needed if not (t.startswith(prefixes) or t in _TRUSTED_EXACT)]
    if refused:
        raise TrainingError(
            f"The pipeline contains types skops will not load safely: {refused}. Only types "
            f"from {', '.join(sorted(set(prefixes)))} (scikit-learn, NumPy, SciPy, flywheel and "
            "the model families' trusted_prefixes) are accepted.",
            types=refused,
        )
    return needed


def pip_requirements(family: str) -> list[str]:
    """``name==version`` of what a pipeline of ``family`` needs, as installed now; passed
    to MLflow explicitly (its own inference costs ~10 s)."""
    return families.pinned(BASE_REQUIREMENTS) + families.get(family).pinned_requirements()


def save_model(
    *,
    path: str,
    mlflow_model: Any,
    skops_bytes: bytes,
    skops_trusted_types: list[str],
    signature: Any = None,
    input_example: Any = None,
    pip_requirements: list[str] | None = None,
) -> None:
    """Called through :func:`flywheel.tracking.log_model` (``flavor_name="mlflow.sklearn"``)."""
    import sklearn

    start_model_dir(
        path,
        mlflow_model,
        MODEL_FILE,
        skops_bytes,
        signature=signature,
        input_example=input_example,
        loader_module="mlflow.sklearn",
        model_path=MODEL_FILE,
        predict_fn="predict",
    )
    mlflow_model.add_flavor(
        "sklearn",
        pickled_model=MODEL_FILE,
        sklearn_version=sklearn.__version__,
        serialization_format="skops",
        code=None,
        skops_trusted_types=skops_trusted_types,
    )
    finish_model_dir(path, mlflow_model, pip_requirements)
