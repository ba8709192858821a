"""What a module promises in ``__all__`` exists (httpx's habit), and imports stay light."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import flywheel

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(flywheel.__path__, "flywheel.")
    if "._proto" not in m.name and not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    missing = [n for n in getattr(module, "__all__", []) if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists missing names: {missing}"


def test_core_modules_declare_their_public_api() -> None:
    for name in (
        "flywheel.config",
        "flywheel.errors",
        "flywheel.data.store",
        "flywheel.data.snapshots",
        "flywheel.data.contract",
        "flywheel.simulate",
        "flywheel.training.features",
        "flywheel.training.train",
        "flywheel.training.prepare",
        "flywheel.training.fit",
        "flywheel.training.track",
        "flywheel.training.runs",
        "flywheel.registry.register",
        "flywheel.registry.aliases",
        "flywheel.registry.artifacts",
        "flywheel.workspace",
        "flywheel.registry.onnx_export",
    ):
        assert getattr(importlib.import_module(name), "__all__", None), f"{name} has no __all__"


def test_cli_import_does_not_pull_heavy_libraries() -> None:
    """`flywheel --help` must stay fast: MLflow, scikit-learn and torch load only when used."""
    code = (
        "import sys, flywheel.cli; "
        "print(','.join(m for m in ('mlflow', 'sklearn', 'torch', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_serving_and_registry_imports_leave_plotting_and_tracking_out() -> None:
    """A serving process loads neither matplotlib (evaluation plots) nor MLflow/skops/skl2onnx
    on import: they cost seconds of cold start and memory, and load only when used."""
    code = (
        "import sys, flywheel.serving.server, flywheel.serving.rest, flywheel.registry.register; "
        "import flywheel.registry.aliases, flywheel.registry.artifacts, flywheel.workspace; "
        "heavy = ('matplotlib', 'sklearn.inspection', 'mlflow', 'skops', 'skl2onnx'); "
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
