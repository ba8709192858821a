"""Data contracts: inference, the YAML file, and validation of later snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.data.contract import (
    ColumnRule,
    Contract,
    ValidationReport,
    Violation,
    contract_path,
    format_report,
    infer_contract,
    load_contract,
    save_contract,
    validate_frame,
)
from flywheel.errors import ConfigError, ContractViolation, DataError, NotFound

N = 60
KEYS = ["customer_id", "observed_at"]


def _frame(n: int = N, seed: int = 0, start: str = "2024-01-01") -> pd.DataFrame:
    """A churn-like snapshot with the dtypes real sources produce."""
    rng = np.random.default_rng(seed)
    ages = pd.array(rng.integers(20, 81, n), dtype="Int64")
    ages[0], ages[1] = 20, 80  # fix the observed range: 20..80
    ages[2] = pd.NA
    plans = pd.Series(rng.choice(["basic", "premium", "pro"], n), dtype="category")
    return pd.DataFrame(
        {
            "customer_id": np.arange(n) // 2,
            "observed_at": pd.date_range(start, periods=n, freq="h").strftime("%Y-%m-%dT%H:%M:%S"),
            "age": ages,
            "balance": np.linspace(100.0, 1100.0, n),
            "delta": np.linspace(-50.0, 50.0, n),
            "plan": plans,
            "email": pd.Series([f"user{i}@example.com" for i in range(n)], dtype="str"),
            "vip": rng.integers(0, 2, n).astype(bool),
            "signup": pd.date_range("2020-01-01", periods=n, freq="D", tz="UTC"),
            "year": pd.Series(["2020", "2021"] * (n // 2), dtype=object),
            "churned": np.tile([0, 1], n // 2),
        }
    )


@pytest.fixture(scope="module")
def contract() -> Contract:
    return infer_contract(_frame(), dataset="churn", target="churned", key_columns=KEYS)


def _only(report: ValidationReport, rule: str) -> Violation:
    found = [v for v in report.violations if v.rule == rule]
    assert len(found) == 1, format_report(report)
    assert len(report.violations) == 1, format_report(report)
    return found[0]


# --------------------------------------------------------------------------- inference


def test_infer_dtypes(contract: Contract) -> None:
    dtypes = {name: rule.dtype for name, rule in contract.columns.items()}
    assert dtypes == {
        "customer_id": "int",
        "observed_at": "datetime",  # ISO strings with a full date: unambiguous
        "age": "int",
        "balance": "float",
        "delta": "float",
        "plan": "string",  # categorical
        "email": "string",
        "vip": "bool",
        "signup": "datetime",  # tz-aware datetime64
        "year": "string",  # "2020" parses as a date, but is ambiguous
        "churned": "int",
    }


def test_infer_nullability_from_the_data(contract: Contract) -> None:
    assert contract.columns["age"].nullable is True
    assert [n for n, r in contract.columns.items() if r.nullable] == ["age"]


def test_infer_widens_numeric_ranges(contract: Contract) -> None:
    age = contract.columns["age"]
    # 20..80: the minimum widened by 10% of 60, the maximum by 100% (features grow), integers
    assert (age.min, age.max) == (14, 140)
    delta = contract.columns["delta"]
    assert delta.min == -60.0 and delta.max > 60.0


def test_infer_keeps_non_negative_columns_non_negative(contract: Contract) -> None:
    balance = contract.columns["balance"]
    assert balance.min == 0.0  # 100 - 10% of 1000 would be 0; never below 0
    assert balance.max == 3000.0  # 1100 + 100% of the range, rounded out
    assert contract.columns["customer_id"].min == 0


def test_infer_binary_ints_keep_exact_bounds(contract: Contract) -> None:
    churned = contract.columns["churned"]
    assert (churned.dtype, churned.min, churned.max) == ("int", 0, 1)


def test_infer_datetime_gets_a_lower_bound_only(contract: Contract) -> None:
    observed = contract.columns["observed_at"]
    assert observed.min == "2023-12-31T00:00:00"  # 59 hours earlier by 10%, floored to a day
    assert observed.max is None


def test_infer_categories_only_for_low_cardinality_strings(contract: Contract) -> None:
    assert contract.columns["plan"].allowed == ["basic", "premium", "pro"]
    assert contract.columns["email"].allowed is None  # every value distinct
    assert contract.columns["year"].allowed == ["2020", "2021"]


def test_infer_keys(contract: Contract) -> None:
    assert contract.key_columns == KEYS
    assert contract.target == "churned"
    assert not any(rule.unique for rule in contract.columns.values())  # a pair, not one column
    single = infer_contract(_frame(), dataset="d", target=None, key_columns=["email"])
    assert single.columns["email"].unique is True


def test_infer_string_labels_become_allowed_values() -> None:
    df = pd.DataFrame({"x": range(40), "label": ["churn", "stay"] * 20})
    contract = infer_contract(df, dataset="d", target="label", key_columns=[])
    assert contract.columns["label"].allowed == ["churn", "stay"]


def test_infer_rejects_a_key_that_is_not_a_column() -> None:
    with pytest.raises(ConfigError, match=r"'customer'.*fix source\.key_columns"):
        infer_contract(_frame(), dataset="d", target=None, key_columns=["customer"])


def test_infer_rejects_an_empty_frame() -> None:
    with pytest.raises(DataError, match="no rows"):
        infer_contract(_frame().iloc[:0], dataset="d", target=None, key_columns=[])


# --------------------------------------------------------------------------- YAML


def test_yaml_round_trip(contract: Contract, tmp_path: Path) -> None:
    path = contract_path(tmp_path / "contracts", "churn")
    save_contract(contract, path)
    assert load_contract(path) == contract
    text = path.read_text()
    assert text.startswith("# flywheel data contract")
    assert "allowed: [basic, premium, pro]" in text
    assert [p.name for p in path.parent.iterdir()] == ["churn.yaml"]  # no temp file left


def test_editing_a_rule_changes_the_version(contract: Contract, tmp_path: Path) -> None:
    path = tmp_path / "churn.yaml"
    save_contract(contract, path)
    text = path.read_text()
    path.write_text(text.replace("max: 140", "max: 120"))
    edited = load_contract(path)
    assert edited.columns["age"].max == 120
    assert len(edited.version) == 12
    assert edited.version != contract.version
    path.write_text(text.replace(f"version: {contract.version}", "version: whatever"))
    assert load_contract(path).version == contract.version  # stored version is informational


def test_load_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no data contract"):
        load_contract(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (("dtype: int", "dtype: integer"), "columns.customer_id.dtype"),
        (("nullable: false", "nullabel: false"), "columns.customer_id.nullabel"),
        (("allow_extra_columns: false", "allow_extra: false"), "(top level).allow_extra"),
        (("max: 140", "max: lots"), "columns.age.max"),
        (("max: 140", "max: 5"), "columns.age.min"),
        (("target: churned", "target: label"), "target"),
        (
            ("vip:\n    dtype: bool", "vip:\n    dtype: bool\n    allowed: [x]"),
            "columns.vip.allowed",
        ),
    ],
)
def test_bad_rules_name_the_key(
    contract: Contract, tmp_path: Path, edit: tuple[str, str], key: str
) -> None:
    path = tmp_path / "churn.yaml"
    save_contract(contract, path)
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError) as info:
        load_contract(path)
    assert info.value.details["key"] == key
    assert key in info.value.message and str(path) in info.value.message


def _load_edited(contract: Contract, tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    """Save, replace ``old`` with ``new`` once, and return the path and the edit's line."""
    path = tmp_path / "churn.yaml"
    save_contract(contract, path)
    text = path.read_text()
    assert old in text
    line = text[: text.index(old)].count("\n") + 1
    path.write_text(text.replace(old, new, 1))
    return path, line


