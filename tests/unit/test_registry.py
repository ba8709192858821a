"""The registry on the embedded defaults: a real snapshot, a real training run, MLflow on SQLite."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from flywheel.config import load_settings
from flywheel.data.snapshots import ingest
from flywheel.errors import GateFailed, NotFound, ParityError, RegistryError, UsageError
from flywheel.registry import register as registration
from flywheel.registry.aliases import approve, history, list_versions, promote, rollback
from flywheel.registry.artifacts import fetch_model_artifacts, load_champion
from flywheel.registry.audit import AuditLog
from flywheel.registry.onnx_export import export_onnx, make_session
from flywheel.training.evaluate import Evaluation
from flywheel.training.features import build_pipeline, prepare_frame
from flywheel.training.gates import GateReport, GateResult
from flywheel.training.params import TrainParams
from flywheel.training.train import TrainResult, load_holdout, train
from flywheel.workspace import Workspace


@dataclass
class World:
    ws: Workspace
    result: TrainResult
    evaluation: Evaluation
    gates: GateReport


def _churn_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "customer_id": np.arange(n),
            "observed_at": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(n), "h"),
            "tenure_months": rng.integers(1, 72, n),
            "monthly_charges": rng.normal(70, 20, n).round(2),
            "support_tickets": rng.poisson(1.5, n),
            "contract_type": rng.choice(["monthly", "annual", "two_year"], n),
            "region": rng.choice(["north", "south"], n),
        }
    )
    logit = -1 + 0.6 * df.support_tickets - 0.04 * df.tenure_months
    df["churned"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return df


def _gates(passed: bool) -> GateReport:
    results = [
        GateResult("min_metric", "roc_auc", True, 0.81, 0.70, "roc_auc 0.81 >= 0.70"),
        GateResult(
            "max_slice_gap",
            "roc_auc",
            passed,
            0.31 if not passed else 0.05,
            0.25,
            "region gap 0.31 exceeds 0.25 by 0.06" if not passed else "gap ok",
        ),
    ]
    return GateReport(passed=passed, results=results)


@pytest.fixture(scope="module")
def migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated MLflow database, made once: creating the schema takes
    seconds, and every test would otherwise pay for it."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("mlflow-template")
    db = folder / "mlflow.db"
    SqlAlchemyStore(f"sqlite:///{db}", str(folder / "artifacts")).engine.dispose()
    return db


@pytest.fixture
def world(ws: Workspace, tmp_path: Path, migrated_mlflow_db: Path) -> World:
    settings = ws.settings
    settings.home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated_mlflow_db, settings.home / "mlflow.db")
    path = tmp_path / "churn.parquet"
    _churn_frame().to_parquet(path)
    manifest = ingest(settings, file=path, target="churned").manifest
    params = TrainParams(family="hist_gb", hyperparams={"max_iter": 20}, cv_folds=0)
    result = train(ws, manifest.id, params)
    evaluation = Evaluation(
        run_id=result.run_id,
        task=result.task,
        primary_metric="roc_auc",
        metrics={"roc_auc": 0.81, "log_loss": 0.52},
        slice_gaps={"region": {"roc_auc": 0.05}, "contract_type": {"roc_auc": 0.12}},
    )
    return World(ws, result, evaluation, _gates(True))


def _register(w: World) -> registration.RegisteredVersion:
    return registration.register(w.ws, w.result, evaluation=w.evaluation, gate_report=w.gates)


def _champion(ws: Workspace) -> str | None:
    aliases = ws.client.get_registered_model(ws.settings.registry.model_name).aliases
    version = aliases.get("champion")
    return None if version is None else str(version)


def _as(ws: Workspace, user: str, **registry_settings: object) -> Workspace:
    return Workspace(load_settings(home=ws.settings.home, user=user, registry=registry_settings))


def test_register_writes_version_alias_tags_card_and_audit(world: World) -> None:
    reg = _register(world)
    client = world.ws.client
    mv = client.get_model_version("churn", reg.version)
    assert reg.version == "1" and reg.aliases == ["challenger"]
    assert client.get_registered_model("churn").aliases == {"challenger": 1}
    assert mv.run_id == world.result.run_id
    tags = mv.tags
    assert tags["flywheel.onnx_sha256"] == reg.onnx_sha256
    assert tags["flywheel.run_id"] == world.result.run_id
    assert tags["flywheel.snapshot_id"] == world.result.snapshot_id
    assert len(tags["flywheel.snapshot_sha256"]) == 64
    assert tags["flywheel.gates"] == "passed"
    assert float(tags["flywheel.parity.max_abs_diff"]) <= 1e-4
    assert tags["flywheel.parity.rows_over_tolerance"] == "0"
    assert reg.parity.rows == 60 and reg.parity.passed
    metrics = client.get_run(world.result.run_id).data.metrics
    assert metrics["onnx_parity_rows_over_tolerance"] == 0.0

    art = fetch_model_artifacts(world.ws, "challenger")
    assert hashlib.sha256(art.model_path.read_bytes()).hexdigest() == reg.onnx_sha256
    assert art.version == "1" and art.task == "classification" and art.classes == [0, 1]
    assert [s.name for s in art.feature_specs] == [s.name for s in world.result.feature_specs]
    assert json.loads((art.specs_path.parent / "parity.json").read_text())["rows"] == 60

    card = art.card_path.read_text()
    assert card == reg.card_markdown == mv.description
    for text in (
        "# Model card: churn v1",
        world.result.snapshot_id,
        "**Rows:** 300",
        "2024-01-01T00:00:00 →",
        "max_iter",
        "| contract_type | roc_auc | 0.12 |",
        "## Quality gates: passed",
        "No champion existed",
        "0 label mismatches",
        world.result.run_id,
        "## Intended use",
        "## Limitations",
    ):
        assert text in card, text
    assert card.index("contract_type | roc_auc") < card.index("region | roc_auc")

    (entry,) = history(world.ws)
    assert (entry.action, entry.to_version, entry.who) == ("register", "1", world.ws.settings.user)


def test_registered_onnx_model_loads_through_mlflow(world: World) -> None:
    """The version's model directory is a regular MLflow ``onnx`` model: ``mlflow.onnx`` and
    ``mlflow.pyfunc`` load it, its model.onnx is byte for byte the exported (hashed) file,
    and its MLmodel lists the extra files, the CPU provider and pinned requirements."""
    import mlflow.onnx
    import mlflow.pyfunc
    import yaml
    from mlflow.models import Model

    reg = _register(world)
    uri = f"models:/churn/{reg.version}"
    with world.ws.tracking():  # MLflow's loaders resolve models:/ with the global URI
        proto = mlflow.onnx.load_model(uri)
        folder = Path(mlflow.artifacts.download_artifacts(uri))
        loaded = mlflow.pyfunc.load_model(uri)  # MLflow's ONNX loader builds its session
    assert hashlib.sha256(proto.SerializeToString()).hexdigest() == reg.onnx_sha256
    assert hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest() == reg.onnx_sha256
    flavor = Model.load(str(folder)).flavors["onnx"]
    assert flavor["providers"] == ["CPUExecutionProvider"]
    assert {e["path"] for e in flavor["extra_files"]} == {
        "extra_files/model_card.md",
        "extra_files/feature_specs.json",
        "extra_files/parity.json",
        "extra_files/reference.json",  # the monitoring reference of the holdout
    }
    reference = json.loads((folder / "extra_files" / "reference.json").read_text())
    assert reference["version"] == reg.version
    assert reference["source"] == f"holdout of run {reg.run_id}"
    assert reference["profile"]["rows"] > 0 and reference["metrics"]
    requirements = (folder / "requirements.txt").read_text().splitlines()
    assert requirements[0] == f"mlflow=={mlflow.__version__}"
    assert any(r.startswith("onnxruntime==") for r in requirements)
    assert "dependencies" in yaml.safe_load((folder / "conda.yaml").read_text())
    example = pd.read_json(folder / "input_example.json", orient="split")
    feeds = {
        c: example[c]
        .to_numpy(np.float32 if example[c].dtype.kind in "iuf" else object)
        .reshape(-1, 1)
        for c in example
    }
    assert loaded.metadata.get_input_schema().input_names() == list(example.columns)
    labels = make_session(proto.SerializeToString()).run(None, feeds)[0]
    assert len(labels) == len(example)


def test_register_reuses_what_training_and_evaluation_hold(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after training and evaluation in one process, registration neither downloads
    the pipeline nor re-reads the holdout, and checks parity on the same rows as the path
    that loads both back (a run id evaluated elsewhere)."""
    from flywheel.training.evaluate import evaluate

    reloaded = _register(world).parity  # world.evaluation holds no predictions: loads back
    evaluation = evaluate(world.ws, world.result)
    assert evaluation.holdout is not None and "holdout" not in evaluation.to_dict()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("registration loaded what it already had")

    monkeypatch.setattr(registration, "load_pipeline", refuse)
    monkeypatch.setattr(registration, "load_holdout", refuse)
    reg = registration.register(
        world.ws, world.result, evaluation=evaluation, gate_report=world.gates
    )
    assert reg.parity == reloaded and reg.parity.rows == 60
    client = world.ws.client
    mv = client.get_model_version("churn", reg.version)
    assert mv.tags["flywheel.onnx_sha256"] == reg.onnx_sha256
    model_id = mv.source.removeprefix("models:/")
    onnx_model = client.get_logged_model(model_id)
    metrics = {m.key: m.value for m in onnx_model.metrics or []}
    assert metrics["holdout_roc_auc"] == evaluation.metrics["roc_auc"]
    assert metrics["onnx_parity_label_mismatches"] == 0.0
    outputs = client.get_run(world.result.run_id).outputs.model_outputs
    assert model_id in {o.model_id for o in outputs}


