"""The retraining pipeline: ingest → validate → train → evaluate → register → rollout.

Each step is one call of :func:`execute_step` on a pipeline run (a JSON record, see
:mod:`flywheel.pipelines.runner`): idempotent and cached, so any runner (the local
:func:`run_retrain`, Dagster's ops) can re-run a step or a whole run after a failure or a
kill and it resumes without duplicates: the snapshot is content-addressed (re-ingesting
unchanged data returns the same snapshot); the MLflow training run carries the tag
``flywheel.pipeline_run`` from its creation (a FINISHED one is reused, an unfinished one is
marked KILLED); a version already registered from that run is reused. A contract violation
fails the run (``pipeline_failed`` in the ledger, the alert webhook when configured) and
nothing downstream runs; a failed gate ends it as ``gated``, the registry unchanged. The
rollout's decision (promote or roll back) is the server's rollout agent's:
:func:`await_decision` waits for it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.errors import GateFailed, PipelineBusy, UsageError
from flywheel.pipelines.runner import (
    PipelineRun,
    StepRecord,
    all_runs,
    call_with_retries,
    is_transient,
)

if TYPE_CHECKING:
    from flywheel.data.snapshots import Manifest
    from flywheel.rollout.plan import RolloutPlan
    from flywheel.training.evaluate import Evaluation
    from flywheel.training.gates import GateReport
    from flywheel.training.params import TrainParams
    from flywheel.training.train import TrainResult
    from flywheel.workspace import Workspace

__all__ = [
    "PIPELINE_TAG",
    "STEPS",
    "PipelineRun",
    "await_decision",
    "execute_step",
    "finish_run",
    "latest_unfinished",
    "manual_trigger",
    "open_run",
    "pipeline_lock",
    "run_retrain",
]

log = logging.getLogger("flywheel.pipelines.retrain")

STEPS = ("ingest", "validate", "train", "evaluate", "register", "rollout")
PIPELINE_TAG = "flywheel.pipeline_run"  # on the MLflow training run: the pipeline run's id
_DONE = ("done", "skipped")
# what this process holds between steps (the manifest, the fitted pipeline, the evaluation),
# by pipeline run id; a step in another process reads it back from MLflow and the store
_HELD: dict[str, dict[str, Any]] = {}


class NoNewData(Exception):
    """An automatic trigger found no rows newer than the last snapshot: retraining on the
    same data with the same parameters would give the same model, so the run is skipped."""


# --------------------------------------------------------------------------- runs


def manual_trigger(reason: str = "by hand", at: float | None = None) -> dict[str, Any]:
    """The trigger of a retrain asked for by hand (``at``: the data clock, default now)."""
    from flywheel.pipelines.triggers import iso

    at = time.time() if at is None else float(at)
    return {"kind": "manual", "at": at, "at_iso": iso(at), "reason": reason,
            "evidence": {}, "key": f"manual:{iso(at)}:{secrets.token_hex(2)}"}  # fmt: skip


def _new_id() -> str:
    return f"pr-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


def latest_unfinished(ws: Workspace) -> PipelineRun | None:
    """The newest run of this model that is neither finished nor gated (killed or failed)."""
    name = ws.settings.registry.model_name
    found = [r for r in all_runs(ws.settings.home) if r.model == name and not r.done]
    return found[-1] if found else None


def _audit(ws: Workspace, run: PipelineRun, action: str, words: str, **extra: Any) -> None:
    """A ledger entry: the words, then a JSON line (the run, its trigger and lineage)."""
    detail = {"pipeline_run": run.id, "status": run.status, "at": run.at,
              "trigger": {k: run.trigger.get(k) for k in ("kind", "key", "reason")},
              "snapshot_id": run.snapshot_id, "run_id": run.run_id, "version": run.version,
              "rollout_id": run.rollout_id, **extra}  # fmt: skip
    ws.audit.append(
        who=ws.settings.user,
        action=action,
        model=run.model,
        from_version=None,
        to_version=run.version,
        reason=f"{words.replace(chr(10), ' ')[:1000]}\n{json.dumps(detail, default=str)}",
    )


def open_run(
    ws: Workspace, trigger: dict[str, Any] | None = None, *, run_id: str | None = None
) -> PipelineRun:
    """A new pipeline run for ``trigger`` (default: by hand), or the unfinished one: the run
    ``run_id``, else the unfinished run with the trigger's key. Ledger: ``pipeline_started``."""
    home, name = ws.settings.home, ws.settings.registry.model_name
    if run_id is not None:
        run = PipelineRun.load(home, run_id)
    else:
        trig = dict(trigger) if trigger else manual_trigger()
        trig.setdefault("at", time.time())
        trig.setdefault("key", f"{trig.get('kind', 'manual')}:{trig['at']}")
        same = [r for r in all_runs(home) if r.model == name and r.key == trig["key"]]
        run = same[-1] if same else PipelineRun(
            id=_new_id(), model=name, trigger=trig, created_at=time.time(),
            at=float(trig["at"]), steps={s: StepRecord() for s in STEPS},
        )  # fmt: skip
        if same and run.done:
            return run  # this trigger's run ended: nothing to resume
    resumed = any(s.attempts for s in run.steps.values())
    if run.done:
        return run
    run.status, run.error, run.finished_at = "running", None, None
    run.save(home)
    why = run.trigger.get("reason") or run.trigger.get("kind")
    verb = "resumed" if resumed else "started"
    _audit(ws, run, "pipeline_started", f"retraining pipeline {run.id} {verb}: {why}")
    return run


