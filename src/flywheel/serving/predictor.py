"""The protocol-free serving core.

Interface (everything a protocol adapter needs)::

    predictor = Predictor(config, {"churn": RegistrySource(settings)}, sink=log)
    await predictor.start()                       # load every model (then poll the registry)
    response = await predictor.predict(PredictRequest(records=[{...}], protocol="grpc"))
    response.labels, response.probabilities, response.model, response.version
    await predictor.reload("churn")               # follow the alias now (admin)
    await predictor.pin("churn", "3")             # serve version 3 until unpinned (None)
    predictor.ready, predictor.models()           # readiness, loaded versions
    await predictor.close()

``predict`` raises :class:`flywheel.errors.FlywheelError` subclasses (see
:mod:`flywheel.serving.errors`), each with an HTTP ``status`` and ``to_dict()``; adapters map
them to their protocol. Rows are decoded straight to per-feature columns
(:mod:`flywheel.serving.decode`) and scored through a per-model micro-batcher
(:mod:`flywheel.serving.batching`).

Hot swap: a new version is loaded and warmed in a thread beside the serving one, then a
single attribute assignment on the event loop makes it current. A request binds the model
it started with, so it finishes on that version; nobody sees a half-loaded model. Every
served model (name) is one ONNX Runtime session in this process, shared by all requests.

Prediction log: when a ``sink`` is given, each answered request becomes one log row keyed
by the server's request id, with the client's id beside it. A
:class:`~flywheel.serving.types.PredictionSink` (the :class:`flywheel.predlog.PredictionLog`)
gets the encoded row, built here in one step (~3% less server CPU per ``/v1/predict``
request at 64 connections than a record and its encoding layers) through ``append_row``,
or, when the sink is ``durable``, through ``commit_row``, whose future ``predict`` awaits
before it returns (an answer is released only once its row is committed; not committed:
:class:`~flywheel.predlog.PredictionLogError`, 503). When the log took the version's input
names at load (``register_inputs``), the row's inputs are the columns in input order, a
JSON array (~6% less CPU again, a third less log on disk). A sink with only ``append`` (a
:class:`~flywheel.serving.types.RecordSink`) gets a
:class:`flywheel.predlog.PredictionRecord` whose ``inputs``/``outputs`` hold the validated
columns and raw output arrays (not copied).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.errors import FlywheelError
from flywheel.predlog import PredictionLogError, PredictionRecord, encode_json
from flywheel.rollout.counters import ArmCounter
from flywheel.schema import InputSchema
from flywheel.serving.batching import BatchStats, assemble
from flywheel.serving.clock import DataClock
from flywheel.serving.config import ServedModel, ServingConfig
from flywheel.serving.cycle import Calls, new_request_id
from flywheel.serving.decode import Decoded, decode_arrow, decode_columns, decode_records
from flywheel.serving.errors import (
    BadRequest,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    TooManyRows,
)
from flywheel.serving.loading import LoadedModel, load_model
from flywheel.serving.metrics import ServingMetrics
from flywheel.serving.rollouts import SHADOW_QUEUE, LiveRollout, first_value
from flywheel.serving.sources import ModelSource, RegistrySource
from flywheel.serving.types import PredictionSink, PredictRequest, PredictResponse

if TYPE_CHECKING:
    from flywheel.config import Settings
    from flywheel.workspace import Workspace

__all__ = ["PredictRequest", "PredictResponse", "Predictor", "new_request_id"]

log = logging.getLogger("flywheel.serving")


@dataclass
class _Slot:
    served: ServedModel
    source: ModelSource
    model: LoadedModel | None = None
    pinned: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stats: BatchStats = field(default_factory=BatchStats)
    last_error: str | None = None
    rollout: LiveRollout | None = None  # the active rollout's router and challenger
    health: ArmCounter = field(default_factory=ArmCounter)  # the served version (self-healing)
    # the input schema of the version served before this one (None: not known here): an input
    # error it raises alike is the client's, not the new version's (self-healing ignores it)
    replaced_schema: InputSchema | None = None


class Predictor:
    """Serves one or more models; see the module docstring for the interface."""

    def __init__(
        self,
        config: ServingConfig,
        sources: Mapping[str, ModelSource],
        *,
        sink: PredictionSink | None = None,
        metrics: ServingMetrics | None = None,
    ) -> None:
        served = {m.name: m for m in config.models} or {n: ServedModel(n) for n in sources}
        missing = sorted(set(served) - set(sources))
        if missing:
            raise ValueError(f"No model source for served model(s) {missing}.")
        self.config = config
        self.sink = sink
        self.metrics = metrics or ServingMetrics()
        self.metrics.models = self._model_info
        self.metrics.sink = sink
        self.calls = Calls(self.metrics, config.api_key)  # the request cycle every front runs
        self._slots = {name: _Slot(m, sources[name]) for name, m in served.items()}
        self.default_model = next(iter(self._slots))
        self._poller: asyncio.Task[None] | None = None
        self.rollout_agent: Any = None  # the server's RolloutAgent (admin routes use it)
        self.clock = DataClock()  # the log's time: the wall clock unless a replay sets it

    @classmethod
    def from_settings(
        cls, settings: Settings | Workspace, config: ServingConfig | None = None, **kwargs: Any
    ) -> Predictor:
        """Models from the MLflow registry of ``settings`` (or a workspace built from them)."""
        from flywheel.workspace import Workspace

        ws = Workspace.of(settings)
        config = config or ServingConfig.from_settings(ws.settings)
        models = config.models or (ServedModel(ws.settings.registry.model_name),)
        sources = {m.name: RegistrySource(ws, m.registered_name or m.name) for m in models}
        return cls(config.model_copy(update={"models": models}), sources, **kwargs)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load every model (failures are logged; the server stays not-ready and the poller
        retries), then start polling the registry if ``poll_interval_s`` > 0."""
        for name in self._slots:
            try:
                await self.reload(name)
            except FlywheelError as exc:
                log.error("model %s not loaded: %s", name, exc.message)
        if self.rollout_agent is not None and self.ready:
            # route by an active rollout from the first answer (a restart, a new replica)
            try:
                await self.rollout_agent.sync(judge=False)
            except Exception:  # the agent retries every poll; serving starts regardless
                log.exception("rollout state not applied at start")
            await self.rollout_agent.learn_replaced()  # self-healing's view of input errors
        if self.config.poll_interval_s > 0 and self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name="flywheel-registry-poll")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            for name in self._slots:
                try:
                    await self.reload(name)
                except FlywheelError as exc:
                    log.warning("registry poll for %s failed: %s", name, exc.message)
                except Exception:  # keep polling whatever the registry client raised
                    log.exception("registry poll for %s failed", name)

    @property
    def ready(self) -> bool:
        return all(slot.model is not None for slot in self._slots.values())

    def model(self, name: str | None = None, version: str | None = None) -> LoadedModel:
        """The model currently serving ``name`` (None: the default model). ``version``, when
        given, must be the version being served. Raises ModelNotFound / ModelNotReady: the
        one place every protocol's "which model, which version" is decided."""
        slot = self._slot(name)
        model = slot.model
        if model is None:
            raise ModelNotReady(
                f"Model {slot.served.name!r} is not loaded yet"
                + (f" ({slot.last_error})" if slot.last_error else "")
                + ". Retry shortly.",
                model=slot.served.name,
            )
        if version and str(version) != model.version:
            rollout = slot.rollout
            if rollout is not None and str(version) == rollout.challenger.version:
                return rollout.challenger
            raise ModelNotFound(
                f"Model {model.name!r} version {str(version)[:32]!r} is not served; "
                f"this server serves version {model.version}. Pin it with POST /admin/pin.",
                model=model.name,
                version=str(version)[:32],
            )
        return model

    def metadata(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        """The model's Open Inference metadata, protocol-free: ``name``, ``versions``,
        ``platform``, and ``inputs``/``outputs`` as ``{name, datatype, shape}`` with the
        datatypes read from the ONNX session (REST and gRPC both render this one dict)."""
        model = self.model(name, version)
        return model.metadata(name or model.name)

    def names(self) -> list[str]:
        return list(self._slots)

    def models(self) -> list[dict[str, Any]]:
        """Every served model: name, ref, pinned, loaded version and schema (or None)."""
        out = []
        for name, slot in self._slots.items():
            info: dict[str, Any] = {
                "name": name,
                "ref": slot.served.ref,
                "pinned": slot.pinned,
                "ready": slot.model is not None,
            }
            if slot.model is not None:
                info.update(slot.model.describe(), name=name)
            out.append(info)
        return out

    def _model_info(self) -> list[dict[str, Any]]:
        """Every loaded version: each model's served one and, during a rollout, its
        challenger (loaded and scoring beside it)."""
        loaded = [
            (n, m)
            for n, s in self._slots.items()
            for m in (s.model, s.rollout.challenger if s.rollout is not None else None)
            if m is not None
        ]
        return [{"name": n, "version": m.version, "sha256": m.sha256} for n, m in loaded]

    def _slot(self, name: str | None) -> _Slot:
        slot = self._slots.get(name or self.default_model)
        if slot is None:
            raise ModelNotFound(
                f"No model named {str(name)[:64]!r} is served here; served: {self.names()}.",
                model=str(name)[:64],
            )
        return slot

    # ------------------------------------------------------------------ hot swap
    async def reload(self, name: str | None = None, *, force: bool = False) -> str:
        """Make ``name`` serve what its ref (or pin) points at now; returns the version.
        Loads beside the current version and swaps atomically; a no-op when unchanged."""
        slot = self._slot(name)
        async with slot.lock:
            ref = slot.pinned or slot.served.ref
            version = await asyncio.to_thread(slot.source.resolve, ref)
            if slot.model is not None and slot.model.version == version and not force:
                return version
            try:
                model = await asyncio.to_thread(self._load, slot, version)
            except FlywheelError as exc:
                slot.last_error = exc.message
                self.metrics.reload(slot.served.name, "failed")
                raise
            old, slot.model, slot.last_error = slot.model, model, None
            if old is not None:
                slot.replaced_schema = old.schema
                # self-healing judges the new version on its own answers: the window's
                # counts so far were the old one's (they diluted a failing promotion)
                slot.health.reset()
            live = slot.rollout
            if old is not None and (live is None or old is not live.challenger):
                _unwire(old)
            _wire(slot)
            _freeze_heap()
            self.metrics.reload(slot.served.name, "loaded")
            log.info(
                "model %s now serves version %s (was %s)",
                slot.served.name,
                version,
                old.version if old else None,
            )
            return version

    async def pin(self, name: str | None, version: str | None) -> str:
        """Serve ``version`` of ``name`` regardless of its alias (None: follow the alias)."""
        slot = self._slot(name)
        previous = slot.pinned
        slot.pinned = None if version is None else str(version)
        try:
            return await self.reload(slot.served.name)
        except FlywheelError:
            slot.pinned = previous
            raise

    # ------------------------------------------------------------------ rollouts
    def rollout(self, name: str | None = None) -> LiveRollout | None:
        """The slot's live rollout (None: every request goes to the served version)."""
        return self._slot(name).rollout

    @property
    def route_header(self) -> bytes | None:
        """The header (lower-case bytes) the default model's rollout routes by, if any: the
        REST front reads it into ``PredictRequest.route_key``."""
        live = self._slots[self.default_model].rollout
        header = live.router.header if live is not None else None
        return None if header is None else header.encode("latin-1")

    async def apply_rollout(self, name: str | None, state: Any) -> None:
        """Route ``name`` by ``state`` (a :class:`flywheel.rollout.store.RolloutState`): load
        and warm its challenger beside the champion first (in a thread), then swap the router
        in with one assignment. A new step keeps the challenger and starts fresh counters."""
        from flywheel.rollout.routing import Router

        slot = self._slot(name)
        current = slot.rollout
        plan = state.plan
        router = Router(
            state.id,
            state.champion or "",
            state.challenger,
            float(state.weight),
            float(plan.get("mirror", 100.0)) if state.strategy == "shadow" else 0.0,
            str(plan.get("sticky", "request_id")),
        )
        if current is not None and current.id == state.id:
            if current.revision == state.revision:
                return
            if current.step != state.step:  # new step: its own counts
                for counter in current.counters.values():
                    counter.reset()
            current.router, current.revision, current.step = router, state.revision, state.step
            return
        if current is not None and current.challenger.version == state.challenger:
            challenger = current.challenger
        else:
            async with slot.lock:
                challenger = await asyncio.to_thread(self._load, slot, str(state.challenger))
        live = LiveRollout(
            state.id,
            state.revision,
            state.step,
            state.strategy,
            router,
            challenger,
            router.salt,
        )
        if live.shadow:
            from concurrent.futures import ThreadPoolExecutor

            live.shadow_pool = ThreadPoolExecutor(1, thread_name_prefix="flywheel-shadow")
        slot.rollout = live
        if current is not None:
            current.close()
            if current.challenger is not challenger:
                _unwire(current.challenger)
        _wire(slot)
        _freeze_heap()
        log.info(
            "model %s: rollout %s (%s) routes %.4g%% to version %s",
            slot.served.name,
            state.id,
            state.strategy,
            router.weight,
            challenger.version,
        )

    def end_rollout(self, name: str | None, promoted: str | None = None) -> None:
        """Stop routing: every request goes to the served version again. ``promoted``: the
        challenger that became champion; it is already warm, so it serves at once."""
        slot = self._slot(name)
        live = slot.rollout
        if live is None:
            return
        if slot.model is not None:
            _unwire(slot.model)
        _unwire(live.challenger)
        if promoted is not None and live.challenger.version == str(promoted):
            if slot.model is not None:
                slot.replaced_schema = slot.model.schema
            slot.model = live.challenger
            self.metrics.reload(slot.served.name, "loaded")
        slot.rollout = None
        live.close()
        log.info("model %s: rollout %s ended", slot.served.name, live.id)

    def _load(self, slot: _Slot, version: str) -> LoadedModel:
        """Fetch, verify, load and warm one version (in a worker thread)."""
        files = slot.source.fetch(version)
        model = load_model(
            files.model_path,
            files.feature_specs,
            files.onnx_sha256,
            name=slot.served.name,
            version=str(files.version),
            task=files.task,
            classes=files.classes,
            threads=self.config.ort_threads,
        )
        slot.stats.on_batch = lambda rows, _n=slot.served.name: self.metrics.batch(_n, rows)
        model.configure_batching(
            max_rows=self.config.max_batch_rows,
            max_wait_s=self.config.max_wait_ms / 1000,
            inline_max_rows=self.config.inline_max_rows,
            gather_turns=self.config.gather_turns,
            stats=slot.stats,
            on_scored=partial(self.metrics.score, model.name, model.version),
        )
        warm = [[np.nan] if is_num else [""] for is_num in model.schema.numeric]
        model.run(assemble([Decoded(warm, 1)], model.schema.numeric))  # as the batcher sends it
        self._register_inputs(model)
        return model

    def _register_inputs(self, model: LoadedModel) -> None:
        """Tell a prediction log that can name columns (``register_inputs``) this version's
        input names, so its rows carry the inputs as a JSON array: a third less log on disk
        and ~6% less server CPU per request at 64 connections. Any failure keeps named
        objects."""
        sink = self.sink
        if sink is None or not _takes_rows(sink):
            return
        try:
            if sink.register_inputs(
                model.name,
                model.version,
                model.schema.names,
                numeric=model.schema.numeric,
                classes=model.classes,
            ):
                model.columns_logged_to = sink
        except Exception as exc:  # the log is optional for serving: keep named inputs
            log.warning(
                "prediction log: input names of %s version %s not registered (%s); its rows "
                "keep named inputs",
                model.name,
                model.version,
                exc,
            )

    def batch_stats(self, name: str | None = None) -> BatchStats:
        return self._slot(name).stats

    # ------------------------------------------------------------------ predict
    def decode(self, request: PredictRequest, model: LoadedModel) -> Decoded:
        """Validate and decode the request's rows for ``model`` (raises InvalidInput)."""
        if request.records is not None:
            if request.columns is not None:
                raise BadRequest("Send rows as records or as columns, not both.")
            if not isinstance(request.records, (list, tuple)):
                raise BadRequest("records must be a list of objects.", field="records")
            self.check_rows(len(request.records))  # before decoding: no work on huge bodies
            return decode_records(request.records, model.schema, extra=request.extra_fields)
        if request.columns is None:
            raise BadRequest("The request holds no rows: send records or columns.")
        if hasattr(request.columns, "column_names"):  # a pyarrow.Table
            self.check_rows(request.columns.num_rows)  # type: ignore[attr-defined]
            return decode_arrow(request.columns, model.schema, extra=request.extra_fields)
        decoded = decode_columns(request.columns, model.schema, extra=request.extra_fields)
        self.check_rows(decoded.rows)
        return decoded

    def check_rows(self, rows: int) -> None:
        """Raise TooManyRows past ``serving.max_rows_per_request`` (every protocol)."""
        limit = self.config.max_rows_per_request
        if rows > limit:
            raise TooManyRows(
                f"The request has {rows} rows; the limit is {limit} "
                "(serving.max_rows_per_request). Split it into smaller requests.",
                rows=rows,
                limit=limit,
            )

    async def predict(self, request: PredictRequest) -> PredictResponse:
        """Score the request's rows; see the module docstring. During a rollout the slot's
        router picks the arm (a request naming a version gets that version), the arm's
        counters see the outcome, and a shadow challenger scores a mirror off the hot path."""
        start = time.perf_counter()
        slot = self._slot(request.model)
        rollout = slot.rollout
        role: str | None = None
        key: str | None = None
        routed = False
        if rollout is None:
            model = self.model(request.model, request.version)
        elif request.version:
            # a request naming its version was not assigned by the router: it answers, and
            # counts toward neither arm (nor the sample-ratio test, nor the A/B test's labels)
            model = self.model(request.model, request.version)
        else:
            model = self.model(request.model)
            router = rollout.router
            key = router.key(
                request.client_id,
                request.route_key,
                partial(first_value, request) if router.feature else _nothing,
            )
            role, routed = "champion", True
            if router.answers(key, rollout.salt):
                model, role = rollout.challenger, "challenger"
        try:
            decoded = self.decode(request, model)
            if decoded.rows == 0:
                raise InvalidInput("The request holds no rows; send at least one.", rule="rows")
            counted = role is not None or rollout is None  # a pinned request: no arm's
            labels, proba = await model.batcher.submit(decoded, counted=counted)
        except (BadRequest, TooManyRows):
            raise  # the request's shape, not the model: no arm's fault
        except FlywheelError as exc:
            challenger = rollout.challenger if rollout is not None else None
            if _client_s(exc, slot.model, challenger, slot.replaced_schema):
                raise  # both versions compared refuse it alike: no error rate counts it
            if rollout is not None and role is not None:
                rollout.counters[role].failed()
            if rollout is None:
                slot.health.failed()
            raise
        response = PredictResponse(
            model.name,
            model.version,
            request.request_id or new_request_id(),
            model.task,
            labels,
            proba,
            model.classes,
            (time.perf_counter() - start) * 1000.0,
            request.client_id,
        )
        if rollout is None:  # self-healing watches the champion when no rollout runs
            slot.health.answered(response.latency_ms)
        elif role is not None:  # the arm's batcher binned the scores (MicroBatcher.arm)
            rollout.counters[role].answered(response.latency_ms, key, unique=routed and key is None)
            if routed and rollout.shadow and rollout.router.mirrors(key, rollout.salt):
                self._mirror(rollout, request, response.request_id, model, decoded)
        if self.sink is not None:
            committed = self._log(request, model, decoded, response, role)
            if committed is not None and not await committed:
                raise PredictionLogError(
                    f"The answer to request {response.request_id} is withheld: its prediction "
                    "log row could not be committed (serving.prediction_log_durability is "
                    "commit). Retry; the server log says why the log is failing.",
                    request_id=response.request_id,
                )
        return response

    # ------------------------------------------------------------------ shadow
    def _mirror(
        self,
        rollout: LiveRollout,
        request: PredictRequest,
        request_id: str,
        champion: LoadedModel,
        decoded: Decoded,
    ) -> None:
        """Queue the request's rows for the shadow challenger (the champion's decoded columns
        when both take the same inputs) and make sure its drain runs; skipped and counted
        when ``SHADOW_QUEUE`` requests already wait."""
        if rollout.closed or rollout.shadow_pending >= SHADOW_QUEUE:
            rollout.shadow_skipped += 1
            return
        challenger = rollout.challenger
        if challenger.schema.names != champion.schema.names or (
            challenger.schema.numeric != champion.schema.numeric
        ):
            try:
                decoded = self.decode(request, challenger)
            except FlywheelError:
                rollout.counters["challenger"].failed()
                return
        rollout.shadow_queue.append((request, request_id, decoded))
        rollout.shadow_pending += 1
        if rollout.shadow_drain is None or rollout.shadow_drain.done():
            rollout.shadow_drain = asyncio.ensure_future(self._shadow(rollout))

    async def _shadow(self, rollout: LiveRollout) -> None:
        """Score what waits for the shadow, as micro-batches in its own thread (the event
        loop only splits and logs the answers); its latency is the batch's scoring time."""
        challenger = rollout.challenger
        counter = rollout.counters["challenger"]
        loop = asyncio.get_running_loop()
        limit = self.config.max_batch_rows
        while rollout.shadow_queue and not rollout.closed:
            batch: list[tuple[PredictRequest, str, Decoded]] = []
            rows = 0
            while rollout.shadow_queue and (not batch or rows < limit):
                item = rollout.shadow_queue.popleft()
                batch.append(item)
                rows += item[2].rows
            try:
                feeds = assemble([item[2] for item in batch], challenger.schema.numeric)
                start = time.perf_counter()
                labels, proba = await loop.run_in_executor(
                    rollout.shadow_pool, challenger.run, feeds
                )
                took = (time.perf_counter() - start) * 1000.0
                # [:rows]: a lone one-row batch was scored as two copies (see assemble)
                counter.scored(None if proba is None else proba[:rows])
                counter.saw(item[2] for item in batch)
                offset = 0
                for request, request_id, decoded in batch:
                    n = decoded.rows
                    part = None if proba is None else proba[offset : offset + n]
                    response = PredictResponse(
                        challenger.name,
                        challenger.version,
                        request_id,
                        challenger.task,
                        labels[offset : offset + n],
                        part,
                        challenger.classes,
                        took,
                        request.client_id,
                    )
                    offset += n
                    counter.answered(took)
                    if self.sink is not None:
                        self._log(request, challenger, decoded, response, "shadow", wait=False)
            except Exception:  # a shadow never fails an answer: counted and logged
                if rollout.closed:  # ended while this batch was scored: nothing to count
                    return
                for _ in batch:
                    counter.failed()
                log.exception("shadow scoring on version %s failed", challenger.version)
            finally:
                rollout.shadow_pending -= len(batch)

    def _log(
        self,
        request: PredictRequest,
        model: LoadedModel,
        decoded: Decoded,
        response: PredictResponse,
        role: str | None = None,
        *,
        wait: bool = True,
    ) -> Awaitable[bool] | None:
        """Log the answered request; returns the commit future a durable sink gives (the
        caller awaits it), else None. In the async mode a failure is logged, never raised:
        the answer was computed and is sent. ``role``: the rollout arm (None: no rollout);
        ``wait=False`` (a shadow row) appends without a commit future."""
        sink = self.sink
        rid = response.request_id
        client = getattr(response, "client_id", None)  # the id the client sent, if any
        named = model.columns_logged_to is not sink  # else: names registered, columns logged
        rows = not named or _takes_rows(sink)
        durable = wait and rows and sink.durable  # type: ignore[union-attr]
        try:
            outputs = {"labels": response.labels, "probabilities": response.probabilities}
            inputs: Any = decoded.columns
            if named:
                inputs = dict(zip(model.schema.names, decoded.columns, strict=True))
            if not rows:  # a record sink (append only) gets the record, raw arrays
                record = PredictionRecord(
                    rid,
                    self.clock.now(),
                    model.name,
                    model.version,
                    request.protocol,
                    inputs,
                    outputs,
                    response.latency_ms,
                    client,
                    role,
                )
                sink.append(record)  # type: ignore[union-attr]
                return None
            log_sink: PredictionSink = sink  # type: ignore[assignment]
            row = (
                rid,
                self.clock.now(),
                model.name,
                model.version,
                request.protocol,
                encode_json(inputs, rid, "inputs"),
                encode_json(outputs, rid, "outputs"),
                response.latency_ms,
                client,
                role,
            )
            if durable:
                return log_sink.commit_row(row)
            log_sink.append_row(row)
        except Exception as exc:
            if durable:  # the answer may not leave unlogged
                raise PredictionLogError(
                    f"The answer to request {rid} is withheld: its prediction log row could "
                    f"not be queued ({type(exc).__name__}: {exc}).",
                    request_id=rid,
                ) from exc
            log.exception("prediction log append failed (request %s)", rid)
        return None


_ROW_SINKS: dict[type, bool] = {}


def _client_s(
    exc: FlywheelError,
    champion: LoadedModel | None,
    challenger: LoadedModel | None,
    replaced: InputSchema | None,
) -> bool:
    """Whether a request's input error is the client's: the champion and the version it is
    compared with take the same inputs (names and kinds, in any order), so both refuse an
    unknown or missing field alike, and no error rate counts it. Compared: during a rollout
    the challenger (of the rollout the request was routed by); otherwise (self-healing) the
    version the champion replaced, when this process served it (``replaced``). With other
    inputs a refusal may be the new version's regression: it counts. Failed requests only."""
    if not isinstance(exc, InvalidInput) or champion is None:
        return False
    other = challenger.schema if challenger is not None else replaced
    return other is not None and set(champion.schema.specs) == set(other.specs)


def _nothing(_name: str) -> None:
    return None


def _freeze_heap() -> None:
    """Once the server has frozen its heap (``gc.freeze()`` after start-up, in the REST
    front), move what was loaded since (a new version, a rollout's challenger, and what the
    registry client and the rollout store imported on first use) out of the cyclic
    collector's reach too: otherwise every full collection walks it again. Measured with a
    canary started on a running server, 64 connections: each full collection took ~190 ms,
    four in six seconds (p99 ~200 ms against ~27 ms). Nothing before that first freeze (the
    loads of start-up, which the front collects then freezes) and nothing in a process that
    never froze (the predictor used as a library). No ``gc.collect()`` first: that would be
    one such pause while serving; the cost is that garbage cycles alive at this moment are
    never collected (a load's leftovers, not a growing amount)."""
    if gc.get_freeze_count():
        gc.freeze()


def _wire(slot: _Slot) -> None:
    """Hook the slot's serving version up to its rollout, if any: the arms' batchers count
    each batch's scores into their arm's counter, and (canary, A/B) flush as partners, so
    both arms' answers leave in one wave. Called whenever the version or the rollout
    changes. A batch in flight at that moment bins its scores where its batcher points
    when it finishes: at most one wave's rows land beside the requests they were routed
    with (a new rollout's first wave; a replaced version's last one is not binned)."""
    model, live = slot.model, slot.rollout
    if model is None:
        return
    if live is None:
        _unwire(model)
        return
    challenger = live.challenger
    model.batcher.arm = live.counters["champion"]
    challenger.batcher.arm = live.counters["challenger"]
    both = not live.shadow and challenger is not model  # both arms answer requests
    model.batcher.partner = challenger.batcher if both else None
    challenger.batcher.partner = model.batcher if both else None


def _unwire(model: LoadedModel) -> None:
    model.batcher.arm = None
    model.batcher.partner = None


def _takes_rows(sink: object) -> bool:
    """Whether ``sink`` is a whole :class:`PredictionSink` (encoded rows, commit futures,
    input names) rather than a record sink; decided once per sink class."""
    kind = type(sink)
    found = _ROW_SINKS.get(kind)
    if found is None:
        found = _ROW_SINKS[kind] = isinstance(sink, PredictionSink)
    return found
