"""Bad settings, as a user meets them at the installed `flywheel`: each is a configuration
error (exit 2) that names the key, the variable or the file and says what a good value looks
like; none is a crash (exit 70) or accepted only to fail later."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.conftest import flywheel


def config_error(cwd: Path, env: dict[str, str] | None = None) -> str:
    """`flywheel config show`'s stderr, which must be a configuration error (exit 2) and not
    the internal error's "This is a bug" (exit 70)."""
    err = flywheel(cwd, "config", "show", code=2, env=env).stderr
    assert "error (config)" in err and "bug in flywheel" not in err, err
    return " ".join(err.split())  # unwrapped: rich wraps at the terminal's width


@pytest.mark.parametrize(
    ("variable", "value", "key", "example"),
    [
        (
            "FLYWHEEL_SOURCE__KEY_COLUMNS",
            "customer_id,observed_at",
            "source.key_columns",
            """'["customer_id", "observed_at"]'""",
        ),
        ("FLYWHEEL_TRAINING__SLICE_COLUMNS", "region", "training.slice_columns", "'["),
        ("FLYWHEEL_GATES__MIN_METRICS", "not json", "gates.min_metrics", """'{"roc_auc": """),
        ("FLYWHEEL_SERVING__FRONTS", "{bad", "serving.fronts", """'{"line": {"""),
        ("FLYWHEEL_SERVING", "x", "serving", "'{"),
    ],
)
def test_a_list_or_mapping_that_is_not_json_names_the_variable(
    tmp_path: Path, variable: str, value: str, key: str, example: str
) -> None:
    err = config_error(tmp_path, {variable: value})  # was exit 70, a SettingsError
    assert f"Bad configuration for '{key}'" in err, err
    assert f"{variable} must be JSON, e.g. {variable}={example}" in err, err


def test_a_json_list_in_the_environment_is_read(tmp_path: Path) -> None:
    env = {"FLYWHEEL_SOURCE__KEY_COLUMNS": '["id","day"]', "FLYWHEEL_SERVING": '{"port": 9000}'}
    out = flywheel(tmp_path, "config", "show", "--json", env=env).stdout
    assert '"id",\n      "day"' in out and '"port": 9000' in out


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("FLYWHEEL_MONITORING__EVERY", "1", "monitoring.every"),
        ("FLYWHEEL_MONITORING__EVERY", "1h30m", "monitoring.every"),
        ("FLYWHEEL_RETRAIN__COOLDOWN", "10", "retrain.cooldown"),
        ("FLYWHEEL_RETRAIN__COOLDOWN", "soon", "retrain.cooldown"),
    ],
)
def test_a_bad_duration_says_what_a_duration_looks_like(
    tmp_path: Path, variable: str, value: str, key: str
) -> None:
    err = config_error(tmp_path, {variable: value})
    assert f"Bad configuration for '{key}'" in err, err
    assert "duration" in err and "30s, 15m, 1h, 1d" in err and f"(got '{value}')" in err, err
    assert "pattern" not in err, err  # was "String should match pattern '^\d+$'"


@pytest.mark.parametrize("schedule", ["every monday", "61 3 * * 1"])
def test_a_schedule_that_is_not_cron_is_refused_at_start_up(tmp_path: Path, schedule: str) -> None:
    err = config_error(tmp_path, {"FLYWHEEL_RETRAIN__SCHEDULE": schedule})  # was exit 0
    assert "Bad configuration for 'retrain.schedule'" in err, err
    assert f"'{schedule}' is not a cron expression" in err and "'0 3 * * 1'" in err, err