@pytest.mark.parametrize(
    ("old", "new", "key", "rule", "line_offset"),
    [
        # an unknown key, at the top level and in a column
        (
            "allow_extra_columns: false",
            "allow_extra_colums: false",
            "(top level).allow_extra_colums",
            "is not a known key",
            0,
        ),
        (
            "plan:\n    dtype: string",
            "plan:\n    dtype: string\n    colour: red",
            "columns.plan.colour",
            "is not a known key",
            2,
        ),
        # a wrong type
        ("nullable: true", "nullable: 'no'", "columns.age.nullable", "must be true or false", 0),
        ("max: 140", "max: '140'", "columns.age.max", "must be a number for a int column", 0),
        ("dataset: churn", "dataset: [churn]", "dataset", "must be a non-empty string", 0),
        # a bad range: min above max (the key is min, on its own line)
        (
            "min: 14\n    max: 140",
            "min: 150\n    max: 140",
            "columns.age.min",
            "must not exceed max (140)",
            0,
        ),
    ],
)
def test_bad_files_name_the_key_the_rule_and_the_line(
    contract: Contract, tmp_path: Path, old: str, new: str, key: str, rule: str, line_offset: int
) -> None:
    path, line = _load_edited(contract, tmp_path, old, new)
    with pytest.raises(ConfigError) as info:
        load_contract(path)
    expected = line + line_offset
    assert info.value.details["key"] == key
    assert info.value.details["line"] == expected
    assert info.value.exit_code == 2
    assert info.value.message.startswith(f"contract {path}, line {expected}: {key} {rule}")
    assert path.read_text().splitlines()[expected - 1].strip().startswith(key.rsplit(".", 1)[-1])


