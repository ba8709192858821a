"""Logged rows (JSON text) to typed Arrow columns, a chunk at a time: the read API's engine.

A chunk arrives as an Arrow table of the log's columns (``inputs``/``outputs`` JSON text).
Per chunk, and per version in it:

- inputs of one-row requests in the column-array form (``[[24.0],["one_year"],...]``: every
  row the serving core logs for a request of one row) whose text holds no ``\\``, no ``[``,
  ``]`` or ``,`` inside strings (checked with vectorised substring counts) are turned into
  CSV lines with two Arrow string kernels (drop the outer brackets, ``],[`` -> ``,``) and
  parsed by Arrow's multithreaded CSV reader with the column types the version registered:
  no Python object per value. Every other row (several rows per request, named objects,
  unusual strings) is decoded with ONE ``orjson.loads`` for the chunk's rows (the garbage
  collector paused meanwhile: millions of fresh lists otherwise trigger collections that
  cost more than the decoding) and converted to Arrow column by column;
- ``outputs`` (``{"labels": [...], "probabilities": [[...]]}``) are read by Arrow's JSON
  reader with an explicit schema, or with orjson when they do not fit it;
- the latest label (JSON text, per request) is spread over the request's rows.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

if TYPE_CHECKING:
    from flywheel.predlog.stores import VersionInfo

__all__ = ["TIMESTAMP", "Plan", "label_batch"]

TIMESTAMP = pa.timestamp("us", tz="UTC")
_FIXED = frozenset(
    (
        "request_id",
        "row",
        "client_id",
        "ts",
        "model",
        "version",
        "role",
        "protocol",
        "latency_ms",
        "prediction",
        "label",
        "label_ts",
    )
)
_NUMBERS = (pa.float64(), pa.int64(), pa.bool_())
_CSV_PARSE = pacsv.ParseOptions(double_quote=False, escape_char=False, newlines_in_values=False)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while orjson builds a chunk's lists (they hold no
    cycles); measured 3-5x faster decoding of 65k-row chunks."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _loads(texts: Sequence[str]) -> list[Any]:
    """A chunk's JSON texts, decoded with one ``orjson.loads``."""
    with _gc_paused():
        return orjson.loads("[" + ",".join(texts) + "]")  # type: ignore[no-any-return]


def _lines(texts: pa.Array) -> pa.Buffer:
    """``texts`` as newline-terminated lines in one buffer (no copy through Python)."""
    lines = pc.binary_join_element_wise(texts, "", "\n")
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
    start, end = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
    return lines.buffers()[2].slice(start, end - start)


def _kind_of(values: Iterable[Any]) -> pa.DataType | None:
    """The Arrow type of JSON values: bool, int64, float64 or string (None: all null)."""
    seen: set[type] = {type(v) for v in values if v is not None}
    if not seen:
        return None
    if seen <= {bool}:
        return pa.bool_()
    if seen <= {int}:
        return pa.int64()
    if seen <= {int, float}:
        return pa.float64()
    return pa.string()


def _coerce(value: Any, kind: pa.DataType) -> Any:
    """One JSON value as ``kind`` (None when it does not convert)."""
    if value is None:
        return None
    try:
        if pa.types.is_string(kind):
            return value if type(value) is str else orjson.dumps(value).decode()
        if pa.types.is_floating(kind):
            return float(value)
        if pa.types.is_integer(kind):
            number = float(value)
            return int(number) if number.is_integer() else None
        if pa.types.is_boolean(kind):
            return value if type(value) is bool else None
    except (TypeError, ValueError, OverflowError):
        return None
    return None