def test_failed_gate_raises_and_leaves_the_registry_unchanged(world: World) -> None:
    world.gates = _gates(False)
    with pytest.raises(GateFailed, match=r"1 quality gate\(s\): max_slice_gap\(roc_auc\)") as exc:
        _register(world)
    assert exc.value.details["failed"][0]["gate"] == "max_slice_gap"
    assert list_versions(world.ws) == []
    assert history(world.ws) == []


def test_parity_failure_registers_nothing(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the export returns a different model's ONNX graph."""
    frame, y = load_holdout(world.ws, world.result.run_id)
    specs = world.result.feature_specs
    other = build_pipeline(
        specs, task="classification", family="logreg", hyperparams={}, ratios=[], seed=0
    ).fit(prepare_frame(frame, specs), 1 - y.to_numpy())
    wrong = export_onnx(other, specs, task="classification")
    monkeypatch.setattr(registration, "export_onnx", lambda *a, **k: wrong)
    with pytest.raises(ParityError, match="Nothing was registered") as exc:
        _register(world)
    assert exc.value.details["parity"]["rows_over_tolerance"] > 0
    assert list_versions(world.ws) == []
    assert history(world.ws) == []
    metrics = world.ws.client.get_run(world.result.run_id).data.metrics
    assert metrics["onnx_parity_max_abs_diff"] > 1e-4


def test_failure_after_the_version_exists_undoes_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _register(world)

    def broken(*args: object, **kwargs: object) -> None:
        raise RegistryError("audit database is down")

    monkeypatch.setattr(AuditLog, "append", broken)
    with pytest.raises(RegistryError, match="audit database is down"):
        _register(world)
    monkeypatch.undo()
    assert [v.version for v in list_versions(world.ws)] == ["1"]
    assert world.ws.client.get_registered_model("churn").aliases == {"challenger": 1}
    assert [e.to_version for e in history(world.ws)] == ["1"]


def test_promote_and_rollback_twice_walk_back_like_a_stack(world: World) -> None:
    s = world.ws
    versions = [_register(world).version for _ in range(3)]
    assert versions == ["1", "2", "3"]
    assert load_champion(s) is None
    for v in versions:
        out = promote(s, v, reason=f"ship {v}")
        assert not out.pending and _champion(s) == v
    assert rollback(s, reason="bad").entry.to_version == "2"
    assert _champion(s) == "2"
    second = rollback(s, reason="still bad")
    assert (second.entry.from_version, second.entry.to_version) == ("2", "1")
    assert _champion(s) == "1"
    with pytest.raises(RegistryError, match="Nothing to roll back to"):
        rollback(s, reason="again")
    assert _champion(s) == "1"
    actions = [(e.action, e.from_version, e.to_version) for e in history(s)]
    assert actions[3:] == [
        ("promote", None, "1"),
        ("promote", "1", "2"),
        ("promote", "2", "3"),
        ("rollback", "3", "2"),
        ("rollback", "2", "1"),
    ]
    assert s.audit.verify() == []
    infos = {v.version: v.aliases for v in list_versions(s)}
    assert infos == {"1": ["champion"], "2": [], "3": ["challenger"]}


def test_approval_needs_a_second_person(world: World) -> None:
    alice = _as(world.ws, "alice", require_approval=True)
    bob = _as(world.ws, "bob", require_approval=True)
    version = _register(world).version
    with pytest.raises(RegistryError, match="No pending promotion"):
        approve(bob, version, reason="lgtm")
    out = promote(alice, version, reason="better auc")
    assert out.pending and out.entry.action == "promote_requested"
    assert world.ws.client.get_registered_model("churn").aliases.get("champion") is None
    assert (
        world.ws.client.get_model_version("churn", version).tags["flywheel.approval"] == "pending"
    )
    with pytest.raises(RegistryError, match="already waiting for approval"):
        promote(alice, version, reason="again")
    with pytest.raises(RegistryError, match="four-eyes"):
        approve(alice, version, reason="self-approval")
    approved = approve(bob, version, reason="lgtm")
    assert (approved.entry.action, approved.entry.who) == ("approve", "bob")
    assert approved.extra["requested_by"] == "alice"
    assert _champion(world.ws) == version
    with pytest.raises(RegistryError, match="No pending promotion"):
        approve(bob, version, reason="twice")


def test_bad_requests_name_the_problem(world: World) -> None:
    s = world.ws
    with pytest.raises(NotFound, match=r"existing versions: none"):
        promote(s, "7", reason="x")
    _register(world)
    message = r"Model 'churn' has no version '7'; existing versions: \['1'\]"
    with pytest.raises(NotFound, match=message):
        promote(s, "7", reason="x")
    with pytest.raises(UsageError, match="--reason"):
        promote(s, "1", reason="  ")
    with pytest.raises(NotFound, match="no version with alias 'champion'"):
        fetch_model_artifacts(s, "champion")
    promote(s, "1", reason="ok")
    with pytest.raises(RegistryError, match="already the champion"):
        promote(s, "1", reason="ok")


def test_tampered_onnx_artifact_is_refused(world: World) -> None:
    s = world.ws
    reg = _register(world)
    promote(s, reg.version, reason="ship")
    champion = load_champion(s)
    assert champion is not None and champion.version == "1"
    frame, _ = load_holdout(s, world.result.run_id)
    labels, proba = champion.predict(frame.head(5))
    assert labels.shape == (5,) and proba is not None and proba.shape == (5, 2)

    client = world.ws.client
    model_id = client.get_model_version("churn", "1").source.removeprefix("models:/")
    stored = Path(client.get_logged_model(model_id).artifact_location) / "model.onnx"
    stored.write_bytes(stored.read_bytes() + b"\x00")
    with pytest.raises(RegistryError, match="changed after registration"):
        load_champion(s)


def test_concurrent_fetches_of_one_version_all_get_a_whole_checked_copy(world: World) -> None:
    """uvicorn workers (or a CLI beside a server) fetch the same version at once: each must
    get the registered bytes, none may see another's half-written or deleted folder."""
    from concurrent.futures import ThreadPoolExecutor

    reg = _register(world)
    target = world.ws.settings.home / "models" / "churn" / reg.version
    target.mkdir(parents=True)
    (target / "model.onnx").write_bytes(b"a stale, broken copy")

    def fetch(_: int) -> str:
        art = fetch_model_artifacts(world.ws, reg.version)
        return hashlib.sha256(art.model_path.read_bytes()).hexdigest()

    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(fetch, range(16)))
    assert digests == [reg.onnx_sha256] * 16
    assert hashlib.sha256((target / "model.onnx").read_bytes()).hexdigest() == reg.onnx_sha256
    assert [p.name for p in target.parent.iterdir()] == [reg.version]  # no temp folders left


