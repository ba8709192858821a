"""Settings validation: what is refused when the settings load (each a ConfigError naming the
key), what is still accepted, and docs/configuration.md marking the JSON variables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flywheel.config import json_env_keys, load_settings
from flywheel.errors import ConfigError

DOC = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()


def refused(monkeypatch: pytest.MonkeyPatch, **env: str) -> ConfigError:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    return info.value


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("FLYWHEEL_SOURCE__KEY_COLUMNS", "customer_id,observed_at", "source.key_columns"),
        ("FLYWHEEL_TRAINING__SLICE_COLUMNS", "", "training.slice_columns"),
        ("FLYWHEEL_GATES__MAX_SLICE_GAP", "roc_auc=0.2", "gates.max_slice_gap"),
        ("FLYWHEEL_RETRAIN", "cooldown=1d", "retrain"),
        ("flywheel_gates__min_metrics", "x", "gates.min_metrics"),  # names are case-blind
    ],
)
def test_a_list_mapping_or_section_must_be_json(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, key: str
) -> None:
    err = refused(monkeypatch, **{name: value})
    assert err.details["key"] == key
    assert err.details["variable"] == name.upper()
    assert f"{name.upper()} must be JSON" in err.message


def test_a_section_that_is_not_json_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    err = refused(monkeypatch, FLYWHEEL_SERVING='{"api_key": "hunter2"')  # may hold a secret
    assert "hunter2" not in err.message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("monitoring.every", "0d"),  # the monitor could not cut windows of 0 s
        ("monitoring.every", "1.5h"),
        ("retrain.check_every", "0s"),
        ("retrain.check_every", "1w"),  # flywheel worker --every takes no weeks
        ("retrain.window", "0d"),
        ("retrain.cooldown", "1 d"),
        ("retrain.budget_period", "90"),
    ],
)
def test_bad_durations(monkeypatch: pytest.MonkeyPatch, key: str, value: str) -> None:
    err = refused(monkeypatch, **{"FLYWHEEL_" + key.upper().replace(".", "__"): value})
    assert err.details["key"] == key
    assert f"{key} must be a duration" in err.message and f"(got '{value}')" in err.message


def test_a_bare_number_in_yaml_gets_the_duration_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "settings.yaml"
    cfg.write_text("retrain:\n  cooldown: 14\n")
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match=r"retrain\.cooldown must be a duration") as info:
        load_settings()
    assert f"Fix it in {cfg} or FLYWHEEL_RETRAIN__COOLDOWN" in info.value.message


def test_good_durations_and_an_empty_schedule_still_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLYWHEEL_RETRAIN__COOLDOWN", "0d")  # no cooldown: allowed
    monkeypatch.setenv("FLYWHEEL_RETRAIN__CHECK_EVERY", "15m")
    monkeypatch.setenv("FLYWHEEL_MONITORING__EVERY", "2w")
    monkeypatch.setenv("FLYWHEEL_RETRAIN__SCHEDULE", "")  # unset
    monkeypatch.setenv("FLYWHEEL_MONITORING__PERSIST_K", "3")  # k == m: allowed
    s = load_settings()
    assert (s.retrain.cooldown, s.retrain.check_every, s.monitoring.every) == ("0d", "15m", "2w")
    assert s.retrain.schedule == ""


@pytest.mark.parametrize("schedule", ["every monday", "61 3 * * 1", "0 3 * * 8"])
def test_a_schedule_is_parsed_when_the_settings_load(
    monkeypatch: pytest.MonkeyPatch, schedule: str
) -> None:
    err = refused(monkeypatch, FLYWHEEL_RETRAIN__SCHEDULE=schedule)
    assert err.details["key"] == "retrain.schedule"
    assert err.message.startswith("Bad configuration for 'retrain.schedule': ")
    assert err.message.endswith(" FLYWHEEL_RETRAIN__SCHEDULE.")


def test_persist_k_above_persist_m(monkeypatch: pytest.MonkeyPatch) -> None:
    err = refused(monkeypatch, FLYWHEEL_MONITORING__PERSIST_M="1")
    assert err.details["key"] == "monitoring.persist_k"
    assert "monitoring.persist_k (2)" in err.message
    assert "monitoring.persist_m (1)" in err.message


def test_an_unknown_key_is_called_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("retrain:\n  cooldwn: 1d\n")
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match=r"'retrain\.cooldwn': there is no such setting"):
        load_settings()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("monitoring: [1, 2\n", "it is not valid YAML, at line 2, column 1: expected ',' or ']'"),
        ("seed: 1\n\tbad: 2\n", "it is not valid YAML, at line 2, column 1"),
        ("- a list\n", "it holds a list, not a mapping of settings"),
    ],
)
def test_a_file_that_is_not_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, says: str
) -> None:
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(text)
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(cfg))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert f"{cfg} is not a YAML mapping of settings: {says}" in info.value.message
    assert info.value.details["file"] == str(cfg)


def test_configuration_md_marks_every_json_variable() -> None:
    keys = json_env_keys()
    settings = [k for k in keys if "." in k]
    assert "source.key_columns" in settings and "serving.fronts" in settings
    assert {"serving", "retrain"} <= set(keys)  # whole sections
    for key in settings:
        row = re.search(rf"^\| `{re.escape(key)}` \| ([^|]*) \|", DOC, re.M)
        assert row and "(JSON)" in row.group(1), f"{key}'s variable is not marked (JSON)"
    marked = re.findall(r"^\| `([a-z_.]+)` \| `FLYWHEEL_\w+` \(JSON\)", DOC, re.M)
    assert sorted(marked) == sorted(settings)


def test_flywheel_config_must_name_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere.yaml"
    err = refused(monkeypatch, FLYWHEEL_CONFIG=str(missing))
    assert err.details["key"] == "FLYWHEEL_CONFIG" and str(missing) in err.message
    err = refused(monkeypatch, FLYWHEEL_CONFIG=str(tmp_path))
    assert "which is a folder" in err.message
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flywheel.yaml").write_text("seed: 7\n")
    monkeypatch.setenv("FLYWHEEL_CONFIG", "/dev/null")  # no settings file at all
    assert load_settings().seed == 42
    monkeypatch.delenv("FLYWHEEL_CONFIG")
    assert load_settings().seed == 7
