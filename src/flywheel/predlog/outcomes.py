"""What a rollout needs from the labels: per arm (version, role), counts of the labelled rows.

    from flywheel.predlog.outcomes import arm_outcomes

    arms = arm_outcomes("sqlite:///.flywheel/predictions.db", "churn", since=rollout_start)
    champion = arms[("3", "champion")]
    accuracy = champion.correct / champion.labelled        # a classifier
    recall = champion.caught / champion.positives          # the positive class's
    mae = champion.abs_error_sum / champion.labelled       # a regressor

Counts, not rates: the rollout decides how to compare arms (and with what interval), and
counts add up across calls. This module needs only what the serving-only install has
(``sqlite3`` or psycopg, orjson): no ADBC, pandas or pyarrow. It reads through the log's own
stores (:func:`~flywheel.predlog.stores.open_store`, which also creates or migrates the
schema, as every reader does), one pass over the rows of the model in ``[since, until)``,
each joined to the latest label of its request, in chunks.

Labels follow the log's feedback formats (:mod:`flywheel.predlog.feedback`, docs
"Feedback semantics"): a label is keyed by request id, so it reaches every row the request
left in the log (the champion's and a shadow's alike); for a request of n predicted rows a
list of n labels gives one per row (a one-row request may send a scalar or a one-item list),
and any other label applies to every row, as :func:`flywheel.predlog.read.predictions`
spreads it. No class or number is a list or an object, so a row whose label is one (a list
of another length, say) or JSON ``null`` counts as unlabelled.

Classes are compared as text, canonically (:func:`class_text`), as monitoring compares them:
a model may answer ``1``, ``true`` or ``"1"`` and a label arrive as any of these, and
``1``, ``1.0``, ``true``, ``"1"``, ``"true"`` all read ``"1"``. Strings are otherwise kept
as they are (``"yes"`` is not ``"Yes"``).

Which arms are classifiers: a version registered with classes (``prediction_inputs``) is
one, registered without classes a regressor; for a version nothing registered, a request
whose outputs carry probabilities, or whose predicted labels are not all floats, is a
classifier's, else a regressor's.
"""

from __future__ import annotations

import gc
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from flywheel.errors import DataError
from flywheel.predlog.records import PredictionLogError
from flywheel.predlog.stores import Store, VersionInfo, open_store, parse_url

__all__ = ["Outcome", "arm_outcomes", "class_text", "labels_mark"]

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_BOOLS = {"true": "1", "false": "0"}


@dataclass
class Outcome:
    """One (version, role) arm's rows logged in ``[since, until)``. ``role`` is None for
    rows logged with no rollout active. Every count but ``requests`` and ``rows`` is over
    labelled predicted rows.

    - classifier arms: ``correct`` (label == predicted label); with a positive class,
      ``positives`` (label is the positive class), ``caught`` (of those, predicted
      positive: recall = caught / positives) and ``predicted_positive`` (predicted
      positive: precision = caught / predicted_positive);
    - regressor arms: ``abs_error_sum`` and ``sq_error_sum`` of label - prediction, over
      the rows where both are numbers (MAE = abs_error_sum / labelled)."""

    version: str
    role: str | None
    requests: int = 0  # logged requests (rows of the log) since `since`
    rows: int = 0  # predicted rows in them
    labelled: int = 0  # predicted rows with a usable label
    correct: int = 0
    positives: int = 0
    caught: int = 0
    predicted_positive: int = 0
    abs_error_sum: float = 0.0
    sq_error_sum: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Every field, by name (JSON-able)."""
        return asdict(self)


def class_text(value: Any) -> str | None:
    """A class (predicted or a label) as canonical text: ``True``/``"true"`` -> ``"1"``,
    ``1.0``/``"1.0"`` -> ``"1"``, ``0.5`` -> ``"0.5"``, other strings as they are; None for
    what is no class (null, NaN, a list, an object)."""
    if isinstance(value, str):
        if value.lower() in _BOOLS:
            return _BOOLS[value.lower()]
        if _INTEGER.fullmatch(value):
            return str(int(value))
        if _NUMBER.fullmatch(value):
            return class_text(float(value))
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def _number(value: Any) -> float | None:
    """A regressor's value or label as a float (a numeric string too); None otherwise."""
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if not numeric and not (isinstance(value, str) and _NUMBER.fullmatch(value.strip())):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _positive(given: str | None, info: VersionInfo | None) -> str | None:
    """The arm's positive class as canonical text: ``given``, else a binary classifier's
    second registered class, else None (no recall)."""
    if given is not None:
        return class_text(given)
    classes = orjson.loads(info.classes) if info is not None and info.classes else None
    if isinstance(classes, list) and len(classes) == 2:
        return class_text(classes[1])
    return None