def finish_run(ws: Workspace, run_id: str) -> PipelineRun:
    """Mark the run finished once every step is done (a failed or gated run is returned as
    it is); ledger: ``pipeline_finished``."""
    run = PipelineRun.load(ws.settings.home, run_id)
    if run.status != "running":
        return run
    missing = [s for s in STEPS if run.step(s).status not in _DONE]
    if missing:
        raise UsageError(
            f"Pipeline run {run_id} cannot finish: steps {missing} are not done. "
            "Run them first (`flywheel retrain` resumes the run).",
            run=run_id,
        )
    run.status, run.finished_at = "finished", time.time()
    run.save(ws.settings.home)
    _HELD.pop(run.id, None)
    _audit(ws, run, "pipeline_finished", f"retraining pipeline {run.id} finished: "
           f"version {run.version}, rollout {run.rollout_id or 'none'}")  # fmt: skip
    return run


def _skip(ws: Workspace, run: PipelineRun, step: str, exc: NoNewData) -> None:
    """The run ends as ``skipped`` (no new data): ledger ``pipeline_finished``, no alert; it
    does not count as a retrain for the triggers' cooldown and budget."""
    run.status, run.finished_at = "skipped", time.time()
    run.error = {"step": step, "kind": "no_new_data", "message": str(exc)}
    run.save(ws.settings.home)
    _HELD.pop(run.id, None)
    _audit(ws, run, "pipeline_finished", f"retraining pipeline {run.id} skipped: {exc}")


def _fail(ws: Workspace, run: PipelineRun, step: str, exc: BaseException) -> None:
    """The run ends: ``gated`` for a failed gate, else ``failed`` (ledger, and an alert)."""
    gated = isinstance(exc, GateFailed)
    message = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).splitlines()[0]
    run.status = "gated" if gated else "failed"
    run.error = {"step": step, "kind": getattr(exc, "kind", type(exc).__name__),
                 "message": message[:2000], "exit_code": getattr(exc, "exit_code", 1)}  # fmt: skip
    run.finished_at = time.time()
    run.save(ws.settings.home)
    _HELD.pop(run.id, None)
    words = f"retraining pipeline {run.id} {run.status} at {step}: {message}"
    _audit(ws, run, "pipeline_finished" if gated else "pipeline_failed", words, error=run.error)
    if not gated:
        _alert(ws, run, words)


