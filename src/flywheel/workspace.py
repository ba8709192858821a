"""The workspace: the one object every entry point builds from :class:`~flywheel.config.Settings`.

The CLI, the pipelines and the tests build a :class:`Workspace` and hand it to the
capabilities (training, evaluation, the registry), the way datasette's CLI, app and tests
all build ``Datasette(...)``: one set-up path to debug. It holds

- ``settings``: the effective configuration;
- ``store``: the object store (``data.store``);
- ``client``: an ``mlflow.MlflowClient`` with explicit tracking and registry URIs, so
  nothing depends on MLflow's process-global tracking URI;
- ``audit``: the registry's audit log (``registry.audit``);
- ``predlog``: the prediction log, opened (and its writer started) on first use;
- the snapshot manifests and the snapshot rows a command resolves and reads, remembered so
  one command resolves a snapshot id once and reads its rows once.

Building one is cheap: every part is made on first use, and importing this module imports
neither MLflow nor scikit-learn (nor pandas). :meth:`close` releases what was opened.

MLflow's fluent API (``mlflow.start_run``, ``Model.log``, ``mlflow.initialize_logged_model``)
reads the process-global tracking URI; :meth:`Workspace.tracking` points it at this
workspace's for the duration of a block and restores the previous value afterwards.

MLflow's S3 artifact client reads its endpoint from ``MLFLOW_S3_ENDPOINT_URL`` only. When
``tracking.artifact_location`` is an ``s3://`` URI and ``store.endpoint_url`` is set, the
client (:attr:`Workspace.client`) sets that variable to ``store.endpoint_url`` unless the
user set it (:func:`mlflow_s3_endpoint`): one S3 endpoint for snapshots and models.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.config import Settings, load_settings, mask_url
from flywheel.errors import NotFound, RegistryError, StoreError

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

    from flywheel.data.snapshots import Manifest
    from flywheel.data.store import ObjectStore
    from flywheel.predlog import PredictionLog
    from flywheel.registry.audit import AuditLog

__all__ = ["Workspace", "is_artifact_store_failure", "mlflow_s3_endpoint"]

# MLflow's global tracking URI is process-wide: blocks that repoint it are serialised (a
# re-entrant lock, so a block may open another, e.g. logging a model inside a run).
_GLOBAL_URI_LOCK = threading.RLock()

# MLflow's S3 artifact client reads its endpoint from this variable, and from nowhere else.
S3_ENDPOINT_VAR = "MLFLOW_S3_ENDPOINT_URL"
_s3_endpoint_set: str | None = None  # the value a workspace put there (not the user's)


def mlflow_s3_endpoint(settings: Settings) -> str | None:
    """The S3 endpoint flywheel gives MLflow's artifact store: ``store.endpoint_url`` when
    ``tracking.artifact_location`` is an ``s3://`` URI (MinIO, Ceph, R2 or a test server
    holding both the snapshots and the models), else None (AWS's own endpoint, or artifacts
    that are not on S3). A user's ``MLFLOW_S3_ENDPOINT_URL`` overrides it
    (:func:`_use_s3_endpoint`)."""
    location = settings.tracking.artifact_location or ""
    if location.startswith("s3://") and settings.store.endpoint_url:
        return settings.store.endpoint_url
    return None


def _use_s3_endpoint(settings: Settings) -> None:
    """Point MLflow's S3 artifact client at :func:`mlflow_s3_endpoint`, unless the user set
    ``MLFLOW_S3_ENDPOINT_URL`` themselves (theirs wins)."""
    global _s3_endpoint_set
    wanted = mlflow_s3_endpoint(settings)
    current = os.environ.get(S3_ENDPOINT_VAR)
    if wanted is None or (current is not None and current != _s3_endpoint_set):
        return
    os.environ[S3_ENDPOINT_VAR] = _s3_endpoint_set = wanted


_ARTIFACT_CLIENT_MODULES = ("botocore", "boto3", "s3transfer")


def is_artifact_store_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is the artifact store's: an S3
    client error (an endpoint that does not answer, refused credentials, a missing bucket),
    a local artifact folder's ``OSError``, or MLflow's summary of failed downloads."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        module = type(error).__module__.split(".")[0]
        if module in _ARTIFACT_CLIENT_MODULES:
            return True
        if module in ("requests", "urllib3", "http"):
            # MLflow's REST client to the tracking server: the OSError under it (a refused
            # connection) is the tracking store's, not the artifact store's
            return False
        if isinstance(error, OSError):
            return True
        if str(getattr(error, "message", "")).startswith(
            "The following failures occurred while downloading"
        ):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Workspace:
    """Settings plus the stores, clients and logs built from them, each on first use."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else load_settings()
        self._manifests: dict[str, Manifest] = {}  # id (and id prefix) -> manifest
        self._frame: tuple[str, pd.DataFrame] | None = None  # the last snapshot read

    @classmethod
    def of(cls, target: Workspace | Settings) -> Workspace:
        """``target`` itself, or a workspace built from settings (for callers that hold
        only :class:`Settings`, such as the serving core's registry source)."""
        return target if isinstance(target, Workspace) else cls(target)

    def __repr__(self) -> str:
        return f"Workspace(home={str(self.settings.home)!r})"

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the prediction log and dispose of the audit log's connections,
        where they were opened. The workspace can be used again afterwards (they reopen)."""
        predlog, audit = self.__dict__.pop("predlog", None), self.__dict__.pop("audit", None)
        self._frame = None
        try:
            if predlog is not None:
                predlog.close()
        finally:
            if audit is not None:
                audit.dispose()

    # ------------------------------------------------------------------ data

    @cached_property
    def store(self) -> ObjectStore:
        """The object store named by ``settings.store``."""
        from flywheel.data.store import open_store

        return open_store(self.settings)

    def snapshot(
        self, ref: str | Manifest | None = None, *, dataset: str | None = None
    ) -> Manifest:
        """The manifest of snapshot ``ref`` (an id or a unique id prefix), or, without one,
        the newest snapshot of ``dataset`` (default ``source.dataset``).

        Manifests are immutable, so each id is resolved once per workspace and remembered.
        """
        from flywheel.data.snapshots import Manifest, get_snapshot, latest_snapshot

        if isinstance(ref, Manifest):
            self._manifests.setdefault(ref.id, ref)
            return ref
        if ref is None:
            name = dataset or self.settings.source.dataset
            latest = latest_snapshot(self.settings, name)
            if latest is None:
                from flywheel.data.snapshots import list_snapshots

                others = sorted({m.dataset for m in list_snapshots(self.settings)} - {name})
                fix = (
                    f"Snapshots exist for {', '.join(map(repr, others))}: name yours with "
                    "source.dataset (FLYWHEEL_SOURCE__DATASET; `flywheel train --dataset`), or run "
                    "`flywheel ingest`."
                    if others
                    else "Fix: run `flywheel ingest` first."
                )
                raise NotFound(f"Dataset {name!r} has no snapshot yet. {fix}", dataset=name)
            return self._manifests.setdefault(latest.id, latest)
        wanted = ref.strip()
        if wanted not in self._manifests:
            manifest = get_snapshot(self.settings, wanted)
            self._manifests[wanted] = self._manifests.setdefault(manifest.id, manifest)
        return self._manifests[wanted]

    def read_snapshot(self, snapshot: str | Manifest) -> pd.DataFrame:
        """The full table of a snapshot (each part's sha256 checked on read). The last table
        read is kept, so reading the same snapshot again in one command costs nothing; do
        not modify it in place (pandas' copy-on-write keeps derived frames apart)."""
        from flywheel.data.snapshots import read_snapshot

        manifest = self.snapshot(snapshot)
        if self._frame is None or self._frame[0] != manifest.id:
            self._frame = (manifest.id, read_snapshot(self.settings, manifest))
        return self._frame[1]

    # ------------------------------------------------------------------ tracking and registry

    @property
    def tracking_uri(self) -> str:
        return self.settings.tracking.uri or ""

    @cached_property
    def client(self) -> MlflowClient:
        """An MLflow client on ``tracking.uri`` (tracking and registry alike).

        A SQLite tracking database that does not exist yet is created here under a file
        lock: MLflow creates its schema on first use, and several processes creating one
        database at once fail on migrations."""
        from mlflow import MlflowClient

        # MLflow's quiet defaults for a command line (the user's environment wins)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
        # with a tracking server, MLflow prints "View run ..." links to stdout when a run
        # ends: they would break the JSON that `--json` commands print there
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        _use_s3_endpoint(self.settings)  # store.endpoint_url for s3:// artifacts
        uri = self.tracking_uri
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        except Exception as exc:  # MLflow raises many types; translate at the boundary
            raise self._store_error(exc) from exc
        path = _sqlite_path(uri)
        if path is not None and not path.exists():
            self.__dict__["experiment_id"] = self._ensure_experiment(client)
        return client

    @cached_property
    def experiment_id(self) -> str:
        """The id of ``tracking.experiment``, created (at ``tracking.artifact_location``)
        when it does not exist."""
        return self._ensure_experiment(self.client)

    def _ensure_experiment(self, client: MlflowClient) -> str:
        path = _sqlite_path(self.tracking_uri)
        try:
            if path is None:
                return _experiment(client, self.settings)
            with _file_lock(path.with_name(path.name + ".lock")):
                return _experiment(client, self.settings)
        except Exception as exc:  # MLflow raises many types; translate at the boundary
            raise self._store_error(exc) from exc

    def _store_error(self, exc: Exception) -> RegistryError:
        uri = mask_url(self.tracking_uri)
        return RegistryError(
            f"Cannot use the MLflow tracking store {uri!r}: {exc}. "
            "Check tracking.uri (FLYWHEEL_TRACKING__URI) and that the server is up.",
            uri=uri,
        )

    def artifact_store_error(
        self, exc: BaseException, what: str, location: str | None = None
    ) -> StoreError:
        """A :class:`StoreError` for MLflow's artifact store failing at ``what`` (``"write
        the training run"``), naming where it looked (``location``, default
        ``tracking.artifact_location``) and, on S3, the endpoint MLflow used."""
        where = location or self.settings.tracking.artifact_location or ""
        details: dict[str, Any] = {"artifact_location": where or None}
        if where.startswith("s3://"):
            endpoint = os.environ.get(S3_ENDPOINT_VAR)
            details["endpoint"] = endpoint or "AWS"
            if endpoint:
                source = "store.endpoint_url" if endpoint == _s3_endpoint_set else S3_ENDPOINT_VAR
                on = f" at the S3 endpoint {endpoint} ({source})"
            else:
                on = (
                    " at AWS S3 (no endpoint set: for MinIO, Ceph, R2 or a test server set "
                    "store.endpoint_url, or MLFLOW_S3_ENDPOINT_URL)"
                )
            fix = "Check that the endpoint is up, the bucket exists and the AWS credentials."
        else:
            on = ""
            fix = "Check tracking.artifact_location and that it can be read and written."
        shown = repr(where) if where else "(the tracking server's default root)"
        text = str(exc).strip().rstrip(".")
        return StoreError(
            f"Cannot {what} in MLflow's artifact store {shown}{on}: {text}. {fix}", **details
        )

    @contextmanager
    def tracking(self) -> Iterator[MlflowClient]:
        """A block in which MLflow's fluent API uses this workspace's tracking URI.

        The process-global tracking URI is set on entry and put back as it was on exit (as
        is ``MLFLOW_TRACKING_URI``, which MLflow sets with it); blocks of several threads
        take turns. Yields :attr:`client`."""
        import mlflow
        from mlflow.tracking._tracking_service import utils as tracking_utils

        client = self.client
        with _GLOBAL_URI_LOCK:
            before = mlflow.get_tracking_uri() if tracking_utils.is_tracking_uri_set() else None
            env_before = os.environ.get("MLFLOW_TRACKING_URI")
            mlflow.set_tracking_uri(self.tracking_uri)
            try:
                yield client
            finally:
                # None unsets it again (as MLflow's own _use_tracking_uri restores it)
                mlflow.set_tracking_uri(before)  # type: ignore[arg-type]
                if env_before is None:
                    os.environ.pop("MLFLOW_TRACKING_URI", None)
                else:
                    os.environ["MLFLOW_TRACKING_URI"] = env_before

    @cached_property
    def audit(self) -> AuditLog:
        """The registry's append-only audit log at ``registry.audit_url``."""
        from flywheel.registry.audit import AuditLog

        return AuditLog(self.settings.registry.audit_url or "")

    # ------------------------------------------------------------------ prediction log

    @cached_property
    def predlog(self) -> PredictionLog:
        """The prediction log at ``serving.prediction_log_url``, opened and its writer
        started on first use; :meth:`close` flushes and closes it."""
        from flywheel.predlog import open_prediction_log

        serving = self.settings.serving
        return open_prediction_log(
            serving.prediction_log_url or "",
            on_full=serving.prediction_log_on_full,
            durability=serving.prediction_log_durability,
        )


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _experiment(client: Any, settings: Settings) -> str:
    from mlflow.exceptions import MlflowException

    name = settings.tracking.experiment
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return str(
                client.create_experiment(
                    name, artifact_location=settings.tracking.artifact_location
                )
            )
        except MlflowException:  # created meanwhile by another process
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    return str(found.experiment_id)