def _spread(label: Any, n: int) -> list[Any]:
    """A request's label as one label per predicted row (the feedback formats)."""
    if type(label) is list and len(label) == n:
        return label
    return [label] * n


def _registered_kind(info: VersionInfo | None) -> bool | None:
    """True: a classifier; False: a regressor; None: unknown (decided request by request)."""
    if info is not None and (info.classes is not None or info.numeric is not None):
        return info.classes is not None
    return None


def _looks_classified(outputs: dict[str, Any], predicted: list[Any]) -> bool:
    if outputs.get("probabilities") is not None:
        return True
    return not all(type(p) is float for p in predicted)


class _Arm:
    """Counts one arm's rows into its :class:`Outcome`."""

    def __init__(self, outcome: Outcome, info: VersionInfo | None, positive: str | None):
        self.outcome = outcome
        self.classifier = _registered_kind(info)
        self.positive = _positive(positive, info)
        self._texts: dict[Any, str | None] = {}  # class_text of the values seen (few)

    def add(self, outputs: Any, label: Any) -> None:
        """One logged row: its decoded outputs and its request's label (None: no label)."""
        o = self.outcome
        o.requests += 1
        predicted = outputs.get("labels") if type(outputs) is dict else None
        if type(predicted) is not list or not predicted:
            return
        o.rows += len(predicted)
        if label is None:
            return
        labels = _spread(label, len(predicted))
        classifier = self.classifier
        if classifier is None:
            classifier = _looks_classified(outputs, predicted)  # type: ignore[arg-type]
        if classifier:
            self._classified(predicted, labels)
        else:
            self._regressed(predicted, labels)

    def _text(self, value: Any) -> str | None:
        """:func:`class_text`, remembered (1, 1.0 and True share a key and a text)."""
        texts = self._texts
        try:
            return texts[value]
        except KeyError:
            text = texts[value] = class_text(value)
            return text
        except TypeError:  # a list or an object: no class
            return None

    def _classified(self, predicted: list[Any], labels: list[Any]) -> None:
        o, positive, text = self.outcome, self.positive, self._text
        for guessed, label in zip(predicted, labels, strict=True):
            truth = text(label)
            if truth is None:
                continue
            guess = text(guessed)
            o.labelled += 1
            o.correct += guess == truth
            if positive is not None:
                o.positives += truth == positive
                o.caught += truth == positive and guess == positive
                o.predicted_positive += guess == positive

    def _regressed(self, predicted: list[Any], labels: list[Any]) -> None:
        o = self.outcome
        for guessed, label in zip(predicted, labels, strict=True):
            truth, guess = _number(label), _number(guessed)
            if truth is None or guess is None:
                continue
            error = truth - guess
            o.labelled += 1
            o.abs_error_sum += abs(error)
            o.sq_error_sum += error * error


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while orjson builds a chunk's objects (they hold
    no cycles; as in :mod:`flywheel.predlog._decode`, the collections cost more than the
    decoding)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _loads(texts: Sequence[str | None]) -> list[Any]:
    """A chunk's JSON texts (None: null) with one ``orjson.loads``; text by text when one
    of them is not valid JSON (then it reads as null)."""
    try:
        with _gc_paused():
            return orjson.loads(  # type: ignore[no-any-return]
                "[" + ",".join("null" if t is None else t for t in texts) + "]"
            )
    except orjson.JSONDecodeError:
        out: list[Any] = []
        for text in texts:
            try:
                out.append(None if text is None else orjson.loads(text))
            except orjson.JSONDecodeError:
                out.append(None)
        return out