# --------------------------------------------------------------------------- decision threshold


def test_version_carries_its_threshold_and_serves_labels_at_it(world: World) -> None:
    """The threshold chosen at training is in the version's tags, specs, card and ONNX
    graph: the serving core's labels are the positive class where p >= threshold."""
    from flywheel.registry.onnx_export import onnx_feeds
    from flywheel.serving.loading import load_model

    reg = _register(world)
    choice = world.result.threshold
    assert choice is not None and choice.source == "validation_split"  # cv_folds=0
    tags = world.ws.client.get_model_version("churn", reg.version).tags
    assert float(tags["flywheel.threshold"]) == choice.value
    assert tags["flywheel.threshold_objective"] == "f1"
    assert tags["flywheel.inputs_sha256"] == world.result.inputs_sha256
    assert "## Decision threshold" in reg.card_markdown
    assert f">= **{choice.value:.4g}**" in reg.card_markdown

    art = fetch_model_artifacts(world.ws, reg.version)
    assert art.threshold == choice.value
    served = load_model(art.model_path, art.feature_specs, art.onnx_sha256)
    X, _ = load_holdout(world.ws, world.result.run_id)
    feeds = onnx_feeds(X, art.feature_specs)
    labels, _ = served.run([feeds[s.name] for s in art.feature_specs])
    assert world.result.pipeline is not None
    p = world.result.pipeline.predict_proba(prepare_frame(X, art.feature_specs))[:, 1]
    expected = (p >= choice.value).astype(int)
    assert np.array_equal(labels, expected)
    assert reg.parity.label_mismatches == 0

    promote(world.ws, reg.version, reason="first")
    champion = load_champion(world.ws)
    assert champion is not None and champion.threshold == choice.value


