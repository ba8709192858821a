"""The read API monitoring uses: predictions and labels of a model as Arrow batches, here
from the embedded SQLite log (PostgreSQL: tests/integration/test_predlog_postgres.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from flywheel.errors import DataError
from flywheel.predlog import open_prediction_log
from flywheel.predlog.read import labels, predictions
from tests.unit.predlog_helpers import check_reads, fill_for_reads

pytestmark = pytest.mark.timeout(60)


def test_predictions_and_labels_as_typed_arrow_batches(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    with open_prediction_log(url, flush_interval_s=0.01) as plog:
        fill_for_reads(plog)
        check_reads(url, plog)


def test_the_monitor_reads_a_feature_named_like_a_fixed_column(tmp_path: Path) -> None:
    """A model input named ``version`` comes back as ``input_version``; the monitor's shape
    reads that column, not the log's own ``version``."""
    import pyarrow as pa

    from flywheel.monitoring.sources import monitor_table
    from flywheel.schema import FeatureSpec

    url = f"sqlite:///{tmp_path}/p.db"
    with open_prediction_log(url, flush_interval_s=0.01) as plog:
        fill_for_reads(plog)
    batch = pa.Table.from_batches(predictions(url, "churn", version="1"))
    specs = [FeatureSpec("tenure", "numeric"), FeatureSpec("version", "numeric")]
    table = monitor_table(batch, specs, "binary", "yes")
    assert table.column("version").to_pylist() == batch.column("input_version").to_pylist()
    assert table.column("version").to_pylist()[:2] == [1.0, 7.0]  # early, r1: not "1"
    assert table.column("__score__").to_pylist()[1] == pytest.approx(0.75)


def test_a_datetime_range_and_a_regressor(tmp_path: Path) -> None:
    import pyarrow as pa

    from flywheel.predlog import encode_json

    url = f"sqlite:///{tmp_path}/p.db"
    with open_prediction_log(url, flush_interval_s=0.01) as plog:
        assert plog.register_inputs("ltv", "4", ["age"], numeric=[True])  # no classes
        for i in range(5):
            outputs = encode_json({"labels": [10.5 * i], "probabilities": None}, "x", "o")
            plog.append_row(
                (f"r{i}", 3600.0 * i, "ltv", "4", "v2", "[[1]]", outputs, 1.0, None, None)
            )
        plog.flush()
    start = datetime(1970, 1, 1, 1, tzinfo=UTC)
    end = datetime(1970, 1, 1, 3)  # naive: UTC
    table = pa.Table.from_batches(predictions(url, "ltv", start=start, end=end))
    assert table.column("request_id").to_pylist() == ["r1", "r2"]
    assert table.schema.field("prediction").type == pa.float64()
    assert table.column("prediction").to_pylist() == [10.5, 21.0]
    assert not [n for n in table.schema.names if n.startswith("proba_")]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start": "yesterday"}, "start must be unix seconds"),
        ({"end": float("nan")}, "end must be unix seconds"),
        ({"batch_rows": 0}, "batch_rows must be"),
    ],
)
def test_bad_arguments_are_data_errors(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        predictions(f"sqlite:///{tmp_path}/p.db", "churn", **kwargs)
    with pytest.raises(DataError, match="source must be"):
        labels(42)  # type: ignore[arg-type]


def test_labels_take_the_prediction_type_and_odd_ones_become_null(tmp_path: Path) -> None:
    import pyarrow as pa

    url = f"sqlite:///{tmp_path}/p.db"
    with open_prediction_log(url, flush_interval_s=0.01) as plog:
        plog.register_inputs("m", "1", ["x"], numeric=[True], classes=[0, 1])
        for i, label in enumerate([1, "0", "abc", 2.5]):
            row = (f"r{i}", float(i), "m", "1", "rest", "[[1]]", '{"labels":[1]}', 1.0, None, None)
            plog.append_row(row)
            plog.flush()
            assert plog.feedback(f"r{i}", label)
    table = pa.Table.from_batches(predictions(url, "m"))
    assert table.schema.field("label").type == pa.int64()
    assert table.column("label").to_pylist() == [1, 0, None, None]
    assert table.column("prediction").to_pylist() == [1, 1, 1, 1]


def test_records_of_any_shape_read_without_failing(tmp_path: Path) -> None:
    """Other producers' records: scalar inputs are one row; inputs or outputs of another
    shape give nulls, never an error."""
    import pyarrow as pa

    from flywheel.predlog import PredictionRecord

    url = f"sqlite:///{tmp_path}/p.db"
    with open_prediction_log(url, flush_interval_s=0.01) as plog:
        plog.append(
            PredictionRecord("a", 1.0, "m", "1", "py", {"x": 2.5, "c": "u"}, {"labels": [1]}, 1.0)
        )
        plog.append(PredictionRecord("b", 2.0, "m", "1", "py", [1, 2], "junk", 1.0))
        plog.flush()
    rows = pa.Table.from_batches(predictions(url, "m")).to_pylist()
    assert [(r["x"], r["c"], r["prediction"]) for r in rows] == [(2.5, "u", 1), (None, None, None)]