def _alert(ws: Workspace, run: PipelineRun, words: str) -> None:
    m = ws.settings.monitoring
    if not m.webhook_url:
        return
    from flywheel.monitoring.alerts import post_alarm

    payload = {"source": "flywheel", "event": "pipeline_failed", "model": run.model,
               "pipeline_run": run.id, "trigger": run.trigger, "error": run.error,
               "text": f"[flywheel] {words}"}  # fmt: skip
    token = m.webhook_token.get_secret_value() if m.webhook_token else None
    post_alarm(m.webhook_url, payload, token=token)


# --------------------------------------------------------------------------- one step


def execute_step(ws: Workspace, run_id: str, step: str) -> dict[str, Any]:
    """Run ``step`` of the pipeline run once (cached: a step done returns its stored output).

    A non-transient error ends the run (failed, or gated for a failed gate) and propagates;
    a transient one is recorded on the step and propagates, the run left resumable."""
    if step not in STEPS:
        raise UsageError(f"Unknown pipeline step {step!r}; the steps are {list(STEPS)}.")
    home = ws.settings.home
    run = PipelineRun.load(home, run_id)
    rec = run.step(step)
    if rec.status in _DONE:
        return rec.output or {}
    if run.done:
        raise UsageError(f"Pipeline run {run_id} is {run.status}; start a new one.", run=run_id)
    before = [s for s in STEPS[: STEPS.index(step)] if run.step(s).status not in _DONE]
    if before:
        raise UsageError(f"Step {step!r} of {run_id} needs {before} done first.", run=run_id)
    run.status = "running"
    rec.status, rec.attempts, rec.error = "running", rec.attempts + 1, None
    rec.started_at = time.time()
    run.save(home)
    t = time.perf_counter()
    try:
        output = _BODIES[step](ws, run)
    except Exception as exc:
        rec.seconds += time.perf_counter() - t
        rec.status, rec.ended_at = "failed", time.time()
        rec.error = f"{type(exc).__name__}: {exc}"[:4000]
        if isinstance(exc, GateFailed):
            rec.status, rec.output = "gated", {"failures": exc.details.get("failures", [])}
        if isinstance(exc, NoNewData):
            rec.status, rec.output = "skipped", {"no_new_data": str(exc)}
            _skip(ws, run, step, exc)
        elif is_transient(exc):
            run.save(home)
        else:
            _fail(ws, run, step, exc)
        raise
    rec.seconds += time.perf_counter() - t
    rec.status = "skipped" if output.get("skipped") else "done"
    rec.output, rec.ended_at = output, time.time()
    run.save(home)
    return output


def run_retrain(
    ws: Workspace,
    *,
    trigger: dict[str, Any] | None = None,
    run_id: str | None = None,
    on_step: Callable[[str], None] | None = None,
) -> PipelineRun:
    """The local runner: open (or resume) a run, each step with retries on transient errors
    (``retrain.retries``, backoff from ``retrain.retry_backoff_s``, doubling), then finish.

    Returns the run (``finished``, or ``gated`` when a gate failed); any other failure ends
    the run as ``failed`` and propagates (a contract violation: :class:`ContractViolation`)."""
    with pipeline_lock(ws):
        return _run_locked(ws, trigger=trigger, run_id=run_id, on_step=on_step)


def _run_locked(
    ws: Workspace,
    *,
    trigger: dict[str, Any] | None,
    run_id: str | None,
    on_step: Callable[[str], None] | None,
) -> PipelineRun:
    r = ws.settings.retrain
    run = open_run(ws, trigger, run_id=run_id)
    if run.done:
        return run
    for step in STEPS:
        if on_step is not None:
            on_step(step)
        try:
            call_with_retries(
                lambda step=step: execute_step(ws, run.id, step),  # type: ignore[misc]
                retries=r.retries,
                backoff_s=r.retry_backoff_s,
                on_retry=lambda n, wait, exc, step=step: log.warning(  # type: ignore[misc]
                    "%s: attempt %d failed (%s); retrying in %.1fs", step, n, exc, wait
                ),
            )
        except (GateFailed, NoNewData):
            return PipelineRun.load(ws.settings.home, run.id)
        except Exception as exc:
            if is_transient(exc):  # retries spent: the run fails (it stays resumable)
                _fail(ws, PipelineRun.load(ws.settings.home, run.id), step, exc)
            raise
    return finish_run(ws, run.id)