def test_same_inputs_give_the_same_onnx_bytes_and_other_params_do_not(world: World) -> None:
    """Through the real path (train, then register's export): a second training with the
    same seed, params and snapshot registers a byte-identical ONNX file; other params give
    another inputs hash, graph name and file."""
    first = _register(world)
    params = TrainParams(family="hist_gb", hyperparams={"max_iter": 20}, cv_folds=0)
    again = train(world.ws, world.result.snapshot_id, params)
    assert again.run_id != world.result.run_id
    assert again.inputs_sha256 == world.result.inputs_sha256
    second = registration.register(
        world.ws, again, evaluation=world.evaluation, gate_report=world.gates
    )
    assert (second.version, second.onnx_sha256) == ("2", first.onnx_sha256)

    other = train(world.ws, world.result.snapshot_id, params.model_copy(update={"seed": 7}))
    assert other.inputs_sha256 != world.result.inputs_sha256
    third = registration.register(
        world.ws, other, evaluation=world.evaluation, gate_report=world.gates
    )
    assert third.onnx_sha256 != first.onnx_sha256
    art = fetch_model_artifacts(world.ws, third.version)
    graph_name = onnx.load(str(art.model_path)).graph.name
    assert graph_name == f"churn-{other.inputs_sha256[:16]}"


