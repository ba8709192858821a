"""The registry: MLflow model versions carrying ONNX + model card, aliases, approvals, rollback.

INTERFACE STUB — implemented by the registry work item.

A registered version is an MLflow ONNX model (``mlflow.onnx``) whose directory holds
``model.onnx`` and ``extra_files/{model_card.md, feature_specs.json, parity.json}``; the
version tags hold ``flywheel.onnx_sha256`` and lineage (see ``flywheel.tracking.TAG``).
New versions get the alias ``challenger``; ``champion`` moves by promote/approve/rollback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flywheel.config import Settings
from flywheel.registry.audit import AuditEntry
from flywheel.registry.onnx_export import ParityReport
from flywheel.training.evaluate import ChampionModel, Evaluation
from flywheel.training.gates import GateReport
from flywheel.training.train import TrainResult

__all__ = [
    "ModelVersionInfo",
    "RegisteredVersion",
    "approve",
    "history",
    "list_versions",
    "load_champion",
    "promote",
    "register",
    "rollback",
]


@dataclass
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    onnx_sha256: str
    parity: ParityReport
    model_uri: str  # models:/<name>/<version>
    card_markdown: str
    aliases: list[str] = field(default_factory=list)


@dataclass
class ModelVersionInfo:
    name: str
    version: str
    run_id: str | None
    aliases: list[str]
    tags: dict[str, str]
    created_at: str


@dataclass
class PromotionOutcome:
    entry: AuditEntry
    pending: bool  # True when the promotion waits for approval
    extra: dict[str, Any] = field(default_factory=dict)


def register(
    settings: Settings,
    result: TrainResult,
    *,
    evaluation: Evaluation,
    gate_report: GateReport,
) -> RegisteredVersion:
    raise NotImplementedError


def load_champion(settings: Settings, alias: str = "champion") -> ChampionModel | None:
    raise NotImplementedError


def promote(settings: Settings, version: str, *, reason: str) -> PromotionOutcome:
    raise NotImplementedError


def approve(settings: Settings, version: str, *, reason: str) -> PromotionOutcome:
    raise NotImplementedError


def rollback(settings: Settings, *, reason: str) -> PromotionOutcome:
    raise NotImplementedError


def list_versions(settings: Settings) -> list[ModelVersionInfo]:
    raise NotImplementedError


def history(settings: Settings) -> list[AuditEntry]:
    raise NotImplementedError