@contextmanager
def pipeline_lock(ws: Workspace) -> Iterator[None]:
    """One local pipeline run at a time per home: an exclusive ``flock`` on
    ``<home>/pipelines/run.lock`` (released by the kernel when the process dies, so a
    SIGKILL leaves no stale lock; on NFS it is a POSIX lock through the server's lock
    manager). Held: :class:`PipelineBusy` naming the holder."""
    import fcntl
    import socket

    path = ws.settings.home / "pipelines" / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise PipelineBusy(
                f"Another retraining pipeline run is in progress on this home ({holder}). "
                "Fix: wait for it (`flywheel retrain` resumes an unfinished run afterwards).",
                lock=str(path),
                holder=holder,
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- the steps


def _held(run: PipelineRun) -> dict[str, Any]:
    return _HELD.setdefault(run.id, {})


def _manifest(ws: Workspace, run: PipelineRun) -> Manifest:
    held = _held(run).get("manifest")
    if held is not None and held.id == run.snapshot_id:
        return held  # type: ignore[no-any-return]
    return ws.snapshot(run.snapshot_id)


def _ingest(ws: Workspace, run: PipelineRun) -> dict[str, Any]:
    from flywheel.data.snapshots import ingest

    filed = _file_snapshot(ws)
    if filed is not None:  # your files: the newest one ingested, new unless trained on
        # (the champion's, or an earlier run's: a gated or rolled-back retrain on it)
        tried = {r.snapshot_id for r in all_runs(ws.settings.home) if r.id != run.id
                 and r.model == run.model and r.status != "skipped"}  # fmt: skip
        created = filed.id != _champion_snapshot(ws) and filed.id not in tried
        m, new_rows = filed, 0
    else:
        done = ingest(ws.settings)
        m, created, new_rows = done.manifest, done.created, done.new_rows
    if not created and run.trigger.get("kind", "manual") != "manual":
        more = " (ingest a new file with `flywheel ingest --file`)" if filed is not None else ""
        raise NoNewData(
            f"no new data since snapshot {m.id} ({m.rows:,} rows, to "
            f"{m.time_range[1] if m.time_range else '?'}): nothing to retrain on{more}"
        )
    run.snapshot_id = m.id
    _held(run)["manifest"] = m
    return {"snapshot_id": m.id, "created": created, "new_rows": new_rows,
            "rows": m.rows, "parent": m.parent, "sha256": m.sha256,
            "time_range": list(m.time_range) if m.time_range else None,
            "source": "file" if filed is not None else "sql"}  # fmt: skip


def _file_snapshot(ws: Workspace) -> Manifest | None:
    """The dataset's newest snapshot when it was ingested from a file and no SQL source is
    configured (``source.url`` left at the embedded default): a retrain has no source to
    pull from, so it trains on what `flywheel ingest --file` added last."""
    from flywheel.data.snapshots import latest_snapshot

    if ws.settings.source.url != ws.settings.embedded_source_url:
        return None
    latest = latest_snapshot(ws.settings, ws.settings.source.dataset)
    return latest if latest is not None and latest.source.get("file") else None


def _champion_snapshot(ws: Workspace) -> str | None:
    """The snapshot the champion was trained on (its registry tag), or None."""
    from flywheel.registry._client import alias_version
    from flywheel.tracking import TAG

    name = ws.settings.registry.model_name
    version = alias_version(ws.client, name, "champion")
    if version is None:
        return None
    tags = ws.client.get_model_version(name, version).tags or {}
    return tags.get(TAG["snapshot_id"])


def _validate(ws: Workspace, run: PipelineRun) -> dict[str, Any]:
    from flywheel.data.snapshots import require_valid, validate_snapshot
    from flywheel.errors import ContractViolation

    manifest = _manifest(ws, run)
    try:
        report = require_valid(ws.settings, manifest)
    except ContractViolation as exc:
        if exc.details.get("violations"):
            raise
        validate_snapshot(ws.settings, manifest)  # validated against an older contract
        report = require_valid(ws.settings, manifest)
    return {"snapshot_id": manifest.id, "contract_version": report.contract_version,
            "rows": report.rows, "passed": report.passed}  # fmt: skip


@contextmanager
def _tagged(pipeline_run: str) -> Iterator[None]:
    """MLflow runs started inside carry ``flywheel.pipeline_run`` from their creation
    (MLflow's ``MLFLOW_RUN_CONTEXT``), so a kill at any point leaves a run we can find."""
    name = "MLFLOW_RUN_CONTEXT"
    before = os.environ.get(name)
    tags = json.loads(before) if before else {}
    os.environ[name] = json.dumps({**tags, PIPELINE_TAG: pipeline_run})
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _tagged_run(ws: Workspace, pipeline_run: str) -> str | None:
    """A FINISHED training run of this pipeline run; unfinished ones are marked KILLED."""
    from flywheel.registry._client import mlflow_errors

    with mlflow_errors("find the pipeline's training run", ws):
        client = ws.client
        found = client.search_runs(
            [ws.experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_run}'"
        )
        for r in found:
            if r.info.status in ("RUNNING", "SCHEDULED"):
                client.set_terminated(r.info.run_id, "KILLED")
                log.warning(
                    "training run %s of %s was cut off: KILLED", r.info.run_id, pipeline_run
                )
    done = sorted(
        (r for r in found if r.info.status == "FINISHED"), key=lambda r: r.info.start_time
    )
    return done[0].info.run_id if done else None


def _run_text(ws: Workspace, run_id: str, name: str) -> str | None:
    try:
        with tempfile.TemporaryDirectory(prefix="flywheel-retrain-") as tmp:
            return Path(ws.client.download_artifacts(run_id, name, tmp)).read_text("utf-8")
    except Exception:  # absent (an older run): the caller falls back
        return None


def _params(ws: Workspace) -> tuple[TrainParams, str]:
    """The champion's effective params (``params.yaml`` of its run), else the params file."""
    import yaml

    from flywheel.registry._client import alias_version, get_version
    from flywheel.registry.aliases import CHAMPION
    from flywheel.training.params import TrainParams, load_params

    client, name = ws.client, ws.settings.registry.model_name
    champion = alias_version(client, name, CHAMPION)
    if champion is not None:
        run_id = get_version(client, name, champion).run_id
        text = _run_text(ws, run_id, "params.yaml") if run_id else None
        if text:
            try:
                return TrainParams.model_validate(yaml.safe_load(text)), f"champion v{champion}"
            except ValueError as exc:
                log.warning("champion v%s's params.yaml unusable (%s)", champion, exc)
    source = ws.settings.training.params_file
    return load_params(source), str(source or "defaults")


def _train(ws: Workspace, run: PipelineRun) -> dict[str, Any]:
    from flywheel.training.train import train

    found = _tagged_run(ws, run.id)
    if found is not None:
        run.run_id = found
        return {"run_id": found, "reused": True}
    from flywheel.monitoring.sources import parse_every

    params, source = _params(ws)
    w = ws.settings.retrain.window  # validated by the settings' pattern (e.g. 30d)
    window = parse_every(w) if w else None
    with _tagged(run.id):
        result = train(
            ws, _manifest(ws, run), params, trials=ws.settings.retrain.trials, window_s=window
        )
    run.run_id = result.run_id
    _held(run)["result"] = result
    return {"run_id": result.run_id, "reused": False, "family": result.family,
            "params_from": source, "cv_metrics": result.cv_metrics, "window": w}  # fmt: skip


def _result(ws: Workspace, run: PipelineRun) -> TrainResult | str:
    held = _held(run).get("result")
    if held is not None and held.run_id == run.run_id:
        return held  # type: ignore[no-any-return]
    assert run.run_id is not None
    return run.run_id


def _evaluate(ws: Workspace, run: PipelineRun) -> dict[str, Any]:
    from flywheel.pipelines.steps import apply_gates
    from flywheel.registry.artifacts import load_champion
    from flywheel.training.evaluate import evaluate

    assert run.run_id is not None
    evaluation = evaluate(ws, _result(ws, run), champion=load_champion(ws))
    _held(run)["evaluation"] = evaluation
    _held(run)["gates"] = apply_gates(ws, run.run_id, evaluation)  # raises GateFailed
    return {"passed": True, "primary_metric": evaluation.primary_metric,
            "metrics": evaluation.metrics, "champion_version": evaluation.champion_version,
            "champion_metrics": evaluation.champion_metrics}  # fmt: skip


def _rebuilt(ws: Workspace, run_id: str) -> TrainResult:
    """A TrainResult read back from the MLflow run (for a step in another process)."""
    import yaml

    from flywheel.tracking import TAG
    from flywheel.training.runs import get_run, load_training_meta
    from flywheel.training.threshold import ThresholdChoice
    from flywheel.training.track import INPUTS_TAG, MODEL_URI_TAG
    from flywheel.training.train import TrainResult

    mlrun, meta = get_run(ws, run_id), load_training_meta(ws, run_id)
    tags, metrics = mlrun.data.tags, mlrun.data.metrics
    params = yaml.safe_load(_run_text(ws, run_id, "params.yaml") or "{}") or {}
    choice = _run_text(ws, run_id, "threshold.json")
    return TrainResult(
        run_id=run_id, snapshot_id=meta.snapshot_id, dataset=tags.get(TAG["dataset"], ""),
        task=meta.task, target=meta.target, family=tags.get(TAG["family"], ""),
        feature_specs=meta.feature_specs, hyperparams=dict(params.get("hyperparams") or {}),
        cv_metrics={k: v for k, v in metrics.items() if "_cv_" in k},
        model_uri=tags.get(MODEL_URI_TAG, ""), classes=meta.classes,
        threshold=ThresholdChoice(**json.loads(choice)) if choice else None,
        inputs_sha256=tags.get(INPUTS_TAG, ""), meta=meta,
    )  # fmt: skip


def _bundle(ws: Workspace, run: PipelineRun) -> tuple[TrainResult, Evaluation, GateReport]:
    """What registration needs: held by this process, else rebuilt and re-evaluated."""
    from flywheel.registry.artifacts import load_champion
    from flywheel.training.evaluate import evaluate
    from flywheel.training.gates import check_gates

    held = _held(run)
    result = _result(ws, run)
    if not isinstance(result, str) and "evaluation" in held:
        return result, held["evaluation"], held["gates"]
    rebuilt = result if not isinstance(result, str) else _rebuilt(ws, result)
    evaluation = evaluate(ws, rebuilt, champion=load_champion(ws))
    return rebuilt, evaluation, check_gates(ws.settings.gates, evaluation)


def _registered(ws: Workspace, run_id: str) -> str | None:
    """The version already registered from ``run_id``; a half-made one (killed before its
    ``register`` ledger entry) is deleted so that it is made again."""
    from flywheel.registry._client import mlflow_errors

    name = ws.settings.registry.model_name
    with mlflow_errors("find the versions of the training run", ws):
        client = ws.client
        mine = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id == run_id]
        logged = {e.to_version for e in ws.audit.entries(name) if e.action == "register"}
        for v in mine:
            if str(v.version) in logged:
                return str(v.version)
            log.warning("deleting v%s of %s: its registration was cut off", v.version, name)
            client.delete_model_version(name, str(v.version))
    return None