def test_serving_resolves_and_loads_a_version_without_importing_mlflow(world: World) -> None:
    """A SQL tracking store with a local artifact store (the embedded default): in a fresh
    interpreter the alias is resolved and the version copied into place and sha-checked
    without MLflow's client; a changed file is not trusted, and an HTTP tracking server
    falls back to the client."""
    from flywheel.registry.sqlstore import SqlRegistry
    from flywheel.tracking import TAG

    reg = _register(world)
    settings = world.ws.settings
    sql = SqlRegistry(world.ws.tracking_uri, settings.home)
    assert sql.alias_version("churn", "challenger") == reg.version
    assert sql.alias_version("churn", "champion") is None
    assert sql.cached("churn", reg.version, TAG["onnx_sha256"]) is None  # not copied yet
    code = (
        "import sys\n"
        "from flywheel.config import load_settings\n"
        "from flywheel.serving.sources import RegistrySource\n"
        f"src = RegistrySource(load_settings(home={str(settings.home)!r}))\n"
        "version = src.resolve('challenger')\n"
        "files = src.fetch(version)\n"
        "print(version, files.onnx_sha256, 'mlflow' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "MLFLOW_"))}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    assert out == [reg.version, reg.onnx_sha256, "False"]
    cached = sql.cached("churn", reg.version, TAG["onnx_sha256"], TAG["run_id"])
    fetched = fetch_model_artifacts(world.ws, reg.version)  # MLflow's client: the same files
    assert cached is not None and cached.onnx_sha256 == fetched.onnx_sha256 == reg.onnx_sha256
    assert cached.feature_specs == fetched.feature_specs and cached.run_id == reg.run_id
    assert cached.threshold == fetched.threshold and cached.classes == fetched.classes
    fetched.model_path.write_bytes(b"changed")  # a changed file is not trusted
    assert sql.cached("churn", reg.version, TAG["onnx_sha256"]) is None
    assert SqlRegistry("http://127.0.0.1:5000", settings.home).alias_version("churn", "x") is None


def _promoting(ws: Workspace, by: str, challenger: str = "2") -> object:
    """A canary of ``challenger`` against the champion, set ``promoting`` in ``by``'s name."""
    from flywheel.rollout import actions
    from flywheel.rollout.plan import RolloutPlan

    state = actions.start(ws, RolloutPlan(challenger=challenger), reason="test")
    return actions.store_of(ws).transition(
        state, status="promoting", reason="canary passed", evidence={actions.PROMOTE_BY: by}
    )


def test_a_promotion_finished_by_two_processes_moves_the_alias_once(world: World) -> None:
    """The CLI sets a rollout `promoting` and a server's agent sees it too: both finish it.
    The alias moves once, both get the promoted state, the ledger has one entry each."""
    from flywheel.rollout import actions

    _register(world), _register(world)
    promote(world.ws, "1", reason="first")
    state = _promoting(world.ws, "alice")
    agent = Workspace(load_settings(home=world.ws.settings.home))  # another process
    first = actions.finish_promotion(agent, state)  # type: ignore[arg-type]
    late = actions.finish_promotion(world.ws, state, wait=True)  # type: ignore[arg-type]
    assert first.status == late.status == "promoted" and _champion(world.ws) == "2"
    entries = world.ws.audit.entries("churn")
    assert [e.action for e in entries].count("rollout_promote") == 1
    (moved,) = [e for e in entries if e.action == "promote" and e.to_version == "2"]
    assert moved.who == "alice"  # in the name of who asked, not of the process that did it
    assert actions._CLAIM_AT not in late.evidence


def test_a_claim_keeps_others_off_until_it_is_stale(world: World) -> None:
    """A live claim keeps others off; a crashed claimer's (older than CLAIM_S) is taken over."""
    from flywheel.rollout import actions

    _register(world), _register(world)
    promote(world.ws, "1", reason="first")
    state = _promoting(world.ws, "flywheel-rollout")
    claimed = actions._claim(world.ws, state)  # type: ignore[arg-type]
    assert claimed is not None
    with pytest.raises(RegistryError, match="promoting v2 now: it cannot abort"):
        actions.abort(world.ws, reason="not under a moving alias")
    assert actions.finish_promotion(world.ws, claimed).status == "promoting"  # not moved
    assert _champion(world.ws) == "1"
    stale = actions.store_of(world.ws).transition(
        claimed,
        evidence={**claimed.evidence, actions._CLAIM_AT: time.time() - actions.CLAIM_S - 1},
    )
    assert stale is not None
    done = actions.finish_promotion(world.ws, stale)
    assert done.status == "promoted" and _champion(world.ws) == "2"


def test_an_automatic_promotion_is_requested_by_the_controller_so_a_person_approves(
    world: World,
) -> None:
    """With approval required, the request is the controller's (flywheel-rollout), so the
    server's own login user may approve it (four-eyes: a person approves a machine)."""
    from flywheel.rollout import actions

    _register(world), _register(world)
    promote(world.ws, "1", reason="first")
    ws = _as(world.ws, world.ws.settings.user, require_approval=True)
    state = _promoting(ws, "flywheel-rollout")
    waiting = actions.finish_promotion(ws, state)  # type: ignore[arg-type]
    assert waiting.status == "waiting" and "waits for approval" in waiting.reason
    (request,) = [e for e in ws.audit.entries("churn") if e.action == "promote_requested"]
    assert request.who == "flywheel-rollout"
    approve(ws, "2", reason="looks good")
    done = actions.finish_promotion(ws, waiting)
    assert done.status == "promoted" and _champion(ws) == "2"
    assert "waits for approval" not in done.reason and done.reason.endswith("; approved")


def test_a_plan_naming_another_champion_is_refused(world: World) -> None:
    from flywheel.rollout import actions
    from flywheel.rollout.plan import RolloutPlan

    _register(world), _register(world)
    promote(world.ws, "2", reason="second first")
    with pytest.raises(RegistryError, match=r"plan's champion v1 is not churn's champion \(v2\)"):
        actions.start(world.ws, RolloutPlan(challenger="1", champion="1"), reason="x")
    state = actions.start(world.ws, RolloutPlan(challenger="1", champion="2"), reason="x")
    assert (state.champion, state.challenger) == ("2", "1")


def test_a_sticky_feature_that_no_version_takes_is_warned_of(world: World) -> None:
    """`sticky: feature:NAME` with a NAME neither version takes reaches the router only
    through /invocations (a typo looks the same): the start says so, in the state the CLI
    prints and in the audit ledger; a name the versions take gets no warning."""
    from flywheel.rollout import actions
    from flywheel.rollout.plan import RolloutPlan

    _register(world), _register(world)
    promote(world.ws, "1", reason="first")
    typo = RolloutPlan(challenger="2", sticky="feature:tenure_month")
    state = actions.start(world.ws, typo, reason="x")
    (warning,) = state.evidence["warnings"]
    assert "sticky: feature 'tenure_month' is not an input of v2 or v1" in warning
    assert "tenure_months" in warning and "/invocations" in warning
    (entry,) = [e for e in world.ws.audit.entries("churn") if e.action == "rollout_start"]
    assert json.loads(entry.reason.split("\n", 1)[1])["evidence"]["warnings"] == [warning]
    actions.abort(world.ws, reason="typo")
    state = actions.start(world.ws, typo.model_copy(update={"sticky": "feature:tenure_months"}))
    assert state.evidence == {}


def test_the_cli_waits_for_the_process_holding_the_claim_and_the_alias_moves_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server's agent holds the claim and is slow in the registry; `rollout promote` waits
    for it and returns the outcome: one move of the alias, one entry of each kind."""
    import threading

    from flywheel.registry import aliases
    from flywheel.rollout import actions

    _register(world), _register(world)
    promote(world.ws, "1", reason="first")
    state = _promoting(world.ws, "alice")
    inside, go_on = threading.Event(), threading.Event()
    move = aliases._move_champion

    def slow_move(*args: object, **kwargs: object) -> object:
        inside.set()
        assert go_on.wait(30)
        return move(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(aliases, "_move_champion", slow_move)
    agent = Workspace(load_settings(home=world.ws.settings.home))
    outcome: list[object] = []
    holder = threading.Thread(target=lambda: outcome.append(actions.finish_promotion(agent, state)))  # type: ignore[arg-type]
    holder.start()
    assert inside.wait(30)  # the agent holds the claim, inside the registry call
    threading.Timer(0.5, go_on.set).start()
    waited = actions.promote(world.ws, reason="ship it")  # what `rollout promote` runs
    holder.join(30)
    assert waited.status == "promoted" and _champion(world.ws) == "2"
    entries = world.ws.audit.entries("churn")
    assert [(e.action, e.to_version) for e in entries].count(("promote", "2")) == 1
    assert [e.action for e in entries].count("rollout_promote") == 1


def test_a_failed_claimer_releases_its_claim_and_a_stale_one_rechecks_the_alias(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flywheel.registry import aliases
    from flywheel.rollout import actions

    _register(world), _register(world)
    promote(world.ws, "1", reason="first")
    state = _promoting(world.ws, "alice")
    move = aliases._move_champion

    def down(*args: object, **kwargs: object) -> object:
        raise RegistryError("the registry is down")

    monkeypatch.setattr(aliases, "_move_champion", down)
    with pytest.raises(RegistryError, match="down"):
        actions.finish_promotion(world.ws, state)  # type: ignore[arg-type]
    fresh = actions.store_of(world.ws).get(state.id)  # type: ignore[attr-defined]
    assert fresh is not None and actions._CLAIM_AT not in fresh.evidence  # released
    monkeypatch.setattr(aliases, "_move_champion", move)
    assert actions.promote(world.ws, reason="retry").status == "promoted"  # no wait for it

    # a holder that moved the alias and died before recording it: the next one, taking its
    # stale claim over, sees the alias moved and records it, without a second move
    _register(world)
    state = _promoting(world.ws, "alice", challenger="3")
    dead = actions._claim(world.ws, state)  # type: ignore[arg-type]
    assert dead is not None
    aliases.promote(world.ws, "3", reason="moved, then the holder died")
    stale = actions.store_of(world.ws).transition(
        dead, evidence={**dead.evidence, actions._CLAIM_AT: time.time() - actions.CLAIM_S - 1}
    )
    assert stale is not None
    assert actions.finish_promotion(world.ws, stale).status == "promoted"
    moves = [e for e in world.ws.audit.entries("churn") if e.action == "promote"]
    assert [e.to_version for e in moves] == ["1", "2", "3"]  # once each


def test_promote_racing_the_automatic_promotion_gets_its_outcome(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rollout promote` read the rollout running; the controller set it promoting first:
    the command waits for that promotion instead of saying the rollout changed."""
    from flywheel.rollout import actions
    from flywheel.rollout.plan import RolloutPlan

    _register(world), _register(world)
    promote(world.ws, "1", reason="first")
    running = actions.start(world.ws, RolloutPlan(challenger="2"), reason="test")
    actions.store_of(world.ws).transition(
        running, status="promoting", evidence={actions.PROMOTE_BY: "flywheel-rollout"}
    )
    monkeypatch.setattr(actions, "_active", lambda ws, model: running)  # read before it
    assert actions.promote(world.ws, reason="now").status == "promoted"
    (moved,) = [
        e for e in world.ws.audit.entries("churn") if e.to_version == "2" and e.action == "promote"
    ]
    assert moved.who == "flywheel-rollout"
    monkeypatch.undo()
    with pytest.raises(NotFound, match="no active rollout"):
        actions.abort(world.ws, reason="late")
