"""The rules of dependency direction in docs/architecture.md, checked.

Two ways: what a fresh interpreter actually imports (the serving core must not pull in the
training stack, which the serve-only install does not have), and what each module's source
imports at module level (the direction between rooms).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "flywheel"
TRAINING_STACK = [
    "sklearn",
    "pandas",
    "lightgbm",
    "xgboost",
    "optuna",
    "matplotlib",
    "skl2onnx",
    "onnxmltools",
    "pandera",
    "mlflow",
    "flywheel.training",
    "flywheel.data",
]


def _loaded_after(*modules: str) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {list(modules)!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out))


@pytest.mark.parametrize(
    "modules",
    [
        (
            "flywheel.cli",
            "flywheel.serving.server",
            "flywheel.serving.rest",
            "flywheel.serving._api",
            "flywheel.serving.grpc",
            "flywheel.serving.mqtt",
            "flywheel.serving.ws",
            "flywheel.serving.fronts",
            "flywheel.serving.loading",
            "flywheel.serving.sources",
            "flywheel.console.routes",
            "flywheel.console.app",
            "flywheel.cli_console",
        ),
        ("flywheel.predlog", "flywheel.schema"),
    ],
    ids=["serving", "predlog"],
)
def test_serving_and_the_prediction_log_import_no_training_stack(modules: tuple[str, ...]) -> None:
    loaded = _loaded_after(*modules)
    found = sorted(
        m for m in loaded for bad in TRAINING_STACK if m == bad or m.startswith(bad + ".")
    )
    assert found == []


def test_the_prediction_log_imports_no_serving_stack() -> None:
    loaded = _loaded_after("flywheel.predlog")
    bad = ("flywheel.serving", "fastapi", "starlette", "grpc", "uvicorn", "aiomqtt")
    assert sorted(m for m in loaded if m.split(".")[0] in bad or m.startswith(bad[0])) == []


def _module_imports(path: Path) -> set[str]:
    """Modules imported at module level (not inside functions, not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if not isinstance(node, ast.FunctionDef) else ():
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names)
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                found.add(sub.module)
    return found


# room -> rooms it must not import at module level
FORBIDDEN = {
    "data": ["flywheel.serving", "flywheel.training", "flywheel.registry", "flywheel.predlog"],
    "training": ["flywheel.serving", "flywheel.predlog"],
    "predlog": ["flywheel.serving", "flywheel.training", "flywheel.data", "flywheel.registry"],
    "monitoring": ["flywheel.serving"],
    "rollout": ["flywheel.serving", "flywheel.training", "flywheel.data", "flywheel.cli"],
    "serving": ["flywheel.training", "flywheel.data", "flywheel.cli"],
    "schema.py": ["flywheel."],
}


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_rooms_import_in_one_direction(room: str) -> None:
    paths = [SRC / room] if room.endswith(".py") else sorted((SRC / room).rglob("*.py"))
    broken = []
    for path in paths:
        if "_proto" in path.parts:
            continue
        for name in _module_imports(path):
            if any(name == f.rstrip(".") or name.startswith(f) for f in FORBIDDEN[room]):
                broken.append(f"{path.relative_to(SRC)} imports {name}")
    assert broken == []