def _array(values: Sequence[Any], kind: pa.DataType) -> pa.Array:
    """``values`` as an Arrow array of ``kind``: one C++ conversion, or value by value
    (values that do not convert become null) when some are of another JSON type."""
    try:
        return pa.array(values, type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        return pa.array([_coerce(v, kind) for v in values], type=kind)


def _flat(lists: pa.Array, counts: np.ndarray) -> pa.Array:
    """Per-request lists flattened to one value per scored row; a request whose list is
    missing or of another length than its row count gives nulls."""
    lengths = lists.value_lengths().fill_null(-1).to_numpy(zero_copy_only=False)
    if np.array_equal(lengths, counts):
        return lists.flatten()
    values = lists.to_pylist()
    fixed = [v if n == c else [None] * int(c) for v, n, c in zip(values, lengths, counts)]  # noqa: B905
    return pa.array(fixed, type=lists.type).flatten()


def _lists(values: Sequence[Any], kind: pa.DataType, counts: np.ndarray) -> pa.Array:
    """Python per-request lists of JSON values, flattened to a typed array."""
    try:
        lists = pa.array(values, type=pa.list_(kind))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        lists = pa.array(
            [[_coerce(x, kind) for x in v] if isinstance(v, list) else None for v in values],
            type=pa.list_(kind),
        )
    return _flat(lists, counts)


def _values(value: Any) -> list[Any]:
    """A named input's values: its list, or a scalar as one value."""
    return value if isinstance(value, list) else ([] if value is None else [value])


def _class_name(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def input_column(feature: str) -> str:
    """A feature's column in :func:`~flywheel.predlog.read.predictions`' batches: its name,
    or ``input_<name>`` where the name is a fixed column's (``ts``, ``label``, ...) or
    starts with ``proba_``."""
    return f"input_{feature}" if feature in _FIXED or feature.startswith("proba_") else feature


class _Version:
    """How one version's rows decode: input names in column order, class order."""

    def __init__(self, names: list[str] | None, classes: list[Any] | None) -> None:
        self.names = names
        self.classes = classes


class Plan:
    """The output schema of one read (fixed at its first chunk) and each chunk's decoding.

    Types come from what the serving core registered per version (input names, which are
    numeric, classes); what is not registered is inferred from the first chunk: a feature
    is float64 when its values there are numbers, else string; the prediction is int64,
    float64, bool or string as the labels are; probabilities of unknown classes are named
    ``proba_0``, ``proba_1``, ..."""

    def __init__(self, model: str, known: dict[str, VersionInfo], first: pa.Table) -> None:
        self.model = model
        self.features: dict[str, pa.DataType | None] = {}
        self.versions: dict[str, _Version] = {}
        classes: list[Any] = []
        regressor = False
        for version, info in known.items():
            names = [str(n) for n in orjson.loads(info.names)]
            numeric = orjson.loads(info.numeric) if info.numeric else None
            for i, name in enumerate(names):
                kind = None if numeric is None else (pa.float64() if numeric[i] else pa.string())
                if self.features.get(name) is None:
                    self.features[name] = kind
            cls = orjson.loads(info.classes) if info.classes else None
            classes += [c for c in cls or () if c not in classes]
            regressor |= cls is None and numeric is not None
            self.versions[version] = _Version(names, cls)
        self.prediction = _kind_of(classes) if classes else (pa.float64() if regressor else None)
        self.classes = [_class_name(c) for c in classes]
        unregistered = set(first.column("version").cast(pa.string()).to_pylist()) - set(known)
        if unregistered or None in self.features.values() or self.prediction is None:
            self._infer(first, known=not unregistered and bool(classes or regressor))
        self.columns = {name: input_column(name) for name in self.features}
        self.schema = self._schema()

    def _infer(self, first: pa.Table, known: bool) -> None:
        """Fill, from the first chunk's rows, what registration did not tell."""
        inputs = _loads(first.column("inputs").to_pylist())
        outputs = [o for o in _loads(first.column("outputs").to_pylist()) if type(o) is dict]
        for row in inputs:
            if type(row) is dict:
                for name in row:
                    self.features.setdefault(str(name), None)
        for name, kind in list(self.features.items()):
            if kind is None:
                seen = (x for r in inputs if type(r) is dict for x in _values(r.get(name)))
                found = _kind_of(v for v, _ in zip(seen, range(1000), strict=False))
                self.features[name] = pa.float64() if found in _NUMBERS else pa.string()
        if self.prediction is None:
            found = _kind_of(x for o in outputs for x in (o.get("labels") or ()))
            self.prediction = found or pa.string()
        if not known and not self.classes:
            widths = {len(p[0]) for o in outputs if (p := o.get("probabilities"))}
            self.classes = [str(i) for i in range(max(widths))] if widths else []

    def _schema(self) -> pa.Schema:
        assert self.prediction is not None
        fields = [
            pa.field("request_id", pa.string()),
            pa.field("row", pa.int32()),
            pa.field("client_id", pa.string()),
            pa.field("ts", TIMESTAMP),
            pa.field("model", pa.string()),
            pa.field("version", pa.string()),
            pa.field("role", pa.string()),
            pa.field("protocol", pa.string()),
            pa.field("latency_ms", pa.float64()),
        ]
        fields += [pa.field(self.columns[n], k) for n, k in self.features.items()]  # type: ignore[arg-type]
        fields.append(pa.field("prediction", self.prediction))
        fields += [pa.field(f"proba_{c}", pa.float64()) for c in self.classes]
        fields += [pa.field("label", self.prediction), pa.field("label_ts", TIMESTAMP)]
        return pa.schema(fields)

    # ---------------------------------------------------------------- one chunk

    def decode(self, chunk: pa.Table) -> pa.RecordBatch:
        """One chunk of logged rows as one record batch of :attr:`schema`."""
        chunk = chunk.combine_chunks()
        versions = chunk.column("version").cast(pa.string())
        inputs = chunk.column("inputs").cast(pa.string()).combine_chunks()
        parts: list[tuple[dict[str, pa.Array], np.ndarray]] = []
        for version in pc.unique(versions).to_pylist():
            info = self.versions.get(version, _Version(None, None))
            mine = pc.equal(versions, version)
            simple = self._simple(inputs, info)
            for rows_mask, fast in (
                (pc.and_(mine, simple), True),
                (pc.and_not(mine, simple), False),
            ):
                at = pc.indices_nonzero(rows_mask).to_numpy()
                if len(at):
                    part = chunk if len(at) == chunk.num_rows else chunk.take(at)
                    columns, req = self._group(part, info, fast)
                    parts.append((columns, at[req]))
        return self._batch(parts)

    def _simple(self, inputs: pa.Array, info: _Version) -> pa.Array:
        """Rows whose inputs the CSV path reads: one-row column arrays of plain values."""
        if info.names is None or not info.names:
            return pa.repeat(pa.scalar(False), len(inputs))
        n = len(info.names)
        # "[[" first: the column-array form. n-1 commas: one value per column, and no
        # comma inside a string (so no "],[" either, the one sequence the CSV path
        # rewrites). No backslash: no JSON escape, which CSV would not undo. A "[" or "]"
        # inside a string is fine: only "],[" is rewritten.
        mask = pc.and_(
            pc.and_(
                pc.starts_with(inputs, "[["),
                pc.equal(pc.count_substring(inputs, ","), n - 1),
            ),
            pc.invert(pc.match_substring(inputs, "\\")),
        )
        return mask.fill_null(False)

    def _group(
        self, part: pa.Table, info: _Version, fast: bool
    ) -> tuple[dict[str, pa.Array], np.ndarray]:
        """The columns of rows of one version read one way; with each row's request index."""
        texts = part.column("inputs").cast(pa.string()).combine_chunks()
        found = self._csv_inputs(texts, info) if fast else None
        if found is not None:
            counts = np.ones(part.num_rows, dtype=np.int64)
            columns = {self.columns[k]: v for k, v in found.items()}
        else:
            counts, columns = self._json_inputs(texts.to_pylist(), info)
        req = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        columns.update(self._outputs(part.column("outputs"), counts, info))
        columns.update(_request_columns(part, req, counts))
        if "label" in part.column_names:
            assert self.prediction is not None
            columns.update(_labels(part, req, counts, self.prediction))
        return columns, req

    def _csv_inputs(self, texts: pa.Array, info: _Version) -> dict[str, pa.Array] | None:
        assert info.names is not None
        body = pc.binary_slice(texts.cast(pa.binary()), 2, -2).cast(pa.string())
        body = pc.replace_substring(body, "],[", ",")
        kinds = {n: self.features.get(n) or pa.string() for n in info.names}
        try:
            table = pacsv.read_csv(
                pa.BufferReader(_lines(body)),
                read_options=pacsv.ReadOptions(column_names=info.names),
                parse_options=_CSV_PARSE,
                convert_options=pacsv.ConvertOptions(
                    column_types=kinds,
                    null_values=["null"],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                ),
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None  # e.g. a value of another type: the JSON path coerces it
        if table.num_rows != len(texts):
            return None
        return {n: table.column(n).combine_chunks() for n in info.names if n in self.features}

    def _json_inputs(
        self, texts: list[str], info: _Version
    ) -> tuple[np.ndarray, dict[str, pa.Array]]:
        rows = _loads(texts)
        values = _columns_of(rows, info.names, list(self.features))
        first = next(iter(values.values()), ())
        counts = np.fromiter(
            (len(v) if isinstance(v, list) else 1 for v in first), np.int64, len(rows)
        )
        with _gc_paused():
            columns = {
                self.columns[name]: _lists(values[name], kind, counts)  # type: ignore[arg-type]
                for name, kind in self.features.items()
                if name in values
            }
        return counts, columns

    def _outputs(
        self, texts: pa.ChunkedArray, counts: np.ndarray, info: _Version
    ) -> dict[str, pa.Array]:
        assert self.prediction is not None
        labels, probas = _read_outputs(texts, self.prediction, bool(self.classes))
        out = {"prediction": _flat(labels, counts)}
        if probas is not None:
            per_row = _flat(probas, counts)
            order = [_class_name(c) for c in info.classes] if info.classes else self.classes
            for j, name in enumerate(order):
                if name in self.classes:
                    out[f"proba_{name}"] = _element(per_row, j)
        return out

    def _batch(self, parts: list[tuple[dict[str, pa.Array], np.ndarray]]) -> pa.RecordBatch:
        typed = [self._typed(columns) for columns, _ in parts]
        if len(typed) == 1:
            return pa.RecordBatch.from_arrays(typed[0], schema=self.schema)
        # Several groups: back in the order the rows were read.
        arrays = [pa.concat_arrays([t[i] for t in typed]) for i in range(len(self.schema))]
        at = np.concatenate([a for _, a in parts])
        row = arrays[self.schema.get_field_index("row")].to_numpy()
        order = pa.array(np.lexsort((row, at)))
        return pa.RecordBatch.from_arrays([a.take(order) for a in arrays], schema=self.schema)

    def _typed(self, columns: dict[str, pa.Array]) -> list[pa.Array]:
        """One group's columns in schema order and types (missing ones null)."""
        total = len(columns["request_id"])
        columns["model"] = pa.repeat(pa.scalar(self.model, pa.string()), total)
        out = []
        for field in self.schema:
            value = columns.get(field.name)
            out.append(pa.nulls(total, field.type) if value is None else value.cast(field.type))
        return out


def _read_outputs(
    texts: pa.ChunkedArray, prediction: pa.DataType, classifier: bool
) -> tuple[pa.Array, pa.Array | None]:
    """Per-request ``labels`` lists and ``probabilities`` lists of lists."""
    label_type = pa.list_(prediction)
    proba_type = pa.list_(pa.list_(pa.float64()))
    schema = pa.schema([("labels", label_type), ("probabilities", proba_type)])
    flat = texts.cast(pa.string()).combine_chunks()
    try:
        table = pajson.read_json(
            pa.BufferReader(_lines(flat)),
            parse_options=pajson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
        if table.num_rows == len(flat):
            labels = table.column("labels").combine_chunks()
            probas = table.column("probabilities").combine_chunks() if classifier else None
            return labels, probas
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass  # not all objects of that shape: decode them one chunk-wide orjson call
    outs = [o if type(o) is dict else {} for o in _loads(flat.to_pylist())]
    labels = _lists_of([o.get("labels") for o in outs], prediction)
    probas = _lists_of([o.get("probabilities") for o in outs], pa.list_(pa.float64()))
    return labels, probas if classifier else None


def _lists_of(values: list[Any], kind: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=pa.list_(kind))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        if pa.types.is_list(kind):
            return pa.nulls(len(values), pa.list_(kind))
        return pa.array(
            [[_coerce(x, kind) for x in v] if isinstance(v, list) else None for v in values],
            type=pa.list_(kind),
        )


def _columns_of(
    rows: list[Any], names: list[str] | None, features: list[str]
) -> Mapping[str, Sequence[Any]]:
    """Decoded inputs (column arrays in ``names`` order, or ``{name: [values]}`` objects;
    anything else: no inputs) as per-feature lists of per-request lists."""
    if names is not None and all(type(r) is list and len(r) == len(names) for r in rows):
        return dict(zip(names, zip(*rows, strict=False), strict=True))
    columns: dict[str, list[Any]] = {name: [] for name in features}
    for row in rows:
        if type(row) is list and names is not None and len(row) == len(names):
            d = dict(zip(names, row, strict=True))
        else:
            d = row if type(row) is dict else {}
        first = next((v for v in d.values() if isinstance(v, list)), None)
        n = len(first) if first is not None else 1
        for name in features:
            v = d.get(name)
            if n == 1 and v is not None and not isinstance(v, list):
                v = [v]  # a record's scalar value: one row
            columns[name].append(v if isinstance(v, list) and len(v) == n else [None] * n)
    return columns


def _element(lists: pa.Array, j: int) -> pa.Array:
    """Element ``j`` of each list (null where the list is missing or shorter)."""
    try:
        return pc.list_element(lists, j)
    except pa.ArrowInvalid:
        values = lists.to_pylist()
        return pa.array([v[j] if v is not None and len(v) > j else None for v in values])


def _stamps(column: pa.ChunkedArray | pa.Array, req: np.ndarray | None = None) -> pa.Array:
    """Unix seconds (float, null allowed) as UTC timestamps, expanded by ``req``."""
    seconds = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if req is not None:
        seconds = seconds[req]
    missing = np.isnan(seconds)
    micros = np.round(np.where(missing, 0.0, seconds) * 1e6).astype(np.int64)
    return pa.array(micros, TIMESTAMP, mask=missing if missing.any() else None)


def _request_columns(part: pa.Table, req: np.ndarray, counts: np.ndarray) -> dict[str, pa.Array]:
    """The request's own columns, one value per scored row."""
    expand = len(req) != part.num_rows
    take = pa.array(req) if expand else None
    out: dict[str, pa.Array] = {}
    for name in ("request_id", "client_id", "version", "role", "protocol", "latency_ms"):
        column = part.column(name).combine_chunks()
        out[name] = column.take(take) if take is not None else column
    out["ts"] = _stamps(part.column("ts"), req if expand else None)
    starts = np.cumsum(counts) - counts
    out["row"] = pa.array((np.arange(len(req)) - starts[req]).astype(np.int32))
    return out


def _labels(
    part: pa.Table, req: np.ndarray, counts: np.ndarray, kind: pa.DataType
) -> dict[str, pa.Array]:
    """Each row's label: the request's label spread over its rows (a list of as many labels
    as the request has rows gives one each; any other label applies to every row)."""
    texts = part.column("label").cast(pa.string()).combine_chunks()
    starts = np.cumsum(counts) - counts
    values: list[Any] = [None] * len(req)
    for i in pc.indices_nonzero(pc.is_valid(texts)).to_pylist():
        label = orjson.loads(texts[i].as_py())
        n, at = int(counts[i]), int(starts[i])
        if n == 1 and isinstance(label, list) and len(label) == 1:
            values[at] = label[0]
        elif isinstance(label, list) and len(label) == n:
            values[at : at + n] = label
        else:
            values[at : at + n] = [label] * n
    return {"label": _array(values, kind), "label_ts": _stamps(part.column("label_ts"), req)}


def label_batch(chunk: pa.Table) -> pa.RecordBatch:
    """A chunk of the labels query as the :func:`flywheel.predlog.read.labels` batch."""

    def text(name: str) -> pa.Array:
        return chunk.column(name).combine_chunks().cast(pa.string())

    return pa.RecordBatch.from_arrays(
        [
            text("request_id"),
            text("client_id"),
            text("model"),
            text("version"),
            text("role"),
            _stamps(chunk.column("ts")),
            text("label"),
            _stamps(chunk.column("received_at")),
        ],
        names=["request_id", "client_id", "model", "version", "role", "ts", "label", "label_ts"],
    )