def test_a_check_every_of_0s_is_refused_naming_the_key_not_a_flag(tmp_path: Path) -> None:
    err = config_error(tmp_path, {"FLYWHEEL_RETRAIN__CHECK_EVERY": "0s"})  # was exit 0
    assert "Bad configuration for 'retrain.check_every'" in err and "longer than 0" in err, err
    # the worker used to take it and blame a flag --every the user never passed
    err = " ".join(
        flywheel(
            tmp_path, "worker", "--once", code=2, env={"FLYWHEEL_RETRAIN__CHECK_EVERY": "0s"}
        ).stderr.split()
    )
    assert "retrain.check_every" in err and "--every" not in err, err


def test_persist_k_above_persist_m_is_refused_naming_both(tmp_path: Path) -> None:
    (tmp_path / "flywheel.yaml").write_text("monitoring:\n  persist_k: 4\n  persist_m: 3\n")
    err = config_error(tmp_path)  # was exit 0: an alarm that could never ring
    assert "monitoring.persist_k (4)" in err and "monitoring.persist_m (3)" in err, err


def test_a_bad_value_names_the_settings_file_in_flywheel_config(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("monitoring:\n  every: soon\n")
    err = config_error(tmp_path, {"FLYWHEEL_CONFIG": "bad.yaml"})
    assert "Fix it in bad.yaml or FLYWHEEL_MONITORING__EVERY" in err, err
    assert "flywheel.yaml" not in err, err  # was "Fix it in flywheel.yaml"
    err = " ".join(
        flywheel(tmp_path, "--config", "bad.yaml", "config", "show", code=2).stderr.split()
    )
    assert "Fix it in bad.yaml" in err, err


def test_a_yaml_syntax_error_says_it_is_not_valid_yaml_with_the_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("seed: 1\nmonitoring: [1, 2\n")
    err = config_error(tmp_path, {"FLYWHEEL_CONFIG": "bad.yaml"})
    assert "bad.yaml is not a YAML mapping of settings: it is not valid YAML, at line 3" in err
    assert "(while parsing a flow sequence at line 2)" in err, err  # was ": while parsing ..."
    (tmp_path / "flywheel.yaml").write_text("a: b: c\n")
    err = config_error(tmp_path)
    assert "flywheel.yaml is not a YAML mapping of settings: it is not valid YAML" in err, err
    assert "line 1, column 5: mapping values are not allowed here" in err, err


def test_flywheel_config_naming_a_missing_file_is_refused_as_config_is(tmp_path: Path) -> None:
    (tmp_path / "flywheel.yaml").write_text("seed: 7\n")  # not read instead, silently
    missing = "/etc/flywheel/flywheel.yaml"
    err = config_error(tmp_path, {"FLYWHEEL_CONFIG": missing})  # was exit 0, on the defaults
    assert f"FLYWHEEL_CONFIG names '{missing}', which does not exist" in err, err
    err = config_error(tmp_path, {"FLYWHEEL_CONFIG": str(tmp_path)})
    assert "which is a folder" in err, err
    assert (
        "does not exist" in flywheel(tmp_path, "--config", missing, "config", "show", code=2).stderr
    )
    # /dev/null: no settings file at all; unset: ./flywheel.yaml
    shown = flywheel(tmp_path, "config", "show", "--json", env={"FLYWHEEL_CONFIG": os.devnull})
    assert '"seed": 42' in shown.stdout
    assert '"seed": 7' in flywheel(tmp_path, "config", "show", "--json").stdout


def test_brackets_in_a_message_show_as_written(tmp_path: Path) -> None:
    """The CLI printed messages as rich markup: a value such as [region] vanished."""
    err = config_error(tmp_path, {"FLYWHEEL_TRAINING__SLICE_COLUMNS": "[region]"})
    assert "(got '[region]')" in err, err


def test_a_mapping_that_is_not_json_is_not_echoed(tmp_path: Path) -> None:
    """serving.fronts' arguments may hold a token: the refusal does not print the value."""
    err = config_error(tmp_path, {"FLYWHEEL_SERVING__FRONTS": "{token: s3cr3t"})
    assert "FLYWHEEL_SERVING__FRONTS must be JSON" in err and "s3cr3t" not in err, err