def test_every_problem_in_a_file_is_listed_first_by_line(
    contract: Contract, tmp_path: Path
) -> None:
    path, line = _load_edited(contract, tmp_path, "max: 140", "max: lots")
    text = path.read_text().replace("dtype: bool", "dtype: boolean", 1)
    path.write_text(text.replace("target: churned", "target: [churned]"))
    with pytest.raises(ConfigError) as info:
        load_contract(path)
    problems = info.value.details["problems"]
    assert [p["key"] for p in problems] == ["target", "columns.age.max", "columns.vip.dtype"]
    assert problems[1]["line"] == line
    assert [p["line"] for p in problems] == sorted(p["line"] for p in problems)
    assert info.value.details["key"] == "target"
    assert "also: columns.age.max (line" in info.value.message


def test_malformed_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "churn.yaml"
    path.write_text("dataset: churn\ncolumns: {age: [dtype: int\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_contract(path)
    assert str(path) in info.value.message


# --------------------------------------------------------------------------- validation


def test_clean_later_snapshot_passes(contract: Contract) -> None:
    later = _frame(seed=1, start="2024-03-01")  # newer timestamps, other values
    later["age"] = later["age"].astype("float64")  # nulls made it float (SQLite)
    later["plan"] = later["plan"].astype(object)
    later["signup"] = later["signup"].dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    later["vip"] = later["vip"].astype(int)  # SQLite stores booleans as 0/1
    report = validate_frame(later, contract)
    assert report.passed, format_report(report)
    assert report.rows == N and report.contract_version == contract.version


def test_wrong_types_are_counted_with_examples(contract: Contract) -> None:
    df = _frame()
    df["balance"] = df["balance"].astype(object)
    df.loc[[3, 4, 5], "balance"] = ["n/a", "n/a", "12,5"]
    df.loc[6, "age"] = pd.NA
    violation = _only(validate_frame(df, contract), "dtype")
    assert (violation.column, violation.count) == ("balance", 3)
    assert violation.examples == ["n/a", "12,5"]
    assert "not float" in violation.message


def test_fractions_in_an_int_column_are_dtype_errors(contract: Contract) -> None:
    df = _frame()
    df["age"] = df["age"].astype("float64")
    df.loc[7, "age"] = 30.5
    violation = _only(validate_frame(df, contract), "dtype")
    assert (violation.column, violation.count, violation.examples) == ("age", 1, [30.5])


def test_unparseable_timestamps_are_dtype_errors(contract: Contract) -> None:
    df = _frame()
    df.loc[9, "observed_at"] = "yesterday"
    violation = _only(validate_frame(df, contract), "dtype")
    assert (violation.column, violation.examples) == ("observed_at", ["yesterday"])


def test_nulls_where_not_allowed(contract: Contract) -> None:
    df = _frame()
    df["balance"] = df["balance"].astype(object)  # a string null is a null, not a dtype error
    df.loc[[10, 11], "balance"] = None
    violation = _only(validate_frame(df, contract), "nullable")
    assert (violation.column, violation.count, violation.examples) == ("balance", 2, [10, 11])


@pytest.mark.parametrize(
    ("column", "values", "rule", "examples"),
    [
        ("age", [150, 999], "max", [150, 999]),
        ("age", [-1], "min", [-1]),
        ("balance", [-0.01], "min", [-0.01]),
        ("observed_at", ["1970-01-01T00:00:00"], "min", ["1970-01-01T00:00:00"]),
    ],
)
def test_out_of_range_values(
    contract: Contract, column: str, values: list[object], rule: str, examples: list[object]
) -> None:
    df = _frame()
    df.loc[20 : 20 + len(values) - 1, column] = values
    violation = _only(validate_frame(df, contract), rule)
    assert (violation.column, violation.count, violation.examples) == (
        column,
        len(values),
        examples,
    )


def test_unseen_categories_give_at_most_five_distinct_examples(contract: Contract) -> None:
    df = _frame()
    df["plan"] = df["plan"].astype("str")
    unseen = [f"plan{i}" for i in range(8)]
    df.loc[0:15, "plan"] = unseen * 2
    violation = _only(validate_frame(df, contract), "allowed")
    assert violation.column == "plan"
    assert violation.count == 16
    assert violation.examples == unseen[:5]


def test_duplicate_keys(contract: Contract) -> None:
    df = pd.concat([_frame(), _frame().iloc[[4, 4, 7]]], ignore_index=True)
    violation = _only(validate_frame(df, contract), "unique")
    assert violation.column == "customer_id,observed_at"
    assert violation.count == 3
    assert violation.examples == [[2, "2024-01-01T04:00:00"], [3, "2024-01-01T07:00:00"]]


def test_single_unique_column(contract: Contract) -> None:
    rules = dict(contract.columns, email=ColumnRule(dtype="string", nullable=False, unique=True))
    strict = Contract("churn", "v", rules, key_columns=[])
    df = _frame()
    df.loc[[5, 6], "email"] = df.loc[4, "email"]
    violation = _only(validate_frame(df, strict), "unique")
    assert (violation.column, violation.count) == ("email", 2)
    assert violation.examples == ["user4@example.com"]


def test_empty_frame(contract: Contract) -> None:
    violation = _only(validate_frame(_frame().iloc[:0], contract), "not_empty")
    assert violation.count == 1
    assert "no rows" in violation.message


def test_missing_column(contract: Contract) -> None:
    violation = _only(validate_frame(_frame().drop(columns=["vip"]), contract), "present")
    assert (violation.column, violation.count) == ("vip", 1)


def test_missing_key_column_skips_the_key_check(contract: Contract) -> None:
    report = validate_frame(_frame().drop(columns=["observed_at"]), contract)
    assert [(v.column, v.rule) for v in report.violations] == [("observed_at", "present")]


def test_extra_column(contract: Contract) -> None:
    df = _frame().assign(score=0.5)
    violation = _only(validate_frame(df, contract), "unexpected")
    assert (violation.column, violation.examples) == ("score", [0.5])
    relaxed = Contract(**{**contract.__dict__, "allow_extra_columns": True})
    assert validate_frame(df, relaxed).passed


def test_every_missing_and_extra_column_is_reported(contract: Contract) -> None:
    df = _frame().drop(columns=["vip", "email"]).assign(a=1, b=2)
    found = {(v.column, v.rule) for v in validate_frame(df, contract).violations}
    assert found == {
        ("vip", "present"),
        ("email", "present"),
        ("a", "unexpected"),
        ("b", "unexpected"),
    }


def test_many_violations_report_json_and_text(contract: Contract) -> None:
    df = _frame().drop(columns=["email"]).assign(extra=1)
    df.loc[0:9, "age"] = 1000
    report = validate_frame(df, contract)
    assert [(v.column, v.rule, v.count) for v in report.violations] == [
        ("age", "max", 10),
        ("email", "present", 1),
        ("extra", "unexpected", 1),
    ]
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["passed"] is False
    assert as_dict["violations"][0]["examples"] == [1000]
    text = format_report(report)
    assert "FAILED with 3 violation(s)" in text
    assert len(text.splitlines()) == 5  # header, column titles, one line per violation
    assert "age" in text.splitlines()[2] and "[1000]" in text.splitlines()[2]


def test_raise_if_failed(contract: Contract) -> None:
    validate_frame(_frame(), contract).raise_if_failed()  # passes: no error
    report = validate_frame(_frame().drop(columns=["vip"]), contract)
    with pytest.raises(ContractViolation, match="vip:present") as info:
        report.raise_if_failed()
    assert info.value.details["violations"][0]["rule"] == "present"


def test_timestamps_are_compared_in_utc(tmp_path: Path) -> None:
    df = pd.DataFrame({"at": ["2024-05-01T10:00:00+02:00", "2024-05-02", "2024-05-03T00:00Z"]})
    contract = infer_contract(df, dataset="d", target=None, key_columns=["at"])
    assert contract.columns["at"].min == "2024-05-01T00:00:00"  # 08:00 UTC less 4 h, floored
    path = tmp_path / "d.yaml"
    save_contract(contract, path)
    path.write_text(path.read_text().replace("'2024-05-01T00:00:00'", "2024-05-02"))  # unquoted
    edited = load_contract(path)
    assert edited.columns["at"].min == "2024-05-02T00:00:00"
    late = pd.DataFrame({"at": ["2024-05-02T01:00:00+02:00", "2024-06-01T00:00:00"]})
    violation = _only(validate_frame(late, edited), "min")  # 01:00+02:00 is 23:00 UTC on May 1
    assert violation.examples == ["2024-05-01T23:00:00"]


def test_key_columns_get_no_upper_bound_so_new_ids_pass() -> None:
    import pandas as pd

    from flywheel.data.contract import infer_contract, validate_frame

    first = pd.DataFrame({"customer_id": [1, 2, 3], "code": ["a", "b", "a"], "x": [0.1, 0.2, 0.3]})
    contract = infer_contract(first, dataset="d", target=None, key_columns=["customer_id"])
    assert contract.columns["customer_id"].max is None
    assert contract.columns["customer_id"].min is not None
    later = pd.DataFrame({"customer_id": [4000, 5000], "code": ["a", "b"], "x": [0.2, 0.25]})
    assert validate_frame(later, contract).passed
    negative = pd.DataFrame({"customer_id": [-5], "code": ["a"], "x": [0.2]})
    assert not validate_frame(negative, contract).passed