def _check(model: Any, since: Any, until: Any, positive: Any) -> None:
    if not isinstance(model, str) or not model:
        raise DataError(f"model must be a model name, got {model!r}.", field="model")
    for name, value, optional in (("since", since, False), ("until", until, True)):
        if optional and value is None:
            continue
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value):
            raise DataError(f"{name} must be unix seconds, got {value!r}.", field=name)
    if positive is not None and not isinstance(positive, str):
        raise DataError(
            f"positive must be the positive class as text (e.g. '1', 'yes'), got {positive!r}.",
            field="positive",
        )


def _open(url: str) -> Store:
    kind, target = parse_url(url)
    try:
        return open_store(kind, target, name="outcomes")
    except Exception as exc:
        raise PredictionLogError(
            f"Cannot open the prediction log to count outcomes: {exc}. Check the URL and that "
            "the database is up.",
        ) from exc


def arm_outcomes(
    url: str,
    model: str,
    since: float,
    *,
    positive: str | None = None,
    until: float | None = None,
) -> dict[tuple[str, str | None], Outcome]:
    """Per arm ``(version, role)`` (role None: logged with no rollout active), the outcomes
    of ``model``'s rows logged at ``since <= ts < until`` (``until`` None: up to now), each
    with its request's latest label. ``positive``: the positive class as text (None: a
    binary classifier's second registered class; else no recall counts). Arms with no row
    in the range are absent. Raises :class:`PredictionLogError` when the log cannot be read."""
    _check(model, since, until, positive)
    store = _open(url)
    arms: dict[tuple[str, str | None], _Arm] = {}
    try:
        infos = {v: info for (_, v), info in store.versions(model).items()}
        with closing(store.arm_rows(model, float(since), None if until is None else until)) as rows:
            for chunk in rows:
                _count(chunk, arms, infos, positive)
    except Exception as exc:
        raise PredictionLogError(
            f"Cannot read the prediction log to count outcomes: {exc}.",
        ) from exc
    finally:
        store.close()
    return {key: arm.outcome for key, arm in arms.items()}


def labels_mark(url: str) -> tuple[int, int]:
    """A mark of the log's labels, ``(count, max id)`` of its feedback table: while it
    stays the same, the labelled counts of :func:`arm_outcomes` stay the same (a label is
    stored only after its prediction's row is committed). Cheap next to
    :func:`arm_outcomes`, which reads every row of the range. Raises
    :class:`PredictionLogError` when the log cannot be read."""
    store = _open(url)
    try:
        return store.label_mark()
    except Exception as exc:
        raise PredictionLogError(f"Cannot read the prediction log's labels: {exc}.") from exc
    finally:
        store.close()


def _count(
    chunk: list[tuple[str, str, str, str | None]],
    arms: dict[tuple[str, str | None], _Arm],
    infos: dict[str, VersionInfo],
    positive: str | None,
) -> None:
    """Count one chunk of logged rows into their arms (made on first sight)."""
    outputs = _loads([r[2] for r in chunk])
    labels = _loads([r[3] for r in chunk])
    for (version, stored_role, _, _), out, label in zip(chunk, outputs, labels, strict=True):
        key = (version, stored_role or None)
        arm = arms.get(key)
        if arm is None:
            arm = arms[key] = _Arm(Outcome(*key), infos.get(version), positive)
        arm.add(out, label)
