"""The Try-it view's form: the served model's inputs (name, kind) with the data contract's
ranges and categories (``<home>/contracts/*.yaml``, read as YAML: serving imports nothing of
``flywheel.data``) and, from the version's reference profile, a typical value for each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["contract_columns", "form_fields"]


def contract_columns(contracts_dir: Path, names: list[str], dataset: str | None) -> dict[str, Any]:
    """The ``columns`` block of the contract that covers ``names`` (the configured dataset's
    first), or {}."""
    import yaml

    if not contracts_dir.is_dir():
        return {}
    paths = sorted(contracts_dir.glob("*.yaml"), key=lambda p: p.stem != dataset)
    for path in paths:
        try:
            columns = (yaml.safe_load(path.read_text()) or {}).get("columns") or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(columns, dict) and all(n in columns for n in names):
            return columns
    return {}


def _typical(bins: dict[str, Any] | None) -> Any:
    if not bins:
        return None
    if bins.get("kind") == "numeric":
        centers = bins.get("centers") or []
        return round(float(centers[len(centers) // 2]), 4) if centers else None
    categories = bins.get("categories") or []
    return categories[0] if categories else None


def form_fields(
    inputs: list[dict[str, Any]], columns: dict[str, Any], reference: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """One field per input, in model order: kind, min/max, allowed values, a default."""
    bins = {b.get("name"): b for b in (reference or {}).get("bins") or []}
    fields = []
    for spec in inputs:
        name, kind = spec["name"], spec["kind"]
        rule = columns.get(name) or {}
        ref_bins = bins.get(name)
        choices = rule.get("allowed")
        if choices is None and kind == "categorical" and ref_bins:
            choices = ref_bins.get("categories") or None
        fields.append(
            {
                "name": name,
                "kind": kind,
                "min": rule.get("min") if kind == "numeric" else None,
                "max": rule.get("max") if kind == "numeric" else None,
                "nullable": bool(rule.get("nullable", True)),
                "choices": [str(c) for c in choices] if choices else None,
                "default": _typical(ref_bins),
            }
        )
    return fields