def _register(ws: Workspace, run: PipelineRun) -> dict[str, Any]:
    from flywheel.pipelines.steps import write_card
    from flywheel.registry.register import register

    assert run.run_id is not None
    found = _registered(ws, run.run_id)
    if found is not None:
        run.version = found
        return {"version": found, "reused": True}
    result, evaluation, report = _bundle(ws, run)
    done = register(ws, result, evaluation=evaluation, gate_report=report)
    card = write_card(ws, done.name, done.version, done.card_markdown)
    run.version = done.version
    return {"version": done.version, "reused": False, "model_uri": done.model_uri,
            "onnx_sha256": done.onnx_sha256, "card": str(card)}  # fmt: skip


def _plan(ws: Workspace, version: str) -> RolloutPlan:
    import yaml

    from flywheel.rollout.plan import RolloutPlan, load_plan

    r = ws.settings.retrain
    if r.rollout_plan is None:
        return RolloutPlan(challenger=version, strategy=r.rollout)
    data = yaml.safe_load(Path(r.rollout_plan).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        return load_plan(r.rollout_plan)  # its own error names the file
    return load_plan({**data, "challenger": version})


def _rollout(ws: Workspace, run: PipelineRun) -> dict[str, Any]:
    from flywheel.registry._client import alias_version
    from flywheel.registry.aliases import CHAMPION
    from flywheel.rollout.actions import start, store_of

    if ws.settings.retrain.rollout == "none":
        return {"skipped": "retrain.rollout is none: the challenger waits for a person"}
    assert run.version is not None
    name = ws.settings.registry.model_name
    latest = store_of(ws).latest(name)
    if latest is not None and latest.challenger == run.version and run.id in latest.reason:
        run.rollout_id = latest.id  # started before a kill
        return {"rollout_id": latest.id, "strategy": latest.strategy, "reused": True}
    if alias_version(ws.client, name, CHAMPION) is None:
        return {"skipped": "no champion to roll out against: promote a first version"}
    why = run.trigger.get("reason") or run.trigger.get("kind")
    state = start(ws, _plan(ws, run.version), reason=f"pipeline run {run.id}: {why}")
    run.rollout_id = state.id
    return {"rollout_id": state.id, "strategy": state.strategy, "champion": state.champion,
            "challenger": state.challenger, "status": state.status}  # fmt: skip


_BODIES: dict[str, Callable[[Workspace, PipelineRun], dict[str, Any]]] = {
    "ingest": _ingest,
    "validate": _validate,
    "train": _train,
    "evaluate": _evaluate,
    "register": _register,
    "rollout": _rollout,
}


# --------------------------------------------------------------------------- the decision


SILENT_S = 15.0  # no server has written a rollout's counts for this long: say so, once


def await_decision(
    ws: Workspace,
    rollout_id: str,
    timeout_s: float | None = None,
    *,
    poll_s: float = 1.0,
    warn: Callable[[str], None] | None = None,
) -> str:
    """Poll the rollout store until the rollout ends (``promoted``, ``rolled_back``,
    ``aborted``) or ``timeout_s`` passes (None: no limit); returns its status then.
    ``warn`` is told, once, when no server has written the rollout's counts for SILENT_S
    (nothing decides it then: `flywheel serve` is not running on this registry)."""
    from flywheel.errors import NotFound
    from flywheel.rollout.actions import store_of
    from flywheel.rollout.store import TERMINAL

    started = time.monotonic()
    deadline = None if timeout_s is None else started + timeout_s
    while True:
        store = store_of(ws)
        state = store.get(rollout_id)
        if state is None:
            raise NotFound(f"No rollout {rollout_id!r} in the rollout store.", rollout=rollout_id)
        if state.status in TERMINAL or (deadline is not None and time.monotonic() >= deadline):
            return state.status
        if warn is not None and time.monotonic() - started >= SILENT_S:
            seen = store.replicas_seen(rollout_id).values()
            if not any(at >= time.time() - SILENT_S for at in seen):
                warn(
                    f"no server has written counts for rollout {rollout_id} in {SILENT_S:.0f} s: "
                    "nothing decides it until `flywheel serve` runs on this registry (still "
                    "waiting; Ctrl-C stops waiting, the rollout goes on)"
                )
            warn = None
        time.sleep(poll_s)
